#!lua
-- Create one object. See the key layout in storage/valkey.rs.
-- KEYS[1] rv counter, KEYS[2] object, KEYS[3] `all` sorted set, KEYS[4] event stream,
-- KEYS[5..] index term sets.
-- ARGV[1] member "<ns>/<name>", ARGV[2] object json (no resourceVersion), ARGV[3] stream max len.
-- Returns {"ok", rv} or {"exists"}.
-- Nothing is written before the last check; the XADD (which can fail) comes first.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'exists'}
end
local rv = string.format('%d', (tonumber(redis.call('GET', KEYS[1])) or 0) + 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], rv .. '-0',
  't', 'ADDED', 'k', ARGV[1], 'o', ARGV[2])
redis.call('SET', KEYS[1], rv)
redis.call('SET', KEYS[2], rv .. '|' .. ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
for i = 5, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[1])
end
return {'ok', rv}
