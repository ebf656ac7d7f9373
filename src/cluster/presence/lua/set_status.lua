if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'lastSeen', ARGV[2])
return 1
