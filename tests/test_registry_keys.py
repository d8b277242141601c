"""Key layout, validation and etcd's range_end arithmetic (edge/registry/keys.py)."""
from __future__ import annotations

import pytest

from edge.registry import keys
from edge.registry.errors import InvalidKey


@pytest.mark.parametrize("prefix, end", [
    (b"/gslb/", b"/gslb0"),            # '/' + 1 == '0' (etcd's prefix range_end: /lab/gw/ -> /lab/gw0)
    (b"/gslb/bind/", b"/gslb/bind0"),
    (b"a", b"b"),
    (b"a\xff", b"b"),                  # trailing 0xff cannot be incremented: dropped
    (b"a\xff\xff", b"b"),
    (b"\xff\xff", b"\x00"),            # nothing left: "to the end of the key space"
    (b"", b"\x00"),
])
def test_range_end_increments_last_byte_after_dropping_0xff(prefix, end):
    assert keys.range_end(prefix) == end


def test_range_end_bounds_exactly_the_prefix():
    prefix = b"/gslb/bind/"
    end = keys.range_end(prefix)
    for inside in (b"/gslb/bind/", b"/gslb/bind/http/x", b"/gslb/bind/\xff\xff"):
        assert prefix <= inside < end
    for outside in (b"/gslb/bind", b"/gslb/bind0", b"/gslb/ports/1", b"/gslb/binda"):
        assert not (prefix <= outside < end)


def test_bind_and_port_keys_under_the_prefix():
    assert keys.bind_key("/gslb/", "http", "demo.app.lab.test") == "/gslb/bind/http/demo.app.lab.test"
    assert keys.bind_key("/x/y/", "tcp", "20001") == "/x/y/bind/tcp/20001"
    assert keys.port_key("/gslb/", 20001) == "/gslb/ports/20001"


def test_parse_bind_key_round_trips_and_ignores_foreign_keys():
    assert keys.parse_bind_key("/gslb/", "/gslb/bind/tls/db.app.lab.test") == ("tls", "db.app.lab.test")
    assert keys.parse_bind_key("/gslb/", "/gslb/bind/udp/x") is None
    assert keys.parse_bind_key("/gslb/", "/gslb/bind/http") is None
    assert keys.parse_bind_key("/gslb/", "/gslb/bind/http/a/b") is None
    assert keys.parse_bind_key("/gslb/", "/other/bind/http/a") is None
    assert keys.parse_port_key("/gslb/", "/gslb/ports/20001") == 20001
    assert keys.parse_port_key("/gslb/", "/gslb/ports/020001") is None
    assert keys.parse_port_key("/gslb/", "/gslb/ports/70000") is None


@pytest.mark.parametrize("kind, name", [
    ("http", ""), ("http", "a/b"), ("http", "a b"), ("http", "-a"), ("http", "a" * 254),
    ("udp", "a"), ("tcp", "http"), ("tcp", "020001"), ("tcp", "0"), ("tcp", "65536"), ("tcp", "+1"),
    ("http", "é.example"),
])
def test_bad_names_are_refused(kind, name):
    with pytest.raises(InvalidKey):
        keys.check_name(kind, name)


@pytest.mark.parametrize("kind, name", [
    ("http", "demo.app.lab.test"), ("tls", "*.app.lab.test"), ("http", "a"), ("tcp", "1"), ("tcp", "65535"),
    ("http", "_acme.x"),
])
def test_good_names_pass(kind, name):
    assert keys.check_name(kind, name) == name


@pytest.mark.parametrize("prefix", ["gslb/", "/gslb", "/", "//", "/a b/", "/a//"])
def test_bad_prefixes_are_refused(prefix):
    if prefix == "/":
        assert keys.check_prefix(prefix) == "/"  # the whole key space is allowed
        return
    with pytest.raises(InvalidKey):
        keys.check_prefix(prefix)


def test_b64_round_trip_and_strictness():
    assert keys.b64("/gslb/") == "L2dzbGIv"
    assert keys.unb64("L2dzbGIv") == b"/gslb/"
    with pytest.raises(ValueError):
        keys.unb64("not base64!")
