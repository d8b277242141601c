"""The hub's registry logic, without sockets (a stand-in agent connection)."""
from __future__ import annotations

import pytest

from edge.hub import Hub, HubConfig
from edge.tunnel.errors import ControlError


class FakeConn:
    def __init__(self, agent_id=None):
        self.bindings = {}
        self.is_closed = False
        self.session_id = "s"
        self.agent_id = agent_id
        self.closed = False

    def takes_over(self, other):
        return self.agent_id is not None and other is not self and self.agent_id == other.agent_id

    def close(self):
        self.closed = True
        self.is_closed = True


def hub(**kw):
    return Hub(HubConfig(domain="app.lab.test", **kw), ["good-token"])


def test_authtoken_check():
    h = hub()
    assert h.check_authtoken("good-token")
    assert not h.check_authtoken("good-token ")
    assert not h.check_authtoken("")


def test_load_authtokens_skips_comments_and_rejects_spaces(tmp_path):
    p = tmp_path / "tokens"
    p.write_text("# lab\n\ntok1\n  tok2  \n")
    assert Hub.load_authtokens(p) == ["tok1", "tok2"]
    p.write_text("tok 1\n")
    with pytest.raises(ValueError, match=r"tokens:1: authtoken"):
        Hub.load_authtokens(p)


def test_bind_http_lookup_by_hostname_or_label_case_insensitive():
    h = hub()
    c = FakeConn()
    b = h.bind(c, "http", "Demo", {})
    assert b.url == "https://demo.app.lab.test" and b.hostname == "demo.app.lab.test"
    assert h.lookup("http", "demo.app.lab.test") is b
    assert h.lookup("http", "DEMO.APP.LAB.TEST.") is b
    assert h.lookup("http", "demo") is b
    assert h.lookup("tls", "demo") is None
    c.is_closed = True
    assert h.lookup("http", "demo") is None  # a dying session serves nothing


def test_duplicate_name_across_http_and_tls_is_refused_and_changes_nothing():
    h = hub()
    c1, c2 = FakeConn(), FakeConn()
    b = h.bind(c1, "http", "demo", {})
    for kind in ("http", "tls"):
        with pytest.raises(ControlError) as info:
            h.bind(c2, kind, "demo", {})
        assert info.value.code == "name_in_use" and "already online" in info.value.message
    assert h.bindings() == [b] and c2.bindings == {}


def test_same_agent_reconnecting_takes_its_name_over():
    h = hub()
    old, new = FakeConn("agent-1"), FakeConn("agent-1")
    h.bind(old, "http", "demo", {})
    b = h.bind(new, "http", "demo", {})
    assert old.closed and old.bindings == {}
    assert h.lookup("http", "demo") is b


def test_tcp_ports_allocated_lowest_first_and_reused_after_unbind():
    h = hub(tcp_port_range=(20000, 20002))
    c = FakeConn()
    ports = [h.bind(c, "tcp", "", {}).port for _ in range(3)]
    assert ports == [20000, 20001, 20002]
    with pytest.raises(ControlError) as info:
        h.bind(c, "tcp", "", {})
    assert info.value.code == "port_range_exhausted"
    mid = h.lookup("tcp", 20001)
    h.unbind(mid.binding_id, c)
    assert h.lookup("tcp", 20001) is None
    assert h.bind(c, "tcp", "", {}).port == 20001


def test_unbind_connection_frees_everything_and_notifies():
    h = hub()
    seen = []
    h.add_listener(lambda what, b: seen.append((what, b.url)))
    c = FakeConn()
    h.bind(c, "http", "a", {})
    h.bind(c, "tcp", "", {"proxy_protocol": True})
    h.unbind_connection(c)
    assert h.bindings() == []
    assert [w for w, _ in seen] == ["bind", "bind", "unbind", "unbind"]


def test_unbind_of_another_sessions_binding_is_refused():
    h = hub()
    c1, c2 = FakeConn(), FakeConn()
    b = h.bind(c1, "http", "a", {})
    with pytest.raises(ControlError) as info:
        h.unbind(b.binding_id, c2)
    assert info.value.code == "unknown_binding"
    assert h.lookup("http", "a") is b


@pytest.mark.parametrize(
    "kind, name, options, match",
    [
        ("http", "-bad", {}, "DNS label"),
        ("http", "a.b", {}, "DNS label"),
        ("http", "ok", {"proxy_protocol": True}, "headers"),
        ("http", "ok", {"terminate_at": "edge"}, "not valid for http"),
        ("tls", "ok", {"terminate_at": "middle"}, "'edge' or 'agent'"),
        ("tcp", "named", {}, "no name"),
        ("tcp", "", {"allow_cidrs": ["10.0.0.300/8"]}, "allow_cidrs"),
        ("tcp", "", {"proxy_protocol": "yes"}, "true or false"),
    ],
)
def test_bad_bind_requests_are_refused_precisely(kind, name, options, match):
    h = hub()
    with pytest.raises(ControlError, match=match) as info:
        h.bind(FakeConn(), kind, name, options)
    assert info.value.code == "bad_request"
    assert h.bindings() == []


def test_tls_binding_defaults_to_passthrough_and_normalizes_cidrs():
    h = hub()
    b = h.bind(FakeConn(), "tls", "sec", {"allow_cidrs": ["10.1.2.3/8", "2001:db8::1/32"], "proxy_protocol": True})
    assert b.terminate_at == "agent" and b.proxy_protocol
    assert b.options["allow_cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert b.url == "tls://sec.app.lab.test:443"
