"""The zone: static records, GSLB names, and the lookup algorithm.

Owns turning a `dns.config.DnsConfig` into indexed RRsets, and answering
"what does the zone say for (qname, qtype)" (RFC 1034 4.3.2, wildcards per
RFC 4592, negative answers per RFC 2308, ANY per RFC 8482). GSLB names are
answered through `dns.policy` with a client placement the caller supplies
lazily, so static answers never pay for a geo lookup. No sockets, no wire
header handling (that is `dns.engine`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dns import policy as pol
from dns.wire import (A, AAAA, ANY, CAA, CNAME, MX, NOERROR, NS, NXDOMAIN, REFUSED, RR, SOA, TXT,
                      Name, character_strings, name_from_text, name_to_text, rdata_a, rdata_aaaa,
                      rdata_caa, rdata_mx, rdata_soa)

_STATIC_TYPES = {"A": A, "AAAA": AAAA, "CNAME": CNAME, "TXT": TXT, "MX": MX, "CAA": CAA}
# RFC 8482 4.1: answer ANY with one RRset; this is the preference order.
_ANY_ORDER = (SOA, A, AAAA, CNAME, MX, TXT, CAA, NS)
_MAX_CNAME_CHAIN = 8


@dataclass(frozen=True, slots=True)
class RRset:
    name: bytes  # wire, lower case
    rtype: int
    ttl: int
    rdatas: tuple[tuple[bytes, ...], ...]

    def rrs(self, owner: bytes | None = None) -> tuple[RR, ...]:
        o = self.name if owner is None else owner
        return tuple(RR(o, self.rtype, self.ttl, rd) for rd in self.rdatas)


@dataclass(frozen=True, slots=True)
class Gslb:
    name: bytes
    pin: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """What the zone says, before it becomes bytes.

    `answer_variants` holds one answer section per rotation step (at least
    one, possibly empty); `selections` the policy decisions taken (explain);
    `location_dependent` is True when the client's placement shaped the
    answer, so the ECS scope is the geo network's prefix (RFC 7871 7.2.1).
    """

    rcode: int
    authoritative: bool
    answer_variants: tuple[tuple[RR, ...], ...]
    authority: tuple[RR, ...]
    additional: tuple[RR, ...]
    location_dependent: bool
    selections: tuple[pol.Selection, ...] = ()


def label_offsets(wire: bytes) -> list[int]:
    """Offsets of each label of an (uncompressed) wire name, the root included."""
    out, pos = [], 0
    while True:
        out.append(pos)
        n = wire[pos]
        if n == 0:
            return out
        pos += n + 1


class ZoneData:
    """Indexed zone contents. Immutable once built; build a new one to reload."""

    def __init__(self, cfg: Any) -> None:
        z = cfg.zone
        self.origin = name_from_text(z.name).lower()
        self.origin_text = z.name
        self.policy = cfg.policy
        self.changing_ttl = cfg.health.changing_ttl
        self.pops = {p.id: pol.PopAddresses(p.id, tuple(p.ipv4), tuple(p.ipv6)) for p in cfg.pops}
        self.nodes: dict[bytes, dict[int, RRset]] = {}
        self.gslb: dict[bytes, Gslb] = {}
        self._selections: dict[tuple, pol.Selection] = {}

        soa = z.soa
        self.soa = RRset(self.origin, SOA, soa.ttl, (rdata_soa(
            soa.mname, soa.rname, soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum),))
        # RFC 2308 3/5: the SOA in a negative answer carries min(SOA TTL, MINIMUM).
        self.negative_soa = RR(self.origin, SOA, min(soa.ttl, soa.minimum), self.soa.rdatas[0])
        self._add(self.soa)
        self._add(RRset(self.origin, NS, z.ns_ttl,
                        tuple((Name(name_from_text(ns.name)),) for ns in z.ns)))
        for ns in z.ns:
            owner = name_from_text(ns.name).lower()
            if self.contains(owner):
                if ns.ipv4:
                    self._add(RRset(owner, A, z.ns_ttl, tuple(rdata_a(a) for a in ns.ipv4)))
                if ns.ipv6:
                    self._add(RRset(owner, AAAA, z.ns_ttl, tuple(rdata_aaaa(a) for a in ns.ipv6)))

        grouped: dict[tuple[bytes, int], list[tuple[bytes, ...]]] = {}
        ttls: dict[tuple[bytes, int], int] = {}
        for r in cfg.records:
            owner = name_from_text(r.name).lower()
            rtype = _STATIC_TYPES[r.type]
            rdata = _static_rdata(rtype, r.value)
            grouped.setdefault((owner, rtype), []).append(rdata)
            # RFC 2181 5.2: all RRs of an RRset share one TTL; take the lowest.
            ttls[(owner, rtype)] = min(ttls.get((owner, rtype), r.ttl), r.ttl)
        for (owner, rtype), rdatas in grouped.items():
            self._add(RRset(owner, rtype, ttls[(owner, rtype)], tuple(rdatas)))

        for g in cfg.gslb:
            owner = name_from_text(g.name).lower()
            self.gslb[owner] = Gslb(owner, g.pin)

        # Every name that exists, empty non-terminals included (RFC 4592 2.2.2):
        # `app.lab.test` exists because `*.app.lab.test` does.
        self.names: set[bytes] = set()
        for owner in list(self.nodes) + list(self.gslb):
            for off in label_offsets(owner):
                suffix = owner[off:]
                self.names.add(suffix)
                if suffix == self.origin:
                    break

    def select(self, ranking: tuple[str, ...], family: int, pin: str | None,
               health: pol.HealthView) -> pol.Selection:
        """`policy.select`, memoized: few distinct rankings exist, and a Selection
        depends only on these inputs (and the health view's version)."""
        key = (ranking, family, pin, id(health), health.version)
        sel = self._selections.get(key)
        if sel is None:
            if len(self._selections) >= 4096:
                self._selections.clear()
            sel = self._selections[key] = pol.select(
                ranking, self.pops, family=family, count=self.policy.addresses_per_answer,
                pin=pin, health=health, fallback=self.policy.fallback)
        return sel

    def forget(self) -> None:
        """Drop memoized selections (the health view changed)."""
        self._selections.clear()

    def add_rrset(self, rrset: RRset) -> None:
        """Add an RRset at an existing name (the signer's DNSKEY RRset at the apex)."""
        self._add(rrset)
        if self._base is not None:
            self._base[0].setdefault(rrset.name, {})[rrset.rtype] = rrset

    _base: tuple[dict, dict, set] | None = None
    acme_names: tuple[bytes, ...] = ()

    def set_acme(self, txt: dict[bytes, tuple[str, ...]], ttl: int) -> list[bytes]:
        """Serve exactly these DNS-01 TXT RRsets (RFC 8555 8.4) on top of the configured zone.

        `txt`: lower-case wire owner -> values (dns/acme.py). Owners outside
        the zone, or at a name the configuration gives a CNAME, are not
        served (returned). A TXT RRset replaces a configured one at its owner.
        The owner makes its parents exist (RFC 4592 2.2.2): a parent that a
        wildcard used to answer (`demo.app.lab.test` under `*.app.lab.test`
        while `_acme-challenge.demo.app.lab.test` exists) gets the wildcard's
        data copied, so the endpoint's own name keeps answering. The caller
        drops the reply caches (`Engine.set_acme`).
        """
        if self._base is None:
            self._base = ({k: dict(v) for k, v in self.nodes.items()}, dict(self.gslb), set(self.names))
        nodes = {k: dict(v) for k, v in self._base[0].items()}
        gslb = dict(self._base[1])
        names = set(self._base[2])
        base_nodes, base_gslb, base_names = self._base
        refused: list[bytes] = []
        served: list[bytes] = []
        for owner in sorted(txt):
            if not self.contains(owner) or owner == self.origin or CNAME in base_nodes.get(owner, {}) \
                    or owner in base_gslb:
                refused.append(owner)
                continue
            rdatas = tuple((character_strings(v),) for v in txt[owner])
            nodes.setdefault(owner, {})[TXT] = RRset(owner, TXT, ttl, rdatas)
            served.append(owner)
            for off in label_offsets(owner)[1:]:
                suffix = owner[off:]
                if suffix in base_names:
                    break
                if suffix not in names:
                    kind, wild = self._find(suffix, base_names, base_nodes, base_gslb)
                    if kind == "wildcard":
                        for rtype, rrset in base_nodes.get(wild, {}).items():
                            nodes.setdefault(suffix, {})[rtype] = RRset(suffix, rtype, rrset.ttl, rrset.rdatas)
                        if wild in base_gslb:
                            gslb[suffix] = Gslb(suffix, base_gslb[wild].pin)
                names.add(suffix)
            names.add(owner)
        self.nodes, self.gslb, self.names = nodes, gslb, names
        self.acme_names = tuple(served)
        return refused

    def _add(self, rrset: RRset) -> None:
        self.nodes.setdefault(rrset.name, {})[rrset.rtype] = rrset

    def contains(self, key: bytes) -> bool:
        """Is the (lower-case wire) name at or below the origin? Compares at label boundaries."""
        if not key.endswith(self.origin):
            return False
        if len(key) == len(self.origin):
            return True
        return (len(key) - len(self.origin)) in label_offsets(key)

    def find(self, key: bytes) -> tuple[str, bytes]:
        """("exact"|"wildcard"|"nxdomain", node key). RFC 4592 3.3.1 closest encloser."""
        return self._find(key, self.names, self.nodes, self.gslb)

    @staticmethod
    def _find(key: bytes, names: set, nodes: dict, gslb: dict) -> tuple[str, bytes]:
        if key in names:
            return "exact", key
        for off in label_offsets(key)[1:]:
            ce = key[off:]
            if ce in names:
                wild = b"\x01*" + ce
                if wild in nodes or wild in gslb:
                    return "wildcard", wild
                return "nxdomain", ce
        return "nxdomain", key  # not reached for names inside the zone

    def resolve(self, qname: bytes, qtype: int, place: Callable[[], Any],
                health: pol.HealthView) -> Answer:
        """Answer (qname, qtype) from the zone. `place()` returns the client's
        placement (`.ranking.pops`), called only when a GSLB name is reached."""
        key = qname.lower()
        if not self.contains(key):
            # Not our zone: REFUSED, no AA, no referral (we are not a resolver).
            return Answer(REFUSED, False, ((),), (), (), False)

        prefix: list[RR] = []  # CNAMEs followed so far
        owner = qname
        dependent = False
        selections: list[pol.Selection] = []
        for _ in range(_MAX_CNAME_CHAIN):
            kind, node = self.find(key)
            if kind == "nxdomain":
                # RFC 1034 4.3.2 / RFC 6604 2.1: after a CNAME the RCODE is that of the target.
                return Answer(NXDOMAIN, True, (tuple(prefix),), (self.negative_soa,), (),
                              dependent, tuple(selections))
            rrsets = self.nodes.get(node, {})
            gslb = self.gslb.get(node)
            cname = rrsets.get(CNAME)
            if cname is not None and qtype not in (CNAME, ANY):
                prefix.extend(cname.rrs(owner))
                target = cname.rdatas[0][0]
                tkey = target.lower()
                if not self.contains(tkey):
                    # Out of zone: the resolver chases it (RFC 1034 4.3.2: we are not authoritative there).
                    return Answer(NOERROR, True, (tuple(prefix),), (), (), dependent, tuple(selections))
                key, owner = tkey, target
                continue

            qt = qtype
            if qtype == ANY:
                # RFC 8482 4.1: one RRset, chosen by us, rather than everything.
                present = [t for t in _ANY_ORDER if t in rrsets]
                if present:
                    qt = present[0]
                elif gslb is not None:
                    qt = A
                else:
                    qt = -1

            if gslb is not None and qt in (A, AAAA):
                placement = place()
                sel = self.select(placement.ranking.pops, 4 if qt == A else 6, gslb.pin, health)
                selections.append(sel)
                dependent = dependent or sel.location_dependent
                if sel.variants:
                    rtype = A if qt == A else AAAA
                    enc = rdata_a if qt == A else rdata_aaaa
                    # TTL lowered while the health of a PoP this answer depends on is changing.
                    # So does a fallback answer (every address down): recovery shows quickly.
                    ttl = pol.answer_ttl(self.policy.ttl, self.changing_ttl, sel.order, sel.pops_used,
                                         health.changing, fallback=bool(sel.fallback))
                    variants = tuple(
                        tuple(prefix) + tuple(RR(owner, rtype, ttl, enc(a)) for a in v)
                        for v in sel.variants)
                    return Answer(NOERROR, True, variants, (), (), dependent, tuple(selections))
                return Answer(NOERROR, True, (tuple(prefix),), (self.negative_soa,), (),
                              dependent, tuple(selections))

            rrset = rrsets.get(qt)
            if rrset is None:
                # NODATA (RFC 2308 2.2): NOERROR, empty answer, SOA in authority.
                return Answer(NOERROR, True, (tuple(prefix),), (self.negative_soa,), (),
                              dependent, tuple(selections))
            answer = tuple(prefix) + rrset.rrs(owner)
            additional: tuple[RR, ...] = ()
            if qt == NS:
                # RFC 1035 3.3.11/4.3.2: addresses of in-zone name servers go in additional.
                extra: list[RR] = []
                for rd in rrset.rdatas:
                    ns_node = self.nodes.get(rd[0].lower(), {})
                    for t in (A, AAAA):
                        if t in ns_node:
                            extra.extend(ns_node[t].rrs())
                additional = tuple(extra)
            return Answer(NOERROR, True, (answer,), (), additional, dependent, tuple(selections))
        # A CNAME loop or an over-long chain: answer what we have (RFC 1034 4.3.2 stops loops).
        return Answer(NOERROR, True, (tuple(prefix),), (), (), dependent, tuple(selections))


def _static_rdata(rtype: int, value: str) -> tuple[bytes, ...]:
    if rtype == A:
        return rdata_a(value)
    if rtype == AAAA:
        return rdata_aaaa(value)
    if rtype == CNAME:
        return (Name(name_from_text(value)),)
    if rtype == MX:
        return rdata_mx(value)
    if rtype == TXT:
        return (character_strings(value),)
    if rtype == CAA:
        return rdata_caa(value)
    raise ValueError(f"unsupported record type {rtype}")


def describe_rr(rr: RR) -> str:
    """Presentation form of the records we write (explain, logs)."""
    import ipaddress
    from dns.wire import TYPE_NAMES
    if rr.rtype == A:
        data = str(ipaddress.IPv4Address(rr.rdata[0]))
    elif rr.rtype == AAAA:
        data = str(ipaddress.IPv6Address(rr.rdata[0]))
    else:
        data = " ".join(name_to_text(p) if type(p) is Name else p.hex() for p in rr.rdata)
    return f"{name_to_text(rr.name)} {rr.ttl} IN {TYPE_NAMES.get(rr.rtype, rr.rtype)} {data}"
