-- Reads a key: its entries (at most ARGV[1]; ARGV[2] is the longest value the client
-- reads), their write sequences, the hash's field count and the server's clock, in one
-- atomic step (a publish between two separate reads would
-- pair one status's value with another's sequence).
-- KEYS[1]: the .NET hash of entries; KEYS[2]: the sequences hash (same slot).
-- Reply: { field count, { field, value, ... }, { sequence or nil per returned field }, TIME }.
-- A hash that someone else filled with more fields than ARGV[1] is scanned whole but only
-- ARGV[1] entries are returned, so the reply (and the client's memory and time) stays
-- bounded: first the unexpired busy ones (which decide whether the key is blocked, so none
-- is left out for an idle or expired one), then the others.
local limit = tonumber(ARGV[1])
-- The client's MAX_VALUE_LEN: a longer value is malformed to it.
local max_value_len = tonumber(ARGV[2])
local total = redis.call('HLEN', KEYS[1])
local time = redis.call('TIME')
local entries
if total <= limit then
  entries = redis.call('HGETALL', KEYS[1])
else
  -- The server's now in .NET ticks, as a decimal string: decimal ticks compare as strings
  -- once leading zeros are gone (a longer one is later), beyond a double's exact range.
  -- The rule is the client's parser's (wire.rs, parse_value): a busy value is `1;` then
  -- digits only, then the end or `;`; any validity past now counts, however far.
  local now = string.format('%d%07d', tonumber(time[1]) + 62135596800, tonumber(time[2]) * 10)
  local function unexpired_busy(value)
    local ticks = string.match(value, '^1;(%d+)$') or string.match(value, '^1;(%d+);')
    if not ticks then
      return false
    end
    ticks = string.gsub(ticks, '^0+', '')
    return #ticks > #now or (#ticks == #now and ticks > now)
  end
  -- Unexpired busy entries under ASCII names first: a name with other bytes may not be
  -- UTF-8, which the client ignores, so such entries cannot crowd out ones it reads.
  local busy, busy_other, others = {}, {}, {}
  local function keep(list, field, value)
    if #list < 2 * limit then
      list[#list + 1] = field
      list[#list + 1] = value
    end
  end
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
    cursor = page[1]
    local items = page[2]
    for i = 1, #items, 2 do
      local field, value = items[i], items[i + 1]
      if #value > max_value_len or not unexpired_busy(value) then
        keep(others, field, value)
      elseif string.find(field, '[\128-\255]') then
        keep(busy_other, field, value)
      else
        keep(busy, field, value)
      end
    end
  until cursor == '0'
  entries = busy
  for _, list in ipairs({ busy_other, others }) do
    for i = 1, #list, 2 do
      if #entries >= 2 * limit then
        break
      end
      entries[#entries + 1] = list[i]
      entries[#entries + 1] = list[i + 1]
    end
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
