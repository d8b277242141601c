"""ResponseRewriter: Via on every response head, bodies passed through as framed."""
from __future__ import annotations

import pytest

from edge.front.response import ResponseRewriter, add_via

VIA = "1.1 eu.lab.test"


def feed_all(rw: ResponseRewriter, data: bytes, step: int | None = None) -> bytes:
    if step is None:
        return rw.feed(data)
    return b"".join(rw.feed(data[i:i + step]) for i in range(0, len(data), step))


def test_add_via_inserts_after_status_line():
    out = add_via(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"1.1 eu.lab.test")
    assert out == b"HTTP/1.1 200 OK\r\nVia: 1.1 eu.lab.test\r\nContent-Length: 0\r\n\r\n"


def test_add_via_appends_to_the_last_existing_via():
    head = b"HTTP/1.1 200 OK\r\nVia: 1.0 a\r\nX: y\r\nvia: 1.1 b\r\n\r\n"
    assert add_via(head, b"1.1 eu.lab.test") == b"HTTP/1.1 200 OK\r\nVia: 1.0 a\r\nX: y\r\nvia: 1.1 b, 1.1 eu.lab.test\r\n\r\n"


def test_add_via_refuses_what_is_not_a_response_head():
    assert add_via(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"v") is None
    assert add_via(b"HTTP/1.1 200 OK\r\nBad : x\r\n\r\n", b"v") is None


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_keep_alive_content_length_then_chunked_then_no_body_responses(step):
    rw = ResponseRewriter(VIA)
    for m in ("GET", "GET", "HEAD", "GET"):
        rw.expect(m)
    r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/"  # body looks like a head: must not be touched
    r2 = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"4;ext=1\r\nHTTP\r\n0\r\nTrailer: t\r\n\r\n")
    r3 = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"  # HEAD: no body despite the length
    r4 = b"HTTP/1.1 204 No Content\r\n\r\n"
    out = feed_all(rw, r1 + r2 + r3 + r4, step)
    v = b"Via: 1.1 eu.lab.test\r\n"
    assert out == (b"HTTP/1.1 200 OK\r\n" + v + b"Content-Length: 5\r\n\r\nHTTP/"
                   + b"HTTP/1.1 200 OK\r\n" + v + b"Transfer-Encoding: chunked\r\n\r\n4;ext=1\r\nHTTP\r\n0\r\nTrailer: t\r\n\r\n"
                   + b"HTTP/1.1 200 OK\r\n" + v + b"Content-Length: 100\r\n\r\n"
                   + b"HTTP/1.1 204 No Content\r\n" + v + b"\r\n")
    assert rw.responses == 4 and not rw.raw


def test_interim_100_then_final_response_for_the_same_request():
    rw = ResponseRewriter(VIA)
    rw.expect("POST")
    rw.expect("GET")
    out = rw.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                  b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
    assert out.count(b"Via: 1.1 eu.lab.test\r\n") == 3
    assert rw.responses == 2


def test_101_switches_to_raw_bytes():
    rw = ResponseRewriter(VIA)
    rw.expect("GET")
    out = rw.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05HTTP/")
    assert out.endswith(b"\r\n\r\n\x81\x05HTTP/") and b"Via: 1.1 eu.lab.test" in out
    assert rw.raw
    assert rw.feed(b"HTTP/1.1 200 OK\r\n\r\n") == b"HTTP/1.1 200 OK\r\n\r\n"


def test_body_until_close_is_never_parsed():
    rw = ResponseRewriter(VIA)
    rw.expect("GET")
    rw.feed(b"HTTP/1.0 200 OK\r\n\r\n")
    assert rw.feed(b"HTTP/1.1 200 OK\r\n\r\n") == b"HTTP/1.1 200 OK\r\n\r\n"


def test_garbage_or_oversized_head_passes_through_unchanged():
    rw = ResponseRewriter(VIA)
    rw.expect("GET")
    assert rw.feed(b"SSH-2.0-x\r\n\r\nmore") == b"SSH-2.0-x\r\n\r\nmore"
    assert rw.raw
    rw = ResponseRewriter(VIA, max_head=64)
    big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100
    assert rw.feed(big) == big and rw.raw


def test_bad_chunk_size_passes_the_rest_through():
    rw = ResponseRewriter(VIA)
    rw.expect("GET")
    out = rw.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nrest")
    assert out.endswith(b"zz\r\nrest") and rw.raw
