"""The edge's request counter (/healthz `requests`): one per request head through the HTTPS front,
answered or refused; what `gslb lab top` turns into a rate."""
from __future__ import annotations

import asyncio

from _front_fakes import REQ, Ctx, FakeBinding, open_front, settle


def test_every_keep_alive_request_head_counts_once():
    async def main():
        ctx = Ctx(FakeBinding())
        front, _client = open_front(ctx)
        front.data_received(REQ)
        await settle()
        front.data_received(REQ + REQ)   # two pipelined heads in one read
        await settle()
        assert ctx.stats.requests == 3

    asyncio.run(main())


def test_a_request_for_an_offline_endpoint_counts_too():
    async def main():
        ctx = Ctx(None)
        front, client = open_front(ctx)
        front.data_received(REQ)
        assert client.data.startswith(b"HTTP/1.1 404")
        assert ctx.stats.requests == 1

    asyncio.run(main())


def test_a_head_split_over_reads_counts_once():
    async def main():
        ctx = Ctx(FakeBinding())
        front, _client = open_front(ctx)
        for i in range(0, len(REQ), 7):
            front.data_received(REQ[i:i + 7])
        await settle()
        assert ctx.stats.requests == 1

    asyncio.run(main())
