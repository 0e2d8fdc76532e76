#!lua flags=no-writes
-- One page of a list, read atomically with the rv. See the key layout in storage/valkey.rs.
-- KEYS[1] rv counter, KEYS[2] `all` sorted set, KEYS[3..] index term sets (AND).
-- ARGV[1] object key prefix, ARGV[2] limit (0 = no limit),
-- without term sets: ARGV[3], ARGV[4] the ZRANGE BYLEX min and max;
-- with term sets: ARGV[5] namespace member prefix "<ns>/" ("" = every namespace),
--                 ARGV[6] start-after member ("" = from the start).
-- Object keys are derived from members (same hash tag, so the same slot).
-- Returns {rv, next, member1, value1, member2, value2, ...}; next is the last member of the
-- page when more remain, else "". Members are in byte order.
local limit = tonumber(ARGV[2])

-- Byte-wise "<": Lua compares strings with strcoll, which depends on the server's locale.
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local members
if #KEYS == 2 then
  if limit > 0 then
    members = redis.call('ZRANGE', KEYS[2], ARGV[3], ARGV[4], 'BYLEX', 'LIMIT', 0, limit + 1)
  else
    members = redis.call('ZRANGE', KEYS[2], ARGV[3], ARGV[4], 'BYLEX')
  end
else
  local prefix, after = ARGV[5], ARGV[6]
  members = {}
  for _, m in ipairs(redis.call('SINTER', unpack(KEYS, 3))) do
    if (prefix == '' or string.sub(m, 1, #prefix) == prefix) and (after == '' or less(after, m)) then
      members[#members + 1] = m
    end
  end
  table.sort(members, less)
end

local out = {redis.call('GET', KEYS[1]) or '0', ''}
local n = #members
if limit > 0 and n > limit then
  n = limit
  out[2] = members[n]
end
for i = 1, n do
  local v = redis.call('GET', ARGV[1] .. members[i])
  if v then
    out[#out + 1] = members[i]
    out[#out + 1] = v
  end
end
return out
