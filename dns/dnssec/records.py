"""DNSSEC record types and the canonical form (RFC 4034 2-6).

Owns the type codes, the RDATA of DNSKEY/DS/RRSIG/NSEC, the NSEC type bit
maps (RFC 4034 4.1.2) and the canonical wire form of an RR and an RRset
(RFC 4034 6.2, 6.3) that signatures are computed over. No keys, no clock.
"""
from __future__ import annotations

import struct

from dns.wire import CNAME, MX, NS, RR, SOA, Name

DS, RRSIG, NSEC, DNSKEY = 43, 46, 47, 48
NXNAME = 128  # RFC 9824 2: the name does not exist (a meta-type, only in NSEC bit maps)

TYPE_NAMES = {DS: "DS", RRSIG: "RRSIG", NSEC: "NSEC", DNSKEY: "DNSKEY", NXNAME: "NXNAME"}

# RFC 4034 6.2 item 3 (as clarified by RFC 6840 5.1): types whose RDATA names are
# lowercased in the canonical form. Of these the zone holds NS, CNAME, SOA and MX.
_LOWER_RDATA_TYPES = frozenset((NS, CNAME, SOA, MX, 12, 14, 18, 21, 24, 26, 33, 35, 36, 39))


def label_count(name: bytes) -> int:
    """RRSIG Labels (RFC 4034 3.1.3): labels of the owner, not the root, not a leading '*'."""
    n, pos = 0, 0
    while name[pos]:
        n += 1
        pos += name[pos] + 1
    if name[:2] == b"\x01*":
        n -= 1
    return n


def canonical_rdata(rtype: int, rdata: tuple[bytes, ...]) -> bytes:
    """RDATA as it is signed: names uncompressed, lowercased for the RFC 4034 6.2 types."""
    lower = rtype in _LOWER_RDATA_TYPES
    return b"".join(p.lower() if lower and type(p) is Name else bytes(p) for p in rdata)


def canonical_rrset(owner: bytes, rtype: int, rclass: int, ttl: int,
                    rdatas: list[bytes]) -> bytes:
    """RR(1) | RR(2) | ... (RFC 4034 3.1.8.1), rdatas already canonical.

    RFC 4034 6.3: sorted by RDATA as left-justified octet strings, duplicates
    removed; the owner lowercased (6.2 item 2); TTL the original TTL.
    """
    head = owner.lower() + struct.pack("!HHI", rtype, rclass, ttl)
    return b"".join(head + struct.pack("!H", len(rd)) + rd for rd in sorted(set(rdatas)))


def rrsig_fields(type_covered: int, algorithm: int, labels: int, original_ttl: int,
                 expiration: int, inception: int, key_tag: int, signer: bytes) -> bytes:
    """RRSIG RDATA without the signature (RFC 4034 3.1), signer name canonical."""
    return struct.pack("!HBBIIIH", type_covered, algorithm, labels, original_ttl,
                       expiration, inception, key_tag) + signer.lower()


def type_bitmap(types: set[int] | frozenset[int]) -> bytes:
    """NSEC Type Bit Maps (RFC 4034 4.1.2): windows of up to 32 octets, in order."""
    out = bytearray()
    windows: dict[int, bytearray] = {}
    for t in sorted(types):
        win, low = t >> 8, t & 0xFF
        bits = windows.setdefault(win, bytearray(32))
        bits[low >> 3] |= 0x80 >> (low & 7)
    for win in sorted(windows):
        bits = windows[win]
        length = max(i for i, b in enumerate(bits) if b) + 1
        out += bytes((win, length)) + bits[:length]
    return bytes(out)


def parse_type_bitmap(data: bytes) -> set[int]:
    """The inverse of `type_bitmap` (for tests and dumps)."""
    types, pos = set(), 0
    while pos < len(data):
        win, length = data[pos], data[pos + 1]
        for i, b in enumerate(data[pos + 2:pos + 2 + length]):
            for bit in range(8):
                if b & (0x80 >> bit):
                    types.add((win << 8) | (i << 3) | bit)
        pos += 2 + length
    return types


def rrset_rdatas(rrs: list[RR]) -> list[bytes]:
    return [canonical_rdata(rr.rtype, rr.rdata) for rr in rrs]
