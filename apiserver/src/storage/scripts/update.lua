#!lua
-- Compare-and-swap update of one object. See the key layout in storage/valkey.rs.
-- KEYS[1] rv counter, KEYS[2] object, KEYS[3] event stream,
-- KEYS[4 .. 3+n] old index term sets, KEYS[4+n ..] new index term sets.
-- ARGV[1] member "<ns>/<name>", ARGV[2] expected rv, ARGV[3] object json (no resourceVersion),
-- ARGV[4] stream max len, ARGV[5] n (number of old term sets).
-- Returns {"ok", rv}, {"notfound"}, {"conflict", current rv} or {"corrupt"}.
-- Nothing is written before the last check; the XADD (which can fail) comes first.
local cur = redis.call('GET', KEYS[2])
if not cur then
  return {'notfound'}
end
local sep = string.find(cur, '|', 1, true)
if not sep then
  return {'corrupt'}
end
local currv = string.sub(cur, 1, sep - 1)
if currv ~= ARGV[2] then
  return {'conflict', currv}
end
local rv = string.format('%d', (tonumber(redis.call('GET', KEYS[1])) or 0) + 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], rv .. '-0',
  't', 'MODIFIED', 'k', ARGV[1], 'o', ARGV[3])
redis.call('SET', KEYS[1], rv)
redis.call('SET', KEYS[2], rv .. '|' .. ARGV[3])
local n = tonumber(ARGV[5])
for i = 4, 3 + n do
  redis.call('SREM', KEYS[i], ARGV[1])
end
for i = 4 + n, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[1])
end
return {'ok', rv}
