for i = 7, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[1])
end
redis.call('ZREM', KEYS[4], ARGV[1])
local existed = redis.call('EXISTS', KEYS[1])
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'targets', ARGV[4])
if existed == 0 then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'lastSeen', ARGV[3])
  return {2, ARGV[2], ARGV[3]}
end
local st = redis.call('HGET', KEYS[1], 'status')
local at = redis.call('HGET', KEYS[1], 'lastSeen') or ARGV[6]
if st == 'online' or st == 'away' then
  if ARGV[5] == '1' and st ~= ARGV[2] and tonumber(at) < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], 'lastSeen', ARGV[3])
    return {0, ARGV[2], ARGV[3]}
  end
  return {0, st, at}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'lastSeen', ARGV[6])
return {1, ARGV[2], ARGV[6]}
