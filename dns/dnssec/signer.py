"""Online signing: RRSIGs for every RRset of an answer, cached (RFC 4034 3, RFC 4035 2-3).

Owns the validity window of signatures, the signature cache, and turning a
zone `Answer` into the signed one a DO query gets. No clock: `start(now)`
opens a signing period and the caller (the engine) calls it again when
`refresh_at` has passed; every signature made in a period carries the same
inception and an expiration spread by a per-RRset jitter, so validators'
caches do not all expire at once.

One signature serves every rotation of a GSLB answer: it covers the
canonical (sorted) RRset (RFC 4034 6.3), not the order on the wire.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from typing import Any, Sequence

from dns.dnssec.denial import denial_nsec
from dns.dnssec.keys import SigningKey
from dns.dnssec.records import (DNSKEY, RRSIG, canonical_rrset, label_count, rrset_rdatas,
                                rrsig_fields)
from dns.wire import CNAME, NOERROR, NXDOMAIN, RR, SOA

_SERIAL = 2**32


class Signer:
    """Signs RRsets with the zone's active keys; caches signatures per RRset and period."""

    def __init__(self, keys: Sequence[SigningKey], origin: bytes, *, dnskey_ttl: int = 3600,
                 validity: int = 7 * 86400, refresh: int = 86400, jitter: int = 12 * 3600,
                 inception_offset: int = 3600, cache_size: int = 100_000) -> None:
        if not any(k.active and k.role in ("csk", "ksk") for k in keys):
            raise ValueError("no active csk or ksk: nothing would sign the DNSKEY RRset")
        if not any(k.active and k.role in ("csk", "zsk") for k in keys):
            raise ValueError("no active csk or zsk: nothing would sign the zone's data")
        for alg in {k.algorithm for k in keys}:
            # RFC 4035 2.2: every RRset signed with each algorithm of the DNSKEY RRset.
            mine = [k for k in keys if k.algorithm == alg and k.active]
            if not (any(k.role in ("csk", "ksk") for k in mine)
                    and any(k.role in ("csk", "zsk") for k in mine)):
                raise ValueError(f"algorithm {alg} is published but does not sign both the DNSKEY "
                                 f"RRset and the zone's data (RFC 4035 2.2); algorithm rollovers are "
                                 f"not supported")
        if validity <= refresh + jitter:
            raise ValueError("validity must exceed refresh + jitter (signatures would expire "
                             "before they are replaced)")
        self.keys = tuple(keys)
        self.origin = origin.lower()
        self.dnskey_ttl = dnskey_ttl
        self.validity, self.refresh, self.jitter = validity, refresh, jitter
        self.inception_offset = inception_offset
        self.cache_size = cache_size
        self._ksks = tuple(k for k in keys if k.active and k.role in ("csk", "ksk"))
        self._zsks = tuple(k for k in keys if k.active and k.role in ("csk", "zsk"))
        self._cache: dict[tuple, tuple[RR, ...]] = {}
        self.period_start = 0
        self.stats = {"signatures": 0, "hits": 0}

    # -- periods ------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Open the signing period that contains `now`; forget older signatures."""
        start = int(now) // self.refresh * self.refresh
        if start != self.period_start:
            self.period_start = start
            self._cache.clear()

    @property
    def refresh_at(self) -> int:
        """When the next period starts: cached replies must be rebuilt then."""
        return self.period_start + self.refresh

    def window(self, owner: bytes, rtype: int) -> tuple[int, int]:
        """(inception, expiration) for an RRset in this period (RFC 4034 3.1.5)."""
        h = hashlib.sha256(owner.lower() + struct.pack("!H", rtype)).digest()
        jitter = int.from_bytes(h[:4], "big") % (self.jitter + 1) if self.jitter else 0
        # Inception an hour back: validators whose clocks run a little slow still accept it.
        inception = (self.period_start - self.inception_offset) % _SERIAL
        return inception, (self.period_start + self.validity + jitter) % _SERIAL

    # -- records ------------------------------------------------------------------
    def dnskey_rdatas(self) -> tuple[tuple[bytes, ...], ...]:
        """The DNSKEY RRset: every configured key, active or only published."""
        return tuple((k.dnskey_rdata(),) for k in self.keys)

    def rrsigs(self, rrs: Sequence[RR]) -> tuple[RR, ...]:
        """RRSIG records for one RRset (all of `rrs` share owner, type and TTL)."""
        first = rrs[0]
        rdatas = rrset_rdatas(list(rrs))
        key = (first.name.lower(), first.rtype, first.ttl, frozenset(rdatas))
        sigs = self._cache.get(key)
        if sigs is not None:
            self.stats["hits"] += 1
            if sigs[0].name != first.name:  # same RRset, owner spelt in another case
                sigs = tuple(RR(first.name, RRSIG, s.ttl, s.rdata) for s in sigs)
            return sigs
        keys = self._ksks if first.rtype == DNSKEY else self._zsks
        inception, expiration = self.window(first.name, first.rtype)
        labels = label_count(first.name)
        data_tail = canonical_rrset(first.name, first.rtype, first.rclass, first.ttl, rdatas)
        out = []
        for k in keys:
            fields = rrsig_fields(first.rtype, k.algorithm, labels, first.ttl, expiration,
                                  inception, k.key_tag, self.origin)
            # RFC 4034 3.1.8.1: signature over RRSIG_RDATA (no signature) | RR(1) | RR(2)...
            # RFC 4035 2.2: the RRSIG's TTL is the RRset's.
            out.append(RR(first.name, RRSIG, first.ttl, (fields + k.sign(fields + data_tail),)))
            self.stats["signatures"] += 1
        sigs = tuple(out)
        if len(self._cache) >= self.cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = sigs
        return sigs

    def sign_section(self, rrs: Sequence[RR]) -> tuple[RR, ...]:
        """Each RRset of a section followed by its RRSIGs (RFC 4035 3.1.1)."""
        if not rrs:
            return ()
        out: list[RR] = []
        group: list[RR] = [rrs[0]]
        for rr in rrs[1:]:
            g = group[0]
            if rr.rtype == g.rtype and rr.name.lower() == g.name.lower():
                group.append(rr)
            else:
                out += group
                out += self.rrsigs(group)
                group = [rr]
        out += group
        out += self.rrsigs(group)
        return tuple(out)

    # -- answers ------------------------------------------------------------------
    def sign_answer(self, ans: Any, qname: bytes, qtype: int, zone: Any) -> Any:
        """The signed form of a zone `Answer` for a query with DO=1 (RFC 4035 3.1).

        Positive answers: every RRset with its RRSIGs. Negative ones (NXDOMAIN,
        NODATA): a compact answer (RFC 9824), SOA and NSEC each signed, RCODE
        NOERROR. Answers outside the zone (REFUSED) are left alone.
        """
        if not ans.authoritative:
            return ans
        variants = tuple(self.sign_section(v) for v in ans.answer_variants)
        negative = ans.rcode == NXDOMAIN or (
            ans.rcode == NOERROR and any(rr.rtype == SOA for rr in ans.authority))
        if not negative:
            return replace(ans, answer_variants=variants, authority=self.sign_section(ans.authority),
                           additional=self.sign_section(ans.additional))
        owner = qname
        for rr in ans.answer_variants[0]:
            if rr.rtype == CNAME:
                owner = rr.rdata[0]  # RFC 6604 2.1: the denial is for the chain's target
        soa = next(rr for rr in ans.authority if rr.rtype == SOA)
        # RFC 4034 4 / RFC 9077 3: the NSEC TTL is the negative TTL, min(SOA TTL, MINIMUM).
        nsec, _ = denial_nsec(zone, owner, qtype, soa.ttl)
        authority = self.sign_section((soa,)) + self.sign_section((nsec,))
        return replace(ans, rcode=NOERROR, answer_variants=variants, authority=authority,
                       additional=self.sign_section(ans.additional))


def build_signer(cfg: Any, origin: bytes) -> Signer | None:
    """The signer a DNS configuration asks for (`[dnssec]`), None when signing is off."""
    d = getattr(cfg, "dnssec", None)
    if d is None or not d.keys:
        return None
    from dns.dnssec.keys import KeyError_, load_key
    from dns.config import ConfigError
    keys = []
    for i, k in enumerate(d.keys):
        try:
            keys.append(load_key(k.file, k.role, k.active))
        except KeyError_ as exc:
            raise ConfigError(cfg.path, k.line, f"dnssec.keys[{i}].file", str(exc)) from None
    return Signer(keys, origin, dnskey_ttl=d.dnskey_ttl, validity=d.signature_validity,
                  refresh=d.signature_refresh, jitter=d.signature_jitter,
                  inception_offset=d.inception_offset)
