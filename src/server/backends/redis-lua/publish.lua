-- Accepts one message: id from Redis TIME and the global last id, history
-- (log + topic index, trimmed), the feed every node reads, and the
-- publisher's idempotency key, all in one atomic step.
-- KEYS[13] the topic's index, KEYS[14] idempotency key -> id (hash),
-- KEYS[15] idempotency key -> time (sorted set).
-- ARGV[8] topic, [9] headers JSON, [10] body, [11] '1' if history is on,
-- [12] history count per topic, [13] history bytes per topic, [14] stored size
-- of the message, [15] idempotency scope (topic NL key; '' for none),
-- [16] idempotency window ms, [17] most idempotency keys kept.
-- Returns {id, time, 0}, or {original id, '', 1} for a repeated key.
local TKEY, IDS, IDAT = KEYS[13], KEYS[14], KEYS[15]
local topic, headers, body = ARGV[8], ARGV[9], ARGV[10]
local scope = ARGV[15]
local now = now_ms()

if scope ~= '' then
  local window = tonumber(ARGV[16])
  local cutoff = string.format('%.0f', now - window)
  -- Forget keys past the window, a bounded few per publish (the rest on later ones).
  local old = redis.call('ZRANGEBYSCORE', IDAT, '-inf', cutoff, 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('HDEL', IDS, unpack(old))
    redis.call('ZREM', IDAT, unpack(old))
  end
  local original = redis.call('HGET', IDS, scope)
  if original then
    local at = tonumber(redis.call('ZSCORE', IDAT, scope) or '0')
    if now - at < window then return {original, '', 1} end
  end
end

local ms, seq = now, 0
local last = redis.call('GET', LASTID)
if last then
  local last_ms, last_seq = id_parts(last)
  -- Never go backwards, even if the Redis clock does.
  if last_ms >= now then
    ms = last_ms
    seq = last_seq + 1
  end
end
local id = string.format('%.0f-%.0f', ms, seq)
local time = string.format('%.0f', now)
redis.call('SET', LASTID, id)

if ARGV[11] == '1' then
  -- History limits count the whole stored message (storedSize), not the body alone.
  local len = tonumber(ARGV[14])
  redis.call('XADD', LOG, id, 't', topic, 'h', headers, 'b', body, 'm', time, 's', len)
  redis.call('XADD', TKEY, id, 'n', len)
  local tbytes = redis.call('HINCRBY', BYTES, topic, len)
  redis.call('INCRBY', TOTAL, len)
  local count, max_bytes = tonumber(ARGV[12]), tonumber(ARGV[13])
  local n = redis.call('XLEN', TKEY)
  while n > count or (tbytes > max_bytes and n > 0) do
    local head = redis.call('XRANGE', TKEY, '-', '+', 'COUNT', 1)[1]
    local hlen = tonumber(head[2][2])
    drop(topic, head[1], hlen)
    n = n - 1
    tbytes = tbytes - hlen
  end
  maybe_expire(now)
end

feed_append(id, topic, headers, body, time, last or '0-0', tonumber(ARGV[14]), now)

if scope ~= '' then
  redis.call('HSET', IDS, scope, id)
  redis.call('ZADD', IDAT, string.format('%.0f', now), scope)
  local excess = redis.call('ZCARD', IDAT) - tonumber(ARGV[17])
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', IDAT, excess)
    for i = 1, #popped, 2 do redis.call('HDEL', IDS, popped[i]) end
  end
end
return {id, time, 0}
