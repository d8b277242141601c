"""A signed zone file of the zone as it is now (for `gslb dns dump` and offline verifiers).

Owns the presentation of a signed zone: every RRset (GSLB names with the answer
one client gets), its RRSIGs, and a conventional NSEC chain in canonical name
order (RFC 4034 6.1) so that a zone verifier (ldns-verify-zone) can check the
whole file. The live server never sends these chain NSECs; it uses compact
answers (dns/dnssec/denial.py). RDATA is written in the RFC 3597 generic form
(`\\# len hex`), which every zone parser reads for every type.
"""
from __future__ import annotations

from typing import Any

from dns.dnssec.records import NSEC, RRSIG, type_bitmap
from dns.wire import A, AAAA, RR, name_to_text
from dns.zone import label_offsets


def canonical_name_key(name: bytes) -> tuple[bytes, ...]:
    """RFC 4034 6.1: names sort by their labels, rightmost first, lower case."""
    offs = label_offsets(name)[:-1]
    return tuple(name[o + 1:o + 1 + name[o]].lower() for o in reversed(offs))


def _rdata_wire(rr: RR) -> bytes:
    from dns.dnssec.records import canonical_rdata
    return canonical_rdata(rr.rtype, rr.rdata) if rr.rtype != RRSIG else b"".join(rr.rdata)


def rr_text(rr: RR) -> str:
    rd = _rdata_wire(rr)
    return f"{name_to_text(rr.name)}\t{rr.ttl}\tIN\tTYPE{rr.rtype}\t\\# {len(rd)} {rd.hex() or '00'}"


def signed_zone_text(engine: Any, client: str, now: float) -> str:
    zone, signer = engine.zone, engine.signer
    signer.start(now)
    rrsets: dict[bytes, list[list[RR]]] = {}
    for name, node in zone.nodes.items():
        for rrset in node.values():
            rrsets.setdefault(name, []).append(list(rrset.rrs()))
    for name in zone.gslb:
        for qtype in (A, AAAA):
            ans = zone.resolve(name, qtype, lambda: engine.placement(client, None), engine.view)
            got = [rr for rr in ans.answer_variants[0] if rr.rtype == qtype]
            if got:
                rrsets.setdefault(name, []).append(got)
    names = sorted(rrsets, key=canonical_name_key)
    if zone.origin in names:  # the apex first, as zone files have it
        names.remove(zone.origin)
        names.insert(0, zone.origin)
    neg_ttl = zone.negative_soa.ttl
    lines = [f"$ORIGIN .", ""]
    for i, name in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        types = {s[0].rtype for s in rrsets[name]} | {RRSIG, NSEC}
        # RFC 4034 4.1.1: the next name in canonical order; the last wraps to the apex.
        nsec = RR(name, NSEC, neg_ttl, (nxt, type_bitmap(types)))
        for rrs in rrsets[name] + [[nsec]]:
            for rr in rrs:
                lines.append(rr_text(rr))
            for sig in signer.rrsigs(rrs):
                lines.append(rr_text(sig))
    return "\n".join(lines) + "\n"
