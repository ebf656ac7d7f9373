local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('SCARD', k) > 0 and 1 or 0
end
return out
