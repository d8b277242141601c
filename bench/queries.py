"""Query files for dnsperf, and the client subnets they come from.

Owns: the three query mixes the DNS benchmark sends, written the same way to
both servers:

- ``plain``: A/AAAA for edge names (``*.app``, ``*.tcp``, ``connect``,
  ``<pop>.connect``, pinned names), no EDNS (dnsperf's text format without
  ``-e``), so every query is located by its source, 127.0.0.1: unplaceable,
  default order.
- ``ecs``: the same names with EDNS0 and an EDNS Client Subnet option
  (RFC 7871, option code 8), one client subnet per query from many subnets
  across the regions of the GeoIP database plus some that no database knows.
  dnsperf's ``-E`` puts one fixed option on every query, so this mix is
  written in dnsperf's ``-B`` binary format (RFC 1035 4.2.2 length-prefixed
  messages; dnsperf rewrites only the ID).
- ``nxdomain``: names below the zone that do not exist.

Pure functions: no sockets, no processes.
"""
from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dns.config import DnsConfig

__all__ = ["Query", "edge_names", "client_subnets", "plain_queries", "ecs_queries", "nxdomain_queries",
           "text_file", "binary_file", "encode_query", "ecs_option"]

QTYPE = {"A": 1, "AAAA": 28}


@dataclass(frozen=True)
class Query:
    qname: str                         # absolute, trailing dot
    qtype: str                         # "A" | "AAAA"
    subnet: str | None = None          # ECS source network, "198.19.5.0/24"


def edge_names(cfg: DnsConfig, endpoints: int = 64) -> list[str]:
    """Names a GSLB answer is given for: wildcard names get `endpoints` endpoint labels each."""
    names: list[str] = []
    for g in cfg.gslb:
        if g.name.startswith("*."):
            base = g.name[2:]
            names += [f"ep{i}.{base}" for i in range(endpoints)]
        else:
            names.append(g.name)
    return names


def _sub_networks(net: ipaddress._BaseNetwork, rng: random.Random, count: int) -> list[str]:
    """`count` subnets inside `net` at mixed source prefix lengths (masked per RFC 7871 6)."""
    out = [str(net)]
    if net.version == 4:
        lengths = [p for p in (25, 26, 28, 32) if p >= net.prefixlen]
    else:
        lengths = [p for p in (60, 62, 64) if p >= net.prefixlen]
    while len(out) < count and lengths:
        plen = rng.choice(lengths)
        span = 1 << (net.max_prefixlen - net.prefixlen)
        addr = int(net.network_address) + rng.randrange(span)
        sub = ipaddress.ip_network((addr, plen), strict=False)
        if sub.subnet_of(net):  # type: ignore[arg-type]
            out.append(str(sub))
    return list(dict.fromkeys(out))


def client_subnets(located: Iterable[str], *, per_network: int = 16, unlocated: int = 32,
                   seed: int = 7) -> list[str]:
    """Many client subnets: several inside every located network, and some nobody locates.

    `located` are the networks of the GeoIP database (CIDR strings). Unlocated
    subnets come from 100.64.0.0/10 (RFC 6598) and 2001:db8::/32 (RFC 3849),
    which the lab database does not contain.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for cidr in located:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == 6 and net.prefixlen < 32:
            continue  # IPv4-in-IPv6 aliases and the like, not client networks
        out += _sub_networks(net, rng, per_network)
    for i in range(unlocated):
        if i % 2 == 0:
            out.append(f"100.{64 + rng.randrange(64)}.{rng.randrange(256)}.0/24")
        else:
            out.append(f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(256) << 8:x}::/56")
    return list(dict.fromkeys(out))


def plain_queries(names: Sequence[str], count: int = 2000, seed: int = 1) -> list[Query]:
    rng = random.Random(seed)
    return [Query(rng.choice(names), rng.choice(("A", "AAAA"))) for _ in range(count)]


def ecs_queries(names: Sequence[str], subnets: Sequence[str], count: int = 4000,
                seed: int = 2) -> list[Query]:
    rng = random.Random(seed)
    return [Query(rng.choice(names), rng.choice(("A", "AAAA")), rng.choice(subnets)) for _ in range(count)]


def nxdomain_queries(zone: str, count: int = 2000, seed: int = 3) -> list[Query]:
    """Names that exist nowhere in the zone (no wildcard covers a label starting 'nx')."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        shape = i % 3
        if shape == 0:
            name = f"nx{i}.{zone}"
        elif shape == 1:
            name = f"a.nx{i}.{zone}"
        else:
            name = f"nx{rng.randrange(10**6)}.nowhere.{zone}"
        out.append(Query(name, rng.choice(("A", "AAAA"))))
    return out


def text_file(queries: Iterable[Query]) -> str:
    """dnsperf's text format: 'NAME TYPE' a line."""
    return "".join(f"{q.qname} {q.qtype}\n" for q in queries)


def _qname_wire(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        b = label.encode("ascii")
        if not 0 < len(b) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(b)]) + b
    return out + b"\x00"


def ecs_option(subnet: str) -> bytes:
    """RFC 7871 6: FAMILY, SOURCE PREFIX-LENGTH, SCOPE 0, ADDRESS cut to ceil(prefix/8) octets."""
    net = ipaddress.ip_network(subnet, strict=True)
    family = 1 if net.version == 4 else 2
    plen = net.prefixlen
    addr = net.network_address.packed[: (plen + 7) // 8]
    data = struct.pack("!HBB", family, plen, 0) + addr
    return struct.pack("!HH", 8, len(data)) + data


def encode_query(q: Query, *, udp_payload: int = 1232, qid: int = 0) -> bytes:
    """A query message (RD clear: we ask an authoritative server); OPT RR when q has a subnet."""
    arcount = 1 if q.subnet else 0
    msg = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, arcount)
    msg += _qname_wire(q.qname) + struct.pack("!HH", QTYPE[q.qtype], 1)
    if q.subnet:
        opt = ecs_option(q.subnet)
        # RFC 6891 6.1.2: root owner, TYPE 41, CLASS = UDP payload size, TTL = ext-RCODE/version/flags.
        msg += b"\x00" + struct.pack("!HHIH", 41, udp_payload, 0, len(opt)) + opt
    return msg


def binary_file(queries: Iterable[Query]) -> bytes:
    """dnsperf -B: every message preceded by its 2-octet length (RFC 1035 4.2.2)."""
    out = bytearray()
    for q in queries:
        m = encode_query(q)
        out += struct.pack("!H", len(m)) + m
    return bytes(out)
