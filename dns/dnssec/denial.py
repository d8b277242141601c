"""Denial of existence by compact answers (RFC 9824, "black lies").

Owns the NSEC record that proves a negative answer. Why compact denial and
not minimally covering NSEC ("white lies", RFC 4470):

- one NSEC and one signature per negative answer, where white lies need up
  to three (next closer name, wildcard, and the NODATA one), so negative
  replies stay small and cheap to sign online;
- the NSEC's owner is the query name itself, so NXDOMAIN, NODATA, empty
  non-terminals and names under a wildcard are the same construction with
  a different type bit map; no name of the zone is ever enumerated (the next
  name is always `\\000.qname`, which exists nowhere);
- validators that know nothing of RFC 9824 still accept it as a signed
  NODATA (delv and unbound 1.17 do, see tests).

The price (RFC 9824 3): a name that does not exist is answered NOERROR with
an NSEC whose bit map holds NXNAME (and RRSIG, NSEC) instead of RCODE
NXDOMAIN. Answers for names under a wildcard are signed as the query name
itself (the signer is online), so no wildcard proof is needed either.
"""
from __future__ import annotations

from typing import Any

from dns.dnssec.records import NSEC, NXNAME, RRSIG, type_bitmap
from dns.wire import A, AAAA, CNAME, RR

_MAX_NAME = 255


def existing_types(zone: Any, key: bytes) -> frozenset[int] | None:
    """The types the zone has at `key` (lower case wire), None if the name does not exist.

    A name matched by a wildcard has the wildcard's types (RFC 4592 2.1);
    an empty non-terminal exists with no types (RFC 4592 2.2.2).
    """
    kind, node = zone.find(key)
    if kind == "nxdomain":
        return None
    types = set(zone.nodes.get(node, {}))
    if node in zone.gslb:
        types |= {A, AAAA}
    return frozenset(types)


def next_name(owner: bytes) -> bytes:
    """The Next Domain Name of a compact answer: `\\000.owner` (RFC 9824 3.1).

    When that would exceed 255 octets the owner has no room for descendants,
    so its immediate successor among siblings serves: the first label with
    its last octet incremented (or a \\000 appended when there is room in it).
    """
    owner = owner.lower()
    if len(owner) + 2 <= _MAX_NAME:
        return b"\x01\x00" + owner
    n = owner[0]
    if n < 63:
        return bytes((n + 1,)) + owner[1:1 + n] + b"\x00" + owner[1 + n:]
    last = owner[n]
    return owner[:n] + bytes((min(last + 1, 0xFF),)) + owner[n + 1:]


def denial_nsec(zone: Any, owner: bytes, qtype: int, ttl: int) -> tuple[RR, bool]:
    """The compact-answer NSEC for (owner, qtype) and whether the name exists.

    The bit map (RFC 9824 3): for a name that does not exist RRSIG, NSEC,
    NXNAME; for NODATA the types present, plus RRSIG and NSEC, never the
    type asked for (a validator would take its presence as a lie).
    """
    types = existing_types(zone, owner.lower())
    exists = types is not None
    if not exists:
        bitmap = {RRSIG, NSEC, NXNAME}
    else:
        bitmap = (set(types) | {RRSIG, NSEC}) - {qtype}
        if qtype in (RRSIG, NSEC):
            bitmap |= {RRSIG, NSEC}
        if CNAME in bitmap:
            bitmap.discard(CNAME)  # not reached: a CNAME owner answers with the CNAME
    return RR(owner, NSEC, ttl, (next_name(owner), type_bitmap(bitmap))), exists
