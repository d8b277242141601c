"""DNS wire format: parsing queries and writing responses (RFC 1035 4).

Owns bytes <-> messages for what an authoritative server receives and sends:
a strict query parser that says *why* a packet is bad (with the RCODE to
answer), the EDNS(0) OPT record (RFC 6891) and the Client Subnet option
(RFC 7871), and a response writer with name compression (RFC 1035 4.1.4).
No sockets, no clocks, no zone knowledge.

Names are carried as wire bytes (length-prefixed labels, ending in b"\\0").
Lookups use `bytes.lower()` of them: DNS names compare case-insensitively
in ASCII only (RFC 4343 3), which is exactly what `bytes.lower()` does.
"""
from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

# RCODEs (RFC 1035 4.1.1, RFC 6891 9)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# TYPEs we know by name
A, NS, CNAME, SOA, MX, TXT, AAAA, OPT, CAA = 1, 2, 5, 6, 15, 16, 28, 41, 257
IXFR, AXFR, MAILB, MAILA, ANY = 251, 252, 253, 254, 255
CLASS_IN = 1

TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", MX: "MX", TXT: "TXT",
              AAAA: "AAAA", OPT: "OPT", CAA: "CAA", ANY: "ANY", AXFR: "AXFR", IXFR: "IXFR"}
TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}

OPTION_ECS = 8  # RFC 7871 6

# Header flag bits (RFC 1035 4.1.1; AD/CD RFC 4035 3.2)
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010

_HDR = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_RRFIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class Drop(Exception):
    """A packet that gets no answer at all: too short for a header, or itself a response.

    RFC 1035 4.1.1: without a 12-byte header there is no ID to answer to.
    Answering a response (QR=1) invites reflection loops between servers.
    """


class QueryError(Exception):
    """A query that gets an error response, carrying the RCODE to answer with.

    `question_end` is where the question section ends (0 when the question
    itself could not be parsed: the response then has no question section).
    `edns` is the query's OPT record when it was read before the error, so
    the error response carries one (RFC 6891 7: a FORMERR caused by the OPT
    record MUST include an OPT record; other errors echo EDNS as usual).
    """

    def __init__(self, rcode: int, reason: str, *, query_id: int, flags: int,
                 question_end: int = 0, edns: "Edns | None" = None) -> None:
        super().__init__(reason)
        self.rcode, self.reason = rcode, reason
        self.query_id, self.flags = query_id, flags
        self.question_end, self.edns = question_end, edns


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option as received (RFC 7871 6).

    `address` holds exactly ceil(source_prefix/8) octets, as on the wire;
    `raw` is the whole option (code, length, data) so the echo can copy
    FAMILY, SOURCE PREFIX-LENGTH and ADDRESS byte for byte (RFC 7871 7.2.1).
    """

    family: int
    source_prefix: int
    scope_prefix: int
    address: bytes
    raw: bytes

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if self.family == 1:
            return ipaddress.IPv4Network((self.address.ljust(4, b"\0"), self.source_prefix))
        return ipaddress.IPv6Network((self.address.ljust(16, b"\0"), self.source_prefix))

    def echo(self, scope_prefix: int) -> bytes:
        """The option to put in the response: the query's, with SCOPE set (RFC 7871 7.2.1)."""
        return self.raw[:7] + bytes((scope_prefix,)) + self.raw[8:]


@dataclass(frozen=True, slots=True)
class Edns:
    """The query's OPT pseudo-record (RFC 6891 6.1.2)."""

    udp_payload: int
    version: int
    do: bool
    client_subnet: ClientSubnet | None


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    qname: bytes        # wire form, as sent (case preserved, for the echo)
    qname_key: bytes    # wire form, lower case (lookups)
    qtype: int
    qclass: int
    question_end: int   # offset of the first byte after the question
    edns: Edns | None

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def name_to_text(wire: bytes) -> str:
    """b"\\x04demo\\x03app\\0" -> "demo.app." (for logs and explain; escapes odd bytes)."""
    out, i = [], 0
    while i < len(wire) and wire[i]:
        n = wire[i]
        label = wire[i + 1:i + 1 + n]
        out.append("".join(chr(c) if 0x21 <= c < 0x7F and c not in b".\\" else f"\\{c:03d}"
                           for c in label))
        i += 1 + n
    return ".".join(out) + "."


def name_from_text(text: str) -> bytes:
    """"demo.app.lab.test." -> wire form. Raises ValueError on a bad name."""
    text = text.strip()
    if text in (".", ""):
        return b"\0"
    labels = text.rstrip(".").split(".")
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name longer than 255 octets: {text!r}")
    return bytes(out)


