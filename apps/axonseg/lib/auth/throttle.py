"""Failed-login rate limit, counted in Redis so that every API process sees the same counts."""

from __future__ import annotations

from redis import Redis

from ..errors import Busy

_COUNT_FAILURE = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""


class LoginThrottle:
    """At most ``max_failures`` failed logins per user name, and ``4 * max_failures`` per client address, in
    any ``window_s``; beyond that every login of that name (or from that address) is refused with 429 until
    the window has passed, the right password included, so guessing costs the window each time."""

    def __init__(self, connection: Redis, max_failures: int = 5, window_s: int = 300):
        self.connection = connection
        self.max_failures = max_failures
        self.window_s = window_s
        # INCR, and start the window on the first failure, in one step. A script, because `EXPIRE ... NX`
        # needs Redis 7 and the embedded Redis of `make serve` is 6.2.
        self._count = connection.register_script(_COUNT_FAILURE)

    def _keys(self, name: str, address: str) -> list[tuple[str, int]]:
        return [
            (f"axonseg:login-failures:user:{name.lower()}", self.max_failures),
            (f"axonseg:login-failures:address:{address}", 4 * self.max_failures),
        ]

    def check(self, name: str, address: str) -> None:
        for key, limit in self._keys(name, address):
            count = int(self.connection.get(key) or 0)
            if count >= limit:
                wait = max(int(self.connection.ttl(key)), 1)
                raise Busy(f"too many failed logins; try again in {wait} s")

    def failed(self, name: str, address: str) -> None:
        for key, _ in self._keys(name, address):
            self._count(keys=[key], args=[self.window_s])
