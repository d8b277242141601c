"""HttpFront: a stream the agent's PoP could not open is retried at the endpoint's new binding
(the agent moved to another PoP), instead of a 502; with no new binding, the 502 stays."""
from __future__ import annotations

import asyncio

from _front_fakes import REQ, Ctx, FakeBinding, open_front

from edge.front import http_front


class DeadRemote:
    """A binding at a PoP whose edge is gone: opening a stream fails (after a little while)."""

    def __init__(self):
        self.options = {}
        self.pop = "us"
        self.tries = 0

    def open_stream(self, client_addr, client_port, *, sni=None, tls_terminated=False):
        self.tries += 1

        async def fail():
            await asyncio.sleep(0)
            raise ConnectionRefusedError("peer link to pop-us")
        return fail()


class MovingCtx(Ctx):
    """lookup() gives the dead binding until `move()`, then the new one."""

    def __init__(self, first, later=None):
        super().__init__(first)
        self.later = later

    def move(self):
        self.binding = self.later


async def _until(pred, steps=400):
    for _ in range(steps):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_request_goes_to_the_new_binding_when_the_old_pop_cannot_open_the_stream():
    async def main():
        dead, alive = DeadRemote(), FakeBinding()
        ctx = MovingCtx(dead, alive)
        front, client = open_front(ctx)
        front.data_received(REQ)
        await _until(lambda: dead.tries == 1)
        await asyncio.sleep(0.1)
        assert not client.written              # waiting, no 502
        ctx.move()                              # the agent bound again at another PoP
        await _until(lambda: alive.streams)
        s = alive.streams[0]
        assert b"GET /x HTTP/1.1\r\n" in s.data  # the request that waited, whole
        s.protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert b"".join(client.written).startswith(b"HTTP/1.1 200 OK")

    asyncio.run(main())


def test_without_a_new_binding_the_failed_open_is_a_502_after_the_wait(monkeypatch):
    monkeypatch.setattr(http_front, "REROUTE_WAIT", 0.2)

    async def main():
        dead = DeadRemote()
        front, client = open_front(MovingCtx(dead))
        front.data_received(REQ)
        await _until(lambda: client.written)
        assert b"".join(client.written).startswith(b"HTTP/1.1 502 ")
        assert dead.tries == 1                  # the same dead route is not tried again
        assert client.closed

    asyncio.run(main())


def test_a_new_binding_with_other_options_is_not_used_for_the_decided_request(monkeypatch):
    monkeypatch.setattr(http_front, "REROUTE_WAIT", 1.0)

    async def main():
        dead, other = DeadRemote(), FakeBinding({"deny_cidrs": ["0.0.0.0/0"]})
        ctx = MovingCtx(dead, other)
        front, client = open_front(ctx)
        front.data_received(REQ)
        await _until(lambda: dead.tries == 1)
        ctx.move()
        await _until(lambda: client.written)
        assert b"".join(client.written).startswith(b"HTTP/1.1 502 ") and not other.streams

    asyncio.run(main())
