"""Relay protocols driven with fake transports: flow control, ordering, answers."""
from __future__ import annotations

import asyncio
import re

from _front_fakes import REQ, Ctx, FakeBinding, FakeTransport, open_front, raw_relay, settle

from edge.front.relay import RawRelay
from edge.modules import Decision, EffectResult, HttpCall, Module, Response, Verdict
from edge.modules.base import PASS, Chain


def test_raw_relay_holds_client_until_stream_opens_then_flows_both_ways():
    async def main():
        stream = FakeTransport()
        gate = asyncio.Event()

        async def opener(relay):
            await gate.wait()
            return stream

        client = FakeTransport()
        relay = RawRelay(opener, lambda r: b"PROXYHDR")
        relay.connection_made(client)
        assert client.paused  # not read until the stream exists
        relay.data_received(b"early")
        gate.set()
        await settle()
        assert not client.paused
        assert stream.data == b"PROXYHDR" + b"early"  # PROXY header first, then the bytes
        relay.data_received(b"more")
        stream.protocol.data_received(b"answer")
        assert client.data == b"answer"
        assert stream.data.endswith(b"more")
        relay.connection_lost(None)

    asyncio.run(main())


def test_backpressure_pauses_the_other_side_both_ways():
    async def main():
        relay, client, stream = await raw_relay()
        # stream buffer full -> stop reading the client
        stream.protocol.pause_writing()
        assert client.paused
        stream.protocol.resume_writing()
        assert not client.paused
        # client slow -> stop reading the stream
        relay.pause_writing()
        assert stream.paused
        relay.resume_writing()
        assert not stream.paused
        relay.connection_lost(None)

    asyncio.run(main())


def test_stream_eof_closes_client_and_client_eof_half_closes_stream():
    async def main():
        relay, client, stream = await raw_relay()
        assert relay.eof_received() is True  # plain TCP: keep reading the answer
        assert stream.closed and not client.closed
        stream.protocol.data_received(b"late answer")
        stream.protocol.eof_received()
        assert client.data == b"late answer" and client.closed

    asyncio.run(main())


def test_opener_returning_none_closes_the_client():
    async def main():
        async def opener(relay):
            return None

        client = FakeTransport()
        relay = RawRelay(opener)
        relay.connection_made(client)
        await settle()
        assert client.closed and client.data == b""

    asyncio.run(main())




def test_http_front_rewrites_and_uses_one_stream_for_keep_alive():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b), peer=("::ffff:192.0.2.7", 5000))
        front.data_received(REQ)
        await settle()
        front.data_received(REQ)
        assert len(b.streams) == 1
        s = b.streams[0]
        assert s.opened_with == ("192.0.2.7", 5000, "demo.app.lab.test", True)
        assert s.data.count(b"X-Forwarded-For: 192.0.2.7\r\n") == 2
        s.protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert client.data.startswith(b"HTTP/1.1 200 OK")

    asyncio.run(main())


def test_http_front_offline_answers_404_and_closes():
    async def main():
        front, client = open_front(Ctx(None))
        front.data_received(REQ)
        assert client.data.startswith(b"HTTP/1.1 404") and b"ERR_GSLB_3200" in client.data
        assert client.closed

    asyncio.run(main())


def test_http_front_denied_client_gets_403_and_no_stream():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b, deny=["192.0.2.0/24"]))
        front.data_received(REQ)
        assert client.data.startswith(b"HTTP/1.1 403") and client.closed
        assert b.streams == []

    asyncio.run(main())


def test_http_front_stream_closed_without_answer_is_502():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(REQ)
        await settle()
        b.streams[0].protocol.connection_lost(ConnectionResetError())
        assert client.data.startswith(b"HTTP/1.1 502") and b"ERR_GSLB_3502" in client.data

    asyncio.run(main())


def test_http_front_cut_response_aborts_the_client():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(REQ)
        await settle()
        s = b.streams[0]
        s.protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        s.protocol.connection_lost(ConnectionResetError())
        assert client.aborted

    asyncio.run(main())


def test_http_front_bad_request_gets_400_without_a_stream():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(b"GARBAGE\r\n\r\n")
        assert client.data.startswith(b"HTTP/1.1 400") and client.closed and b.streams == []

    asyncio.run(main())


def test_http_front_request_for_another_host_is_misdirected_421():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(b"GET / HTTP/1.1\r\nHost: other.app.lab.test\r\n\r\n")
        assert client.data.startswith(b"HTTP/1.1 421") and b.streams == []

    asyncio.run(main())


def test_http_front_host_with_port_and_case_matches_sni():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(b"GET / HTTP/1.1\r\nHost: Demo.App.lab.test.:8443\r\n\r\n")
        await settle()
        assert len(b.streams) == 1 and client.data == b""

    asyncio.run(main())


