-- Saves the session of a socket that went away, waiting to be restored, in place of
-- whatever the key held (an earlier session of the same pid, or anything else).
-- KEYS: session:<pid>. ARGV: namespace, disconnected_at (ms), body, time to live (ms).
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'waiting', 'ns', ARGV[1], 'at', ARGV[2], 'body', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
