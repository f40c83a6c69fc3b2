#!lua name=ingest_producer

-- The producer's functions. The worker's live in worker.lua: each service loads only its own
-- library, so neither needs the other's commands in its ACL.

-- ingest_append: append the events of several requests ("segments") in one call. Each event
-- names its stream; each segment may carry an idempotency key and a fixed-window rate limit,
-- and is accepted or refused as a whole; everything happens atomically (one round trip, no
-- races between repeats).
--
-- KEYS: the S streams the events append to (the first is the key a cluster routes the call
--       by), then per segment in order: its idempotency key (if its TTL > 0), then its rate key
--       (if its limit > 0). On a cluster every key of a call shares one hash slot (one shard per
--       call); on a single node one call may append to every shard's stream.
-- ARGV: 1 fields per event F   2..F+1 field names (a last "labels" is left out of an entry
--       whose value is empty)   F+2 number of streams S
--       then 2 per segment: ONE MessagePack array holding events N, idempotency TTL ms
--       (0 = none), body hash, rate limit per window (0 = none), window ms, then each event's
--       stream (N indexes in KEYS, 1..S), then the N * F field values (strings); and its echo
--       (bytes, outside the array: cmsgpack has no binary type). redis-py spends ~0.7 us
--       encoding each argument, and cmsgpack unpacks faster than Lua can split a string.
-- Every stream (a stream or no key yet) and every segment is checked before anything is
-- written: an error leaves nothing of the call done.
-- Returns one reply per segment:
--   {"ok", id...}            appended, ids in order (each in its event's stream)
--   {"dup", ids, echo}       repeat of a stored request (ids joined by ","): nothing appended
--   {"conflict"}             the idempotency key was used with another body hash
--   {"rate", retry after ms} does not fit in what is left of the window: nothing appended
--   {"toolarge", limit}      more events than the whole window allows: nothing appended
-- An empty occurredAt is stamped with the time of the call (RFC 3339, ms; one clock for the
-- whole call, every stream): the server's default for a batch, taken here so that stamps follow
-- stream order whatever the order in which the producer's concurrent calls arrive (the worker
-- writes a sample older than its series' newest as a costly upsert).
local SEGMENT_ARGS = 2
-- A segment's array: this header, then N stream indexes, then N * F values.
local HEADER = 5
local STAMPED_FIELD = 'occurredAt'
-- Named last by a call that holds events with labels; left out of an entry when empty, so an
-- event without labels has the tutorial's four fields.
local LABELS_FIELD = 'labels'

-- rfc3339: epoch ms as YYYY-MM-DDTHH:MM:SS[.mmm]Z, milliseconds only when there are any (as
-- ingest_shared.schema.format_ms). Days to a civil date: H. Hinnant's days_from_civil inverse.
local function rfc3339(ms)
  local floor = math.floor
  local secs = floor(ms / 1000)
  local millis = ms - secs * 1000
  local days = floor(secs / 86400)
  local rest = secs - days * 86400
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local day = doy - floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local text = string.format('%04d-%02d-%02dT%02d:%02d:%02d', year, month, day,
    floor(rest / 3600), floor(rest % 3600 / 60), rest % 60)
  if millis == 0 then return text .. 'Z' end
  return string.format('%s.%03dZ', text, millis)
end

local function now_stamp(clock)
  if not clock.stamp then
    local time = redis.call('TIME')
    clock.stamp = rfc3339(tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
  end
  return clock.stamp
end

local function append_values(keys, names, segment, count, clock)
  local nfields = #names
  local entry = {}
  local stamped = 0
  for i = 1, nfields do
    entry[2 * i - 1] = names[i]
    if names[i] == STAMPED_FIELD then stamped = 2 * i end
  end
  local width = 2 * nfields
  local labelled = names[nfields] == LABELS_FIELD
  local ids = {'ok'}
  local values = HEADER + count
  for e = 0, count - 1 do
    local base = values + e * nfields
    for i = 1, nfields do entry[2 * i] = segment[base + i] end
    if stamped > 0 and entry[stamped] == '' then entry[stamped] = now_stamp(clock) end
    local used = width
    if labelled and entry[width] == '' then used = width - 2 end
    ids[e + 2] = redis.call('XADD', keys[segment[HEADER + 1 + e]], '*', unpack(entry, 1, used))
  end
  return ids
end

local function ingest_append(keys, args)
  local nfields = tonumber(args[1])
  local names = {}
  for i = 1, nfields do names[i] = args[1 + i] end
  local nstreams = tonumber(args[2 + nfields])
  local first = 3 + nfields
  local nsegments = (#args - first + 1) / SEGMENT_ARGS
  if nsegments % 1 ~= 0 then
    return redis.error_reply('ERR ingest_append: ' .. SEGMENT_ARGS .. ' arguments per segment')
  end
  -- Check every stream and segment before writing anything: an error must not leave part of
  -- a call done (a call may append to several streams). XLEN fails on a key of another type.
  for i = 1, nstreams do
    local checked = redis.pcall('XLEN', keys[i])
    if type(checked) == 'table' and checked.err then
      return redis.error_reply(checked.err .. ' (ingest_append: ' .. keys[i] .. ')')
    end
  end
  local is_stream = {}
  for i = 1, nstreams do is_stream[i] = true end
  local segments = {}
  for s = 1, nsegments do
    local segment = cmsgpack.unpack(args[first + (s - 1) * SEGMENT_ARGS])
    local count = type(segment) == 'table' and segment[1]
    if type(count) ~= 'number' or #segment ~= HEADER + count * (1 + nfields) then
      return redis.error_reply('ERR ingest_append: segment ' .. s .. ' does not hold '
        .. tostring(count) .. ' events (a stream and ' .. nfields .. ' fields each)')
    end
    for e = 1, count do
      if not is_stream[segment[HEADER + e]] then
        return redis.error_reply('ERR ingest_append: segment ' .. s .. ' event ' .. e
          .. ' names stream ' .. tostring(segment[HEADER + e]) .. ' of ' .. nstreams)
      end
    end
    segments[s] = segment
  end
  local next_key = nstreams + 1
  local replies = {}
  local clock = {}
  for s = 1, nsegments do
    local segment = segments[s]
    local count, idem_ttl, hash = segment[1], segment[2], segment[3]
    local limit, window_ms = segment[4], segment[5]
    local echo = args[first + (s - 1) * SEGMENT_ARGS + 1]
    local idem_key, rate_key, reply
    if idem_ttl > 0 then
      idem_key = keys[next_key]
      next_key = next_key + 1
    end
    if limit > 0 then
      rate_key = keys[next_key]
      next_key = next_key + 1
    end
    if idem_key then
      local stored = redis.call('HMGET', idem_key, 'hash', 'ids', 'echo')
      if stored[1] == hash then
        -- A write (same expiry), so a WAIT/WAITAOF after this call also covers the original.
        local expires_at = redis.call('PEXPIRETIME', idem_key)
        if expires_at > 0 then redis.call('PEXPIREAT', idem_key, expires_at) end
        reply = {'dup', stored[2], stored[3]}
      elseif stored[1] then
        reply = {'conflict'}
      end
    end
    if not reply and rate_key then
      local used = tonumber(redis.call('GET', rate_key) or '0')
      if count > limit then
        -- Larger than the whole window's budget: no wait would let it pass.
        reply = {'toolarge', limit}
      elseif used + count > limit then
        -- Refused whole; it fits once this window ends.
        local ttl = redis.call('PTTL', rate_key)
        if ttl < 1 then ttl = 1 end
        reply = {'rate', ttl}
      elseif redis.call('INCRBY', rate_key, count) == count then
        redis.call('PEXPIRE', rate_key, window_ms)
      end
    end
    if not reply then
      reply = append_values(keys, names, segment, count, clock)
      if idem_key then
        redis.call('HSET', idem_key, 'hash', hash, 'ids', table.concat(reply, ',', 2), 'echo', echo)
        redis.call('PEXPIRE', idem_key, idem_ttl)
      end
    end
    replies[s] = reply
  end
  return replies
end

-- ingest_replay: move dead letters back to the main stream, each one atomically: if the
-- dead-letter entry still exists, XADD the given fields to the stream and XDEL the entry. A
-- second call with the same ids (or a retry after a dropped connection) finds them gone and
-- reports them missing: nothing is lost or appended twice.
-- KEYS: stream, dead-letter stream (on a cluster both must share a hash slot)
-- ARGV: per entry: dead-letter id, number of field/value pairs P, then P names and values
-- Returns {{dead-letter id, new stream id, ...}, {missing dead-letter id, ...}}
local function ingest_replay(keys, args)
  local stream, dead_letter = keys[1], keys[2]
  -- Check the whole argument list before writing anything.
  local entries = {}
  local i = 1
  while i <= #args do
    local pairs_count = tonumber(args[i + 1])
    if not string.match(args[i], '^%d+%-%d+$') or not pairs_count or pairs_count < 1
        or i + 1 + 2 * pairs_count > #args then
      return redis.error_reply('ERR ingest_replay: malformed arguments at ' .. i)
    end
    entries[#entries + 1] = {i, pairs_count}
    i = i + 2 + 2 * pairs_count
  end
  local replayed, missing = {}, {}
  for _, entry in ipairs(entries) do
    local first, pairs_count = entry[1], entry[2]
    local id = args[first]
    if #redis.call('XRANGE', dead_letter, id, id) == 0 then
      missing[#missing + 1] = id
    else
      local fields = {}
      for f = 1, 2 * pairs_count do fields[f] = args[first + 1 + f] end
      replayed[#replayed + 1] = id
      replayed[#replayed + 1] = redis.call('XADD', stream, '*', unpack(fields))
      redis.call('XDEL', dead_letter, id)
    end
  end
  return {replayed, missing}
end


-- ingest_release_consumer: delete a consumer of the group if it holds no pending entry (the
-- process route's consumers would otherwise accumulate). DELCONSUMER drops a consumer's
-- pending entries with it, so the check and the delete are one atomic step.
-- KEYS: stream   ARGV: group, consumer   Returns 1 if deleted, else 0
local function ingest_release_consumer(keys, args)
  local stream, group, consumer = keys[1], args[1], args[2]
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == consumer then
      if tonumber(fields['pending']) > 0 then return 0 end
      redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
      return 1
    end
  end
  return 0
end

-- ingest_recent: the newest entries of a stream for the dashboard, each larger than the
-- entry limit shown as its size and a prefix of its fields, so a poll never pulls megabytes
-- out of Redis. The same bound as worker.lua's (each service loads only its own library).
-- KEYS: stream   ARGV: count, max entry bytes (0: any), prefix bytes
-- Returns XREVRANGE's reply, oversized entries as {'__oversized__', size, '__prefix__', text}
local function ingest_recent(keys, args)
  local entries = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', args[1])
  local max_bytes, prefix_bytes = tonumber(args[2]), tonumber(args[3])
  if max_bytes == 0 then return entries end
  for i = 1, #entries do
    local fields = entries[i][2]
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
      entries[i][2] = {'__oversized__', tostring(size), '__prefix__', table.concat(shown, ' ')}
    end
  end
  return entries
end

-- ingest_admit: admit the new device series of a request under the cardinality caps, checking
-- and recording them in one atomic step, so concurrent producers can never pass a cap together.
-- The producer calls it only for series it has not seen admitted (its own cache), so a request
-- for known series costs nothing here.
-- KEYS: registry of series, registry of metric names, then (optional) the write key's series
-- ARGV: max series, max metrics, max series of the key (0 = no cap), mode ('all': admit all
--       or nothing; 'each': admit what fits), then per series: its metric, its member
-- Returns {series count, metrics count, key's series count, verdict...}, a verdict per series:
-- 0 admitted (or known), 1 over the series cap, 2 over the metrics cap, 3 over the key's cap.
-- In 'all' mode nothing is recorded unless every series is admitted.
local ADMITTED, OVER_SERIES, OVER_METRICS, OVER_CLIENT = 0, 1, 2, 3
-- Members per SADD: Lua's unpack has a C stack limit near 8,000.
local SADD_CHUNK = 4000

local function sadd_all(key, members)
  for first = 1, #members, SADD_CHUNK do
    redis.call('SADD', key, unpack(members, first, math.min(first + SADD_CHUNK - 1, #members)))
  end
end

local function ingest_admit(keys, args)
  local series_key, metrics_key, client_key = keys[1], keys[2], keys[3]
  local max_series, max_metrics = tonumber(args[1]), tonumber(args[2])
  local max_client, all = tonumber(args[3]), args[4] == 'all'
  if (#args - 4) % 2 ~= 0 then
    return redis.error_reply('ERR ingest_admit: a metric and a member per series')
  end
  local counts = {redis.call('SCARD', series_key), redis.call('SCARD', metrics_key),
    client_key and redis.call('SCARD', client_key) or 0}
  local added = {{}, {}, {}}
  local seen = {{}, {}, {}}
  local verdicts = {}
  local refused = false
  -- Whether `member` is new to set `i` (not in it, not added by this call), and its cap.
  local function is_new(i, key, member)
    if seen[i][member] ~= nil then return seen[i][member] end
    local new = redis.call('SISMEMBER', key, member) == 0
    seen[i][member] = new
    return new
  end
  for p = 5, #args, 2 do
    local metric, member = args[p], args[p + 1]
    local new_metric = is_new(2, metrics_key, metric)
    local new_series = is_new(1, series_key, member)
    local new_client = client_key ~= nil and is_new(3, client_key, member)
    local verdict = ADMITTED
    if new_metric and max_metrics > 0 and counts[2] >= max_metrics then
      verdict = OVER_METRICS
    elseif new_series and max_series > 0 and counts[1] >= max_series then
      verdict = OVER_SERIES
    elseif new_client and max_client > 0 and counts[3] >= max_client then
      verdict = OVER_CLIENT
    else
      -- Admitted: count it now, so the next series of this call sees it.
      if new_metric then
        added[2][#added[2] + 1] = metric
        seen[2][metric] = false
        counts[2] = counts[2] + 1
      end
      if new_series then
        added[1][#added[1] + 1] = member
        seen[1][member] = false
        counts[1] = counts[1] + 1
      end
      if new_client then
        added[3][#added[3] + 1] = member
        seen[3][member] = false
        counts[3] = counts[3] + 1
      end
    end
    if verdict ~= ADMITTED then refused = true end
    verdicts[#verdicts + 1] = verdict
  end
  local reply = counts
  if refused and all then
    -- Nothing recorded: the counts are those before the call.
    reply = {counts[1] - #added[1], counts[2] - #added[2], counts[3] - #added[3]}
  else
    sadd_all(series_key, added[1])
    sadd_all(metrics_key, added[2])
    if client_key then sadd_all(client_key, added[3]) end
  end
  for i = 1, #verdicts do reply[3 + i] = verdicts[i] end
  return reply
end

redis.register_function('ingest_append', ingest_append)
redis.register_function('ingest_admit', ingest_admit)
redis.register_function('ingest_recent', ingest_recent)
redis.register_function('ingest_replay', ingest_replay)
redis.register_function('ingest_release_consumer', ingest_release_consumer)
