"""The HTTPS front's fast paths give the bytes of its general paths (docs/bench.md):
a response head rewritten without splitting it, a request let through without asking a
module chain that has nothing to do for the endpoint, and the header timer kept as a
deadline instead of a timer handle per request. Bytes in, bytes out."""
from __future__ import annotations

import asyncio

import pytest
from _front_fakes import Ctx, FakeBinding, open_front, settle

from edge.front.response import ResponseRewriter
from edge.metrics import EdgeCounters
from edge.modules import Module, build_chain
from edge.modules.base import PASS, Chain

# -- response heads ------------------------------------------------------------------------------

HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.0 200\r\nServer: x\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\ncontent-length:  7 \r\nX-A: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip, Chunked \r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nVia: 1.0 up\r\nContent-Length: 1\r\n\r\n",           # general path (Via)
    b"HTTP/1.1 200 OK\r\nX-Note: via: not a field\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",                                 # not a token: general
    b"HTTP/1.1 200 OK\r\nBad : x\r\n\r\n",                                     # general: raw
    b"HTTP/1.1 200 OK\r\nX-Bare: a\rb\r\nContent-Length: 1\r\n\r\n",           # bare CR: general
    b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
]


def _state(rw):
    return rw._state, rw._left, rw.responses, list(rw._methods)


@pytest.mark.parametrize("method", ["GET", "HEAD", "CONNECT"])
@pytest.mark.parametrize("head", HEADS)
def test_a_response_head_gets_the_general_paths_bytes_and_framing(head, method):
    seen_fast, seen_general = [], []
    fast = ResponseRewriter("1.1 eu.lab.test", on_final=seen_fast.append)
    general = ResponseRewriter("1.1 eu.lab.test", on_final=seen_general.append)
    for rw in (fast, general):
        rw.expect(method)
        rw.expect("GET")
    assert fast._on_head(head) == general._general_head(head)
    assert _state(fast) == _state(general)
    assert seen_fast == seen_general


def test_a_whole_exchange_fed_in_every_split_is_the_same():
    stream = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")   # the HEAD's: no body
    expected = stream.replace(b" OK\r\n", b" OK\r\nVia: 1.1 v\r\n").replace(
        b"Continue\r\n", b"Continue\r\nVia: 1.1 v\r\n")
    for cut in range(1, len(stream)):
        rw = ResponseRewriter("1.1 v")
        for m in ("POST", "GET", "HEAD"):
            rw.expect(m)
        out = bytes(rw.feed(stream[:cut])) + bytes(rw.feed(stream[cut:]))
        assert out == expected, cut
        assert rw.responses == 3 and rw._state == 0


# -- requests through a chain with nothing to do ---------------------------------------------------

class PassEverything(Module):
    """Passes every request, but is not `idle`: the chain is asked for each one."""
    name = "pass_everything"

    def decide(self, subject):
        return PASS


CLIENT = (
    b"GET /a HTTP/1.1\r\nHost: demo.app.lab.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: demo.app.lab.test:443\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"
    b"HEAD /c HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n"
    b"PUT /d HTTP/1.1\r\nHost: demo.app.lab.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /ws HTTP/1.1\r\nHost: demo.app.lab.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    b"\x81\x05hello"
)
AGENT = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02ok"
)


def _exchange(chain, pieces):
    async def main():
        b = FakeBinding()
        ctx = Ctx(b, chain=chain, via="eu.lab.test")
        ctx.metrics = EdgeCounters()
        front, client = open_front(ctx, peer=("::ffff:192.0.2.7", 5000))
        for p in pieces:
            front.data_received(p)
            await settle()
        s = b.streams[0]
        for i in range(0, len(AGENT), 7):
            s.protocol.data_received(AGENT[i:i + 7])
        front.data_received(b"\x88\x00")
        return s.data, client.data, ctx.metrics.decisions, ctx.metrics.request_counts(), front._idle_chain
    return asyncio.run(main())


@pytest.mark.parametrize("cut", [None, 1, 40, 150, 300])
def test_an_idle_chain_lets_requests_through_with_the_same_bytes(cut):
    pieces = [CLIENT] if cut is None else [CLIENT[:cut], CLIENT[cut:]]
    idle = _exchange(build_chain(["ip_restriction", "rate_limit", "circuit_breaker"], {}), pieces)
    asked = _exchange(Chain((PassEverything(),)), pieces)
    assert idle[4] is True and asked[4] is False
    assert idle[:4] == asked[:4]
    up, down, decisions, counts, _ = idle
    assert up.count(b"X-Forwarded-For: 192.0.2.7\r\n") == 5 and b"6.6.6.6" not in up and b"evil" not in up
    assert b"X-Hop" not in up and b"Keep-Alive" not in up and b"TE:" not in up
    assert b"5\r\nhello\r\n0\r\n\r\n" in up and b"Trailer" not in up
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in up and up.endswith(b"\x81\x05hello\x88\x00")
    assert down.count(b"Via: 1.1 eu.lab.test\r\n") == 6 and down.endswith(b"\x81\x02ok")
    assert decisions == {("", "allow"): 5}
    assert counts == {("demo.app.lab.test", "2xx", "upstream"): 4}  # 100 and 101 are not final responses


