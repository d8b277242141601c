"""MemoryRegistry: the single-node registry, same interface as EtcdRegistry."""
from __future__ import annotations

import asyncio
import random

import pytest

from edge.registry import InvalidKey, LeaseLost, MemoryRegistry, NameTaken, PortNotHeld, PortsExhausted
from edge.registry.memory import port_candidates


def run(coro):
    return asyncio.run(coro)


def test_bind_lookup_and_duplicate_name_names_the_holder():
    async def go():
        r = MemoryRegistry()
        a = await r.open_session("eu", "sa")
        b = await r.open_session("us", "sb")
        bound = await r.bind("http", "demo.app.lab.test", "eu", "sa", a, {"proto": "http"})
        assert r.lookup("http", "demo.app.lab.test") == bound
        assert dict(bound.meta) == {"proto": "http"}
        with pytest.raises(NameTaken) as info:
            await r.bind("http", "demo.app.lab.test", "us", "sb", b)
        assert (info.value.pop, info.value.session) == ("eu", "sa")
        assert await r.bind("http", "demo.app.lab.test", "eu", "sa", a) == bound  # idempotent for the holder
        assert r.lookup("tls", "demo.app.lab.test") is None  # kinds are separate spaces
    run(go())


def test_unbind_only_by_the_holder_and_twice_is_harmless():
    async def go():
        r = MemoryRegistry()
        a = await r.open_session("eu", "sa")
        b = await r.open_session("us", "sb")
        await r.bind("tls", "x.lab.test", "eu", "sa", a)
        assert not await r.unbind("tls", "x.lab.test", "sb", b)
        assert await r.unbind("tls", "x.lab.test", "sa", a)
        assert not await r.unbind("tls", "x.lab.test", "sa", a)
        assert r.lookup("tls", "x.lab.test") is None
    run(go())


def test_closing_a_lease_removes_its_bindings_and_ports_and_tells_subscribers():
    async def go():
        r = MemoryRegistry()
        events = []
        r.subscribe(events.append)
        a = await r.open_session("eu", "sa")
        port = await r.allocate_port("sa", a, 20000, 20000)
        await r.bind("tcp", str(port), "eu", "sa", a)
        await r.bind("http", "a.lab.test", "eu", "sa", a)
        await a.close()
        assert not a.alive and await a.wait_lost() == "closed"
        assert r.bindings() == []
        assert sorted((e.type, e.kind) for e in events) == [
            ("delete", "http"), ("delete", "tcp"), ("put", "http"), ("put", "tcp")]
        b = await r.open_session("us", "sb")
        assert await r.allocate_port("sb", b, 20000, 20000) == 20000  # freed with the lease
        with pytest.raises(LeaseLost):
            await r.bind("http", "b.lab.test", "eu", "sa", a)
    run(go())


def test_ports_are_distinct_until_exhausted_and_preferred_is_tried_first():
    async def go():
        r = MemoryRegistry(rng=random.Random(1))
        a = await r.open_session("eu", "sa")
        got = [await r.allocate_port("sa", a, 20000, 20009, preferred=20005)]
        assert got == [20005]
        for _ in range(9):
            got.append(await r.allocate_port("sa", a, 20000, 20009, preferred=20005))
        assert sorted(got) == list(range(20000, 20010))
        with pytest.raises(PortsExhausted) as info:
            await r.allocate_port("sa", a, 20000, 20009)
        assert (info.value.lo, info.value.hi) == (20000, 20009)
    run(go())


def test_tcp_bind_needs_the_port_and_unbind_frees_it():
    async def go():
        r = MemoryRegistry()
        a = await r.open_session("eu", "sa")
        b = await r.open_session("us", "sb")
        with pytest.raises(PortNotHeld):
            await r.bind("tcp", "20001", "eu", "sa", a)
        port = await r.allocate_port("sa", a, 20001, 20001)
        with pytest.raises(PortNotHeld):
            await r.bind("tcp", str(port), "us", "sb", b)  # held by another session
        await r.bind("tcp", str(port), "eu", "sa", a)
        assert r.lookup("tcp", port) == r.lookup("tcp", str(port)) is not None  # by port number too
        with pytest.raises(PortNotHeld):
            await r.release_port(port, "sa", a)  # still bound
        assert await r.unbind("tcp", str(port), "sa", a)
        assert await r.allocate_port("sb", b, 20001, 20001) == 20001
        assert not await r.release_port(20001, "sa", a)
        assert await r.release_port(20001, "sb", b)
    run(go())


def test_bad_input_is_refused_and_changes_nothing():
    async def go():
        r = MemoryRegistry()
        a = await r.open_session("eu", "sa")
        for kind, name in (("udp", "x"), ("http", "a/b"), ("tcp", "x")):
            with pytest.raises(InvalidKey):
                await r.bind(kind, name, "eu", "sa", a)
        with pytest.raises(InvalidKey):
            await r.bind("http", "ok.lab.test", "eu", "sa", a, {"blob": "x" * 5000})
        with pytest.raises(InvalidKey):
            await r.bind("http", "ok.lab.test", "eu", "sa", a, {"f": object()})
        with pytest.raises(InvalidKey):
            await r.bind("http", "ok.lab.test", "eu", "other-session", a)
        with pytest.raises(InvalidKey):
            await r.allocate_port("sa", a, 20010, 20000)
        with pytest.raises(InvalidKey):
            await r.allocate_port("sa", a, 20000, 20010, preferred=30000)
        assert r.bindings() == []
    run(go())


def test_port_candidates_cover_the_range_once_from_a_random_start():
    rng = random.Random(7)
    starts = set()
    for _ in range(20):
        order = port_candidates(100, 199, None, rng)
        assert sorted(order) == list(range(100, 200))
        i = order.index(100)
        assert order[i:] + order[:i] == list(range(100, 200))  # one rotation, wrapping
        starts.add(order[0])
    assert len(starts) > 5
    assert port_candidates(100, 199, 150, rng)[0] == 150
    assert port_candidates(5, 5, None, rng) == [5]
