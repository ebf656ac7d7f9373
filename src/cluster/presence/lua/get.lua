local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'status', 'lastSeen', 'location')
  out[3 * i - 2] = v[1] or ''
  out[3 * i - 1] = v[2] or ''
  out[3 * i] = v[3] or ''
end
return out
