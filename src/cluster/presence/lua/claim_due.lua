local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, u in ipairs(due) do
  redis.call('ZREM', KEYS[1], u)
  local uk = ARGV[1] .. 'user:' .. u
  if redis.call('SCARD', ARGV[1] .. 'socks:' .. u) == 0 then
    local st = redis.call('HGET', uk, 'status')
    if st == 'online' or st == 'away' then
      local last = redis.call('HGET', uk, 'leftAt') or ARGV[2]
      redis.call('HSET', uk, 'status', 'offline', 'lastSeen', last)
      redis.call('HDEL', uk, 'leftAt')
      redis.call('PEXPIRE', uk, ARGV[4])
      table.insert(out, u)
      table.insert(out, last)
      table.insert(out, redis.call('HGET', uk, 'targets') or '[]')
    end
  end
end
return out
