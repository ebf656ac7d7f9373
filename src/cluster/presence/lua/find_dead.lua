local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id = all[i]
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'inst:' .. id) == 0 then
    if redis.call('SET', ARGV[1] .. 'inst:' .. id .. ':reaper', ARGV[2], 'NX', 'PX', ARGV[3]) then
      table.insert(out, id)
      table.insert(out, all[i + 1])
    end
  end
end
return out
