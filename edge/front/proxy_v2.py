"""PROXY protocol version 2 header (sans-IO encoder and decoder).

Follows "The PROXY protocol, Versions 1 & 2" (haproxy, section 2.2): a
12-byte signature, version/command, family/transport, a 2-byte big-endian
length, the addresses, then optional TLVs. The edge writes it as the first
bytes of a proxy stream when the endpoint asks for it, so the agent-side
service learns the real client address of a TLS or TCP connection.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from plumbing.addr import normalise_ip

__all__ = ["SIGNATURE", "ProxyHeader", "ProxyV2Error", "encode", "decode", "PP2_TYPE_AUTHORITY"]

# Section 2.2: "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_VERSION_2 = 0x20
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_INET = 0x10
_AF_INET6 = 0x20
_STREAM = 0x1
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02   # section 2.2.2: the host name the client asked for (SNI)
_MAX_TLV_VALUE = 255        # kept well under the 16-bit length; bounds the header


class ProxyV2Error(ValueError):
    """Bytes or arguments that do not form a PROXY v2 header."""


@dataclass(frozen=True)
class ProxyHeader:
    src_addr: str | None
    src_port: int
    dst_addr: str | None
    dst_port: int
    tlvs: tuple[tuple[int, bytes], ...] = ()
    local: bool = False

    @property
    def authority(self) -> str | None:
        for t, v in self.tlvs:
            if t == PP2_TYPE_AUTHORITY:
                return v.decode("ascii", "replace")
        return None


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # An IPv4 client accepted on a dual-stack socket is an IPv4 client.
    return normalise_ip(addr)


def encode(
    src: tuple[str, int] | None,
    dst: tuple[str, int] | None,
    *,
    authority: str | None = None,
    alpn: str | None = None,
) -> bytes:
    """The PROXY v2 header for a TCP connection from `src` to `dst`.

    With src or dst None the command is LOCAL (section 2.2: the receiver must
    use the real connection endpoints), family UNSPEC. Mixed families are
    sent as IPv6 with IPv4-mapped addresses, which the spec's receivers accept.
    """
    tlvs = b""
    for t, value in ((PP2_TYPE_ALPN, alpn), (PP2_TYPE_AUTHORITY, authority)):
        if value:
            raw = value.encode("ascii")
            if len(raw) > _MAX_TLV_VALUE:
                raise ProxyV2Error(f"TLV 0x{t:02x} value longer than {_MAX_TLV_VALUE} bytes")
            tlvs += struct.pack("!BH", t, len(raw)) + raw
    if src is None or dst is None:
        return SIGNATURE + bytes([_VERSION_2 | _CMD_LOCAL, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    sip, dip = _ip(src[0]), _ip(dst[0])
    for port in (src[1], dst[1]):
        if not 0 <= port <= 0xFFFF:
            raise ProxyV2Error(f"port {port} out of range")
    if sip.version == 4 and dip.version == 4:
        fam = _AF_INET | _STREAM
        addrs = sip.packed + dip.packed + struct.pack("!HH", src[1], dst[1])
    else:
        fam = _AF_INET6 | _STREAM
        s6 = sip if sip.version == 6 else ipaddress.IPv6Address("::ffff:" + str(sip))
        d6 = dip if dip.version == 6 else ipaddress.IPv6Address("::ffff:" + str(dip))
        addrs = s6.packed + d6.packed + struct.pack("!HH", src[1], dst[1])
    body = addrs + tlvs
    return SIGNATURE + bytes([_VERSION_2 | _CMD_PROXY, fam]) + struct.pack("!H", len(body)) + body


def decode(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse a header at the start of `data`: (header, bytes used), or None if incomplete."""
    if len(data) < 16:
        if not SIGNATURE.startswith(bytes(data[:12])):
            raise ProxyV2Error("no PROXY v2 signature")
        return None
    if data[:12] != SIGNATURE:
        raise ProxyV2Error("no PROXY v2 signature")
    ver_cmd, fam = data[12], data[13]
    if ver_cmd & 0xF0 != _VERSION_2:
        raise ProxyV2Error(f"version {ver_cmd >> 4} is not 2")
    cmd = ver_cmd & 0x0F
    if cmd not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyV2Error(f"command {cmd} unknown")
    (length,) = struct.unpack("!H", data[14:16])
    if len(data) < 16 + length:
        return None
    body = bytes(data[16:16 + length])
    if cmd == _CMD_LOCAL or fam == 0:
        src = dst = None
        sport = dport = 0
        rest = body if fam == 0 else b""
    elif fam == _AF_INET | _STREAM:
        if len(body) < 12:
            raise ProxyV2Error("IPv4 address block shorter than 12 bytes")
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
        rest = body[12:]
    elif fam == _AF_INET6 | _STREAM:
        if len(body) < 36:
            raise ProxyV2Error("IPv6 address block shorter than 36 bytes")
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack("!HH", body[32:36])
        rest = body[36:]
    else:
        raise ProxyV2Error(f"family/transport 0x{fam:02x} not supported")
    tlvs = []
    i = 0
    while i < len(rest):
        if i + 3 > len(rest):
            raise ProxyV2Error("truncated TLV header")
        t, n = struct.unpack("!BH", rest[i:i + 3])
        if i + 3 + n > len(rest):
            raise ProxyV2Error("TLV overruns the header")
        tlvs.append((t, rest[i + 3:i + 3 + n]))
        i += 3 + n
    return ProxyHeader(src, sport, dst, dport, tuple(tlvs), local=cmd == _CMD_LOCAL), 16 + length
