"""Sans-IO parser for a TLS ClientHello, as peeked from a socket.

Fed the bytes a client sent first (without consuming them from the socket),
it says: more bytes needed, a complete ClientHello (SNI, ALPN), or malformed.
No socket, no clock: the caller owns the timeout.

Layout followed (RFC 8446 4.1.2, RFC 5246 7.4.1.2, record layer RFC 8446 5.1):

    TLSPlaintext { type(1)=22 handshake, legacy_record_version(2), length(2), fragment }
    Handshake    { msg_type(1)=1 client_hello, length(3), body }
    ClientHello  { legacy_version(2), random(32), legacy_session_id<0..32>,
                   cipher_suites<2..2^16-2>, legacy_compression_methods<1..2^8-1>,
                   extensions<0..2^16-1> }

A ClientHello may be split across several handshake records (RFC 8446 5.1:
"Handshake messages MAY be fragmented across several TLSPlaintext records"),
so fragments are joined before parsing. SSL 2.0 compatible hellos are
rejected: no client this edge serves sends them, and they carry no SNI.
"""
from __future__ import annotations

import re

from dataclasses import dataclass

__all__ = [
    "ClientHello",
    "ClientHelloError",
    "MalformedClientHello",
    "ClientHelloTooLarge",
    "NotTLS",
    "parse_client_hello",
    "MAX_CLIENT_HELLO",
]

# A ClientHello with many extensions (post-quantum key shares reach ~1.2 KiB)
# still fits easily; anything past 16 KiB (one full record, RFC 8446 5.1
# 2^14) is treated as abuse.
MAX_CLIENT_HELLO = 16 * 1024

_RECORD_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0            # RFC 6066 3
_EXT_ALPN = 16                  # RFC 7301 3.1
_EXT_SUPPORTED_VERSIONS = 43    # RFC 8446 4.2.1
_SNI_HOST_NAME = 0              # RFC 6066 3: NameType host_name(0)
_MAX_RECORD = 2**14 + 256       # RFC 5246 6.2.1 bound on TLSPlaintext.length, with slack


_DNS_CHARS = re.compile(r"[A-Za-z0-9._-]+")  # what an ASCII host_name may hold (isalnum or -._)


class ClientHelloError(Exception):
    """The first bytes are not a ClientHello this edge accepts; close quietly."""

    code = "bad_client_hello"


class NotTLS(ClientHelloError):
    """The first byte is not a TLS handshake record (e.g. plain HTTP on :443)."""

    code = "not_tls"


class MalformedClientHello(ClientHelloError):
    """A length or field does not fit the structure RFC 8446 4.1.2 defines."""

    code = "malformed"


class ClientHelloTooLarge(ClientHelloError):
    """More than the configured bound was needed to hold the ClientHello."""

    code = "too_large"


@dataclass(frozen=True)
class ClientHello:
    """What routing needs from a complete ClientHello."""

    sni: str | None                 # lower-cased host_name, no trailing dot
    alpn: tuple[str, ...]           # offered protocols in client order
    legacy_version: int             # 0x0303 for TLS 1.2 and 1.3 clients
    supported_versions: tuple[int, ...]
    size: int                       # bytes of records the ClientHello spanned