def _read_question_name(data: bytes, pos: int) -> int:
    """Return the offset after the uncompressed name at `pos`; ValueError if malformed.

    The question is the first thing after the header, so a compression
    pointer there could only point into the header: we refuse pointers
    (and the reserved 0x40/0x80 label types, RFC 6891 5) outright.
    """
    start, end = pos, len(data)
    while True:
        if pos >= end:
            raise ValueError("question name runs past the end of the packet")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0:
            raise ValueError("compression pointer or unknown label type in the question")
        pos += 1 + n
        if pos - start > 254:
            raise ValueError("question name longer than 255 octets")
    return pos


def _skip_name(data: bytes, pos: int) -> int:
    """Skip a possibly compressed name in an RR; ValueError if malformed."""
    end, length = len(data), 0
    while True:
        if pos >= end:
            raise ValueError("name runs past the end of the packet")
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise ValueError("truncated compression pointer")
            return pos + 2
        if n & 0xC0:
            raise ValueError("unknown label type")
        pos += 1 + n
        length += 1 + n
        if length > 254:
            raise ValueError("name longer than 255 octets")


def parse_query(data: bytes) -> Query:
    """Parse and validate a query. Raises `Drop` or `QueryError` (never anything else
    for any input: the fuzz test pins that)."""
    if len(data) < 12:
        raise Drop("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
    if flags & QR:
        raise Drop("a response, not a query")
    opcode = (flags >> 11) & 0xF
    if qd != 1:
        # RFC 1035 4.1.2 allows QDCOUNT > 1 on paper, but no server answers it
        # (RFC 9619 makes "exactly one" normative): FORMERR, as Knot and BIND do.
        rcode = NOTIMP if opcode != 0 else FORMERR
        raise QueryError(rcode, f"QDCOUNT={qd}, expected 1", query_id=qid, flags=flags)
    try:
        qend = _read_question_name(data, 12)
    except ValueError as exc:
        raise QueryError(FORMERR, str(exc), query_id=qid, flags=flags) from None
    if qend + 4 > len(data):
        raise QueryError(FORMERR, "question runs past the end of the packet", query_id=qid, flags=flags)
    qtype, qclass = _U16.unpack_from(data, qend)[0], _U16.unpack_from(data, qend + 2)[0]
    qend += 4
    if opcode != 0:
        # RFC 1035 4.1.1: only QUERY is implemented (no NOTIFY, no UPDATE).
        raise QueryError(NOTIMP, f"opcode {opcode} is not implemented", query_id=qid, flags=flags,
                         question_end=qend)

    # Answer and authority sections of a query are normally empty; skip them
    # (RFC 1035 does not forbid them) but an OPT there is malformed (RFC 6891 6.1.1).
    pos = qend
    edns: Edns | None = None
    opt_seen = 0
    try:
        for section, count in ((1, an), (2, ns), (3, ar)):
            for _ in range(count):
                name_start = pos
                pos = _skip_name(data, pos)
                if pos + 10 > len(data):
                    raise ValueError("resource record runs past the end of the packet")
                rtype, rclass, ttl, rdlen = _RRFIXED.unpack_from(data, pos)
                pos += 10
                if pos + rdlen > len(data):
                    raise ValueError("RDATA runs past the end of the packet")
                if rtype == OPT:
                    if section != 3:
                        raise ValueError("OPT record outside the additional section")
                    opt_seen += 1
                    if opt_seen > 1:
                        # RFC 6891 6.1.1: more than one OPT -> FORMERR.
                        raise ValueError("more than one OPT record")
                    if data[name_start] != 0 or pos - 10 - name_start != 1:
                        # RFC 6891 6.1.2: the OPT owner MUST be the root.
                        raise ValueError("OPT record owner is not the root")
                    edns = Edns(udp_payload=rclass, version=(ttl >> 16) & 0xFF,
                                do=bool(ttl & 0x8000), client_subnet=None)
                    opt_rdata = (pos, pos + rdlen)
                pos += rdlen
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} bytes after the last record")
    except ValueError as exc:
        # When the OPT itself was readable, answer with one (RFC 6891 7).
        raise QueryError(FORMERR, str(exc), query_id=qid, flags=flags, question_end=qend,
                         edns=edns) from None

    if edns is not None:
        if edns.version != 0:
            # RFC 6891 6.1.3: a version we do not implement -> BADVERS, and the
            # options (whose meaning depends on the version) are not looked at.
            raise QueryError(BADVERS, f"EDNS version {edns.version}", query_id=qid, flags=flags,
                             question_end=qend, edns=edns)
        ecs = _parse_options(data, *opt_rdata, qid=qid, flags=flags, qend=qend, edns=edns)
        if ecs is not None:
            edns = Edns(edns.udp_payload, edns.version, edns.do, ecs)

    qname = data[12:qend - 4]
    if qtype == OPT:
        # RFC 6891 6.1.1: OPT is a pseudo-RR and cannot be queried for.
        raise QueryError(FORMERR, "QTYPE OPT", query_id=qid, flags=flags, question_end=qend, edns=edns)
    return Query(qid, flags, qname, qname.lower(), qtype, qclass, qend, edns)


