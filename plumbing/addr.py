"""Addresses in text: ``HOST:PORT`` both ways, and the one IP normaliser.

IPv6 literals take brackets when a port follows (RFC 3986 3.2.2:
``[::1]:5300``); a bare IPv6 literal without a port is accepted only where
the caller gives a default port. No DNS lookups: a host that is a name stays a name.
"""
from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """'ADDR:PORT', '[V6]:PORT', 'NAME:PORT' -> (host, port); 'HOST' or '[V6]' -> (host, default_port).

    Raises ValueError (a sentence, no key: the caller knows which key it read)
    for a missing port without a default, a port outside 0-65535, an unbracketed
    IPv6 literal followed by a port, or text after the closing bracket.
    A leading ':' ('':53') gives an empty host: the caller decides what it means.
    """
    v = value.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep:
            raise ValueError(f"{value!r}: IPv6 addresses are written [ADDR]:PORT")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected [ADDR]:PORT")
        port_s = rest[1:] if rest else None
    elif v.count(":") == 1:
        host, _, port_s = v.partition(":")
    elif ":" in v:
        if default_port is None:
            raise ValueError(f"{value!r}: IPv6 addresses are written [ADDR]:PORT")
        host, port_s = v, None    # a bare IPv6 literal, no port
    else:
        host, port_s = v, None
    if port_s is None:
        if default_port is None:
            raise ValueError(f"{value!r}: expected ADDR:PORT")
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r}: invalid port {port_s!r}, expected 0-65535")
    return host, int(port_s)


def join_host_port(host: str, port: int) -> str:
    """(host, port) -> 'host:port', IPv6 literals in brackets: '[::1]:53'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalise_ip(value: str | IPAddress) -> IPAddress:
    """An IP address object; IPv4-mapped IPv6 (::ffff:a.b.c.d, RFC 4291 2.5.5.2) becomes IPv4.

    A dual-stack socket reports IPv4 clients that way; every decision about a
    client (geo lookups, CIDR rules, PROXY headers) must see the IPv4 address.
    A zone index ('fe80::1%eth0', RFC 4007 11) is dropped: it names a local
    interface, not a part of the address. Raises ValueError for text that is not an address.
    """
    if isinstance(value, str):
        text = value.strip()
        ip = ipaddress.ip_address(text.split("%", 1)[0] if "%" in text else text)
    else:
        ip = value
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
