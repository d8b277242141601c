"""The hub on a registry: binds go through it (one name space for every PoP),
errors become the agent's control errors (ControlError), routes to other PoPs are cached
and dropped on registry events. Two hubs sharing one MemoryRegistry play two
PoPs; a registry that fails writes plays etcd without quorum."""
from __future__ import annotations

import asyncio

from _hub_fakes import FakeConn
from edge.hub import Hub, HubConfig, LocalEndpoint, RemoteEndpoint
from edge.registry import MemoryRegistry, RegistryUnavailable
from edge.tunnel import messages as M
from edge.tunnel.errors import ControlError


def run(coro):
    return asyncio.run(coro)


class Peers:
    def __init__(self):
        self.opened = []

    async def open_stream(self, pop, header):
        self.opened.append((pop, header))
        return "stream"


async def bind(hub, conn, kind, name, options):
    """The endpoint, or the ControlError the agent would get as its error."""
    try:
        return await hub.bind(conn, kind, name, options)
    except ControlError as exc:
        return exc


def two_pops(reg):
    peers = Peers()
    eu = Hub(HubConfig(domain="app.lab.test", pop="eu", tcp_port_range=(20000, 20001)), ["good-token"],
             registry=reg, peers=peers)
    us = Hub(HubConfig(domain="app.lab.test", pop="us", tcp_port_range=(20000, 20001)), ["good-token"],
             registry=reg, peers=peers)
    return eu, us, peers


def test_name_is_unique_across_pops_and_kinds_and_the_error_says_where():
    async def go():
        reg = MemoryRegistry()
        eu, us, _ = two_pops(reg)
        a = FakeConn(eu)
        ok = await bind(eu, a, "http", "Demo", {})
        assert isinstance(ok, LocalEndpoint) and ok.url == "https://demo.app.lab.test"
        for kind in ("http", "tls"):
            err = await bind(us, FakeConn(us), kind, "demo", {})
            assert isinstance(err, ControlError) and err.code == M.ERR_NAME_IN_USE
            assert "already online" in err.message and "at PoP eu" in err.message
        assert us.local_lookup("http", "demo") is None
    run(go())


def test_other_pops_endpoint_is_a_remote_binding_through_the_peer_link_until_unbound():
    async def go():
        reg = MemoryRegistry()
        eu, us, peers = two_pops(reg)
        a = FakeConn(eu)
        await bind(eu, a, "tls", "sec", {"terminate_at": "edge", "proxy_protocol": True})
        rb = us.lookup("tls", "sec.app.lab.test")
        assert isinstance(rb, RemoteEndpoint) and rb.pop == "eu" and rb.session == a.session_id
        assert rb.terminate_at == "edge" and rb.proxy_protocol
        assert us.lookup("http", "sec") is None  # bound as tls, not http
        assert us.lookup("tls", "sec") is rb  # cached
        assert await rb.open_stream("198.19.5.10", 4000, sni="sec.app.lab.test", tls_terminated=True) == "stream"
        pop, header = peers.opened[0]
        assert pop == "eu" and header.endpoint == "sec.app.lab.test" and header.kind == "tls"
        assert header.client_addr == "198.19.5.10" and header.tls_terminated
        assert eu.lookup("tls", "sec").connection is a  # local at its own PoP
        local = eu.lookup("tls", "sec")
        assert await eu.unbind(a, local.binding_id) is local
        assert us.lookup("tls", "sec") is None  # the registry event dropped the cached route
    run(go())


def test_tcp_ports_are_global_and_exhaustion_is_reported():
    async def go():
        reg = MemoryRegistry()
        eu, us, _ = two_pops(reg)
        p1 = await bind(eu, FakeConn(eu), "tcp", "", {})
        p2 = await bind(us, FakeConn(us), "tcp", "", {})
        assert {p1.port, p2.port} == {20000, 20001}
        err = await bind(eu, FakeConn(eu), "tcp", "", {})
        assert err.code == M.ERR_PORT_RANGE_EXHAUSTED and "port range exhausted" in err.message
        assert isinstance(eu.lookup("tcp", p2.port), RemoteEndpoint)
    run(go())


def test_same_agent_reconnected_at_another_pop_takes_its_name_over():
    async def go():
        reg = MemoryRegistry()
        eu, us, _ = two_pops(reg)
        old = FakeConn(eu, agent_id="agent-1")
        await bind(eu, old, "http", "demo", {})
        other_agent = await bind(us, FakeConn(us, agent_id="agent-2"), "http", "demo", {})
        assert other_agent.code == M.ERR_NAME_IN_USE
        wrong_token = await bind(us, FakeConn(us, agent_id="agent-1", token="other"), "http", "demo", {})
        assert wrong_token.code == M.ERR_NAME_IN_USE
        new = FakeConn(us, agent_id="agent-1")
        ok = await bind(us, new, "http", "demo", {})
        assert isinstance(ok, LocalEndpoint)
        held = reg.lookup("http", "demo.app.lab.test")
        assert (held.pop, held.session) == ("us", new.session_id)
        assert eu.local_lookup("http", "demo") is None and old.bindings == {}  # eu stops serving its old session
        assert isinstance(eu.lookup("http", "demo"), RemoteEndpoint)
        await old.lease.close()  # the old lease ending later takes nothing with it
        assert reg.lookup("http", "demo.app.lab.test").session == new.session_id
    run(go())


class NoQuorum(MemoryRegistry):
    async def bind(self, *a, **kw):
        raise RegistryUnavailable("etcd has no quorum: test", outcome_unknown=True)


def test_registry_unavailable_is_a_retryable_error_and_changes_nothing_local():
    async def go():
        hub = Hub(HubConfig(domain="app.lab.test", pop="eu"), ["good-token"], registry=NoQuorum())
        c = FakeConn(hub)
        err = await bind(hub, c, "http", "demo", {})
        assert err.code == M.ERR_REGISTRY_UNAVAILABLE and "retry" in err.message
        assert hub.bindings() == [] and c.bindings == {}
        err = await bind(hub, c, "tcp", "", {})
        assert err.code == M.ERR_REGISTRY_UNAVAILABLE
        assert hub.registry._ports == {}  # the port allocated before the failed bind was released
    run(go())


def test_auth_ok_carries_the_ingress_list():
    ingress = ({"pop": "us", "name": "us.connect.lab.test", "addresses": ["198.19.1.1:443"]},)
    hub = Hub(HubConfig(domain="app.lab.test", pop="eu", ingress=ingress), ["good-token"])
    ok = M.AuthOk(1, "s", ingress=[dict(e) for e in ingress])
    parsed = M.parse_message(M.to_dict(ok))
    assert parsed.ingress == list(ingress)
    assert M.parse_message({"type": "auth_ok", "id": 1, "session_id": "s", "ingress": [{"x": 1}, 5]}).ingress == []
    assert hub.config.ingress == ingress
