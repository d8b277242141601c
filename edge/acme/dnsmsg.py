"""A tiny DNS stub for the edge: one question out, the answer records back (RFC 1035).

The edge must not import the DNS server (`dns/`), and it needs only this: ask
a name server (DNS-01: is the TXT there?) or a resolver (custom domains: where
does this name point?) one question over UDP and read the A, AAAA, CNAME and
TXT records of the answer. `build_query` and `parse_response` are sans-IO
(tested with bytes); `query` is the one coroutine with a socket.

Bounded: a name of at most 255 octets, at most 64 answer records read, a
compression pointer chain of at most 32 hops, a reply of at most 65535 octets.
"""
from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct
from dataclasses import dataclass

A, CNAME, TXT, AAAA, OPT = 1, 5, 16, 28, 41
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPE_NAMES = {A: "A", CNAME: "CNAME", TXT: "TXT", AAAA: "AAAA"}
MAX_RECORDS = 64
_MAX_HOPS = 32


class DnsMessageError(ValueError):
    """A reply that is not a well-formed answer to our question."""


@dataclass(frozen=True, slots=True)
class Record:
    name: str       # lower case, no trailing dot
    rtype: int
    ttl: int
    value: str      # A/AAAA: the address; CNAME: the target (no trailing dot); TXT: the strings joined


@dataclass(frozen=True, slots=True)
class Response:
    rcode: int
    aa: bool
    tc: bool
    answers: tuple[Record, ...]

    def values(self, rtype: int, name: str | None = None) -> list[str]:
        want = None if name is None else normalize(name)
        return [r.value for r in self.answers if r.rtype == rtype and (want is None or r.name == want)]


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def encode_name(name: str) -> bytes:
    name = normalize(name)
    out = bytearray()
    for label in name.split(".") if name else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsMessageError(f"bad label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise DnsMessageError(f"name longer than 255 octets: {name[:80]!r}")
    return bytes(out)


def build_query(name: str, qtype: int, qid: int, *, rd: bool = False, payload: int = 1232) -> bytes:
    """A query with one question and an EDNS(0) OPT (RFC 6891) offering `payload` octets."""
    header = struct.pack("!HHHHHH", qid, 0x0100 if rd else 0, 1, 0, 0, 1)
    opt = b"\x00" + struct.pack("!HHIH", OPT, payload, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, 1) + opt


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """(name, offset after it) with compression (RFC 1035 4.1.4)."""
    labels: list[str] = []
    end = -1
    hops = 0
    total = 0
    while True:
        if pos >= len(data):
            raise DnsMessageError("name runs past the message")
        n = data[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DnsMessageError("truncated compression pointer")
            hops += 1
            if hops > _MAX_HOPS:
                raise DnsMessageError("compression pointer loop")
            if end < 0:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | data[pos + 1]
            continue
        if n & 0xC0:
            raise DnsMessageError("unknown label type")
        if n == 0:
            return ".".join(labels).lower(), (end if end >= 0 else pos + 1)
        total += n + 1
        if total > 255 or pos + 1 + n > len(data):
            raise DnsMessageError("bad name")
        labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


def _rdata(data: bytes, rtype: int, start: int, length: int) -> str | None:
    rd = bytes(data[start:start + length])
    if rtype == A and length == 4:
        return str(ipaddress.IPv4Address(rd))
    if rtype == AAAA and length == 16:
        return str(ipaddress.IPv6Address(rd))
    if rtype == CNAME:
        return _read_name(data, start)[0]
    if rtype == TXT:
        parts, i = [], 0
        while i < len(rd):
            n = rd[i]
            if i + 1 + n > len(rd):
                raise DnsMessageError("TXT string runs past its record")
            parts.append(rd[i + 1:i + 1 + n].decode("utf-8", "replace"))
            i += 1 + n
        return "".join(parts)
    return None


def parse_response(data: bytes, qid: int, name: str, qtype: int) -> Response:
    """The answer to (qid, name, qtype); DnsMessageError when it is not one (ID, question, form)."""
    data = bytes(data)
    if len(data) < 12:
        raise DnsMessageError("reply shorter than a header")
    rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or not flags & 0x8000:
        raise DnsMessageError("not a reply to our query (ID or QR)")
    if qd != 1:
        raise DnsMessageError(f"reply has {qd} questions")
    qname, pos = _read_name(data, 12)
    if pos + 4 > len(data):
        raise DnsMessageError("truncated question")
    rqtype, _ = struct.unpack("!HH", data[pos:pos + 4])
    if qname != normalize(name) or rqtype != qtype:
        raise DnsMessageError("reply is for another question")
    pos += 4
    records = []
    for _ in range(min(an, MAX_RECORDS)):
        owner, pos = _read_name(data, pos)
        if pos + 10 > len(data):
            raise DnsMessageError("truncated record")
        rtype, _cls, ttl, length = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if pos + length > len(data):
            raise DnsMessageError("record data runs past the message")
        value = _rdata(data, rtype, pos, length)
        pos += length
        if value is not None:
            records.append(Record(owner, rtype, ttl, value))
    return Response(flags & 0xF, bool(flags & 0x0400), bool(flags & 0x0200), tuple(records))


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """"198.18.0.53", "198.18.0.53:5300", "[fd00::53]:53", "fd00::53" -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)   # a name server is an address (no resolver to find it)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


async def query(server: tuple[str, int], name: str, qtype: int, timeout: float, *,
                rd: bool = False) -> Response:
    """One question to `server` over UDP from a fresh socket (a fresh source port);
    asyncio.TimeoutError after `timeout` seconds without a matching reply."""
    loop = asyncio.get_running_loop()
    host, port = server
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    qid = secrets.randbelow(65536)
    msg = build_query(name, qtype, qid, rd=rd)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))   # the kernel drops datagrams from any other address
        await loop.sock_sendall(sock, msg)

        async def receive() -> Response:
            while True:
                data = await loop.sock_recv(sock, 65535)
                try:
                    return parse_response(data, qid, name, qtype)
                except DnsMessageError:
                    continue   # not ours (a late reply, a forgery): keep waiting until the timeout
        return await asyncio.wait_for(receive(), timeout)