class _Reader:
    """Bounds-checked cursor; every overrun is a MalformedClientHello."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, start: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = start
        self.end = len(buf) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        pos = self.pos
        if pos + n > self.end:
            raise MalformedClientHello(f"{what}: needs {n} bytes, {self.end - pos} left")
        self.pos = pos + n
        return self.buf[pos:pos + n]

    def uint(self, n: int, what: str) -> int:
        # Hot on every new connection: index the bytes, no slice, no copy.
        pos = self.pos
        if pos + n > self.end:
            raise MalformedClientHello(f"{what}: needs {n} bytes, {self.end - pos} left")
        self.pos = pos + n
        buf = self.buf
        if n == 1:
            return buf[pos]
        if n == 2:
            return (buf[pos] << 8) | buf[pos + 1]
        return int.from_bytes(buf[pos:pos + n], "big")

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > self.end:
            raise MalformedClientHello(f"{what}: needs {n} bytes, {self.end - self.pos} left")
        self.pos += n

    def vector(self, len_bytes: int, what: str) -> "_Reader":
        n = self.uint(len_bytes, what)
        if self.pos + n > self.end:
            raise MalformedClientHello(f"{what}: length {n} overruns by {self.pos + n - self.end}")
        sub = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return sub

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse_client_hello(data: bytes, max_size: int = MAX_CLIENT_HELLO) -> ClientHello | None:
    """Parse the ClientHello at the start of `data`.

    Returns None when more bytes are needed, the ClientHello when complete.
    Raises a ClientHelloError subclass when the bytes can never become a valid
    ClientHello (or would exceed `max_size`). Bytes after the ClientHello are
    ignored: the caller only peeked them.
    """
    if not data:
        return None
    if data[0] != _RECORD_HANDSHAKE:
        raise NotTLS(f"first byte 0x{data[0]:02x} is not a handshake record (22)")
    handshake = bytearray()
    pos = 0
    needed: int | None = None  # total handshake bytes, known after its 4-byte header
    while needed is None or len(handshake) < needed:
        if pos + 5 > len(data):
            if pos + 5 > max_size:
                raise ClientHelloTooLarge(f"ClientHello exceeds {max_size} bytes")
            return None
        rtype = data[pos]
        if rtype != _RECORD_HANDSHAKE:
            # RFC 8446 5.1: handshake messages MUST NOT be interleaved with other record types.
            raise MalformedClientHello(f"record type {rtype} inside the ClientHello")
        if data[pos + 1] != 3:
            raise MalformedClientHello(f"record version 0x{data[pos + 1]:02x}{data[pos + 2]:02x} is not TLS")
        rlen = int.from_bytes(data[pos + 3:pos + 5], "big")
        if rlen == 0:
            # RFC 8446 5.1: zero-length fragments of handshake types MUST NOT be sent.
            raise MalformedClientHello("zero-length handshake record")
        if rlen > _MAX_RECORD:
            raise MalformedClientHello(f"record length {rlen} exceeds 2^14")
        if pos + 5 + rlen > max_size:
            raise ClientHelloTooLarge(f"ClientHello exceeds {max_size} bytes")
        if pos + 5 + rlen > len(data):
            # Take what is there so the handshake header can be checked early.
            handshake += data[pos + 5:]
            _check_handshake_header(handshake, max_size)
            return None
        handshake += data[pos + 5:pos + 5 + rlen]
        pos += 5 + rlen
        if needed is None and len(handshake) >= 4:
            needed = _check_handshake_header(handshake, max_size)
    if len(handshake) > needed:
        # Another handshake message shares the record; a client sends nothing
        # after its ClientHello before the server answers (RFC 8446 2).
        raise MalformedClientHello("bytes after the ClientHello in its last record")
    hello = _parse_body(_Reader(bytes(handshake), 4, needed))
    return ClientHello(
        sni=hello[0], alpn=hello[1], legacy_version=hello[2], supported_versions=hello[3], size=pos
    )


def _check_handshake_header(handshake: bytearray, max_size: int) -> int | None:
    if not handshake:
        return None
    if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
        raise MalformedClientHello(f"handshake type {handshake[0]} is not client_hello (1)")
    if len(handshake) < 4:
        return None
    body_len = int.from_bytes(handshake[1:4], "big")
    if body_len + 4 > max_size:
        raise ClientHelloTooLarge(f"ClientHello of {body_len} bytes exceeds {max_size}")
    return body_len + 4


def _parse_body(r: _Reader) -> tuple[str | None, tuple[str, ...], int, tuple[int, ...]]:
    legacy_version = r.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise MalformedClientHello(f"legacy_version 0x{legacy_version:04x} is not TLS")
    r.skip(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if session_id.left > 32:
        raise MalformedClientHello("legacy_session_id longer than 32 bytes")
    suites = r.vector(2, "cipher_suites")
    if suites.left < 2 or suites.left % 2:
        raise MalformedClientHello(f"cipher_suites length {suites.left} is not a positive even number")
    comp = r.vector(1, "legacy_compression_methods")
    if comp.left < 1:
        raise MalformedClientHello("legacy_compression_methods is empty")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if r.left == 0:
        # RFC 5246 7.4.1.2: extensions are optional in TLS 1.2 hellos.
        return sni, alpn, legacy_version, versions
    exts = r.vector(2, "extensions")
    if r.left:
        raise MalformedClientHello(f"{r.left} bytes after the extensions")
    # The extension walk reads the buffer directly (a browser sends ~17 extensions; a
    # _Reader per one was most of the parse, paid on every new connection).
    seen: set[int] = set()
    buf, pos, end = exts.buf, exts.pos, exts.end
    while pos < end:
        if pos + 2 > end:
            raise MalformedClientHello(f"extension type: needs 2 bytes, {end - pos} left")
        if pos + 4 > end:
            raise MalformedClientHello(f"extension: needs 2 bytes, {end - pos - 2} left")
        etype = (buf[pos] << 8) | buf[pos + 1]
        n = (buf[pos + 2] << 8) | buf[pos + 3]
        pos += 4
        if pos + n > end:
            raise MalformedClientHello(f"extension: length {n} overruns by {pos + n - end}")
        if etype in seen:
            # RFC 8446 4.2: "There MUST NOT be more than one extension of the same type".
            raise MalformedClientHello(f"extension {etype} appears twice")
        seen.add(etype)
        if etype == _EXT_SERVER_NAME:
            sni = _parse_sni(_Reader(buf, pos, pos + n))
        elif etype == _EXT_ALPN:
            alpn = _parse_alpn(_Reader(buf, pos, pos + n))
        elif etype == _EXT_SUPPORTED_VERSIONS:
            versions = _parse_versions(_Reader(buf, pos, pos + n))
        pos += n
    return sni, alpn, legacy_version, versions


def _parse_sni(body: _Reader) -> str | None:
    # RFC 6066 3: ServerNameList server_name_list<1..2^16-1>; at most one
    # name per type; host_name is ASCII, no trailing dot, no IP literals.
    names = body.vector(2, "server_name_list")
    if body.left:
        raise MalformedClientHello("bytes after server_name_list")
    if names.left == 0:
        # An empty extension is what a server sends back; a client must not.
        raise MalformedClientHello("empty server_name_list")
    host: str | None = None
    while names.left:
        name_type = names.uint(1, "NameType")
        name = names.vector(2, "HostName")
        raw = name.take(name.left, "HostName")
        if name_type != _SNI_HOST_NAME:
            continue  # RFC 6066 3: unknown types are ignored
        if host is not None:
            raise MalformedClientHello("two host_name entries in server_name")
        if not raw:
            raise MalformedClientHello("empty host_name")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedClientHello("host_name is not ASCII") from None
        if not _DNS_CHARS.fullmatch(text) or ".." in text:
            raise MalformedClientHello(f"host_name {text!r} is not a DNS name")
        # A trailing dot is not allowed (RFC 6066 3) but some clients send
        # one; the name means the same without it.
        host = text.rstrip(".").lower()
        if not host:
            raise MalformedClientHello("host_name is only dots")
    return host


def _parse_alpn(body: _Reader) -> tuple[str, ...]:
    # RFC 7301 3.1: ProtocolNameList protocol_name_list<2..2^16-1>; names <1..2^8-1>.
    lst = body.vector(2, "protocol_name_list")
    if body.left or lst.left < 2:
        raise MalformedClientHello("bad ALPN protocol_name_list")
    out = []
    while lst.left:
        name = lst.vector(1, "ProtocolName")
        if name.left == 0:
            raise MalformedClientHello("empty ALPN ProtocolName")
        out.append(name.take(name.left, "ProtocolName").decode("latin-1"))
    return tuple(out)


def _parse_versions(body: _Reader) -> tuple[int, ...]:
    # RFC 8446 4.2.1: ProtocolVersion versions<2..254> in a ClientHello.
    lst = body.vector(1, "supported_versions")
    if body.left or lst.left < 2 or lst.left % 2:
        raise MalformedClientHello("bad supported_versions")
    return tuple(lst.uint(2, "version") for _ in range(lst.left // 2))
