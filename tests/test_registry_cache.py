"""The local binding view fed by snapshots and watch events (edge/registry/cache.py)."""
from __future__ import annotations

import json

from edge.registry.cache import BindingCache
from edge.registry.gateway import KeyValue, WatchEvent


def kv(key: str, mod: int, pop: str = "eu", session: str = "s1", lease: int = 7, value: bytes | None = None) -> KeyValue:
    if value is None:
        value = json.dumps({"pop": pop, "session": session, "meta": {}}).encode()
    return KeyValue(key.encode(), value, mod, mod, 1, lease)


def put(key: str, mod: int, **kw) -> WatchEvent:
    return WatchEvent("put", kv(key, mod, **kw))


def delete(key: str, mod: int) -> WatchEvent:
    return WatchEvent("delete", KeyValue(key.encode(), b"", 0, mod, 0, 0))


def test_snapshot_then_events_keep_the_view_and_revision():
    c = BindingCache()
    c.replace([kv("/gslb/bind/http/a", 3)], revision=5)
    assert c.lookup("http", "a").pop == "eu" and c.revision == 5
    c.apply([put("/gslb/bind/http/b", 6, pop="us"), delete("/gslb/bind/http/a", 7)])
    assert c.lookup("http", "a") is None
    assert c.lookup("http", "b").pop == "us"
    assert c.revision == 7


def test_replayed_events_after_a_resume_change_nothing():
    c = BindingCache()
    events = []
    c.subscribe(events.append)
    c.apply([put("/gslb/bind/tls/x", 4)])
    c.apply([put("/gslb/bind/tls/x", 4)])  # the same event again
    assert [e.type for e in events] == ["put"]
    c.apply([delete("/gslb/bind/tls/x", 3)])  # older than what we hold
    assert c.lookup("tls", "x") is not None


def test_relist_tells_subscribers_only_what_differs():
    c = BindingCache()
    c.replace([kv("/gslb/bind/http/keep", 2), kv("/gslb/bind/http/gone", 3)], revision=3)
    events = []
    c.subscribe(events.append)
    c.replace([kv("/gslb/bind/http/keep", 2), kv("/gslb/bind/http/new", 9)], revision=9)
    assert sorted((e.type, e.name) for e in events) == [("delete", "gone"), ("put", "new")]


def test_unreadable_value_is_no_route_and_foreign_keys_are_ignored():
    c = BindingCache()
    c.apply([put("/gslb/bind/http/a", 2)])
    c.apply([put("/gslb/bind/http/a", 3, value=b"not json"), put("/gslb/ports/20001", 4),
             put("/gslb/bind/udp/x", 5), put("/gslb/bind/http/b", 6, value=b'{"pop": 1}')])
    assert c.lookup("http", "a") is None
    assert c.lookup("http", "b") is None
    assert len(c) == 0 and c.revision == 6


def test_a_failing_subscriber_does_not_stop_the_others():
    c = BindingCache()
    seen = []

    def bad(event):
        raise RuntimeError("boom")

    c.subscribe(bad)
    unsubscribe = c.subscribe(seen.append)
    c.apply([put("/gslb/bind/http/a", 2)])
    assert len(seen) == 1
    unsubscribe()
    c.apply([put("/gslb/bind/http/b", 3)])
    assert len(seen) == 1


def test_event_carries_the_old_binding_on_delete():
    c = BindingCache()
    c.apply([put("/gslb/bind/http/a", 2, pop="jp")])
    events = []
    c.subscribe(events.append)
    c.apply([delete("/gslb/bind/http/a", 3)])
    (e,) = events
    assert e.type == "delete" and e.binding.pop == "jp" and e.revision == 3
