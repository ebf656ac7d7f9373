-- Takes a saved session for a recovering client: when it waits, is of the namespace and
-- went away at or after the oldest time still within the window, it is marked restored
-- (its time to live kept) and {disconnected_at, body} returned; else nil. A key that is
-- not such a session (another type, a field missing, a time that is not a number) is no
-- session.
-- KEYS: session:<pid>. ARGV: namespace, oldest disconnected_at within the window (ms).
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return false
end
local f = redis.call('HMGET', KEYS[1], 'state', 'ns', 'at', 'body')
local state, ns, at, body = f[1], f[2], f[3], f[4]
if state ~= 'waiting' or ns ~= ARGV[1] or not body or not at then
  return false
end
if not string.match(at, '^%d+$') or tonumber(at) < tonumber(ARGV[2]) then
  return false
end
redis.call('HSET', KEYS[1], 'state', 'restored')
return {at, body}
