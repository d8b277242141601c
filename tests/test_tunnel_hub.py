"""The hub's bind path on a single node (its MemoryRegistry), without
sockets: a stand-in agent connection with the real takeover and lease code."""
from __future__ import annotations

import asyncio

import pytest

from _hub_fakes import FakeConn
from edge.hub import Hub, HubConfig
from edge.registry import MemoryRegistry
from edge.tunnel.errors import ControlError


def hub(**kw):
    return Hub(HubConfig(domain="app.lab.test", **kw), ["good-token"])


def run(coro):
    return asyncio.run(coro)


def test_a_single_node_binds_through_its_memory_registry():
    async def go():
        h = hub()
        assert isinstance(h.registry, MemoryRegistry)
        c = FakeConn(h)
        b = await h.bind(c, "http", "demo", {"allow_cidrs": ["10.0.0.0/8"]})
        held = h.registry.lookup("http", "demo.app.lab.test")
        assert (held.pop, held.session) == ("local", c.session_id)
        assert held.meta["kind"] == "http" and held.meta["options"] == {"allow_cidrs": ["10.0.0.0/8"]}
        t = await h.bind(c, "tcp", "", {})
        assert h.registry.lookup("tcp", t.port).session == c.session_id
        await h.unbind(c, b.binding_id)
        assert h.registry.lookup("http", "demo.app.lab.test") is None
        await c.lease.close()  # the session ends: its port goes with its lease
        assert h.registry.lookup("tcp", t.port) is None
    run(go())


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
    async def go():
        h = hub()
        c = FakeConn(h)
        b = await h.bind(c, "http", "Demo", {})
        assert b.url == "https://demo.app.lab.test" and b.hostname == "demo.app.lab.test"
        assert h.lookup("http", "demo.app.lab.test") is b
        assert h.lookup("http", "DEMO.APP.LAB.TEST.") is b
        assert h.lookup("http", "demo") is b
        assert h.lookup("tls", "demo") is None
        c.is_closed = True
        assert h.lookup("http", "demo") is None  # a dying session serves nothing
    run(go())


def test_duplicate_name_across_http_and_tls_is_refused_and_changes_nothing():
    async def go():
        h = hub()
        c1, c2 = FakeConn(h), FakeConn(h)
        b = await h.bind(c1, "http", "demo", {})
        for kind in ("http", "tls"):
            with pytest.raises(ControlError) as info:
                await h.bind(c2, kind, "demo", {})
            assert info.value.code == "name_in_use" and "already online" in info.value.message
        assert h.bindings() == [b] and c2.bindings == {}
        assert h.registry.lookup("http", "demo.app.lab.test").session == c1.session_id
    run(go())


def test_same_agent_reconnecting_takes_its_name_over():
    async def go():
        h = hub()
        old, new = FakeConn(h, "agent-1"), FakeConn(h, "agent-1")
        await h.bind(old, "http", "demo", {})
        b = await h.bind(new, "http", "demo", {})
        assert old.closed and old.bindings == {}
        assert h.lookup("http", "demo") is b
        assert h.registry.lookup("http", "demo.app.lab.test").session == new.session_id
        await old.lease.close()  # the old session's end later takes nothing with it
        assert h.lookup("http", "demo") is b
        assert h.registry.lookup("http", "demo.app.lab.test").session == new.session_id
    run(go())


def test_another_token_with_the_same_agent_id_does_not_take_over():
    async def go():
        h = hub()
        old, other = FakeConn(h, "agent-1"), FakeConn(h, "agent-1", token="other-token")
        b = await h.bind(old, "http", "demo", {})
        with pytest.raises(ControlError) as info:
            await h.bind(other, "http", "demo", {})
        assert info.value.code == "name_in_use" and not old.closed
        assert h.lookup("http", "demo") is b
    run(go())


def test_tcp_ports_allocated_lowest_first_and_reused_after_unbind():
    async def go():
        h = hub(tcp_port_range=(20000, 20002))
        c = FakeConn(h)
        ports = [(await h.bind(c, "tcp", "", {})).port for _ in range(3)]
        assert ports == [20000, 20001, 20002]
        with pytest.raises(ControlError) as info:
            await h.bind(c, "tcp", "", {})
        assert info.value.code == "port_range_exhausted"
        mid = h.lookup("tcp", 20001)
        await h.unbind(c, mid.binding_id)
        assert h.lookup("tcp", 20001) is None
        assert (await h.bind(c, "tcp", "", {})).port == 20001
    run(go())


