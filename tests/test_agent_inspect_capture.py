"""The inspector's sans-IO capture and bounded store, fed bytes only."""
from __future__ import annotations

import os
import random

from hypothesis import given, settings, strategies as st

from edge.agent.inspect.capture import HttpCapture
from edge.agent.inspect.render import body_view, entry_json, hexdump, matches, pretty_xml, summary_json
from edge.agent.inspect.store import Store


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def capture(store: Store | None = None, clock: Clock | None = None) -> tuple[HttpCapture, Store, Clock]:
    store = store if store is not None else Store()
    clock = clock if clock is not None else Clock()
    return HttpCapture(store, "demo", "198.51.100.7", clock), store, clock


def oldest_first(store: Store):
    return list(reversed(store.entries()))


def feed_bytewise(cap: HttpCapture, req: bytes, resp: bytes) -> None:
    for i in range(len(req)):
        cap.feed_request(req[i:i + 1])
    for i in range(len(resp)):
        cap.feed_response(resp[i:i + 1])


GET = b"GET /a?x=1 HTTP/1.1\r\nHost: demo.app.lab.test\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\": [1, 2]}"


def test_one_exchange_has_method_path_status_duration_size_and_client():
    cap, store, clock = capture()
    cap.feed_request(GET)
    (e,) = store.entries()
    assert e.request.method == "GET" and e.request.uri == "/a?x=1" and e.response is None and e.end is None
    clock.t += 0.25
    cap.feed_response(OK)
    assert e.response.status == 200 and bytes(e.response.body) == b'{"a": [1, 2]}'
    s = summary_json(e)
    assert (s["method"], s["path"], s["status_code"], s["duration_ms"], s["size"], s["remote_addr"]) == \
        ("GET", "/a?x=1", 200, 250.0, 13, "198.51.100.7")
    j = entry_json(e, views=True)
    assert j["duration"] == 250_000_000 and j["request"]["headers"]["X-Forwarded-For"] == ["198.51.100.7"]
    assert j["response"]["status"] == "200 OK" and j["response"]["body"]["text"] == '{\n  "a": [\n    1,\n    2\n  ]\n}'