def test_idle_connection_is_aborted_after_a_quiet_period_but_not_while_busy():
    async def main():
        relay, client, stream = await raw_relay(idle_timeout=3600)
        relay._idle_check()             # first period (connection set-up counts as activity)
        relay.data_received(b"x")       # activity in the second period
        relay._idle_check()             # timer fires: busy -> re-armed
        assert not client.aborted
        relay._idle_check()             # a whole period without bytes
        assert client.aborted and stream.aborted
        relay.connection_lost(None)

    asyncio.run(main())


def test_http_front_agent_gone_at_open_is_502():
    class GoneBinding(FakeBinding):
        async def open_stream(self, *a, **kw):
            raise ConnectionError("session closed")

    async def main():
        front, client = open_front(Ctx(GoneBinding()))
        front.data_received(REQ)
        # the front first waits (up to REROUTE_WAIT) for the endpoint to be bound elsewhere
        for _ in range(1000):
            if client.data:
                break
            await asyncio.sleep(0.01)
        assert client.data.startswith(b"HTTP/1.1 502") and client.closed

    asyncio.run(main())


def test_http_front_async_open_keeps_request_order():
    class SlowBinding(FakeBinding):
        def __init__(self):
            super().__init__()
            self.gate = asyncio.Event()

        async def open_stream(self, *a, **kw):
            await self.gate.wait()
            return await FakeBinding.open_stream(self, *a, **kw)

    async def main():
        b = SlowBinding()
        front, client = open_front(Ctx(b))
        front.data_received(REQ.replace(b"/x", b"/1"))
        assert client.paused  # nothing more is read until the stream exists
        front.data_received(REQ.replace(b"/x", b"/2"))  # already read by the transport
        b.gate.set()
        await settle()
        data = b.streams[0].data
        assert data.index(b"GET /1") < data.index(b"GET /2") and not client.paused

    asyncio.run(main())


def test_client_gone_while_agent_still_sends_resets_the_stream():
    async def main():
        relay, client, stream = await raw_relay()
        stream.protocol.data_received(b"event 1")
        relay.connection_lost(None)   # client went away, the agent has not finished
        assert stream.aborted

    asyncio.run(main())


def test_client_close_after_agent_finished_is_a_clean_fin():
    async def main():
        relay, client, stream = await raw_relay()
        stream.protocol.eof_received()
        relay.connection_lost(None)
        assert stream.closed and not stream.aborted

    asyncio.run(main())


def test_http_front_eof_then_loss_answers_502_once():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b))
        front.data_received(REQ)
        await settle()
        b.streams[0].protocol.eof_received()
        b.streams[0].protocol.connection_lost(None)
        assert client.data.count(b"HTTP/1.1 502") == 1

    asyncio.run(main())


# ------------------------------------------------------------ module interface v2 in the front


class Gate(Module):
    """Strips X-User from clients; with X-Code exchanges it (an effect) for a
    user; without one answers a redirect that sets a cookie."""

    name = "gate"

    def decide(self, subject):
        code = subject.request.header("x-code")
        if code is None:
            return Decision(Verdict.ANSWER, module=self.name, reason="login",
                            response=Response(302, (("Location", "https://idp.example/"), ("Set-Cookie", "s=1"))))
        return Decision(Verdict.PERFORM, effect=HttpCall("POST", "https://idp.example/token", body=code.encode()))

    def resume(self, subject, effect, result):
        return Decision(Verdict.PASS, add_upstream=(("X-User", result.body.decode()),), strip_upstream=("X-User",))


class Recorder(Module):
    name = "recorder"
    observes = True

    def __init__(self):
        self.seen = []

    def decide(self, subject):
        assert subject.now > 0  # the loop's clock, handed in
        return PASS

    def observe(self, subject, outcome):
        self.seen.append((subject.request.target, outcome))


def test_http_front_sends_a_modules_whole_response_with_via_and_closes():
    async def main():
        b = FakeBinding()
        front, client = open_front(Ctx(b, chain=Chain((Gate(),)), via="eu.lab.test"))
        front.data_received(REQ)
        head, _, body = client.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 302 Found\r\n")
        assert b"\r\nLocation: https://idp.example/\r\n" in head and b"\r\nSet-Cookie: s=1\r\n" in head
        assert b"\r\nVia: 1.1 eu.lab.test" in head and body == b""
        assert client.closed and b.streams == []

    asyncio.run(main())


