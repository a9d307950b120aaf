-- Reads a key: its entries (at most ARGV[1]), their write sequences, the hash's field count
-- and the server's clock, in one atomic step (a publish between two separate reads would
-- pair one status's value with another's sequence).
-- KEYS[1]: the .NET hash of entries; KEYS[2]: the sequences hash (same slot).
-- Reply: { field count, { field, value, ... }, { sequence or nil per returned field }, TIME }.
-- A hash that someone else filled with more fields than ARGV[1] is read by HSCAN up to the
-- limit, so the reply (and the client's memory and time) stays bounded.
local limit = tonumber(ARGV[1])
local total = redis.call('HLEN', KEYS[1])
local entries
if total <= limit then
  entries = redis.call('HGETALL', KEYS[1])
else
  entries = {}
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
    cursor = page[1]
    local items = page[2]
    for i = 1, #items, 2 do
      if #entries >= 2 * limit then
        break
      end
      entries[#entries + 1] = items[i]
      entries[#entries + 1] = items[i + 1]
    end
  until cursor == '0' or #entries >= 2 * limit
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
return { total, entries, seqs, redis.call('TIME') }
