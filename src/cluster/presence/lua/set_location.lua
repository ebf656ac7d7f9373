if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'location', ARGV[1]) end
return 0
