"""EDNS options past ECS: COOKIE (RFC 7873), NSID (RFC 5001), edns-tcp-keepalive (RFC 7828).

Owns finding the OPT record and these options in a query's bytes (`scan`,
which never raises), and the options a reply adds for them (`ReplyOptions`).
`dns.wire` keeps the strict parser and its verdicts; `dns.cookies` the
server cookie itself. No sockets, no clock.

The reply cache and cookies (`dns.engine`): a reply to a query with a COOKIE
option is the reply to the same query with a fixed placeholder cookie
(`QUERY_PLACEHOLDER`, shared by every client, so the cached answer is reused),
which carries a fixed 28-byte placeholder option (`REPLY_PLACEHOLDER`); the
client's own 24-byte cookie is then written over the placeholder's data. The
placeholder is the last option but for the ECS echo, which is at most 24
bytes: `bytes.rfind` of the 28-byte placeholder finds it and nothing else.
"""
from __future__ import annotations

import struct
from typing import Any

from dns.cookies import OPTION_COOKIE, Cookies, well_formed

OPTION_NSID = 3        # RFC 5001 2.3
OPTION_KEEPALIVE = 11  # RFC 7828 3.1
OPTION_ECS = 8
_OPT = 41

QUERY_PLACEHOLDER = struct.pack("!HH", OPTION_COOKIE, 8) + bytes(8)
REPLY_PLACEHOLDER = struct.pack("!HH", OPTION_COOKIE, 24) + bytes(24)


class OptInfo:
    """Where a query's OPT record and its options are (offsets into the query bytes)."""

    __slots__ = ("rdlen_at", "rdata", "end", "udp_payload", "ttl", "cookie", "cookies",
                 "nsid", "keepalive")

    def __init__(self) -> None:
        self.cookie: tuple[int, int] | None = None   # first COOKIE option: (start, end), header included
        self.cookies = 0                             # how many COOKIE options
        self.nsid: int | None = None                 # NSID option's data length
        self.keepalive: int | None = None            # edns-tcp-keepalive option's data length

    @property
    def version(self) -> int:
        return (self.ttl >> 16) & 0xFF

    @property
    def do(self) -> bool:
        return bool(self.ttl & 0x8000)

    def cookie_data(self, data: bytes) -> bytes:
        start, end = self.cookie  # type: ignore[misc]
        return data[start + 4:end]


def _skip_name(data: bytes, pos: int, end: int) -> int:
    while True:
        if pos >= end:
            raise IndexError
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0:
            if n & 0xC0 != 0xC0 or pos + 2 > end:
                raise IndexError
            return pos + 2
        pos += n + 1


def scan(data: bytes) -> OptInfo | None:
    """The query's OPT record and options, or None when it has none or is too broken to tell.

    Walks every question and record by the header's counts (so it also finds
    the OPT of a query the strict parser refuses for QDCOUNT or opcode, whose
    error answer still carries an OPT, RFC 6891 7). One OPT exactly, options
    within its RDATA; anything else: None (the parser gives the FORMERR).
    """
    end = len(data)
    if end < 12 or not (data[10] or data[11]):
        return None
    qd = (data[4] << 8) | data[5]
    rrs = ((data[6] << 8) | data[7]) + ((data[8] << 8) | data[9]) + ((data[10] << 8) | data[11])
    pos = 12
    info = None
    try:
        for _ in range(qd):
            pos = _skip_name(data, pos, end) + 4
        for _ in range(rrs):
            pos = _skip_name(data, pos, end)
            if pos + 10 > end:
                return None
            rtype = (data[pos] << 8) | data[pos + 1]
            rdlen = (data[pos + 8] << 8) | data[pos + 9]
            if rtype == _OPT:
                if info is not None:
                    return None
                info = OptInfo()
                info.udp_payload = (data[pos + 2] << 8) | data[pos + 3]
                info.ttl = int.from_bytes(data[pos + 4:pos + 8], "big")
                info.rdlen_at, info.rdata, info.end = pos + 8, pos + 10, pos + 10 + rdlen
            pos += 10 + rdlen
            if pos > end:
                return None
    except IndexError:
        return None
    if info is None:
        return None
    pos, stop = info.rdata, info.end
    while pos < stop:
        if pos + 4 > stop:
            return None
        code = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        nxt = pos + 4 + length
        if nxt > stop:
            return None
        if code == OPTION_COOKIE:
            info.cookies += 1
            if info.cookie is None:
                info.cookie = (pos, nxt)
        elif code == OPTION_NSID:
            info.nsid = length
        elif code == OPTION_KEEPALIVE:
            info.keepalive = length
        pos = nxt
    return info


