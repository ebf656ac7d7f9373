redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'leftAt', ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
end
return 1