def test_http_front_runs_a_modules_effect_then_forwards_with_its_headers_in_order():
    async def main():
        b = FakeBinding()
        ctx = Ctx(b, chain=Chain((Gate(),)), effects=asyncio.Queue())
        front, client = open_front(ctx)
        req = b"GET /1 HTTP/1.1\r\nHost: demo.app.lab.test\r\nX-Code: c1\r\nX-User: mallory\r\n\r\n"
        front.data_received(req + req.replace(b"GET /1", b"GET /2").replace(b"c1", b"c2"))
        assert client.paused and b.streams == []  # nothing goes upstream before the effect's answer
        effect, fut = await asyncio.wait_for(ctx.effects.get(), 5)
        assert effect.body == b"c1"
        fut.set_result(EffectResult(200, (), b"alice"))
        effect2, fut2 = await asyncio.wait_for(ctx.effects.get(), 5)  # the second request's turn
        assert effect2.body == b"c2"
        fut2.set_result(EffectResult(200, (), b"bob"))
        await settle()
        data = b.streams[0].data
        assert data.index(b"GET /1") < data.index(b"X-User: alice") < data.index(b"GET /2") < data.index(b"X-User: bob")
        assert b"mallory" not in data and data.count(b"X-User:") == 2
        assert not client.paused

    asyncio.run(main())


def test_http_front_tells_observing_modules_each_responses_status_and_bytes():
    async def main():
        b = FakeBinding()
        rec = Recorder()
        front, client = open_front(Ctx(b, chain=Chain((rec,)), via="eu.lab.test"))
        front.data_received(REQ.replace(b"/x", b"/a") + REQ.replace(b"/x", b"/b") + REQ.replace(b"/x", b"/c"))
        await settle()
        up = b.streams[0].protocol
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        up.data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        assert [(t, o.status) for t, o in rec.seen] == [("/a", 200)]  # /b ends with the next head or the stream
        up.connection_lost(ConnectionResetError("agent gone"))
        assert [(t, o.status, o.error) for t, o in rec.seen] == [
            ("/a", 200, ""), ("/b", 503, "ConnectionResetError"), ("/c", 0, "ConnectionResetError")]
        first = rec.seen[0][1]
        assert first.bytes_down >= len(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        assert first.bytes_up > 0 and first.duration >= 0

    asyncio.run(main())


def test_http_front_an_endpoint_that_never_opens_is_502_after_stream_open_timeout():
    class Stuck(FakeBinding):
        async def open_stream(self, *a, **kw):
            await asyncio.Event().wait()  # a peer link that never answers

    async def main():
        ctx = Ctx(Stuck())
        ctx.stream_open_timeout = 0.01
        front, client = open_front(ctx)
        front.data_received(REQ)
        async with asyncio.timeout(10):  # bounded wait for the edge's own timeout to fire
            while not client.closed:
                await asyncio.sleep(0.01)
        assert client.data.startswith(b"HTTP/1.1 502") and b"ERR_GSLB_3502" in client.data

    asyncio.run(main())


def test_http_front_tells_observing_modules_a_stream_that_could_not_open_is_the_edges_502():
    class Refused(FakeBinding):
        async def open_stream(self, *a, **kw):
            raise ConnectionRefusedError("agent gone")

    async def main():
        rec = Recorder()
        ctx = Ctx(Refused(), chain=Chain((rec,)), via="eu.lab.test")
        ctx.stream_open_timeout = 0.01
        front, client = open_front(ctx)
        front.data_received(REQ)
        async with asyncio.timeout(10):  # bounded: the reroute wait is at most stream_open
            while not client.closed:
                await asyncio.sleep(0.01)
        assert client.data.startswith(b"HTTP/1.1 502") and b"ERR_GSLB_3502" in client.data
        # an upstream failure for a circuit breaker, not "client_closed"
        assert [(t, o.status, o.error) for t, o in rec.seen] == [("/x", 502, "stream_open_failed")]

    asyncio.run(main())


def test_http_front_an_unreachable_agent_trips_the_circuit_breaker_and_then_no_stream_is_opened():
    from edge.modules.circuit_breaker import CircuitBreaker

    class Refused(FakeBinding):
        tries = 0

        async def open_stream(self, *a, **kw):
            Refused.tries += 1
            raise ConnectionRefusedError("agent gone")

    async def main():
        binding = Refused({"circuit_breaker": {"error_threshold": 0.5, "volume_threshold": 2}})
        ctx = Ctx(binding, chain=Chain((CircuitBreaker(),)), via="eu.lab.test")
        ctx.stream_open_timeout = 0.01
        for _ in range(2):
            front, client = open_front(ctx)
            front.data_received(REQ)
            async with asyncio.timeout(10):  # bounded: the reroute wait is at most stream_open
                while not client.closed:
                    await asyncio.sleep(0.01)
            assert client.data.startswith(b"HTTP/1.1 502")
        front, client = open_front(ctx)
        front.data_received(REQ)
        assert client.data.startswith(b"HTTP/1.1 503") and b"ERR_GSLB_3503" in client.data
        m = re.search(rb"\r\nRetry-After: (\d+)\r\n", client.data)
        assert m and 1 <= int(m.group(1)) <= 10 and client.closed  # tripped_duration 10 s
        assert Refused.tries == 2  # the third request never tried the agent

    asyncio.run(main())
