local r = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', 500)
local kv = r[2]
for i = 1, #kv, 2 do
  local sid, u = kv[i], kv[i + 1]
  local sk = ARGV[1] .. 'socks:' .. u
  if redis.call('SREM', sk, sid) == 1 and redis.call('SCARD', sk) == 0 then
    local uk = ARGV[1] .. 'user:' .. u
    -- Gone at the instance's last heartbeat, but not before the user's last change.
    local left = ARGV[3]
    local changed = redis.call('HGET', uk, 'lastSeen')
    if changed and tonumber(changed) > tonumber(left) then left = changed end
    redis.call('HSET', uk, 'leftAt', left)
    redis.call('ZADD', KEYS[2], ARGV[4], u)
  end
end
if r[1] == '0' then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[3], ARGV[5])
end
return r[1]
