-- Shared by every hookbot script: the backend prepends this file to each one
-- (Redis scripts cannot include files).
--
-- Every script gets the same first 12 KEYS (all under one hash tag, so a script
-- touches one slot and also runs on Redis Cluster), then its own KEYS; and the
-- same first 7 ARGV, then its own.
--   history: log, bytes, trimmed, total, expire-at
--   feed:    feed, feed-index, feed-bytes, feed-trimmed, feed-due, cursors, lastid
local LOG, BYTES, TRIMMED, TOTAL, EXPAT = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local FEED, FIDX, FBYTES, FTRIMMED, FDUE, CURSORS, LASTID = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
-- ARGV: topic-index key prefix, history age and total bytes, catch-up window
-- (age ms, messages, bytes) and how long a silent node's cursor still counts.
local TPREFIX = ARGV[1]
local H_AGE, H_TOTAL = tonumber(ARGV[2]), tonumber(ARGV[3])
local F_AGE, F_COUNT, F_BYTES, CURSOR_TTL = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

-- Feed entries one call may remove, so no call holds Redis for long; the rest
-- goes on the next publish or cursor refresh.
local TRIM_BUDGET = 2000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- Ids are <ms>-<seq>; both parts stay below 2^53, so Lua numbers hold them exactly.
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function id_lt(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

local function next_id(id)
  local ms, seq = id_parts(id)
  return string.format('%.0f-%.0f', ms, seq + 1)
end

---- history ----

-- Removes one retained message from the log and its topic index, and
-- remembers it as trimmed so a resume from before it learns about the gap.
local function drop(topic, id, len)
  redis.call('XDEL', LOG, id)
  local tkey = TPREFIX .. topic
  redis.call('XDEL', tkey, id)
  redis.call('HSET', TRIMMED, topic, id)
  redis.call('DECRBY', TOTAL, len)
  if redis.call('XLEN', tkey) == 0 then
    redis.call('DEL', tkey)
    redis.call('HDEL', BYTES, topic)
  else
    redis.call('HINCRBY', BYTES, topic, -len)
  end
end

-- The log's head is always the oldest retained message anywhere (per-topic
-- trimming deletes from the log too), so age and total-size eviction only
-- ever look at the head. It remembers when the head it kept will be due
-- (EXPAT), so a publish need not read the head (and its body) every time.
local function expire(now)
  local cutoff = now - H_AGE
  local total = tonumber(redis.call('GET', TOTAL) or '0')
  while true do
    local head = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
    if not head then
      redis.call('DEL', EXPAT)
      break
    end
    local fields = head[2]
    local time = tonumber(field(fields, 'm'))
    if time > cutoff and total <= H_TOTAL then
      redis.call('SET', EXPAT, string.format('%.0f', time + H_AGE))
      break
    end
    -- Entries written before sizes were stored count their body.
    local len = tonumber(field(fields, 's') or string.len(field(fields, 'b')))
    drop(field(fields, 't'), head[1], len)
    total = total - len
  end
end

-- Per-topic trimming only removes entries newer than the head it looked at, so
-- EXPAT can only be early, never late; being early just costs one look.
local function maybe_expire(now)
  local due = tonumber(redis.call('GET', EXPAT) or '0')
  if now >= due or tonumber(redis.call('GET', TOTAL) or '0') > H_TOTAL then
    expire(now)
  end
end

---- feed ----
-- The feed is what nodes read to deliver: every message, in id order, each
-- naming the id before it (field p) so a reader notices any hole. It is only
-- ever trimmed from its head. An entry MUST go once it is outside the catch-up
-- window (older than F_AGE, beyond F_COUNT newer ones, or over F_BYTES), and
-- MAY go earlier once every live node's cursor has passed it (floor). FIDX
-- holds each entry's size under the same id, so trimming never reads bodies.

local function feed_trim(now, floor)
  local len = redis.call('XLEN', FIDX)
  local bytes = tonumber(redis.call('GET', FBYTES) or '0')
  local cutoff = now - F_AGE
  local start = '-'
  local last = nil
  local budget = TRIM_BUDGET
  local due = nil
  -- The newest entry always stays: a reader that is behind by one still gets it.
  while len > 1 and budget > 0 do
    local batch = redis.call('XRANGE', FIDX, start, '+', 'COUNT', math.min(200, budget))
    if #batch == 0 then break end
    for _, e in ipairs(batch) do
      local id = e[1]
      local ms = id_parts(id)
      local must = ms <= cutoff or len > F_COUNT or bytes > F_BYTES
      if len <= 1 or not (must or (floor ~= nil and not id_lt(floor, id))) then
        due = ms + F_AGE
        break
      end
      last = id
      len = len - 1
      bytes = bytes - tonumber(e[2][2])
      budget = budget - 1
    end
    if due ~= nil then break end
    start = '(' .. last
  end
  if last ~= nil then
    local min = next_id(last)
    redis.call('XTRIM', FEED, 'MINID', min)
    redis.call('XTRIM', FIDX, 'MINID', min)
    redis.call('SET', FBYTES, string.format('%.0f', bytes))
    redis.call('SET', FTRIMMED, last)
  end
  if due == nil then
    if budget == 0 then
      due = now
    else
      local head = redis.call('XRANGE', FIDX, '-', '+', 'COUNT', 1)[1]
      due = head and (id_parts(head[1]) + F_AGE) or (now + F_AGE)
    end
  end
  redis.call('SET', FDUE, string.format('%.0f', due))
end

local function feed_append(id, topic, headers, body, time, prev, size, now)
  redis.call('XADD', FEED, id, 't', topic, 'h', headers, 'b', body, 'm', time, 'p', prev)
  redis.call('XADD', FIDX, id, 'n', size)
  local bytes = redis.call('INCRBY', FBYTES, size)
  if bytes > F_BYTES or redis.call('XLEN', FIDX) > F_COUNT or now >= tonumber(redis.call('GET', FDUE) or '0') then
    feed_trim(now, nil)
  end
end
