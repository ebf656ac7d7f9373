-- Ends the wait for a saved session. Returns 1 (restored) when a session saved later
-- stands in its place (left as it is) or it was restored, 0 (lost) when it was not or is
-- gone; the session waited for is deleted. A key that is not a session is none.
-- KEYS: session:<pid>. ARGV: disconnected_at of the session waited for (ms).
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return 0
end
local f = redis.call('HMGET', KEYS[1], 'at', 'state')
local at, state = f[1], f[2]
if not at then
  return 0
end
if at ~= ARGV[1] then
  return 1
end
redis.call('DEL', KEYS[1])
if state == 'restored' then
  return 1
end
return 0
