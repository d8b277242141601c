"""The query engine: query bytes in, response bytes out (sans-IO).

Owns everything between a datagram or TCP message and the reply: parsing
(`dns.wire`), locating the client (`geo`), the zone and policy (`dns.zone`,
`dns.policy`), EDNS/ECS echo, truncation, and the answer cache. It opens no
socket and reads no clock but the `clock` it is given (which dates DNS cookies
and DNSSEC signatures): `dns.server` feeds it bytes and the peer address.

The fast path: a reply depends on the query's
bytes after the ID (name as sent, type, flags, the whole OPT record with its
ECS subnet) and, for GSLB answers to queries without a usable ECS subnet, on
the source address; never on the ID. So the first query of a kind is answered
the slow way and its reply (or, for rotating answers, every rotation step) is
kept as wire bytes keyed by `query[2:]`; the next one is answered by pasting
its own ID in front. The cache is bounded (oldest entry out first) and is
dropped whole by `invalidate()` (health change) or replaced with the engine
(reload).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dns import chaos as ch
from dns import options as eo
from dns import policy as pol
from dns.cookies import BADCOOKIE, VALID
from dns.wire import (AA, AXFR, BADVERS, CD, CLASS_IN, FORMERR, IXFR, MAILA, MAILB, NOERROR, NOTIMP, QR,
                      RD, REFUSED, SERVFAIL, TC, TYPE_NAMES, ClientSubnet, Drop, Query, QueryError, Writer,
                      parse_query)
from dns.zone import ZoneData

# Entries mapping to this marker depend on the source address (GSLB answer, no ECS).
_BY_SOURCE = object()
# `_respond_cookie` for a query that has no COOKIE option after all.
_NO_COOKIE = object()
# Query types counted by name in `Engine.tally` (/metrics); any other counts as one kind, so the
# key set stays bounded whatever the clients send (RFC 1035, 3596, 4034, 5155, 6698, 6844, 9460).
TALLY_TYPES = {**TYPE_NAMES, 12: "PTR", 13: "HINFO", 33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG",
               47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 59: "CDS",
               60: "CDNSKEY", 64: "SVCB", 65: "HTTPS"}
# How long a query's cookie verdict is reused for the same bytes from the same address:
# short against a cookie's 30-minute renewal, long against a resolver's query rate.
_COOKIE_REUSE = 60


def _whole(reply: bytes, additional: int) -> bool:
    """A reply (without its ID) written in full: not TC=1 and no glue dropped (ARCOUNT counts
    every additional record plus the OPT)."""
    return not reply[0] & 0x02 and int.from_bytes(reply[8:10], "big") == additional + 1


def _swap_echo(built: tuple, echo: bytes, extra: bytes, limit: int) -> list[bytes] | None:
    """The built replies of a shape with `echo` as their ECS option instead of the builder's
    (always the OPT's last option); None when they must be written anew: the lengths differ and
    the build was cut (glue dropped, TC=1) or the new one would not fit `limit`."""
    variants, cut, whole = built
    if not echo:
        return variants
    if len(echo) == cut:
        return [v[:-cut] + echo for v in variants]
    if not whole:
        return None
    grow = len(echo) - cut
    if max(len(v) for v in variants) + 2 + grow > limit:   # + 2: the ID in front
        return None
    # ... | RDLENGTH (2) | other options (`extra`) | ECS option (`cut` bytes): the OPT ends the reply.
    head = len(extra) + cut + 2
    rdlength = (len(extra) + len(echo)).to_bytes(2, "big")
    return [v[:-head] + rdlength + extra + echo for v in variants]


@dataclass(frozen=True, slots=True)
class Unlocated:
    """The placement of every client when no geo database is configured."""

    ranking: Any
    scope_prefix: int = 0
    location: None = None
    network: None = None


class Engine:
    """Answers queries for one configuration. Immutable apart from its caches.

    Build a new Engine to reload (the server swaps the reference, so a
    reload is atomic and a failed one changes nothing).
    """

    def __init__(self, cfg: Any, locator: Any = None, health: pol.HealthView | None = None,
                 *, cache_size: int = 50_000, log_decisions: bool = False,
                 signer: Any = None, clock: Any = None) -> None:
        from geo.routing import PopSite, Router

        self.cfg = cfg
        self.zone = ZoneData(cfg)
        self._init_dnssec(signer, clock)
        self.router = Router(
            [PopSite(p.id, p.latitude, p.longitude) for p in cfg.pops],
            default_order=cfg.routing.default_order,
            by_country=dict(cfg.routing.country),
            by_continent=dict(cfg.routing.continent),
        )
        self.locator = locator
        self.drained = frozenset(cfg.health.drained)
        self.payload_max = cfg.server.udp_payload_max
        # COOKIE, NSID, keepalive (dns/options.py); `clock` (time.time) dates cookies.
        self.options = eo.ReplyOptions.from_config(cfg, clock)
        self.cookies = self.options.cookies
        self.chaos = ch.table(cfg)
        self.cache_size = cache_size
        self.log_decisions = log_decisions
        self._udp: dict[bytes, Any] = {}
        self._tcp: dict[bytes, Any] = {}
        self._by_source: dict[tuple[bytes, str], tuple] = {}
        self._turns: dict[tuple, list[int]] = {}  # answer -> [next rotation step]
        self._built: dict[tuple, tuple] = {}  # reply shape -> (reply bytes, echo length, whole) (see _slow)
        # (query[2:], source) -> (placeholder query[2:], reply cookie, verdict, reuse until)
        self._cookie_seen: dict[tuple[bytes, str], tuple] = {}
        # misses: slow-path queries; errors: FORMERR/NOTIMP/BADVERS answered; dropped: no
        # answer; internal_errors: bugs turned into SERVFAIL (the fuzz test wants 0).
        self.stats = {"misses": 0, "errors": 0, "dropped": 0, "internal_errors": 0}
        # Queries answered, for /metrics (dns/metrics.py): (qtype, rcode, tcp, ecs, pops) -> [count].
        # A cached reply holds its cell, so a hit costs one add; hits = sum of cells - misses.
        self.tally: dict[tuple, list[int]] = {}
        self.set_health(health)

    @classmethod
    def from_config(cls, cfg: Any, geoip_db: str | None = None, **kw: Any) -> "Engine":
        """Build an engine, opening the geo database (`geoip_db` overrides the config's)."""
        path = geoip_db or cfg.server.geoip_db
        locator = None
        engine = cls(cfg, None, **kw)
        if path:
            from geo.locate import Locator
            from geo.mmdb import GeoDatabase
            locator = Locator(GeoDatabase(path), engine.router)
        engine.locator = locator
        return engine

    def close(self) -> None:
        if self.locator is not None:
            self.locator.close()

    def invalidate(self) -> None:
        """Forget every cached reply (health or policy input changed)."""
        self._udp.clear()
        self._tcp.clear()
        self._by_source.clear()
        self._turns.clear()
        self._built.clear()
        self.zone.forget()

    def set_acme(self, txt: dict[bytes, tuple[str, ...]]) -> list[bytes]:
        """Serve this DNS-01 TXT set (dns/acme.py) with `[acme] ttl`, and empty the reply caches.

        Returns the owners not served (outside the zone, or at a CNAME or GSLB name)."""
        refused = self.zone.set_acme(txt, self.cfg.acme.ttl)
        self.invalidate()
        return refused

    def set_health(self, health: pol.HealthView | None) -> None:
        """Plug in the health view answers use, and empty the reply caches.

        `None`: no checker; every address is up except those of the
        `[health].drained` PoPs. A view is authoritative, drains included: the
        checker's already merges the configuration's drains with runtime
        drain/undrain (adding the configuration's again would make a runtime
        undrain impossible). `self.health` is what was given (a reload hands it
        to the new engine); `self.view` is what answers use.
        """
        self.health = health
        self.view = health if health is not None else pol.HealthView(drained=self.drained)
        self.invalidate()

    # -- the per-query entry point -------------------------------------------------

    def respond(self, data: bytes, source: str, tcp: bool = False, _inner: bool = False) -> bytes | None:
        """The reply to one query from `source` (an IP string), or None to send nothing.

        Never raises: whatever the bytes, the worst outcome is a FORMERR,
        a SERVFAIL or silence (the fuzz test pins this).
        """
        if type(data) is not bytes:
            data = bytes(data)
        if self.signer is not None and self.clock() >= self._resign_at:
            self._new_signing_period()
        # A COOKIE option (code 10) cannot be there without the bytes 00 0a: a C-speed
        # test keeps queries without one on the plain fast path.
        if not _inner and self.cookies is not None and data.find(b"\x00\x0a", 12) >= 0:
            reply = self._respond_cookie(data, source, tcp)
            if reply is not _NO_COOKIE:
                return reply
        key = data[2:]
        entry = (self._tcp if tcp else self._udp).get(key)
        if entry is not None:
            if entry is _BY_SOURCE:
                entry = self._by_source.get((key, source))
            if entry is not None:
                variants, turn, cell = entry
                cell[0] += 1
                i = turn[0]
                turn[0] = (i + 1) % len(variants)
                return data[:2] + variants[i]
        try:
            return self._slow(data, key, source, tcp)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one answer, not the server
            self.stats["internal_errors"] += 1
            from dns.log import log
            log("internal_error", level="error", client=source, error=repr(exc))
            return self._servfail(data, tcp)

    def _servfail(self, data: bytes, tcp: bool) -> bytes | None:
        """SERVFAIL for a query the engine failed on: with its question and, when it had
        one, an OPT (RFC 6891 7); a bare header when even that fails."""
        if len(data) < 12 or data[2] & 0x80:
            return None
        try:
            q = parse_query(data)
            return self.error_response(data, QueryError(
                SERVFAIL, "internal error", query_id=q.id, flags=q.flags, question_end=q.question_end,
                edns=q.edns), tcp)
        except Exception:  # noqa: BLE001 - the question or the OPT is what failed: the header alone
            return data[:2] + bytes(((data[2] & 0x79) | 0x80, SERVFAIL)) + bytes(8)

    def _slow(self, data: bytes, key: bytes, source: str, tcp: bool) -> bytes | None:
        self.stats["misses"] += 1
        try:
            q = parse_query(data)
        except Drop:
            self.stats["dropped"] += 1
            self.count(-1, -1, tcp, False)
            return None
        except QueryError as err:
            return self.error_response(data, err, tcp)

        ecs = q.edns.client_subnet if q.edns else None
        extra = b""
        if q.edns is not None:
            try:
                extra = self.options.for_reply(data, tcp)
            except ValueError as exc:
                return self.error_response(data, QueryError(
                    FORMERR, str(exc), query_id=q.id, flags=q.flags, question_end=q.question_end,
                    edns=q.edns), tcp)
        if q.qclass == ch.CLASS_CH and self.chaos:
            chaos = ch.answer(self.chaos, q.qname_key, q.qname, q.qtype)
            if chaos is not None:
                self.count(q.qtype, NOERROR, tcp, ecs is not None)
                return data[:2] + self.build(q, data, NOERROR, True, chaos, (), (),
                                             ecs.echo(0) if ecs else None, tcp, extra)[2:]
        refusal = None
        if q.qclass != CLASS_IN:
            refusal = REFUSED  # class IN only (and the CHAOS names configured, above)
        elif q.qtype in (AXFR, IXFR):
            refusal = REFUSED  # no zone transfers (RFC 5936 lets a server refuse them)
        elif q.qtype in (MAILA, MAILB):
            refusal = NOTIMP   # obsolete meta-types (RFC 1035 3.2.3), answered by nobody
        if refusal is not None:
            self.count(q.qtype, refusal, tcp, ecs is not None)
            # RFC 7871 7.2.1: a reply to a query with ECS carries it back; scope 0 here.
            return data[:2] + self.build(q, data, refusal, False, (), (), (),
                                         ecs.echo(0) if ecs else None, tcp, extra)[2:]

        placed: list[Any] = []

        def place() -> Any:
            if not placed:
                placed.append(self.placement(source, ecs))
            return placed[0]

        ans = self.zone.resolve(q.qname, q.qtype, place, self.view)
        if self.signer is not None and q.edns is not None and q.edns.do:
            # RFC 4035 3.1.1: RRSIGs (and the denial, 3.1.3) only for queries with DO=1.
            ans = self.signer.sign_answer(ans, q.qname, q.qtype, self.zone)
        # Without a geo database every client is "unlocated": nothing depends on location.
        dependent = ans.location_dependent and self.locator is not None
        scope = 0
        if ecs is not None and dependent and placed:
            scope = self.ecs_scope(ecs, placed[0])
        if self.log_decisions:
            self._log_decision(q, source, ans, placed[0] if placed else None, scope if ecs else None)
        echo = ecs.echo(scope) if ecs else b""
        # Writing replies is most of a miss's cost. Replies to queries of one shape
        # (question bytes, flags, EDNS limits, the same answer) differ only in the
        # ECS echo, which is always the last option of the last record: build once,
        # then swap the tail (and the OPT's RDLENGTH when the echo's length differs:
        # subnets at /24 and /28 share the build). This keeps misses cheap when many
        # subnets share a region.
        limit = self.limit(q.edns, tcp)
        shape = (data[12:q.question_end], q.flags & (RD | CD), ans.rcode, ans.authoritative,
                 ans.answer_variants, ans.authority, ans.additional, limit,
                 None if q.edns is None else q.edns.do, ecs is not None, extra)
        built = self._built.get(shape)
        variants = None
        if built is not None:
            variants = _swap_echo(built, echo, extra, limit)
        if variants is None:
            if built is None and len(self._built) >= self.cache_size:
                del self._built[next(iter(self._built))]
            variants = [self.build(q, data, ans.rcode, ans.authoritative, a, ans.authority,
                                   ans.additional, echo if ecs else None, tcp, extra)[2:]
                        for a in ans.answer_variants]
            if built is None:
                self._built[shape] = (variants, len(echo), all(_whole(v, len(ans.additional)) for v in variants))
        # Rotation is per answer, not per query bytes: queries that differ only in
        # what does not change the answer (a DNS cookie, another ECS subnet of the
        # same region) share one turn counter, so all addresses get handed out.
        turn = self._turns.get(ans.answer_variants)
        if turn is None:
            if len(self._turns) >= self.cache_size:
                del self._turns[next(iter(self._turns))]
            turn = self._turns[ans.answer_variants] = [0]
        first = turn[0] % len(variants)
        turn[0] = (first + 1) % len(variants)
        pops = tuple(sorted({p for sel in ans.selections for p in sel.pops_used}))
        entry = (variants, turn, self.count(q.qtype, ans.rcode, tcp, ecs is not None, pops))
        cache = self._tcp if tcp else self._udp
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]
        if dependent and (ecs is None or ecs.source_prefix == 0):
            if len(self._by_source) >= self.cache_size:
                del self._by_source[next(iter(self._by_source))]
            cache[key] = _BY_SOURCE
            self._by_source[(key, source)] = entry
        else:
            cache[key] = entry
        return data[:2] + variants[first]

    # -- DNSSEC (dns/dnssec/) -----------------------------------------------------------

    def _init_dnssec(self, signer: Any, clock: Any) -> None:
        """Online signing, off unless `[dnssec]` lists keys. The DNSKEY RRset is zone data.

        `clock` (default `time.time`) is read only when signing is on: when the
        signing period ends, every cached reply is dropped and re-signed on demand.
        """
        import time

        from dns.dnssec.records import DNSKEY
        from dns.dnssec.signer import build_signer
        from dns.zone import RRset
        self.signer = signer if signer is not None else build_signer(self.cfg, self.zone.origin)
        self.clock = clock or time.time
        self._resign_at = 0.0
        if self.signer is not None:
            self.zone.add_rrset(RRset(self.zone.origin, DNSKEY, self.signer.dnskey_ttl,
                                      self.signer.dnskey_rdatas()))

    def _new_signing_period(self) -> None:
        self.signer.start(self.clock())
        self._resign_at = self.signer.refresh_at
        self.invalidate()

    # -- pieces ------------------------------------------------------------------------

    def _log_decision(self, q: Query, source: str, ans: Any, placement: Any,
                      scope: int | None) -> None:
        """One line per answer computed (cache hits repeat it and are not logged)."""
        from dns.log import log
        from dns.wire import RCODE_NAMES, TYPE_NAMES, name_to_text
        fields: dict[str, Any] = {
            "client": source, "qname": name_to_text(q.qname), "qtype": TYPE_NAMES.get(q.qtype, q.qtype),
            "rcode": RCODE_NAMES.get(ans.rcode, ans.rcode)}
        ecs = q.edns.client_subnet if q.edns else None
        if ecs is not None:
            fields["ecs"] = str(ecs.network())
            fields["scope"] = scope
        if placement is not None:
            loc = placement.location
            fields["location"] = loc.describe() if loc is not None else "unknown"
            fields["ranking"] = ",".join(placement.ranking.pops[:3])
        for sel in ans.selections:
            fields["pops"] = ",".join(sel.pops_used) or "none"
            fields["addresses"] = ",".join(sel.addresses)
            if sel.fallback:
                fields["fallback"] = sel.fallback
        log("answer", level="debug", **fields)

    def placement(self, source: str, ecs: ClientSubnet | None) -> Any:
        """Where the client is: by ECS subnet when given (RFC 7871 7.2.1), else by source."""
        if self.locator is None:
            return Unlocated(self.router.rank(None))
        subnet = ecs.network() if ecs is not None else None
        # A link-local peer comes as "fe80::1%eth0": the zone index is not part of the address.
        return self.locator.locate_client(source.partition("%")[0], subnet)

    @staticmethod
    def ecs_scope(ecs: ClientSubnet, placement: Any) -> int:
        """SCOPE PREFIX-LENGTH for the echo (RFC 7871 7.2.1), in the option's family.

        geo works on IPv4-mapped IPv6 as IPv4, so its prefix for such a client
        is an IPv4 one; in a family-2 option that is 96 bits further on.
        """
        scope = placement.scope_prefix
        # The located address's family is the network's: reading it builds no `ipaddress`
        # network (which costs more than the database lookup: a fifth of an ECS miss).
        located = getattr(placement, "located", None)
        if scope and ecs.family == 2 and located is not None and located.address.version == 4:
            scope += 96
        return min(scope, 32 if ecs.family == 1 else 128)

    def limit(self, q_edns: Any, tcp: bool) -> int:
        """Largest reply we may send (RFC 1035 4.2.1: 512 without EDNS; RFC 6891 6.2.5)."""
        if tcp:
            return 65535
        if q_edns is None:
            return 512
        return max(512, min(q_edns.udp_payload, self.payload_max))

    def build(self, q: Query, data: bytes, rcode: int, aa: bool, answer: tuple, authority: tuple,
              additional: tuple, ecs_echo: bytes | None, tcp: bool, extra: bytes = b"") -> bytes:
        """Wire bytes of a reply; falls back to dropping glue, then TC=1 (RFC 2181 9).

        `extra`: options (`ReplyOptions.for_reply`) written before the ECS echo.
        """
        flags = QR | (q.flags & (0x7800 | RD | CD)) | (AA if aa else 0) | (rcode & 0xF)
        limit = self.limit(q.edns, tcp)
        qsection = data[12:q.question_end]
        for ans, auth, add, tc in ((answer, authority, additional, 0),
                                   (answer, authority, (), 0),
                                   ((), (), (), TC)):
            w = Writer()
            w.buf += qsection
            w._remember(q.qname, len(q.qname) - 1, 12)
            for rr in ans:
                w.rr(rr)
            for rr in auth:
                w.rr(rr)
            for rr in add:
                w.rr(rr)
            nadd = len(add)
            if q.edns is not None:
                # RFC 6891 6.1.1: a reply to an EDNS query carries an OPT; RFC 3225 3: DO copied.
                w.opt(self.payload_max, rcode >> 4, q.edns.do, extra + (ecs_echo or b""))
                nadd += 1
            w.header(0, flags | tc, 1, len(ans), len(auth), nadd)
            if len(w.buf) <= limit:
                break
        return w.getvalue()

    def error_response(self, data: bytes, err: QueryError, tcp: bool) -> bytes:
        """FORMERR/NOTIMP/BADVERS/SERVFAIL: header, the question when it parsed, an OPT when the query had one."""
        self.stats["errors"] += 1
        qe = err.question_end
        self.count(int.from_bytes(data[qe - 4:qe - 2], "big") if qe >= 16 else -1, err.rcode, tcp,
                   err.edns is not None and err.edns.client_subnet is not None)
        copied = 0x7800 | RD | CD
        if err.flags & 0x7800:
            copied = 0x7800  # RD and CD mean something for QUERY only: not echoed for other opcodes
        flags = QR | (err.flags & copied) | (err.rcode & 0xF)
        w = Writer()
        qd = 0
        if err.question_end:
            w.buf += data[12:err.question_end]
            qd = 1
        ar = 0
        do = None
        if err.edns is not None:
            do = err.edns.do
        elif err.rcode in (FORMERR, NOTIMP):
            # The parser stopped before the OPT (QDCOUNT, opcode); if it can be found all
            # the same, answer with one (RFC 6891 7: every reply to an EDNS query has an OPT).
            info = eo.scan(data)
            if info is not None and info.version == 0:
                do = info.do
        if do is not None:
            # RFC 6891 7: FORMERR caused by the OPT carries an OPT so the client can tell
            # a broken option from a server without EDNS. RFC 6891 6.1.3: BADVERS says version 0
            # (and looks at no option, so it carries none of ours).
            extra = b"" if err.rcode == BADVERS else self.options.for_reply(data, tcp, strict=False)
            w.opt(self.payload_max, err.rcode >> 4, do, extra)
            ar = 1
        w.header(err.query_id, flags, qd, 0, 0, ar)
        return w.getvalue()

    def _respond_cookie(self, data: bytes, source: str, tcp: bool) -> Any:
        """A query with a COOKIE option (RFC 7873 5.2): the cached answer, our cookie spliced in.

        The answer is the one to the query with a placeholder cookie (`dns.options`), so
        every client shares the cache; only the 24-byte cookie differs per client. A
        resolver repeats its queries with the same cookie: the verdict on those bytes from
        that address is kept for `_COOKIE_REUSE` seconds (at most as long as the reply
        cookie stays fresh), so a repeat costs no option walk and no hash.
        Returns `_NO_COOKIE` when the query has no COOKIE option.
        """
        cookies = self.cookies
        try:
            now = int(cookies.clock())  # type: ignore[union-attr]
            seen_key = (data[2:], source)
            seen = self._cookie_seen.get(seen_key)
            if seen is not None and now < seen[3]:
                if seen[0] is None:
                    return _NO_COOKIE
                placeholder, cookie, verdict = data[:2] + seen[0], seen[1], seen[2]
            else:
                info = eo.scan(data)
                if info is None or info.cookie is None:
                    self._remember_cookie(seen_key, (None, None, None, now + _COOKIE_REUSE))
                    return _NO_COOKIE
                seen = None
            if seen is None:
                problem = eo.cookie_problem(info)
                placeholder = eo.with_placeholder(data, info)
                if problem is None:
                    verdict, cookie = cookies.verdict(info.cookie_data(data), source, now)  # type: ignore[union-attr]
                    until = now + _COOKIE_REUSE
                    if verdict == VALID:
                        # An echoed cookie is renewed once it is half an hour old: reuse it until then.
                        stamped = int.from_bytes(cookie[12:16], "big")
                        until = min(until, now + max(0, (stamped + 1801 - now) & 0xFFFFFFFF))
                    self._remember_cookie(seen_key, (placeholder[2:], cookie, verdict, until))
            else:
                problem = None
            if problem is not None:
                # RFC 7873 5.2.2: a malformed COOKIE option is FORMERR (with an OPT).
                try:
                    q = parse_query(placeholder)
                except Drop:
                    self.count(-1, -1, tcp, False)
                    return None
                except QueryError as err:
                    return self.error_response(data, err, tcp)
                return self.error_response(data, QueryError(
                    FORMERR, problem, query_id=q.id, flags=q.flags, question_end=q.question_end,
                    edns=q.edns), tcp)
            if verdict != VALID and cookies.require and not tcp:  # type: ignore[union-attr]
                # RFC 7873 5.2.3/5.2.4: policy wants a valid server cookie before answering
                # over UDP: BADCOOKIE with a fresh one, which the client sends back. Over TCP
                # the address is proven by the handshake, so the answer is given.
                try:
                    q = parse_query(placeholder)
                except Drop:
                    self.count(-1, -1, tcp, False)
                    return None
                except QueryError as err:
                    reply = self.error_response(placeholder, err, tcp)
                else:
                    reply = self.error_response(placeholder, QueryError(
                        BADCOOKIE, "no valid server cookie", query_id=q.id, flags=q.flags,
                        question_end=q.question_end, edns=q.edns), tcp)
                return eo.splice_cookie(reply, cookie)
        except Exception as exc:  # noqa: BLE001 - as in respond(): one answer lost, not the server
            self.stats["internal_errors"] += 1
            from dns.log import log
            log("internal_error", level="error", client=source, error=repr(exc))
            return self._servfail(data, tcp)
        reply = self.respond(placeholder, source, tcp, True)
        return None if reply is None else eo.splice_cookie(reply, cookie)

    def count(self, qtype: int, rcode: int, tcp: bool, ecs: bool, pops: tuple[str, ...] = ()) -> list[int]:
        """One more query of this kind (qtype -1: unknown or not parsed; rcode -1: no answer sent);
        returns its cell. Types not in TALLY_TYPES count as one kind (-1)."""
        key = (qtype if qtype in TALLY_TYPES else -1, rcode, tcp, ecs, pops)
        cell = self.tally.get(key)
        if cell is None:
            cell = self.tally[key] = [0]
        cell[0] += 1
        return cell

    def carry_counters(self, old: "Engine") -> None:
        """A reload: go on counting where the engine this one replaces stopped (before any query)."""
        self.stats, self.tally = old.stats, old.tally

    def _remember_cookie(self, key: tuple[bytes, str], value: tuple) -> None:
        seen = self._cookie_seen
        if len(seen) >= self.cache_size:
            del seen[next(iter(seen))]
        seen[key] = value
