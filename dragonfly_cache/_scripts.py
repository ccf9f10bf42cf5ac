"""The Lua scripts the shared tier runs, and their SHA1s.

Dragonfly runs Lua 5.4 and, by default, refuses a script that touches a key it did not
declare in KEYS: every key a script reads or writes is passed as KEYS, never built inside
the script. Each script is small and atomic on its node; in a cluster its keys share one
slot (one key per call). The one exception is :data:`PTTLS`, which only reads and takes
its keys as ARGV where the server allows it (see there).
"""

from __future__ import annotations

import hashlib

__all__ = ["DELETE_IF_EQUAL", "INCR", "PTTLS", "PTTLS_SHA"]

#: The remaining lives of the keys (PTTL of each, in order), sent right after an MGET of
#: the same keys: Redis has no multi-key PTTL. The values stay out of the script: passing
#: 100 values through Lua (MGET inside the script, its reply converted to Lua and back)
#: cost the server more than the 100 PTTL calls (Redis 7.0). The keys come as KEYS, or,
#: with no KEYS, as ARGV: with client tracking on, Redis 7.0 has every read inside a
#: script remember all the keys the script declared, so N declared keys cost N² (a batch
#: of 100: ~1 ms of server time instead of ~0.1 ms). The MGET before it tracks the keys
#: anyway. Dragonfly refuses undeclared keys: there they come as KEYS.
PTTLS = """
local call = redis.call
local keys = KEYS
if #keys == 0 then keys = ARGV end
local pttls = {}
for i = 1, #keys do pttls[i] = call('PTTL', keys[i]) end
return pttls
"""
PTTLS_SHA = hashlib.sha1(PTTLS.encode(), usedforsecurity=False).hexdigest()

#: Delete KEYS[1] only if it still holds ARGV[1] (releases fleet locks, takes back a load
#: stored just as its key was invalidated).
DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Add ARGV[1] to the integer in KEYS[1]; a missing key starts from 0 and expires in
#: ARGV[2] ms, an existing one keeps its expiry. Returns ``{1, value, pttl}``, or
#: ``{0, reason}`` when the stored value is not an integer or the sum overflows: then
#: nothing was changed (INCRBY checks before it writes), and no error reply reaches the
#: client, since the server is fine and the caller made the mistake. Any other error (an
#: ACL without INCRBY, say) is the server's answer, passed on as an error reply.
INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(value) == 'table' and value['err'] then
  local err = value['err']
  if string.find(err, 'not an integer', 1, true) or string.find(err, 'overflow', 1, true) then
    return {0, err}
  end
  return redis.error_reply(err)
end
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, value, redis.call('PTTL', KEYS[1])}
"""