def cookie_problem(info: OptInfo) -> str | None:
    """Why the query's COOKIE option gets FORMERR (RFC 7873 5.2.2), or None when it is fine."""
    if info.cookie is None:
        return None
    # RFC 7873 5.2: only the first COOKIE option (nearest the header) counts; later ones
    # are ignored (and stay in the query, so they are not answered).
    start, end = info.cookie
    if not well_formed(end - start - 4):
        return f"COOKIE option of {end - start - 4} octets (8, or 16 to 40)"
    return None


def with_placeholder(data: bytes, info: OptInfo) -> bytes:
    """The query with its COOKIE option replaced by `QUERY_PLACEHOLDER` (OPT RDLENGTH fixed)."""
    start, end = info.cookie  # type: ignore[misc]
    rdlen = info.end - info.rdata - (end - start) + len(QUERY_PLACEHOLDER)
    at = info.rdlen_at
    return b"".join((data[:at], rdlen.to_bytes(2, "big"), data[at + 2:start], QUERY_PLACEHOLDER,
                     data[end:]))


def splice_cookie(reply: bytes, cookie: bytes) -> bytes:
    """Write the client's 24-byte reply cookie over the reply's placeholder (none: unchanged)."""
    at = reply.rfind(REPLY_PLACEHOLDER)
    if at < 0:
        return reply
    return b"".join((reply[:at + 4], cookie, reply[at + 28:]))


class ReplyOptions:
    """What this server adds to the OPT of its replies, from the configuration.

    `nsid`: the NSID payload, sent when a query carries an empty NSID option
    (RFC 5001 2.3); None: never. `keepalive`: our TCP idle timeout in units of
    100 ms, sent over TCP to a query that carries the option (RFC 7828 3.3.2);
    never over UDP, where the query's option is ignored (RFC 7828 3.3.1).
    `cookies`: the server cookie policy, None when cookies are off.
    """

    __slots__ = ("nsid", "keepalive", "cookies", "_nsid_option", "_keepalive_option")

    def __init__(self, nsid: bytes | None = None, keepalive: int = 100,
                 cookies: Cookies | None = None) -> None:
        self.nsid, self.keepalive, self.cookies = nsid, keepalive, cookies
        self._nsid_option = b"" if nsid is None else struct.pack("!HH", OPTION_NSID, len(nsid)) + nsid
        self.set_keepalive(keepalive / 10)

    def set_keepalive(self, seconds: float) -> None:
        """The idle timeout the server really applies (it keeps its own across reloads)."""
        self.keepalive = min(int(round(seconds * 10)), 0xFFFF)
        self._keepalive_option = struct.pack("!HHH", OPTION_KEEPALIVE, 2, self.keepalive)

    @classmethod
    def from_config(cls, cfg: Any, clock: Any = None) -> "ReplyOptions":
        server = cfg.server
        settings = getattr(cfg, "cookies", None)
        cookies = None
        if settings is None or settings.enabled:
            secrets = () if settings is None else tuple(
                s for s in (settings.secret, *settings.secrets_accepted) if s is not None)
            kw = {} if clock is None else {"clock": clock}
            cookies = Cookies(secrets, require=bool(settings and settings.require), **kw)
        timeout = getattr(server, "tcp_idle_timeout", 10.0)
        return cls(getattr(server, "nsid", None), int(round(timeout * 10)), cookies)

    def for_reply(self, data: bytes, tcp: bool, *, strict: bool = True) -> bytes:
        """The options (bytes) a reply to `data` adds before its ECS echo.

        `strict`: a TCP query's keepalive option with data raises ValueError
        (RFC 7828 3.2.1: a query's option is empty), for a FORMERR.
        """
        if self._nsid_option == b"" and not tcp and self.cookies is None:
            return b""
        info = scan(data)
        if info is None:
            return b""
        out = b""
        if info.nsid == 0 and self._nsid_option:
            out += self._nsid_option
        if tcp and info.keepalive is not None:
            if info.keepalive:
                if strict:
                    raise ValueError(f"edns-tcp-keepalive option of {info.keepalive} octets in a query "
                                     "(RFC 7828 3.2.1: empty)")
            else:
                out += self._keepalive_option
        if self.cookies is not None and info.cookie is not None and cookie_problem(info) is None:
            out += REPLY_PLACEHOLDER
        return out
