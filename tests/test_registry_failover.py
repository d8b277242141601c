"""GatewayClient's failover between members, against small fake members on
127.0.0.1 (aiohttp servers answering like etcd's gateway). The real cluster
is exercised in tests/integration/test_registry_etcd.py."""
from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from edge.registry.errors import EtcdRequestError, RegistryUnavailable
from edge.registry.etcd import GatewayClient

OK = {"header": {"revision": "3"}, "kvs": []}


def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


class Member:
    def __init__(self, status: int = 200, body: dict | None = None, delay: float = 0.0) -> None:
        self.status, self.body, self.delay = status, body or OK, delay
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response(self.body, status=self.status)

    async def __aenter__(self) -> "Member":
        app = web.Application()
        app.router.add_post("/v3/kv/range", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


NO_LEADER = {"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14}


def test_connection_refused_and_503_move_to_the_next_member_which_is_remembered():
    async def go():
        async with Member(503, NO_LEADER) as sick, Member() as good, aiohttp.ClientSession() as http:
            client = GatewayClient([refused_url(), sick.url, good.url], 1.0, http)
            assert await client.call("/v3/kv/range", {}, 3.0, write=False) == OK
            assert client.current == 2 and (sick.hits, good.hits) == (1, 1)
            await client.call("/v3/kv/range", {}, 3.0, write=False)
            assert (sick.hits, good.hits) == (1, 2)  # asked the one that answered
    asyncio.run(go())


def test_a_4xx_is_raised_at_once_without_failover():
    async def go():
        bad = {"error": "illegal base64", "message": "illegal base64", "code": 3}
        async with Member(400, bad) as m1, Member() as m2, aiohttp.ClientSession() as http:
            client = GatewayClient([m1.url, m2.url], 1.0, http)
            with pytest.raises(EtcdRequestError) as info:
                await client.call("/v3/kv/range", {}, 3.0, write=True)
            assert info.value.code == 3 and m2.hits == 0
    asyncio.run(go())


def test_a_member_that_does_not_answer_makes_a_write_fail_with_unknown_outcome_in_time():
    async def go():
        async with Member(delay=2.0) as hung, aiohttp.ClientSession() as http:
            client = GatewayClient([refused_url(), hung.url], 0.3, http)
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as info:
                await client.call("/v3/kv/range", {}, 1.0, write=True)
            assert time.monotonic() - started < 1.6
            assert str(info.value).startswith("etcd has no quorum: ")
            assert info.value.outcome_unknown
            with pytest.raises(RegistryUnavailable) as info:
                await client.call("/v3/kv/range", {}, 0.5, write=False)
            assert not info.value.outcome_unknown  # a read has no outcome to doubt
    asyncio.run(go())


def test_no_member_listening_is_reported_as_unreachable_and_nothing_was_sent():
    async def go():
        async with aiohttp.ClientSession() as http:
            client = GatewayClient([refused_url(), refused_url()], 0.3, http)
            with pytest.raises(RegistryUnavailable) as info:
                await client.call("/v3/kv/put", {}, 0.5, write=True)
            assert str(info.value).startswith("no etcd member reachable: ")
            assert not info.value.outcome_unknown
    asyncio.run(go())
