"""The peer stream header: encode/decode, bounds, and the splice helper's peer-name check."""
from __future__ import annotations

import pytest

from edge.peer.header import PeerHeader
from edge.peer.links import peer_pop
from edge.tunnel.errors import MessageError
from edge.tunnel.messages import MessageReader


def roundtrip(h: PeerHeader) -> PeerHeader:
    objs = MessageReader(max_messages=1).feed(h.encode() + b"after")
    return PeerHeader.from_dict(objs[0])


def test_header_roundtrip_and_rest_of_stream_kept():
    h = PeerHeader(kind="http", endpoint="demo.app.lab.test", session="abc", client_addr="198.19.5.10",
                   client_port=51234, sni="demo.app.lab.test", tls_terminated=True)
    assert roundtrip(h) == h
    r = MessageReader(max_messages=1)
    r.feed(h.encode() + b"GET / HTTP/1.1\r\n")
    assert r.rest == b"GET / HTTP/1.1\r\n"


def test_header_without_sni_and_ipv6_client_normalized():
    h = PeerHeader(kind="tcp", endpoint="20001", session="s", client_addr="2001:DB8::0:1", client_port=1)
    assert b'"sni"' not in h.encode()
    assert roundtrip(h).client_addr == "2001:db8::1"


@pytest.mark.parametrize("change", [
    {"v": 2}, {"kind": "udp"}, {"endpoint": ""}, {"endpoint": "x" * 254}, {"kind": "tcp", "endpoint": "http"},
    {"kind": "tcp", "endpoint": "70000"}, {"client_addr": "not-an-ip"}, {"client_port": 65536},
    {"client_port": True}, {"sni": 5}, {"tls_terminated": "yes"},
])
def test_bad_headers_are_refused(change):
    obj = {"v": 1, "kind": "http", "endpoint": "demo.app.lab.test", "session": "s",
           "client_addr": "198.19.5.10", "client_port": 1}
    obj.update(change)
    with pytest.raises(MessageError):
        PeerHeader.from_dict(obj)


def test_peer_pop_from_certificate_names():
    cert = {"subjectAltName": (("DNS", "eu.peer.lab.test"),)}
    assert peer_pop(cert, "lab.test") == "eu"
    assert peer_pop({"subjectAltName": (("DNS", "demo.app.lab.test"),)}, "lab.test") is None
    assert peer_pop({"subjectAltName": (("DNS", "a.b.peer.lab.test"),)}, "lab.test") is None
    assert peer_pop(None, "lab.test") is None