def test_unbind_connection_frees_everything_and_notifies():
    async def go():
        h = hub()
        seen = []
        h.add_listener(lambda what, b: seen.append((what, b.url)))
        c = FakeConn(h)
        await h.bind(c, "http", "a", {})
        await h.bind(c, "tcp", "", {"proxy_protocol": True})
        h.unbind_connection(c)
        assert h.bindings() == []
        assert [w for w, _ in seen] == ["bind", "bind", "unbind", "unbind"]
    run(go())


def test_unbind_of_another_sessions_binding_is_refused():
    async def go():
        h = hub()
        c1, c2 = FakeConn(h), FakeConn(h)
        b = await h.bind(c1, "http", "a", {})
        with pytest.raises(ControlError) as info:
            await h.unbind(c2, b.binding_id)
        assert info.value.code == "unknown_binding"
        assert h.lookup("http", "a") is b
    run(go())


@pytest.mark.parametrize(
    "kind, name, options, match",
    [
        ("http", "-bad", {}, "DNS label"),
        ("http", "a.b", {}, "does not serve custom domains"),   # a name with a dot is a custom domain
        ("http", "ok", {"proxy_protocol": True}, "headers"),
        ("http", "ok", {"terminate_at": "edge"}, "not valid for http"),
        ("tls", "ok", {"terminate_at": "middle"}, "'edge' or 'agent'"),
        ("tcp", "named", {}, "no name"),
        ("tcp", "", {"allow_cidrs": ["10.0.0.300/8"]}, "allow_cidrs"),
        ("tcp", "", {"proxy_protocol": "yes"}, "true or false"),
        ("http", "ok", {"rate_limit": "100/d"}, "option 'rate_limit': '100/d' is not a rate"),
        ("tcp", "", {"rate_limit": "100/s"}, "'rate_limit' is not valid for tcp"),
        ("http", "ok", {"circuit_breaker": {"window": 0.5}}, r"circuit_breaker'\.window: 0\.5 s is outside"),
    ],
)
def test_bad_bind_requests_are_refused_precisely(kind, name, options, match):
    async def go():
        h = hub()
        with pytest.raises(ControlError, match=match) as info:
            await h.bind(FakeConn(h), kind, name, options)
        assert info.value.code == "bad_request"
        assert h.bindings() == [] and h.registry.bindings() == []
    run(go())


def test_tls_binding_defaults_to_passthrough_and_normalizes_cidrs():
    async def go():
        h = hub()
        b = await h.bind(FakeConn(h), "tls", "sec",
                         {"allow_cidrs": ["10.1.2.3/8", "2001:db8::1/32"], "proxy_protocol": True})
        assert b.terminate_at == "agent" and b.proxy_protocol
        assert b.options["allow_cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]
        assert b.url == "tls://sec.app.lab.test:443"
    run(go())


def test_endpoint_urls_name_the_edges_tls_port_when_it_is_not_443():
    async def go():
        h = hub(https_port=8443, tcp_host="0.tcp.lab.test")
        conn = FakeConn(h)
        web = await h.bind(conn, "http", "web", {})
        sec = await h.bind(conn, "tls", "sec", {})
        raw = await h.bind(conn, "tcp", "", {})
        assert web.url == "https://web.app.lab.test:8443"
        assert sec.url == "tls://sec.app.lab.test:8443"
        assert raw.url == f"tcp://0.tcp.lab.test:{raw.port}"   # its own port, never the TLS one
    run(go())
    assert HubConfig(domain="app.lab.test").endpoint_url("http", "web.app.lab.test") == "https://web.app.lab.test"


def test_http_binding_keeps_protection_options_as_their_modules_normalized_them():
    async def go():
        h = hub()
        b = await h.bind(FakeConn(h), "http", "web", {"circuit_breaker": ["0.5"], "rate_limit": ["100/s"]})
        assert dict(b.options) == {"circuit_breaker": {"error_threshold": 0.5}, "rate_limit": {"rate": "100/s"}}
    run(go())


def test_an_option_whose_module_the_edge_does_not_run_is_refused_not_ignored():
    async def go():
        h = hub(modules=frozenset({"ip_restriction"}))
        with pytest.raises(ControlError, match="needs module rate_limit, which this edge does not run") as info:
            await h.bind(FakeConn(h), "http", "web", {"rate_limit": "100/s"})
        assert info.value.code == "bad_request" and h.bindings() == []
        b = await h.bind(FakeConn(h), "http", "web", {"allow_cidrs": ["10.0.0.0/8"]})   # its module runs
        assert b.options["allow_cidrs"] == ["10.0.0.0/8"]
    run(go())
