"""DNS cookies: server cookies made and checked as RFC 9018 says (sans-IO).

Owns the server side of RFC 7873 cookies: the 16-byte server cookie
(Version 1 | Reserved 0 | Timestamp | SipHash-2-4 over Client Cookie,
Version, Reserved, Timestamp and the client's address, RFC 9018 4), the
secrets that sign (the first) and those still accepted (rollover across
name servers, RFC 9018 5), and the verdict on a query's COOKIE option. It
knows nothing of messages: `dns.engine` finds the option (`dns.options.scan`)
and splices the reply cookie into its answer. Time comes from the `clock`
it is given.

Secrets are never logged or shown (`repr` hides them).
"""
from __future__ import annotations

import hmac
import os
import socket
import time
from typing import Callable

from dns.siphash import siphash24

OPTION_COOKIE = 10   # RFC 7873 8 (IANA EDNS option code)
BADCOOKIE = 23       # RFC 7873 8: extended RCODE

# Verdicts on a query's cookie
CLIENT_ONLY, VALID, INVALID = "client-only", "valid", "invalid"

# RFC 9018 4.3: a cookie is accepted up to an hour after its timestamp and up to
# five minutes before it (clock skew between name servers sharing a secret);
# one older than half an hour is answered with a fresh one.
MAX_AGE, MAX_FUTURE, REFRESH_AGE = 3600, 300, 1800

_HEADER = b"\x01\x00\x00\x00"  # Version 1, Reserved 0 (RFC 9018 4.1, 4.2)

# Made once per process, at import: before `gslb dns --workers N` forks, so every
# worker of one server signs alike; kept across SIGHUP (the engine is rebuilt, this
# module is not). Name servers sharing one name need a configured shared secret.
_PROCESS_SECRET = os.urandom(16)


def well_formed(length: int) -> bool:
    """RFC 7873 5.2.2: a client cookie (8) alone or with a server cookie of 8-32 octets."""
    return length == 8 or 16 <= length <= 40


def _packed(source: str) -> bytes:
    """The client's address as hashed: 4 octets for IPv4, 16 for IPv6 (RFC 9018 4.4)."""
    host = source.partition("%")[0]  # a link-local peer: "fe80::1%eth0"
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return b""  # no usable peer address (a TCP peer that went away): hash none


class Cookies:
    """The server cookie policy of one configuration.

    `secrets[0]` signs every new cookie; every secret in `secrets` is accepted
    when checking one. `require`: a UDP query with a client cookie but no valid
    server cookie gets BADCOOKIE instead of an answer (RFC 7873 5.2.3/5.2.4).
    """

    __slots__ = ("secrets", "require", "clock")

    def __init__(self, secrets: tuple[bytes, ...] = (), *, require: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        secrets = tuple(secrets) or (_PROCESS_SECRET,)
        if any(len(s) != 16 for s in secrets):
            raise ValueError("a cookie secret is 16 bytes (SipHash-2-4 key)")
        self.secrets = secrets
        self.require = require
        self.clock = clock

    def __repr__(self) -> str:
        return f"Cookies(secrets=<{len(self.secrets)} hidden>, require={self.require})"

    def server_cookie(self, client: bytes, ip: bytes, now: int, secret: bytes | None = None) -> bytes:
        """A new 16-byte server cookie for `client` (8 octets) at `ip` (packed), time `now`."""
        header = _HEADER + (now & 0xFFFFFFFF).to_bytes(4, "big")
        mac = siphash24(secret or self.secrets[0], client + header + ip)
        return header + mac.to_bytes(8, "little")

    def signed_by(self, cookie: bytes, ip: bytes) -> int | None:
        """Index of the secret whose hash the cookie (client + 16-byte server) carries, or None.

        RFC 9018 4.4: the hash covers Version, Reserved and Timestamp as received.
        """
        if len(cookie) != 24 or cookie[8] != 1:
            return None
        want = cookie[16:24]
        msg = cookie[:16] + ip
        for i, secret in enumerate(self.secrets):
            if hmac.compare_digest(siphash24(secret, msg).to_bytes(8, "little"), want):
                return i
        return None

    def verdict(self, cookie: bytes, source: str, now: int | None = None) -> tuple[str, bytes]:
        """(verdict, the 24-byte COOKIE option data for the reply) for a well-formed cookie.

        RFC 7873 5.2.3-5.2.5 with RFC 9018 4.3: a fresh server cookie unless the
        query's is valid, signed by the current secret and at most half an hour old.
        """
        now = int(self.clock() if now is None else now) & 0xFFFFFFFF
        client = cookie[:8]
        ip = _packed(source)
        if len(cookie) == 8:
            return CLIENT_ONLY, client + self.server_cookie(client, ip, now)
        which = self.signed_by(cookie, ip)
        if which is not None:
            # Serial-number arithmetic (RFC 1982): the timestamp wraps in 2106.
            age = (now - int.from_bytes(cookie[12:16], "big")) & 0xFFFFFFFF
            if age >= 1 << 31:
                age -= 1 << 32
            if -MAX_FUTURE <= age <= MAX_AGE:
                if which == 0 and age <= REFRESH_AGE:
                    return VALID, cookie[:24]
                return VALID, client + self.server_cookie(client, ip, now)
        return INVALID, client + self.server_cookie(client, ip, now)
