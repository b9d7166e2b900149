-- A topic's retained messages after an id.
-- KEYS[13]: the topic's index.
-- ARGV[8] topic, ARGV[9] start ('-' or '(<id>'), ARGV[10] limit (0 = all).
-- Returns {trimmed-up-to or '', 1 if limit cut some, {log entries}}.
maybe_expire(now_ms())
local TKEY, topic, start, limit = KEYS[13], ARGV[8], ARGV[9], tonumber(ARGV[10])
local ids
local cut = 0
if limit > 0 then
  local rev = redis.call('XREVRANGE', TKEY, '+', start, 'COUNT', limit + 1)
  if #rev > limit then
    cut = 1
    rev[#rev] = nil
  end
  ids = {}
  for i = #rev, 1, -1 do ids[#ids + 1] = rev[i] end
else
  ids = redis.call('XRANGE', TKEY, start, '+')
end
local out = {}
for _, e in ipairs(ids) do
  local m = redis.call('XRANGE', LOG, e[1], e[1])[1]
  if m then out[#out + 1] = m end
end
return {redis.call('HGET', TRIMMED, topic) or '', cut, out}
