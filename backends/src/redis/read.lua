-- Reads a key: its entries (at most ARGV[1]), their write sequences, the hash's field count
-- and the server's clock, in one atomic step (a publish between two separate reads would
-- pair one status's value with another's sequence).
-- KEYS[1]: the .NET hash of entries; KEYS[2]: the sequences hash (same slot).
-- Reply: { field count, { field, value, ... }, { sequence or nil per returned field }, TIME }.
-- A hash that someone else filled with more fields than ARGV[1] is scanned whole but only
-- ARGV[1] entries are returned, so the reply (and the client's memory and time) stays
-- bounded: first the unexpired busy ones (which decide whether the key is blocked, so none
-- is left out for an idle or expired one), then the others.
local limit = tonumber(ARGV[1])
local total = redis.call('HLEN', KEYS[1])
local time = redis.call('TIME')
local entries
if total <= limit then
  entries = redis.call('HGETALL', KEYS[1])
else
  -- The server's now in .NET ticks, as a decimal string: ticks (18 digits until the year
  -- 5138) compare as strings of equal length, beyond a double's exact range.
  local now = string.format('%d%07d', tonumber(time[1]) + 62135596800, tonumber(time[2]) * 10)
  local function unexpired_busy(value)
    if string.sub(value, 1, 2) ~= '1;' then
      return false
    end
    local ticks = string.match(value, '^1;(%d+)')
    if not ticks then
      return false
    end
    return #ticks > #now or (#ticks == #now and ticks > now)
  end
  local busy, others = {}, {}
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
    cursor = page[1]
    local items = page[2]
    for i = 1, #items, 2 do
      if unexpired_busy(items[i + 1]) then
        if #busy < 2 * limit then
          busy[#busy + 1] = items[i]
          busy[#busy + 1] = items[i + 1]
        end
      elseif #others < 2 * limit then
        others[#others + 1] = items[i]
        others[#others + 1] = items[i + 1]
      end
    end
  until cursor == '0'
  entries = busy
  for i = 1, #others, 2 do
    if #entries >= 2 * limit then
      break
    end
    entries[#entries + 1] = others[i]
    entries[#entries + 1] = others[i + 1]
  end
end
-- HMGET in slices: `unpack` of a long list overflows Lua's C stack.
local seqs = {}
local fields = {}
for i = 1, #entries, 2 do
  fields[#fields + 1] = entries[i]
  if #fields == 500 or i + 2 > #entries then
    local got = redis.call('HMGET', KEYS[2], unpack(fields))
    for j = 1, #fields do
      seqs[#seqs + 1] = got[j]
    end
    fields = {}
  end
end
return { total, entries, seqs, time }
