-- A node registers (or refreshes) its cursor, the last feed id it has read, so
-- trimming keeps what it has not read yet, within the window; then trims what
-- every live node has read. A cursor not refreshed for CURSOR_TTL belongs to a
-- node that is gone (or cut off for longer than the window) and no longer counts.
-- ARGV[8] node id, ARGV[9] its cursor, or '' for a node that starts reading now.
-- Returns {cursor, last id handed out or '', newest id trimmed from the feed or ''}.
local now = now_ms()
local cursor = ARGV[9]
-- Registered in the same step that picks the start, so nothing after it can be trimmed unseen.
if cursor == '' then cursor = redis.call('GET', LASTID) or '0-0' end
local nowstr = string.format('%.0f', now)
redis.call('HSET', CURSORS, ARGV[8], cursor .. ' ' .. nowstr)
-- When the set of cursors began: a set younger than CURSOR_TTL (first start, or
-- Redis lost its data) may still lack live nodes that have not come back yet,
-- so until then only the window trims.
redis.call('HSETNX', CURSORS, '*since', nowstr)
local floor = cursor
local complete = false
local all = redis.call('HGETALL', CURSORS)
for i = 1, #all, 2 do
  local v = all[i + 1]
  if all[i] == '*since' then
    complete = now - tonumber(v) >= CURSOR_TTL
  else
    local sp = string.find(v, ' ', 1, true)
    if sp == nil or now - tonumber(string.sub(v, sp + 1)) > CURSOR_TTL then
      redis.call('HDEL', CURSORS, all[i])
    else
      local c = string.sub(v, 1, sp - 1)
      if id_lt(c, floor) then floor = c end
    end
  end
end
feed_trim(now, complete and floor or nil)
return {cursor, redis.call('GET', LASTID) or '', redis.call('GET', FTRIMMED) or ''}