def _parse_options(data: bytes, pos: int, end: int, *, qid: int, flags: int, qend: int,
                   edns: Edns) -> ClientSubnet | None:
    """Walk the OPT RDATA's {code, length, data} options (RFC 6891 6.1.2).

    Unknown options are ignored (RFC 6891 6.1.2, "MUST be ignored"); only ECS
    is read. Any malformation is FORMERR with an OPT in the answer (RFC 6891 7).
    """
    ecs: ClientSubnet | None = None

    def bad(reason: str) -> QueryError:
        return QueryError(FORMERR, reason, query_id=qid, flags=flags, question_end=qend, edns=edns)

    while pos < end:
        if pos + 4 > end:
            raise bad("truncated EDNS option header")
        code, length = _U16.unpack_from(data, pos)[0], _U16.unpack_from(data, pos + 2)[0]
        if pos + 4 + length > end:
            raise bad(f"EDNS option {code} runs past the OPT record")
        if code == OPTION_ECS:
            if ecs is not None:
                # Two subnets in one query: which to honour is undefined, so reject.
                raise bad("more than one ECS option")
            ecs = parse_client_subnet(data[pos:pos + 4 + length], bad)
        pos += 4 + length
    return ecs


def parse_client_subnet(raw: bytes, bad) -> ClientSubnet:
    """Validate one ECS option (`raw` includes code and length). RFC 7871 6."""
    length = len(raw) - 4
    if length < 4:
        raise bad("ECS option shorter than 4 octets")
    family, source, scope = _U16.unpack_from(raw, 4)[0], raw[6], raw[7]
    if family == 1:
        bits = 32
    elif family == 2:
        bits = 128
    else:
        raise bad(f"ECS family {family} is neither 1 (IPv4) nor 2 (IPv6)")
    if source > bits:
        raise bad(f"ECS source prefix {source} is longer than the family's {bits} bits")
    if scope != 0:
        # RFC 7871 6: SCOPE PREFIX-LENGTH MUST be 0 in queries.
        raise bad(f"ECS scope prefix {scope} in a query (must be 0)")
    need = (source + 7) // 8
    address = raw[8:]
    if len(address) != need:
        # RFC 7871 6: ADDRESS MUST be truncated to ceil(SOURCE/8) octets.
        raise bad(f"ECS address is {len(address)} octets, source prefix {source} needs {need}")
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        # RFC 7871 6: bits past SOURCE PREFIX-LENGTH MUST be zero.
        raise bad("ECS address has bits set past the source prefix")
    return ClientSubnet(family, source, scope, bytes(address), bytes(raw))


# ---------------------------------------------------------------------------
# Writing

class Name(bytes):
    """A domain name (wire form) inside RDATA that may be compressed.

    RFC 3597 4: compression in RDATA only for the RFC 1035 types (NS, CNAME,
    SOA, MX, ...); CAA/TXT have no names.
    """


@dataclass(frozen=True, slots=True)
class RR:
    """One resource record ready to write. `rdata` is a tuple of bytes and `Name` parts."""

    name: bytes
    rtype: int
    ttl: int
    rdata: tuple[bytes, ...]
    rclass: int = CLASS_IN


class Writer:
    """Builds one message, compressing names (RFC 1035 4.1.4)."""

    __slots__ = ("buf", "_names")

    def __init__(self) -> None:
        self.buf = bytearray(12)
        self._names: dict[bytes, int] = {}

    def name(self, wire: bytes) -> None:
        buf, names = self.buf, self._names
        pos = 0
        while wire[pos]:
            suffix = wire[pos:].lower()
            ptr = names.get(suffix)
            if ptr is not None:
                start = len(buf)
                buf += wire[:pos]
                buf += _U16.pack(0xC000 | ptr)
                self._remember(wire, pos, start)
                return
            pos += wire[pos] + 1
        start = len(buf)
        buf += wire
        self._remember(wire, pos, start)

    def _remember(self, wire: bytes, upto: int, start: int) -> None:
        pos = 0
        while pos < upto:
            offset = start + pos
            if offset >= 0x4000:
                break
            self._names.setdefault(wire[pos:].lower(), offset)
            pos += wire[pos] + 1

    def question(self, qname: bytes, qtype: int, qclass: int) -> None:
        self.name(qname)
        self.buf += _U16.pack(qtype) + _U16.pack(qclass)

    def rr(self, rr: RR) -> None:
        buf = self.buf
        self.name(rr.name)
        buf += _U16.pack(rr.rtype) + _U16.pack(rr.rclass) + struct.pack("!I", rr.ttl)
        at = len(buf)
        buf += b"\0\0"
        for part in rr.rdata:
            if type(part) is Name:
                self.name(part)
            else:
                buf += part
        _U16.pack_into(buf, at, len(buf) - at - 2)

    def opt(self, udp_payload: int, ext_rcode: int, do: bool, options: bytes) -> None:
        """The OPT pseudo-RR (RFC 6891 6.1.2/6.1.3): owner root, CLASS = our payload size."""
        ttl = (ext_rcode << 24) | (0x8000 if do else 0)
        self.buf += b"\0" + _U16.pack(OPT) + _U16.pack(udp_payload) + struct.pack("!I", ttl)
        self.buf += _U16.pack(len(options)) + options

    def header(self, qid: int, flags: int, qd: int, an: int, ns: int, ar: int) -> None:
        _HDR.pack_into(self.buf, 0, qid, flags, qd, an, ns, ar)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