@pytest.mark.parametrize("options", [{"allow_cidrs": ["10.0.0.0/8"]}, {"rate_limit": {"rate": 1}},
                                     {"circuit_breaker": {"error_threshold": 0.5}}, {"basic_auth": {"u": "p"}}])
def test_an_endpoint_that_asks_a_module_for_something_is_not_idle(options):
    chain = build_chain(["ip_restriction", "basic_auth", "oidc", "saml", "rate_limit", "circuit_breaker"], {})
    assert chain.idle({})
    assert not chain.idle(options)


def test_a_chain_with_a_module_that_has_edge_wide_lists_is_never_idle():
    chain = build_chain(["ip_restriction"], {"ip_restriction": {"deny_cidrs": ["192.0.2.0/24"]}})
    assert not chain.idle({})


# -- the header timer ---------------------------------------------------------------------------

def test_the_header_timer_is_one_handle_that_finds_the_head_under_way():
    async def main():
        b = FakeBinding()
        ctx = Ctx(b)
        ctx.header_timeout = 30.0
        front, client = open_front(ctx)
        handle = front._header_timer
        assert handle is not None and front._head_deadline is not None
        front.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
        await settle()
        # the head is in, the next one (keep-alive) has begun waiting: the same handle, a new deadline
        assert front._header_timer is handle and front._head_deadline is not None
        front.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.")  # a head under way
        first = front._head_deadline
        front._header_expired()              # the handle fires early for this head: it waits on
        assert front._header_timer is not None and front._header_timer is not handle
        assert front._head_deadline == first and b"408" not in client.data
        front._head_deadline = asyncio.get_running_loop().time() - 1   # ... and now it is late
        front._header_expired()
        # the first request is with the agent: its answer goes first, the 408 after it
        assert front._answer_when_done.startswith(b"HTTP/1.1 408") and b.streams[0].closed
        front.connection_lost(None)
        assert front._header_timer is None

    asyncio.run(main())


def test_a_head_that_completes_leaves_the_timer_nothing_to_do():
    async def main():
        b = FakeBinding()
        ctx = Ctx(b)
        ctx.header_timeout = 30.0
        front, client = open_front(ctx)
        front.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\nConnection: close\r\n\r\n")
        await settle()
        assert front._head_deadline is None   # no head can follow a Connection: close request
        front._header_expired()
        assert front._header_timer is None and client.data == b""
        front.connection_lost(None)

    asyncio.run(main())


# -- per connection --------------------------------------------------------------------------------

def test_the_client_address_cache_gives_what_parsing_gives_and_stays_bounded(monkeypatch):
    from edge.front import http_front
    from edge.modules.base import client_ip

    monkeypatch.setattr(http_front, "_IPS", {})
    monkeypatch.setattr(http_front, "_MAX_IPS", 3)
    for addr in ("::ffff:192.0.2.7", "2001:db8::1", "192.0.2.9", "::ffff:192.0.2.7", "198.51.100.1"):
        ip, text = http_front._client_ip(addr)
        assert ip == client_ip(addr) and text == str(client_ip(addr))
        assert len(http_front._IPS) <= 3
    assert http_front._client_ip("::ffff:192.0.2.7")[1] == "192.0.2.7"


def test_keep_alive_requests_do_not_ask_for_the_running_loop(monkeypatch):
    # On Python 3.11 asyncio.get_running_loop() is a getpid() system call: the front holds its loop.
    async def main():
        b = FakeBinding()
        ctx = Ctx(b, via="eu.lab.test")
        ctx.header_timeout = 30.0
        ctx.min_body_rate = 10.0
        ctx.metrics = EdgeCounters()
        front, client = open_front(ctx)
        req = b"POST / HTTP/1.1\r\nHost: demo.app.lab.test\r\nContent-Length: 2\r\n\r\nhi"
        front.data_received(req)
        await settle()
        stream = b.streams[0]
        calls = []
        real = asyncio.get_running_loop
        monkeypatch.setattr(asyncio, "get_running_loop", lambda: calls.append(1) or real())
        for _ in range(50):
            front.data_received(req)
            stream.protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        monkeypatch.setattr(asyncio, "get_running_loop", real)
        assert calls == []
        assert client.data.count(b"Via: 1.1 eu.lab.test") == 50 and stream.data.count(b"\r\n\r\nhi") == 51
        front.connection_lost(None)

    asyncio.run(main())


def test_a_host_that_matched_once_is_not_a_pass_for_another_host():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(b"GET / HTTP/1.1\r\nHost: Demo.App.Lab.Test:443\r\n\r\n")
        await settle()
        front.data_received(b"GET / HTTP/1.1\r\nHost: Demo.App.Lab.Test:443\r\n\r\n"
                            b"GET / HTTP/1.1\r\nHost: other.app.lab.test\r\n\r\n")
        assert b.streams[0].data.count(b"X-Forwarded-Host: Demo.App.Lab.Test:443\r\n") == 2
        assert front._answer_when_done.startswith(b"HTTP/1.1 421")

    asyncio.run(main())
