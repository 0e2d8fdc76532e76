#!lua flags=no-writes
-- The whole state of one resource, read atomically with its rv (a watch cache load). See the
-- key layout in storage/valkey.rs.
-- KEYS[1] rv counter, KEYS[2] `all` sorted set. ARGV[1] object key prefix.
-- Object keys are derived from members (same hash tag, so the same slot).
-- Returns {rv, member1, value1, member2, value2, ...}, members in byte order.
local out = {redis.call('GET', KEYS[1]) or '0'}
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], '-', '+', 'BYLEX')) do
  local v = redis.call('GET', ARGV[1] .. m)
  if v then
    out[#out + 1] = m
    out[#out + 1] = v
  end
end
return out