# RDATA encoders for the record types the zone holds.

@functools.lru_cache(maxsize=8192)  # PoP addresses repeat in every GSLB answer
def rdata_a(text: str) -> tuple[bytes, ...]:
    return (ipaddress.IPv4Address(text).packed,)


@functools.lru_cache(maxsize=8192)
def rdata_aaaa(text: str) -> tuple[bytes, ...]:
    return (ipaddress.IPv6Address(text).packed,)


def character_strings(text: str) -> bytes:
    """TXT data -> <character-string>s (RFC 1035 3.3.14).

    A value written with double quotes ('"a" "b"') is zone-file presentation:
    one string per quoted part. Plain text is one string, split every 255
    octets (the limit of one <character-string>).
    """
    text = text.strip()
    parts: list[bytes] = []
    if text.startswith('"'):
        i = 0
        while i < len(text):
            if text[i] == '"':
                j, cur = i + 1, bytearray()
                while j < len(text) and text[j] != '"':
                    if text[j] == "\\" and j + 1 < len(text):
                        j += 1
                    cur += text[j].encode()
                    j += 1
                parts.append(bytes(cur))
                i = j + 1
            else:
                i += 1
    else:
        raw = text.encode()
        parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    out = bytearray()
    for p in parts:
        for i in range(0, max(len(p), 1), 255):
            chunk = p[i:i + 255]
            out.append(len(chunk))
            out += chunk
    return bytes(out)


def rdata_caa(text: str) -> tuple[bytes, ...]:
    """'0 issue "ca.example"' -> flags, tag length, tag, value (RFC 8659 4.1)."""
    flags, tag, value = text.split(" ", 2)
    value = value.strip()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
    t = tag.encode()
    return (bytes((int(flags), len(t))) + t + value.encode(),)


def rdata_mx(text: str) -> tuple[bytes, ...]:
    pref, host = text.split(None, 1)
    return (_U16.pack(int(pref)), Name(name_from_text(host)))


def rdata_soa(mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int,
              minimum: int) -> tuple[bytes, ...]:
    return (Name(name_from_text(mname)), Name(name_from_text(rname)),
            struct.pack("!IIIII", serial, refresh, retry, expire, minimum))


def ecs_option(subnet: str, *, scope: int = 0) -> bytes:
    """An ECS option (code, length, data) for `subnet` ("198.19.5.0/24"), RFC 7871 6."""
    net = ipaddress.ip_network(subnet, strict=True)
    family = 1 if net.version == 4 else 2
    address = net.network_address.packed[:(net.prefixlen + 7) // 8]
    body = struct.pack("!HBB", family, net.prefixlen, scope) + address
    return struct.pack("!HH", OPTION_ECS, len(body)) + body


def make_query(qname: str, qtype: int = A, *, qid: int = 0x1234, rd: bool = False,
               qclass: int = CLASS_IN, edns: bool = False, payload: int = 1232, version: int = 0,
               do: bool = False, options: bytes = b"") -> bytes:
    """A query message (for tests, `explain` and health probes). `options` implies EDNS."""
    flags = RD if rd else 0
    edns = edns or bool(options)
    msg = _HDR.pack(qid, flags, 1, 0, 0, 1 if edns else 0)
    msg += name_from_text(qname) + _U16.pack(qtype) + _U16.pack(qclass)
    if edns:
        ttl = (version << 16) | (0x8000 if do else 0)
        msg += b"\0" + _U16.pack(OPT) + _U16.pack(payload) + struct.pack("!I", ttl)
        msg += _U16.pack(len(options)) + options
    return msg