def test_pipelined_requests_on_one_stream_pair_with_their_responses_in_order():
    cap, store, _ = capture()
    reqs = b"".join(f"GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for i in range(3))
    head = b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"
    cap.feed_request(reqs + head)
    resps = b"".join(f"HTTP/1.1 20{i} X\r\nContent-Length: 1\r\n\r\n{i}".encode() for i in range(3))
    # HEAD: a Content-Length but no body (RFC 9110 9.3.2), then nothing more
    cap.feed_response(resps + b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    got = [(e.request.uri, e.response.status, bytes(e.response.body)) for e in oldest_first(store)]
    assert got == [("/0", 200, b"0"), ("/1", 201, b"1"), ("/2", 202, b"2"), ("/h", 200, b"")]
    assert all(e.end is not None for e in store.entries()) and cap.broken is None


def test_chunked_bodies_both_ways_even_fed_byte_by_byte():
    cap, store, _ = capture()
    req = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    feed_bytewise(cap, req + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", resp)
    first, second = oldest_first(store)
    assert bytes(first.request.body) == b"hello world" and first.request.done
    assert bytes(first.response.body) == b"abc" and first.end is not None
    assert second.request.uri == "/next" and second.response is None


def test_100_continue_is_skipped_and_the_final_response_pairs():
    cap, store, _ = capture()
    cap.feed_request(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    cap.feed_response(b"HTTP/1.1 100 Continue\r\n\r\n")
    cap.feed_request(b"ok")
    cap.feed_response(b"HTTP/1.1 204 No Content\r\n\r\n")
    (e,) = store.entries()
    assert e.response.status == 204 and bytes(e.request.body) == b"ok" and e.end is not None


def test_body_over_the_cap_is_kept_up_to_the_cap_and_marked_truncated():
    cap, store, _ = capture(Store(body_cap=1000))
    cap.feed_request(b"POST /big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
    for _ in range(5):
        cap.feed_request(b"x" * 1000)
    cap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    (e,) = store.entries()
    assert len(e.request.body) == 1000 and e.request.body_size == 5000 and e.request.truncated
    v = body_view(e.request)
    assert v["truncated"] and v["size"] == 5000 and v["captured"] == 1000
    assert e.end is not None  # framing still followed past the cap


def test_binary_body_is_shown_as_hex():
    cap, store, _ = capture()
    blob = bytes(range(256))
    cap.feed_request(GET)
    cap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 256\r\n\r\n" + blob)
    v = body_view(store.entries()[0].response)
    assert v["kind"] == "binary"
    assert v["text"].splitlines()[0] == "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  |................|"
    assert hexdump(b"AB\x00") == "00000000  41 42 00" + " " * 39 + "  |AB.|"


def test_xml_is_indented_without_a_parser_and_bad_json_says_so():
    assert pretty_xml("<a><b>1</b><c/></a>") == "<a>\n  <b>1</b>\n  <c/>\n</a>"
    cap, store, _ = capture()
    cap.feed_request(b"POST /j HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{oops")
    v = body_view(store.entries()[0].request)
    assert v["kind"] == "json" and v["text"] == "{oops" and v["error"].startswith("invalid JSON")


def ws_frame(payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    b1 = 0x80 if masked else 0
    if n < 126:
        hdr = bytes([0x81, b1 | n])
    elif n < 65536:
        hdr = bytes([0x81, b1 | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([0x81, b1 | 127]) + n.to_bytes(8, "big")
    if masked:
        hdr += b"\x01\x02\x03\x04"
    return hdr + payload


def test_101_then_websocket_frames_are_counted_each_way():
    cap, store, _ = capture()
    cap.feed_request(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    cap.feed_request(ws_frame(b"early", True))  # sent before the 101 arrived
    cap.feed_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                      + ws_frame(b"hi", False))
    out = ws_frame(b"a" * 200, True) + ws_frame(b"b" * 70000, True) + ws_frame(b"", True)
    for i in range(0, len(out), 7):
        cap.feed_request(out[i:i + 7])
    cap.feed_response(ws_frame(b"x" * 300, False) * 2)
    (e,) = store.entries()
    assert e.websocket and e.response.status == 101
    assert (e.ws_frames_out, e.ws_frames_in) == (4, 3) and cap.broken is None
    cap.close()
    assert entry_json(e)["websocket"] == {"frames_in": 3, "frames_out": 4, "closed": True}


def test_refused_upgrade_goes_back_to_http():
    cap, store, _ = capture()
    cap.feed_request(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
                     b"GET /after HTTP/1.1\r\n\r\n")
    cap.feed_response(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
    got = [(e.request.uri, e.response.status, e.websocket) for e in oldest_first(store)]
    assert got == [("/ws", 400, False), ("/after", 200, False)]


def test_response_until_close_completes_on_close():
    cap, store, clock = capture()
    cap.feed_request(b"GET / HTTP/1.0\r\n\r\n")
    cap.feed_response(b"HTTP/1.0 200 OK\r\n\r\nstream of bytes")
    (e,) = store.entries()
    assert e.end is None
    clock.t += 1
    cap.close()
    assert e.end is not None and bytes(e.response.body) == b"stream of bytes" and e.error is None


def test_stream_closed_mid_exchange_marks_the_entry():
    cap, store, _ = capture()
    cap.feed_request(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    cap.close()
    (e,) = store.entries()
    assert e.error and e.end is not None and e.response is None


def test_malformed_bytes_stop_the_capture_without_raising():
    for junk in (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
                 b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                 b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        cap, store, _ = capture()
        cap.feed_request(junk)
        cap.feed_request(GET)  # ignored once broken
        cap.feed_response(OK)
        cap.close()
        assert cap.broken, junk
    # a field line that is not one is shown as it came, the framing still followed
    cap, store, _ = capture()
    cap.feed_request(b"GET /odd HTTP/1.1\r\nno colon here\r\nX-A: 1\r\n\r\n")
    cap.feed_response(OK)
    (e,) = store.entries()
    assert e.request.headers == [("no colon here", ""), ("X-A", "1")] and e.response.status == 200 and not cap.broken
    cap, store, _ = capture()
    cap.feed_response(OK)  # a response with no request
    assert cap.broken and len(store) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=400), st.integers(1, 50))
def test_random_bytes_never_raise(req, resp, step):
    cap, _, _ = capture(Store(max_entries=5, max_bytes=4096, body_cap=100))
    for i in range(0, max(len(req), len(resp)), step):
        cap.feed_request(GET[:i % len(GET)] + req[i:i + step])
        cap.feed_response(resp[i:i + step])
    cap.close()


def test_eviction_keeps_entries_and_bytes_bounded():
    store = Store(max_entries=10, max_bytes=64 * 1024, body_cap=16 * 1024)
    rng = random.Random(7)
    for i in range(300):
        cap, _, _ = capture(store)
        n = rng.randrange(0, 40_000)
        cap.feed_request(f"POST /{i} HTTP/1.1\r\nContent-Length: {n}\r\n\r\n".encode() + os.urandom(n))
        cap.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
        assert len(store) <= 10 and store.bytes <= 64 * 1024
        held = sum(len(m.head) + len(m.body) for e in store.entries() for m in (e.request, e.response) if m)
        assert held == store.bytes
    assert store.entries()[0].request.uri == "/299" and store.evictions == 300 - len(store)
    assert len(store) < 10  # the byte bound, not only the count, evicted
    store.clear()
    assert len(store) == 0 and store.bytes == 0


def test_an_entry_evicted_in_flight_keeps_no_more_body():
    store = Store(max_entries=1)
    cap, _, _ = capture(store)
    cap.feed_request(b"POST /slow HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
    slow = store.entries()[0]
    other, _, _ = capture(store)
    other.feed_request(GET)  # evicts /slow, still uploading
    cap.feed_request(b"b" * 50_000)
    assert slow.evicted and len(slow.request.body) == 10 and store.bytes == len(GET)


def test_pipelined_requests_without_responses_are_bounded():
    from edge.agent.inspect.capture import MAX_PIPELINED

    cap, store, _ = capture(Store(max_entries=10))
    for _ in range(MAX_PIPELINED + 1):
        cap.feed_request(b"GET / HTTP/1.1\r\n\r\n")
    assert cap.broken and "await their responses" in cap.broken and len(cap._waiting) == 0


def test_filters_on_path_status_and_duration():
    cap, store, clock = capture()
    cap.feed_request(b"GET /api/users HTTP/1.1\r\n\r\n")
    clock.t += 0.5
    cap.feed_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    (e,) = store.entries()
    assert matches(e, path="/api") and not matches(e, path="/other")
    assert matches(e, status="404") and matches(e, status="4xx") and not matches(e, status="2xx")
    assert matches(e, min_ms=500) and not matches(e, min_ms=501)


class FakeStream:
    def __init__(self) -> None:
        self.got = bytearray()
        self.protocol = None
        self.closed = False

    def write(self, data: bytes) -> None:
        self.got += data

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol
        protocol.connection_made(self)

    def close(self) -> None:
        self.closed = True


class FakeTransport:
    def __init__(self) -> None:
        self.got = bytearray()

    def write(self, data: bytes) -> None:
        self.got += data

    def close(self) -> None:
        pass


def test_capturing_relay_passes_every_byte_unchanged_even_when_the_capture_gives_up():
    from edge.agent.relay import CapturingUpstreamProtocol, CapturingStreamToUpstream, UpstreamProtocol, relay

    cap, store, _ = capture()
    stream, upstream = FakeStream(), FakeTransport()
    up = CapturingUpstreamProtocol(stream, cap)  # type: ignore[arg-type]
    up.connection_made(upstream)  # type: ignore[arg-type]
    relay(stream, upstream, up, GET[:10], cap)  # type: ignore[arg-type]
    assert isinstance(stream.protocol, CapturingStreamToUpstream)
    sent = [GET[10:], b"\x00\xffnot http at all\r\n\r\n", os.urandom(3000)]
    for chunk in sent:
        stream.protocol.data_received(chunk)
    answers = [OK, os.urandom(5000)]
    for chunk in answers:
        up.data_received(chunk)
    assert bytes(upstream.got) == GET[:10] + b"".join(sent)
    assert bytes(stream.got) == b"".join(answers)
    assert cap.broken and len(store) == 1 and store.entries()[0].error.startswith("capture stopped")
    up.connection_lost(None)
    stream.protocol.connection_lost(None)  # both ends closing: the capture closes once
    # without a capture the plain classes run (--inspect false: no capture code on the path)
    stream2, upstream2 = FakeStream(), FakeTransport()
    relay(stream2, upstream2, UpstreamProtocol(stream2), b"x")  # type: ignore[arg-type]
    assert type(stream2.protocol).__name__ == "StreamToUpstream"
