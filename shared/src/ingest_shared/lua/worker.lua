#!lua name=ingest_worker

-- The worker's functions. The producer's live in producer.lua.

-- Stream ids compare as two integers, never as strings ("9-0" < "10-0").
local function id_less(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  if a_ms ~= b_ms then return a_ms < b_ms end
  return tonumber(a_seq) < tonumber(b_seq)
end

-- ingest_trim: drop entries every consumer group has finished with, never a pending or an
-- undelivered one (MAXLEN would), keeping at least ARGV[1] newest entries for the recent view.
-- Atomic, so no group can move between the check and the trim.
-- KEYS: stream   ARGV: 1 entries to keep   Returns {entries removed, MINID used or ""}
local function ingest_trim(keys, args)
  local stream = keys[1]
  local keep = tonumber(args[1])
  if redis.call('XLEN', stream) <= keep then return {0, ''} end
  local groups = redis.call('XINFO', 'GROUPS', stream)
  -- No group yet: nobody has read anything, so everything is still needed.
  if #groups == 0 then return {0, ''} end
  local newest_kept = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', keep)
  if #newest_kept < keep then return {0, ''} end
  local min_id = newest_kept[#newest_kept][1]
  for _, group in ipairs(groups) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    -- The oldest entry this group still needs: its oldest pending one, else the next undelivered
    -- (last-delivered-id itself is kept: it is harmless and saves computing its successor).
    local needed = info['last-delivered-id']
    if tonumber(info['pending']) > 0 then
      needed = redis.call('XPENDING', stream, info['name'])[2]
    end
    if id_less(needed, min_id) then min_id = needed end
  end
  return {redis.call('XTRIM', stream, 'MINID', min_id), min_id}
end

redis.register_function('ingest_trim', ingest_trim)

-- Entries larger than the limit never leave Redis whole: their fields are replaced by the
-- size and a bounded prefix, so one hostile or broken writer cannot blow up a worker's memory.
local OVERSIZED, PREFIX = '__oversized__', '__prefix__'

local function bounded(entries, max_bytes, prefix_bytes)
  for i = 1, #entries do
    local fields = entries[i][2]
    if fields then
      local size = 0
      for j = 1, #fields do size = size + #fields[j] end
      if size > max_bytes then
        local shown, used = {}, 0
        for j = 1, #fields do
          if used >= prefix_bytes then break end
          local part = string.sub(fields[j], 1, prefix_bytes - used)
          shown[#shown + 1] = part
          used = used + #part
        end
        entries[i][2] = {OVERSIZED, tostring(size), PREFIX, table.concat(shown, ' ')}
      end
    end
  end
  return entries
end

-- ingest_read: XREADGROUP without BLOCK (functions cannot block), oversized entries bounded.
-- KEYS: stream   ARGV: group, consumer, count, max entry bytes, prefix bytes, id (">" or an id)
-- Returns the entries as XREADGROUP lists them ({id, {field, value, ...}}; deleted: {id, nil})
local function ingest_read(keys, args)
  local reply = redis.call('XREADGROUP', 'GROUP', args[1], args[2], 'COUNT', args[3],
    'STREAMS', keys[1], args[6])
  if not reply then return {} end
  return bounded(reply[1][2], tonumber(args[4]), tonumber(args[5]))
end

-- ingest_claim: XAUTOCLAIM (not JUSTID: a claim is a delivery), oversized entries bounded.
-- KEYS: stream   ARGV: group, consumer, min idle ms, start id, count, max entry bytes, prefix
-- Returns {next cursor, entries, deleted ids}
local function ingest_claim(keys, args)
  local reply = redis.call('XAUTOCLAIM', keys[1], args[1], args[2], args[3], args[4],
    'COUNT', args[5])
  reply[2] = bounded(reply[2], tonumber(args[6]), tonumber(args[7]))
  return reply
end

redis.register_function('ingest_read', ingest_read)
redis.register_function('ingest_claim', ingest_claim)

-- ingest_lease: hold the lease of a shard. KEYS: lease key   ARGV: op, worker id, ttl ms
-- op "hold": take it if free, or extend it if ours; "release": delete it if ours.
-- Returns 1 if we hold it (hold) / released it (release), else 0.
local function ingest_lease(keys, args)
  local lease, op, me = keys[1], args[1], args[2]
  if op == 'hold' then
    if redis.call('SET', lease, me, 'NX', 'PX', args[3]) then return 1 end
    if redis.call('GET', lease) == me then
      redis.call('PEXPIRE', lease, args[3])
      return 1
    end
    return 0
  end
  if redis.call('GET', lease) == me then
    redis.call('DEL', lease)
    return 1
  end
  return 0
end

-- ingest_forget_consumers: delete consumers of the group that hold nothing pending and were
-- idle longer than ARGV[2] ms, and ARGV[3] itself if it holds nothing (a worker stopping
-- cleanly; "" for none). DELCONSUMER drops pending entries with a consumer, so the check and
-- the delete are one atomic step. KEYS: stream   ARGV: group, idle ms, own name
-- Returns the names deleted.
local function ingest_forget_consumers(keys, args)
  local stream, group, idle_ms, own = keys[1], args[1], tonumber(args[2]), args[3]
  local deleted = {}
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    local name = fields['name']
    if tonumber(fields['pending']) == 0 and (name == own or tonumber(fields['idle']) > idle_ms) then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
      deleted[#deleted + 1] = name
    end
  end
  return deleted
end

redis.register_function('ingest_lease', ingest_lease)
redis.register_function('ingest_forget_consumers', ingest_forget_consumers)
