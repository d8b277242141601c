"""Control messages and proxy headers (docs/protocol.md 3-4), sans-IO."""
from __future__ import annotations

import json
import struct

import pytest

from edge.tunnel import messages as M
from edge.tunnel.errors import MessageError


def test_encode_is_length_prefixed_compact_json():
    raw = M.encode({"type": "heartbeat", "id": 7})
    assert raw == struct.pack(">I", 27) + b'{"type":"heartbeat","id":7}'
    assert json.loads(raw[4:]) == {"type": "heartbeat", "id": 7}


def test_reader_reassembles_messages_split_anywhere():
    wire = M.encode_message(M.Heartbeat(1)) + M.encode_message(M.Bind(2, "http", "demo", {"allow_cidrs": ["10.0.0.0/8"]}))
    for cut in range(len(wire) + 1):
        r = M.MessageReader()
        got = r.feed(wire[:cut]) + r.feed(wire[cut:])
        assert [M.parse_message(o) for o in got] == [M.Heartbeat(1), M.Bind(2, "http", "demo", {"allow_cidrs": ["10.0.0.0/8"]})]


def test_reader_with_max_messages_keeps_the_payload_after_the_header():
    h = M.ProxyHeader("b1", "tcp", "tcp:20000", "198.19.5.10", 4242)
    r = M.MessageReader(max_messages=1)
    (obj,) = r.feed(h.encode() + b"payload bytes")
    assert M.ProxyHeader.from_dict(obj) == h
    assert r.rest == b"payload bytes" and r.done


@pytest.mark.parametrize(
    "raw, match",
    [
        (struct.pack(">I", 0), "outside"),
        (struct.pack(">I", M.MAX_MESSAGE_SIZE + 1), "outside"),
        (struct.pack(">I", 3) + b"\xff\xfe\xfd", "not UTF-8 JSON"),
        (struct.pack(">I", 2) + b"[]", "not a JSON object"),
        # 64 KiB of nesting: RecursionError inside json, a framing error here (bench.faults found it)
        (struct.pack(">I", 60000) + b"[" * 30000 + b"]" * 30000, "nested too deep"),
    ],
)
def test_reader_rejects_bad_framing(raw, match):
    with pytest.raises(MessageError, match=match):
        M.MessageReader().feed(raw)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"type": "auth", "id": 1}, "missing 'authtoken'"),
        ({"type": "auth", "id": 1, "authtoken": 5}, "wrong type"),
        ({"type": "auth", "id": 1, "authtoken": "t", "heartbeat_timeout": 0}, "between"),
        ({"type": "bind", "id": 1, "kind": "udp"}, "not one of"),
        ({"type": "bind", "id": True, "kind": "http"}, "wrong type"),
        ({"type": "nope", "id": 1}, "unknown message type"),
        ({"type": "heartbeat"}, "missing 'id'"),
    ],
)
def test_parse_message_names_the_problem(obj, match):
    with pytest.raises(MessageError, match=match):
        M.parse_message(obj)


def test_auth_repr_never_shows_the_authtoken():
    msg = M.Auth(1, "s3cret-token", "0.1", 10.0, 15.0)
    assert "s3cret-token" not in repr(msg)


def test_every_message_round_trips():
    msgs = [
        M.Auth(1, "tok", "0.1.0", 10.0, 15.0, "agentid"),
        M.AuthOk(1, "sess"),
        M.Bind(2, "tls", "x", {"terminate_at": "edge"}),
        M.BindOk(2, "bid", "https://x.app.lab.test", "x.app.lab.test", None),
        M.BindOk(3, "bid", "tcp://app.lab.test:20000", None, 20000),
        M.Unbind(4, "bid"),
        M.UnbindOk(4),
        M.Heartbeat(5),
        M.HeartbeatOk(5),
        M.Error(6, "name_in_use", "taken"),
    ]
    r = M.MessageReader()
    got = r.feed(b"".join(M.encode_message(m) for m in msgs))
    assert [M.parse_message(o) for o in got] == msgs


def test_proxy_header_rejects_unknown_version_and_bad_port():
    with pytest.raises(MessageError, match="version"):
        M.ProxyHeader.from_dict({"v": 2})
    h = json.loads(M.ProxyHeader("b", "http", "x", "1.2.3.4", 1).encode()[4:])
    h["client_port"] = 70000
    with pytest.raises(MessageError, match="client_port"):
        M.ProxyHeader.from_dict(h)


def test_auth_optional_fields_take_the_documented_defaults():
    # docs/protocol.md 3.2 and 3.5: one default each, the agent's
    msg = M.parse_message({"type": "auth", "id": 1, "authtoken": "t"})
    assert (msg.heartbeat_interval, msg.heartbeat_timeout, msg.agent_version, msg.agent_id) == (10.0, 15.0, "", "")


def test_bind_options_and_tcp_name_are_optional():
    msg = M.parse_message({"type": "bind", "id": 2, "kind": "tcp"})
    assert (msg.name, msg.options) == ("", {})
