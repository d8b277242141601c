"""PROXY protocol v2 encoder, pinned to the spec's byte layout (section 2.2)."""
from __future__ import annotations

import pytest

from edge.front.proxy_v2 import SIGNATURE, PP2_TYPE_AUTHORITY, ProxyV2Error, decode, encode


def test_ipv4_layout_matches_spec_bytes():
    raw = encode(("192.0.2.10", 51000), ("198.51.100.1", 443))
    assert raw == (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # signature
        b"\x21"              # version 2, command PROXY
        b"\x11"              # AF_INET, STREAM
        b"\x00\x0c"          # 12 bytes of addresses
        b"\xc0\x00\x02\x0a"  # src 192.0.2.10
        b"\xc6\x33\x64\x01"  # dst 198.51.100.1
        b"\xc7\x38"          # src port 51000
        b"\x01\xbb"          # dst port 443
    )


def test_ipv6_layout_is_36_bytes_of_addresses():
    raw = encode(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert raw[12:16] == b"\x21\x21\x00\x24"
    assert raw[16:32] == bytes.fromhex("20010db8000000000000000000000001")
    assert raw[48:52] == b"\x00\x01\x00\x02"
    assert len(raw) == 16 + 36


def test_ipv4_mapped_client_is_sent_as_ipv4():
    raw = encode(("::ffff:192.0.2.10", 5), ("192.0.2.1", 6))
    assert raw[13] == 0x11


def test_mixed_families_use_ipv6_with_mapped_address():
    hdr, used = decode(encode(("192.0.2.10", 5), ("2001:db8::2", 6)))
    assert hdr.src_addr == "::ffff:c000:20a" and hdr.dst_addr == "2001:db8::2"


def test_authority_tlv_round_trip():
    raw = encode(("192.0.2.10", 5), ("192.0.2.1", 443), authority="demo.app.lab.test")
    assert raw[28:31] == bytes([PP2_TYPE_AUTHORITY, 0, 17])
    hdr, used = decode(raw + b"payload")
    assert used == len(raw)
    assert hdr.authority == "demo.app.lab.test"
    assert (hdr.src_addr, hdr.src_port, hdr.dst_addr, hdr.dst_port) == ("192.0.2.10", 5, "192.0.2.1", 443)


def test_local_command_when_addresses_unknown():
    raw = encode(None, None)
    assert raw == SIGNATURE + b"\x20\x00\x00\x00"
    hdr, _ = decode(raw)
    assert hdr.local and hdr.src_addr is None


def test_decode_needs_more_and_rejects_garbage():
    raw = encode(("192.0.2.10", 5), ("192.0.2.1", 6))
    for n in range(len(raw)):
        assert decode(raw[:n]) is None
    with pytest.raises(ProxyV2Error):
        decode(b"GET / HTTP/1.1\r\n\r\n")


def test_bad_port_is_refused():
    with pytest.raises(ProxyV2Error):
        encode(("192.0.2.10", 70000), ("192.0.2.1", 6))


from hypothesis import given, settings
from hypothesis import strategies as st

_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(str)
_port = st.integers(min_value=0, max_value=65535)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6)), _port, _port,
       st.one_of(st.none(), st.from_regex(r"[a-z0-9.-]{1,60}", fullmatch=True)))
def test_encode_decode_round_trip(addrs, sport, dport, authority):
    raw = encode((addrs[0], sport), (addrs[1], dport), authority=authority)
    hdr, used = decode(raw + b"tail")
    assert used == len(raw)
    assert (hdr.src_addr, hdr.src_port, hdr.dst_addr, hdr.dst_port) == (addrs[0], sport, addrs[1], dport)
    assert hdr.authority == authority


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_decode_of_any_bytes_is_none_header_or_typed_error(data):
    try:
        decode(SIGNATURE + data)
    except ProxyV2Error:
        pass
