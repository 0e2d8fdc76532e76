#!lua
-- Compare-and-swap delete of one object. See the key layout in storage/valkey.rs.
-- KEYS[1] rv counter, KEYS[2] object, KEYS[3] `all` sorted set, KEYS[4] event stream,
-- KEYS[5..] the object's index term sets.
-- ARGV[1] member "<ns>/<name>", ARGV[2] expected rv, ARGV[3] final object json (no
-- resourceVersion) carried by the DELETED event, ARGV[4] stream max len.
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
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], rv .. '-0',
  't', 'DELETED', 'k', ARGV[1], 'o', ARGV[3])
redis.call('SET', KEYS[1], rv)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
for i = 5, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[1])
end
return {'ok', rv}
