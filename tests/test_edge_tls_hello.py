"""ClientHello parsing: real hellos from Python's ssl, truncations, garbage."""
from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.front.tls_hello import (
    ClientHelloTooLarge,
    MalformedClientHello,
    NotTLS,
    ClientHelloError,
    parse_client_hello,
)


def real_hello(sni: str | None = "demo.app.lab.test", alpn=("h2", "http/1.1"), tls12_only=False) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def split_records(hello: bytes, size: int) -> bytes:
    """Re-fragment the handshake message into records of `size` bytes (RFC 8446 5.1)."""
    assert hello[0] == 22
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        frag = body[i:i + size]
        out += bytes([22, 3, 1]) + struct.pack("!H", len(frag)) + frag
    return out


def test_real_tls13_hello_gives_sni_and_alpn():
    h = parse_client_hello(real_hello())
    assert h is not None
    assert h.sni == "demo.app.lab.test"
    assert h.alpn == ("h2", "http/1.1")
    assert 0x0304 in h.supported_versions
    assert h.legacy_version == 0x0303


def test_real_tls12_hello_without_alpn():
    h = parse_client_hello(real_hello(sni="connect.lab.test", alpn=None, tls12_only=True))
    assert h is not None and h.sni == "connect.lab.test" and h.alpn == ()


def test_hello_without_sni_has_none():
    h = parse_client_hello(real_hello(sni=None))
    assert h is not None and h.sni is None


def test_sni_is_lowercased():
    h = parse_client_hello(real_hello(sni="Demo.APP.lab.test"))
    assert h.sni == "demo.app.lab.test"


def test_every_truncation_needs_more():
    raw = real_hello()
    for n in range(len(raw)):
        assert parse_client_hello(raw[:n]) is None, n
    assert parse_client_hello(raw) is not None


def test_trailing_bytes_after_hello_are_ignored():
    raw = real_hello()
    h = parse_client_hello(raw + b"\x17\x03\x03garbage")
    assert h is not None and h.size == len(raw)


def test_hello_fragmented_over_records():
    raw = real_hello()
    frag = split_records(raw, 7)
    for n in range(len(frag)):
        assert parse_client_hello(frag[:n]) is None
    h = parse_client_hello(frag)
    assert h is not None and h.sni == "demo.app.lab.test" and h.size == len(frag)


def test_plain_http_is_not_tls():
    with pytest.raises(NotTLS):
        parse_client_hello(b"GET / HTTP/1.1\r\n")


def test_server_hello_type_is_malformed():
    raw = bytearray(real_hello())
    raw[5] = 2
    with pytest.raises(MalformedClientHello):
        parse_client_hello(bytes(raw))


def test_interleaved_alert_record_is_malformed():
    frag = split_records(real_hello(), 100)
    second = 5 + 100
    bad = frag[:second] + b"\x15" + frag[second + 1:]
    with pytest.raises(MalformedClientHello):
        parse_client_hello(bad)


def test_extension_length_overrun_is_malformed():
    raw = bytearray(real_hello())
    # extensions length field sits after session id, suites and compression
    p = 5 + 4 + 2 + 32
    p += 1 + raw[p]
    p += 2 + int.from_bytes(raw[p:p + 2], "big")
    p += 1 + raw[p]
    ext_len = int.from_bytes(raw[p:p + 2], "big")
    raw[p:p + 2] = (ext_len + 1).to_bytes(2, "big")
    with pytest.raises(MalformedClientHello):
        parse_client_hello(bytes(raw))


def test_declared_size_over_bound_is_refused_before_reading_it():
    head = bytes([22, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x00])
    with pytest.raises(ClientHelloTooLarge):
        parse_client_hello(head, max_size=16 * 1024)


def test_small_bound_refuses_real_hello():
    with pytest.raises(ClientHelloTooLarge):
        parse_client_hello(real_hello(), max_size=100)


def test_zero_length_record_is_malformed():
    with pytest.raises(MalformedClientHello):
        parse_client_hello(bytes([22, 3, 1, 0, 0]))


def _hello_with_sni(name: bytes) -> bytes:
    sni_entry = b"\x00" + struct.pack("!H", len(name)) + name
    sni_ext = struct.pack("!HH", 0, len(sni_entry) + 2) + struct.pack("!H", len(sni_entry)) + sni_entry
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(sni_ext)) + sni_ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return bytes([22, 3, 1]) + struct.pack("!H", len(hs)) + hs


def test_handmade_hello_parses():
    assert parse_client_hello(_hello_with_sni(b"a.example")).sni == "a.example"


@pytest.mark.parametrize("name", [b"", b"a\x00b", b"a..b", b"\xc3\xa9.example", b"a b", b"..."])
def test_bad_host_names_are_malformed(name):
    with pytest.raises(MalformedClientHello):
        parse_client_hello(_hello_with_sni(name))


def test_trailing_dot_is_dropped():
    assert parse_client_hello(_hello_with_sni(b"demo.example.")).sni == "demo.example"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data):
    try:
        parse_client_hello(data)
    except ClientHelloError:
        pass


_REAL = real_hello()


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(_REAL) - 1), st.integers(min_value=0, max_value=255))
def test_fuzz_one_byte_mutations_of_a_real_hello(pos, value):
    raw = bytearray(_REAL)
    raw[pos] = value
    try:
        h = parse_client_hello(bytes(raw))
    except ClientHelloError:
        return
    assert h is None or isinstance(h.alpn, tuple)
