#!lua name=telemetry_ingest

-- ingest_append: append a batch of events to the stream in one call, optionally guarded by an
-- idempotency key and a fixed-window rate limit, all atomically (one round trip, no races).
--
-- KEYS: stream [, idempotency key if ARGV[1] > 0] [, rate key if ARGV[4] > 0]
-- ARGV: 1 idempotency TTL ms (0 = none)   2 body hash   3 echo (stored for repeats)
--       4 rate limit per window (0 = none) 5 window ms   6 cost (events in this call)
--       7 fields per event  8.. field names, then the field values of every event in order
-- Returns {"ok", id...} | {"dup", hash, ids joined by ",", echo} | {"rate", retry after ms}
local function ingest_append(keys, args)
  local stream = keys[1]
  local next_key = 2
  local idem_ttl = tonumber(args[1])
  local idem_key
  if idem_ttl > 0 then
    idem_key = keys[next_key]
    next_key = next_key + 1
    local stored = redis.call('HMGET', idem_key, 'hash', 'ids', 'echo')
    if stored[1] then
      return {'dup', stored[1], stored[2], stored[3]}
    end
  end
  local limit = tonumber(args[4])
  if limit > 0 then
    local rate_key = keys[next_key]
    local cost = tonumber(args[6])
    local used = tonumber(redis.call('GET', rate_key) or '0')
    -- A call larger than the whole limit still passes in an empty window, or it never could.
    if used > 0 and used + cost > limit then
      local ttl = redis.call('PTTL', rate_key)
      if ttl < 1 then ttl = 1 end
      return {'rate', ttl}
    end
    if redis.call('INCRBY', rate_key, cost) == cost then
      redis.call('PEXPIRE', rate_key, tonumber(args[5]))
    end
  end
  local nfields = tonumber(args[7])
  local names = {}
  for i = 1, nfields do names[i] = args[7 + i] end
  local ids = {'ok'}
  local entry = {}
  local first = 8 + nfields
  for base = first, #args, nfields do
    for i = 1, nfields do
      entry[2 * i - 1] = names[i]
      entry[2 * i] = args[base + i - 1]
    end
    ids[#ids + 1] = redis.call('XADD', stream, '*', unpack(entry))
  end
  if idem_key then
    redis.call('HSET', idem_key, 'hash', args[2], 'ids', table.concat(ids, ',', 2), 'echo', args[3])
    redis.call('PEXPIRE', idem_key, idem_ttl)
  end
  return ids
end

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

redis.register_function('ingest_append', ingest_append)
redis.register_function('ingest_trim', ingest_trim)
