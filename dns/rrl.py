"""DNS response rate limiting (RRL), as BIND, Knot and NSD do it (sans-IO).

Owns the decision on one UDP reply: send it, drop it, or "slip" it (send a
tiny truncated reply instead), from a token bucket per (response class,
source netblock, name); the table of buckets (bounded, least recently used
out first); the slip encoding; the cookie and CIDR exemptions; the counters
and the log lines when a bucket starts and stops being limited. It opens no
socket and reads no clock: the caller gives the time (`now`, seconds, any
monotonic origin). It must not touch the engine or its caches: it sees a
reply only after the engine has made it.

Why: an authoritative server answers spoofed queries to whatever address
they claim, so it can be used to flood that address (a reflection attack).
Identical answers to one netblock are capped at `responses_per_second`;
beyond that most are dropped, and every `slip`-th one goes out truncated
(TC=1, sections empty), so a real resolver behind that netblock retries over
TCP, which cannot be spoofed, and still gets its answer (Vixie and Schryver,
"DNS Response Rate Limiting", 2012; BIND 9 `rate-limit`).

Semantics (BIND 9's `rrl.c`, which Knot and NSD follow closely):

- Classes. `answer`: NOERROR with records in the answer section, keyed by
  qname and qtype; `nodata`: NOERROR, no answer, SOA in the authority
  section, keyed by qname and qtype; `referral`: NOERROR, no answer, not
  authoritative, NS in the authority section, keyed by qname; `nxdomain`:
  keyed by the zone (every non-existent name of the zone is one bucket, so
  random-subdomain floods share it); `error` (REFUSED, FORMERR, SERVFAIL,
  NOTIMP, BADVERS...): keyed by the zone as well. `answer`, `nodata` and
  `referral` use `responses_per_second`; `nxdomain` and `error` theirs.
- A bucket holds at most `rate` tokens (a burst of one second) and earns
  `rate` a second; each reply costs one; a reply is limited when the balance
  falls below zero. The balance can sink to `-window * rate`: a source that
  keeps sending faster than the rate stays limited for as long as it does,
  and a bucket untouched for longer than `window` starts full again.
- Slip: of a bucket's limited replies, the first of every `slip` slips and
  the others are dropped (BIND's counter: slip 2 sends 1st, 3rd, 5th...;
  slip 1 every one; slip 0 none). The counter restarts when the bucket is
  full again.
- Exempt: a query with a valid server cookie (RFC 7873 5.2.5, RFC 9018): its
  source address is proven, so it cannot be a reflection; a source inside
  `exempt` CIDRs. Both are checked only for a reply that would be limited
  (nothing costs on the common path); an exempt reply still costs its
  bucket a token. BIND's refinement: a limited query that carried a client
  cookie but no valid server cookie slips as BADCOOKIE (extended RCODE 23)
  with the fresh server cookie the engine already put in the reply, instead
  of TC=1: the client repeats it with that cookie and is then exempt, over
  UDP, without a TCP round trip.

Several workers (`gslb dns --workers N`, SO_REUSEPORT) each keep their own
table: the kernel spreads one source's queries (random source ports, as
resolvers send them) over all N, so each worker limits at `rate / N` and the
server as a whole at `rate`. A flood from one source port lands on one worker
and gets at most `rate / N`: never more than the configured rate.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable, Iterable

from dns import options as eo
from dns.cookies import BADCOOKIE, VALID

ANSWER, REFERRAL, NODATA, NXDOMAIN, ERROR = "answer", "referral", "nodata", "nxdomain", "error"
CLASSES = (ANSWER, REFERRAL, NODATA, NXDOMAIN, ERROR)

# Verdicts of `decide`.
SEND, DROP, SLIP = "send", "drop", "slip"

_TC = 0x02          # in byte 2 of the header
_AA = 0x04          # in byte 2
_OPT = 41
_V4_MAPPED = bytes(10) + b"\xff\xff"
# How many limited buckets a report (`limited`) lists at most.
REPORT_MAX = 100

# Netblocks of recent sources (a dict lookup is cheaper than parsing the address again).
_BLOCK_CACHE = 4096
# Classes of recent replies.
_CLASS_CACHE = 4096

# Bucket fields (a list per bucket: cheaper than an object on the hot path).
_BAL, _LAST, _SLIP, _SINCE, _LIMITED, _DROPPED, _SLIPPED = range(7)


class ResponseRateLimiter:
    """The buckets of one server process, and what to do with each UDP reply.

    `rates` per class in replies per second *for this process* (0: not
    limited); `window` seconds; `slip` 0-10; `ipv4_prefix`/`ipv6_prefix` the
    netblock lengths; `table_size` the most buckets kept; `exempt` CIDRs;
    `zone` the zone's name in wire form (the key of `nxdomain`/`error`);
    `cookies` the engine's `dns.cookies.Cookies` (None: cookies off, nothing
    exempt by cookie); `log(event, **fields)` gets the start/stop lines.
    """

    def __init__(self, rates: dict[str, float], *, window: float = 15.0, slip: int = 2,
                 ipv4_prefix: int = 24, ipv6_prefix: int = 56, table_size: int = 20_000,
                 exempt: Iterable[str] = (), zone: bytes = b"", cookies: Any = None,
                 log: Callable[..., None] | None = None) -> None:
        unknown = set(rates) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown response classes {sorted(unknown)}")
        self.rates = {c: float(rates.get(c, 0.0)) for c in CLASSES}
        self.window = float(window)
        self.slip = int(slip)
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self._mask4 = (0xFFFFFFFF << (32 - ipv4_prefix)) & 0xFFFFFFFF
        self._mask6 = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
        self.table_size = table_size
        self.exempt = tuple(ipaddress.ip_network(c, strict=False) for c in exempt)
        self.zone = zone.lower()
        self.cookies = cookies
        if log is None:
            from dns.log import log
        self._log = log
        # key (class, netblock, name) -> bucket; dict order is recency (least recent first).
        self._table: dict[tuple, list] = {}
        self._limited: dict[tuple, list] = {}   # the buckets now limited
        self._blocks: dict[str, tuple[int, int]] = {}
        self._classes: dict[bytes, tuple[str, bytes]] = {}
        self._slips: dict[bytes, bytes] = {}
        self._query, self._source, self._cookie = b"", "", None
        self._cookie_exempt = self._check_cookie
        self.answered = 0   # replies sent in full (an attribute: the hot path counts it)
        self.counters = {"limited": 0, "dropped": 0, "slipped": 0, "exempted": 0,
                         "evicted": 0, "limit_started": 0, "limit_stopped": 0}

    @classmethod
    def from_settings(cls, rrl: Any, *, workers: int = 1, zone: bytes = b"", cookies: Any = None,
                      log: Callable[..., None] | None = None) -> "ResponseRateLimiter":
        """From `[rrl]` (`dns.config.RrlSettings`), each rate shared out over `workers` processes."""
        per = max(1, workers)
        resp = rrl.responses_per_second / per
        if resp < 1:
            raise ValueError(f"[rrl] responses_per_second = {rrl.responses_per_second} is below the "
                             f"number of workers ({workers}): each worker limits at rate / workers, "
                             "which must be at least 1")
        errors = rrl.responses_per_second if rrl.errors_per_second is None else rrl.errors_per_second
        nxd = rrl.responses_per_second if rrl.nxdomains_per_second is None else rrl.nxdomains_per_second
        rates = {ANSWER: resp, REFERRAL: resp, NODATA: resp,
                 NXDOMAIN: max(1.0, nxd / per) if nxd else 0.0,
                 ERROR: max(1.0, errors / per) if errors else 0.0}
        return cls(rates, window=rrl.window, slip=rrl.slip, ipv4_prefix=rrl.ipv4_prefix_length,
                   ipv6_prefix=rrl.ipv6_prefix_length, table_size=rrl.table_size, exempt=rrl.exempt,
                   zone=zone, cookies=cookies, log=log)

    # -- the hook: one UDP reply --------------------------------------------------------

    def filter(self, query: bytes, reply: bytes, source: str, now: float) -> bytes | None:
        """What to send for `reply` to `query` from `source`: it, a slip, or None (drop)."""
        # Replies repeat (the engine's cache): their class and key are kept, by the bytes
        # after the ID, in a bounded dict (cleared when full).
        tail = reply[2:]
        found = self._classes.get(tail)
        if found is None:
            if len(self._classes) >= _CLASS_CACHE:
                self._classes.clear()
            found = self._classes[tail] = classify(reply, self.zone)
        rclass, name = found
        # The cookie is looked at only if the reply would be limited (`decide` asks
        # `_cookie_exempt`, bound once, which reads these two and leaves its verdict).
        self._query, self._source, self._cookie = query, source, None
        verdict = self.decide(source, rclass, name, now, self._cookie_exempt)
        if verdict is SEND:
            return reply
        if verdict is DROP:
            return None
        if self._cookie is not None:
            # A client cookie without a valid server cookie: BADCOOKIE carries the fresh one.
            return slip_reply(reply, badcookie=True)
        slipped = self._slips.get(tail)   # the same reply slips the same way: kept, bounded
        if slipped is None:
            if len(self._slips) >= _CLASS_CACHE:
                self._slips.clear()
            slipped = self._slips[tail] = slip_reply(reply)[2:]
        return reply[:2] + slipped

    def _check_cookie(self) -> bool:
        """RFC 7873 5.2.5: a valid server cookie proves the address: no reflection, exempt."""
        self._cookie = self._cookie_state(self._query, self._source)
        return self._cookie == VALID

    def _cookie_state(self, query: bytes, source: str) -> str | None:
        """The verdict on the query's COOKIE option (`dns.cookies`), None without one."""
        if self.cookies is None or query.find(b"\x00\x0a", 12) < 0:
            return None
        info = eo.scan(query)
        if info is None or info.cookie is None or eo.cookie_problem(info) is not None:
            return None
        return self.cookies.verdict(info.cookie_data(query), source)[0]

    # -- the core ---------------------------------------------------------------------

    def netblock(self, source: str) -> tuple[int, int]:
        """(4 or 6, the masked address): the source's /ipv4_prefix or /ipv6_prefix."""
        block = self._blocks.get(source)
        if block is None:
            if len(self._blocks) >= _BLOCK_CACHE:
                self._blocks.clear()   # bounded: a spoofed flood only empties it
            block = self._blocks[source] = self._netblock(source)
        return block

    def _netblock(self, source: str) -> tuple[int, int]:
        try:
            if ":" in source:
                packed = socket.inet_pton(socket.AF_INET6, source.partition("%")[0])
                if packed[:12] == _V4_MAPPED:  # ::ffff:a.b.c.d is an IPv4 client
                    return 4, int.from_bytes(packed[12:], "big") & self._mask4
                return 6, int.from_bytes(packed, "big") & self._mask6
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, source), "big") & self._mask4
        except OSError:
            return 0, 0

    def decide(self, source: str, rclass: str, name: bytes, now: float,
               exempt: bool | Callable[[], bool] = False) -> str:
        """SEND, DROP or SLIP for one reply of `rclass` about `name` to `source` at `now`.

        `exempt`: True, or a callable asked only when the reply would be limited
        (a cookie check costs a hash: only limited replies pay it).
        """
        rate = self.rates[rclass]
        if not rate:
            self.answered += 1
            return SEND
        block = self._blocks.get(source)
        key = (rclass, block if block is not None else self.netblock(source), name)
        table = self._table
        b = table.pop(key, None)
        # The hot path: literal indices (see _BAL... above), no attribute lookups it can avoid.
        if b is None:
            if len(table) >= self.table_size:
                self._evict()
            b = [rate - 1, now, 0, None, 0, 0, 0]
            table[key] = b   # the most recently used now
            if b[0] >= 0:
                self.answered += 1
                return SEND
        else:
            table[key] = b
            age = now - b[1]
            if age > 0:
                b[1] = now
                if age > self.window:
                    b[0], b[2] = rate, 0
                else:
                    bal = b[0] + age * rate
                    if bal >= rate:
                        bal, b[2] = rate, 0
                    b[0] = bal
            b[0] -= 1
            if b[0] >= 0:
                if b[3] is not None:
                    self._stop(key, b, now, "rate back under the limit")
                self.answered += 1
                return SEND
        floor = -self.window * rate
        if b[_BAL] < floor:
            b[_BAL] = floor
        if exempt is True or (exempt and exempt()) or (self.exempt and self._exempt_source(source)):
            self.counters["exempted"] += 1
            self.answered += 1
            return SEND
        self.counters["limited"] += 1
        b[_LIMITED] += 1
        if b[_SINCE] is None:
            b[_SINCE] = now
            self._limited[key] = b
            self.counters["limit_started"] += 1
            self._log("rrl_limit_start", level="warning", **self.describe(key, rate))
        slip = self.slip
        if slip:
            n = b[_SLIP]
            b[_SLIP] = n + 1
            if n == 0:
                if n + 1 >= slip:
                    b[_SLIP] = 0
                self.counters["slipped"] += 1
                b[_SLIPPED] += 1
                return SLIP
            if n + 1 >= slip:
                b[_SLIP] = 0
        self.counters["dropped"] += 1
        b[_DROPPED] += 1
        return DROP

    def _exempt_source(self, source: str) -> bool:
        try:
            addr = ipaddress.ip_address(source.partition("%")[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.exempt if net.version == addr.version)

    def _evict(self) -> None:
        """Room for one bucket: the least recently used one goes (BIND reuses its oldest)."""
        key = next(iter(self._table))
        b = self._table.pop(key)
        self.counters["evicted"] += 1
        if b[_SINCE] is not None:
            self._stop(key, b, b[_LAST], "evicted from a full table")

    def _stop(self, key: tuple, b: list, now: float, reason: str) -> None:
        self._limited.pop(key, None)
        self.counters["limit_stopped"] += 1
        self._log("rrl_limit_stop", **self.describe(key, self.rates[key[0]]),
                  seconds=round(now - b[_SINCE], 3), limited=b[_LIMITED], dropped=b[_DROPPED],
                  slipped=b[_SLIPPED], reason=reason)
        b[_SINCE] = None
        b[_LIMITED] = b[_DROPPED] = b[_SLIPPED] = 0

    def sweep(self, now: float) -> None:
        """Say which limited buckets are no longer (their next reply would go out).

        Called about once a second by the server, so the stop line comes even
        when the flood ends and nothing else arrives from that netblock.
        """
        for key, b in list(self._limited.items()):
            rate = self.rates[key[0]]
            age = max(0.0, now - b[_LAST])
            if age > self.window or b[_BAL] + age * rate >= 1:
                self._stop(key, b, now, "rate back under the limit")

    # -- what it says about itself ---------------------------------------------------------

    def describe(self, key: tuple, rate: float) -> dict[str, Any]:
        """A bucket's key as log fields: netblock, class, name (and qtype), rate per second."""
        from dns.wire import TYPE_NAMES, name_to_text
        rclass, (family, block), name = key
        if family == 4:
            net = f"{ipaddress.IPv4Address(block)}/{self.ipv4_prefix}"
        elif family == 6:
            net = f"{ipaddress.IPv6Address(block)}/{self.ipv6_prefix}"
        else:
            net = "unknown"
        fields: dict[str, Any] = {"netblock": net, "class": rclass}
        if rclass in (ANSWER, NODATA) and len(name) >= 3:
            qtype = int.from_bytes(name[-2:], "big")
            fields["qname"] = _text(name[:-2], name_to_text)
            fields["qtype"] = TYPE_NAMES.get(qtype, str(qtype))
        else:
            fields["qname"] = _text(name, name_to_text)
        fields["rate"] = round(rate, 3)
        return fields

    def limited(self, now: float, source: str | None = None) -> list[dict[str, Any]]:
        """The buckets now limited (of `source`'s netblock only, when given), at most REPORT_MAX."""
        self.sweep(now)
        block = None if source is None else self.netblock(source)
        out = []
        for key, b in self._limited.items():
            if block is not None and key[1] != block:
                continue
            row = self.describe(key, self.rates[key[0]])
            row.update(seconds=round(now - b[_SINCE], 3), limited=b[_LIMITED],
                       dropped=b[_DROPPED], slipped=b[_SLIPPED])
            out.append(row)
            if len(out) >= REPORT_MAX:
                break
        return out

    def stats(self) -> dict[str, int | float]:
        """Counters (monotonic) and gauges (`table_size`, `limited_buckets`), flat."""
        out: dict[str, int | float] = {"answered": self.answered, **self.counters}
        out["table_size"] = len(self._table)
        out["limited_buckets"] = len(self._limited)
        return out


def _text(wire: bytes, name_to_text: Callable[[bytes], str]) -> str:
    try:
        return name_to_text(wire) if wire else "."
    except Exception:  # noqa: BLE001 - a key from a broken question: show it raw
        return wire.hex()


def classify(reply: bytes, zone: bytes = b"") -> tuple[str, bytes]:
    """(class, bucket name) of one of our replies, as BIND classifies (see the module doc).

    The name is the wire qname, lowercased, followed by the qtype for
    `answer`/`nodata`; the zone for `nxdomain`/`error`.
    """
    if len(reply) < 12:
        return ERROR, zone
    rcode = reply[3] & 0x0F
    if rcode == 3:
        return NXDOMAIN, zone
    if rcode != 0:
        return ERROR, zone
    # The question's name ends at its first zero octet (a label holding a zero octet only
    # makes a key of its own: the key is not parsed, only compared).
    qend = reply.find(b"\x00", 12) + 1 if reply[5] else 12
    # A reply truncated for size (TC=1) stands for the full answer it would have been.
    if reply[7] or reply[6] or reply[2] & _TC:
        return ANSWER, reply[12:qend].lower() + reply[qend:qend + 2]
    if reply[9] or reply[8]:
        if reply[2] & _AA:
            return NODATA, reply[12:qend].lower() + reply[qend:qend + 2]
        return REFERRAL, reply[12:qend].lower()
    return ERROR, zone  # NOERROR with nothing at all: BADVERS (its RCODE is in the OPT)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0:
            return pos + 2
        pos += n + 1


def slip_reply(reply: bytes, badcookie: bool = False) -> bytes:
    """The slipped form of `reply`: the header with TC=1, the question, no records but the OPT.

    RFC 2181 9 / RFC 1035 4.1.1: TC=1 tells the client to ask again over TCP.
    The OPT (EDNS, the cookie, the ECS echo) is kept. With `badcookie`, RCODE
    BADCOOKIE instead (RFC 7873 5.2.3: 23 = 7 in the header, 1 in the OPT's
    extended RCODE) and no AA: the fresh server cookie in the OPT lets the
    client retry over UDP.
    """
    if len(reply) < 12:
        return reply
    qd = (reply[4] << 8) | reply[5]
    rrs = ((reply[6] << 8) | reply[7]) + ((reply[8] << 8) | reply[9]) + ((reply[10] << 8) | reply[11])
    pos = 12
    opt = b""
    try:
        for _ in range(qd):
            pos = _skip_name(reply, pos) + 4
        qend = pos
        for _ in range(rrs):
            start = pos
            pos = _skip_name(reply, pos)
            rtype = (reply[pos] << 8) | reply[pos + 1]
            rdlen = (reply[pos + 8] << 8) | reply[pos + 9]
            pos += 10 + rdlen
            if rtype == _OPT:
                opt = reply[start:pos]
    except IndexError:  # not one of ours: the header and question alone
        qend, opt = min(pos, len(reply)), b""
    flags2, flags3 = reply[2], reply[3]
    if badcookie and opt:
        flags2 &= ~(_AA | _TC) & 0xFF
        flags3 = (flags3 & 0xF0) | (BADCOOKIE & 0x0F)
        # The OPT's owner is the root (one octet), then TYPE, CLASS and the TTL, whose
        # first octet is the extended RCODE's high 8 bits (RFC 6891 6.1.3).
        opt = opt[:5] + bytes((BADCOOKIE >> 4,)) + opt[6:]
    else:
        flags2 |= _TC
    header = reply[:2] + bytes((flags2, flags3)) + reply[4:6] + b"\x00\x00\x00\x00" + (
        b"\x00\x01" if opt else b"\x00\x00")
    return header + reply[12:qend] + opt
