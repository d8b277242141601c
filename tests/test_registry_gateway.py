"""Parsing and building etcd 3.4 JSON gateway messages (edge/registry/gateway.py).

Answers below are shaped like those captured from etcd 3.4.23 (docs/registry.md):
int64 as strings, base64 bytes, default-valued fields left out.
"""
from __future__ import annotations

import json

import pytest

from edge.registry import gateway as gw
from edge.registry.errors import GatewayProtocolError
from edge.registry.keys import b64

HEADER = {"cluster_id": "8570459336700167655", "member_id": "8645782499530242234", "revision": "7", "raft_term": "2"}


def kv(key: str, value: str, mod: int, lease: int = 0) -> dict:
    out = {"key": b64(key), "create_revision": str(mod), "mod_revision": str(mod), "version": "1", "value": b64(value)}
    if lease:
        out["lease"] = str(lease)
    return out


def line(result: dict) -> bytes:
    return json.dumps({"result": result}).encode()


def test_watch_put_event_has_no_type_field_and_is_a_put():
    msg = gw.parse_watch_line(line({"header": HEADER, "events": [{"kv": kv("/gslb/bind/http/a", "{}", 7, 99)}]}))
    assert msg.revision == 7 and not msg.created
    (ev,) = msg.events
    assert ev.type == "put"
    assert ev.kv.key == b"/gslb/bind/http/a" and ev.kv.value == b"{}"
    assert (ev.kv.mod_revision, ev.kv.lease) == (7, 99)


def test_watch_delete_event_has_type_and_no_value():
    msg = gw.parse_watch_line(line({"header": HEADER, "events": [
        {"type": "DELETE", "kv": {"key": b64("/gslb/bind/http/a"), "mod_revision": "8"}}]}))
    (ev,) = msg.events
    assert ev.type == "delete" and ev.kv.value == b"" and ev.kv.mod_revision == 8 and ev.kv.lease == 0


def test_watch_created_compacted_and_canceled_messages():
    assert gw.parse_watch_line(line({"header": HEADER, "created": True})).created
    msg = gw.parse_watch_line(line({"header": HEADER, "canceled": True, "compact_revision": "5",
                                    "cancel_reason": "mvcc: required revision has been compacted"}))
    assert msg.canceled and msg.compact_revision == 5 and "compacted" in msg.cancel_reason


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"result": 3}', b'{"error": {"grpc_code": 14, "message": "no leader"}}',
    json.dumps({"result": {"header": HEADER, "events": [{"type": "PATCH", "kv": {}}]}}).encode(),
    json.dumps({"result": {"header": HEADER, "events": [{"kv": {"key": "!!"}}]}}).encode(),
    json.dumps({"result": {"header": {"revision": "x7"}}}).encode(),
    json.dumps({"result": {"events": []}}).encode(),
])
def test_malformed_watch_lines_raise_a_typed_error(raw):
    with pytest.raises(GatewayProtocolError):
        gw.parse_watch_line(raw)


def test_failed_txn_has_no_succeeded_field_and_carries_the_holder():
    answer = {"header": HEADER, "responses": [{"response_range": {
        "header": {"revision": "7"}, "kvs": [kv("/gslb/bind/http/a", '{"pop":"eu"}', 2, 41)], "count": "1"}}]}
    res = gw.parse_txn(answer)
    assert res.succeeded is False and res.revision == 7
    (held,) = res.range_kvs(0)
    assert held.lease == 41 and held.create_revision == 2


def test_successful_txn_and_range_of_nothing():
    res = gw.parse_txn({"header": HEADER, "succeeded": True, "responses": [{"response_put": {"header": {}}}]})
    assert res.succeeded
    with pytest.raises(GatewayProtocolError):
        res.range_kvs(0)  # a put, not a range
    assert gw.parse_range({"header": HEADER}) == ((), 7, False)


def test_keepalive_of_an_unknown_lease_has_no_ttl():
    assert gw.parse_keepalive({"result": {"header": HEADER, "ID": "12345"}}) == 0
    assert gw.parse_keepalive({"result": {"header": HEADER, "ID": "12345", "TTL": "5"}}) == 5


def test_lease_grant_ids_are_strings():
    assert gw.parse_lease_grant({"header": HEADER, "ID": "8699443896677545222", "TTL": "5"}) == (8699443896677545222, 5)
    with pytest.raises(GatewayProtocolError):
        gw.parse_lease_grant({"header": HEADER, "ID": "0", "TTL": "5"})


def test_error_body_gives_grpc_code_and_message():
    err = gw.parse_error(503, b'{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}')
    assert (err.status, err.code, err.etcd_message) == (503, 14, "etcdserver: request timed out")
    err = gw.parse_error(502, b"<html>bad gateway</html>")
    assert err.code == 0 and "bad gateway" in err.etcd_message


def test_requests_encode_int64_as_strings_and_bytes_as_base64():
    assert gw.compare_absent(b"/k") == {"target": "CREATE", "result": "EQUAL", "key": b64("/k"), "create_revision": "0"}
    assert gw.compare_lease(b"/k", 2**63 - 1)["lease"] == str(2**63 - 1)
    assert gw.op_put(b"/k", b"v", 5) == {"request_put": {"key": b64("/k"), "value": b64("v"), "lease": "5"}}
    assert "lease" not in gw.op_put(b"/k", b"v")["request_put"]
    body = gw.watch_create(b"/gslb/bind/", b"/gslb/bind0", 42)
    assert body == {"create_request": {"key": b64("/gslb/bind/"), "range_end": b64("/gslb/bind0"), "start_revision": "42"}}
    assert gw.range_request(b"/a", b"/b", keys_only=True, limit=10) == {
        "key": b64("/a"), "range_end": b64("/b"), "keys_only": True, "limit": "10"}


def test_line_splitter_reassembles_lines_across_chunks():
    s = gw.LineSplitter()
    assert s.feed(b'{"a":') == []
    assert s.feed(b'1}\n{"b"') == [b'{"a":1}']
    assert s.feed(b':2}\n\n') == [b'{"b":2}']


def test_line_splitter_refuses_an_unbounded_line():
    s = gw.LineSplitter(max_line=16)
    s.feed(b"x" * 10)
    with pytest.raises(GatewayProtocolError):
        s.feed(b"y" * 10)
