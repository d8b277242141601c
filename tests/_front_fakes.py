"""Fakes for the front's unit tests (tests/test_edge_relay.py, test_edge_reroute.py):
a transport that records what it is told, an endpoint whose streams are such
transports, the context HttpFront reads, and the set-up every relay and front
test starts with. No sockets: everything is driven by hand, bytes in, bytes out.
"""
from __future__ import annotations

import asyncio
from types import MappingProxyType

from edge.endpoint import Endpoint
from edge.front.http_front import HttpFront
from edge.front.relay import RawRelay
from edge.modules import build_chain
from edge.server import Stats

HOST = "demo.app.lab.test"


class FakeTransport:
    def __init__(self, peer=("192.0.2.7", 40000), tls=False):
        self.written: list[bytes] = []
        self.paused = False
        self.closed = False
        self.aborted = False
        self.protocol = None
        self.extra = {"peername": peer, "sockname": ("198.51.100.1", 443)}
        if tls:
            self.extra["sslcontext"] = object()

    # transport side
    def write(self, data):
        assert not self.closed, "write after close"
        self.written.append(bytes(data))

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None):
        self.high_water = high

    # stream-only
    def set_protocol(self, p):
        self.protocol = p
        p.connection_made(self)

    @property
    def data(self):
        return b"".join(self.written)


class FakeBinding(Endpoint):
    kind, hostname, port, url, pop = "http", "demo.app.lab.test", None, "https://demo.app.lab.test", "eu"

    def __init__(self, options=None):
        self.options = MappingProxyType(options or {})
        self.streams = []

    async def open_stream(self, client_addr, client_port, *, sni=None, tls_terminated=False):
        s = FakeTransport()
        s.opened_with = (client_addr, client_port, sni, tls_terminated)
        self.streams.append(s)
        return s


class Ctx:
    https_port = 443
    max_header_bytes = 8192
    stream_open_timeout = 5.0
    idle_timeout = 60.0
    header_timeout = None
    via = None
    abuse = None            # the abuse layer off (tests/test_edge_abuse.py drives it)
    max_header_count = 100
    min_header_rate = 0.0
    min_body_rate = 0.0
    rate_grace = 3.0

    def __init__(self, binding, deny=(), chain=None, via=None, effects=None):
        self.binding = binding
        self.chain = chain or build_chain(["ip_restriction"], {"ip_restriction": {"deny_cidrs": list(deny)}})
        self.via = via
        self.effects = effects  # asyncio.Queue of (effect, future) for module effects
        self.performed = []
        self.stats = Stats()  # HttpFront counts request heads here

    async def perform(self, effect):
        self.performed.append(effect)
        fut = asyncio.get_running_loop().create_future()
        await self.effects.put((effect, fut))
        return await fut

    def lookup(self, kind, name):
        return self.binding


REQ = b"GET /x HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n"


async def settle():
    """A few loop iterations: the tasks the last call started get to run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def raw_relay(**kw) -> tuple[RawRelay, FakeTransport, FakeTransport]:
    """A RawRelay from a client transport to a stream that opens at once:
    (relay, client, stream), connected and settled. kw go to RawRelay."""
    stream = FakeTransport()

    async def opener(relay):
        return stream

    client = FakeTransport()
    relay = RawRelay(opener, **kw)
    relay.connection_made(client)
    await settle()
    return relay, client, stream


def open_front(ctx, host: str = HOST, **client_kw) -> tuple[HttpFront, FakeTransport]:
    """An HttpFront for `host` with a TLS client connected: (front, client)."""
    front = HttpFront(ctx, host)
    client = FakeTransport(tls=True, **client_kw)
    front.connection_made(client)
    return front, client
