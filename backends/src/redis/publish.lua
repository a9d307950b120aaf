local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and held > ARGV[2] then return held end
local t = redis.call('TIME')
local value
if ARGV[3] == '0' then
  value = '0;' .. ARGV[4]
elseif ARGV[5] == '0' then
  value = '1;' .. (t[1] + ARGV[4]) .. string.sub('00000' .. t[2], -6) .. '0' .. ARGV[6]
else
  local s, us = t[1] + ARGV[4], t[2] + ARGV[5]
  if us >= 1000000 then s, us = s + 1, us - 1000000 end
  value = '1;' .. s .. string.sub(us + 1000000, 2) .. '0' .. ARGV[6]
end
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[7], 'RLv2\n' .. ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. t[1] .. '\n' .. t[2] .. '\n' .. value)
return 1
