"""Source keys: the prefixes a client address is counted under, and exemption.

Owns: turning an address string (as `getpeername` gives it) into its host key
(IPv4 /32, IPv6 /64) and its network key (IPv4 /24, IPv6 /48), both written as
CIDR so a log line names the prefix that was blocked. IPv4-mapped IPv6
(::ffff:a.b.c.d, a dual-stack socket) counts as the IPv4 address.
Must not touch: counters or blocks (tracker.py).

IPv6 counts per /64: one subscriber gets a /64 or more (RFC 6177), so a
host limit per /128 would let one client use 2^64 sources.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def keys(addr: str) -> tuple[str, str]:
    """(host prefix, network prefix) of `addr`, e.g. ("198.19.5.10/32", "198.19.5.0/24").

    IPv4, the common case, is string work only (this runs once per accepted
    connection); IPv6 goes through `ipaddress`. Raises ValueError for what is
    not an address."""
    if ":" not in addr:
        head, dot, _ = addr.rpartition(".")
        if not dot or head.count(".") != 2:
            raise ValueError(f"not an IPv4 address: {addr!r}")
        return addr + "/32", head + ".0/24"
    if addr.startswith("::ffff:") and "." in addr:
        return keys(addr[7:])
    a = ipaddress.IPv6Address(addr.partition("%")[0])
    n = int(a)
    h64 = ipaddress.IPv6Address(n & ~((1 << 64) - 1))
    h48 = ipaddress.IPv6Address(n & ~((1 << 80) - 1))
    return f"{h64}/64", f"{h48}/48"


def address(addr: str) -> IPAddress:
    """The address object of `addr` (IPv4-mapped IPv6 as IPv4)."""
    a = ipaddress.ip_address(addr.partition("%")[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


class Exempt:
    """The networks never blocked; `contains(addr)` for an address string."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, addr: str) -> bool:
        if not self.networks:
            return False
        try:
            a = address(addr)
        except ValueError:
            return False
        return any(a.version == n.version and a in n for n in self.networks)
