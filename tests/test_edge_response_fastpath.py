"""ResponseRewriter fast paths (docs/bench.md): whole reads, memoryviews and
byte-by-byte feeding must give the same bytes."""
from __future__ import annotations

import random

from edge.front.response import ResponseRewriter

BODY = bytes(random.Random(7).randrange(256) for _ in range(70000))
STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + BODY
    + b"HTTP/1.1 200 OK\r\nVia: 1.0 up\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    + b"HTTP/1.1 204 No Content\r\n\r\n"
    + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
)
EXPECTED = (
    b"HTTP/1.1 200 OK\r\nVia: 1.1 eu.lab.test\r\nContent-Length: 70000\r\n\r\n" + BODY
    + b"HTTP/1.1 200 OK\r\nVia: 1.0 up, 1.1 eu.lab.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    + b"HTTP/1.1 204 No Content\r\nVia: 1.1 eu.lab.test\r\n\r\n"
    + b"HTTP/1.1 200 OK\r\nVia: 1.1 eu.lab.test\r\nContent-Length: 3\r\n\r\nabc"
)


def run(pieces, view=False):
    rw = ResponseRewriter("1.1 eu.lab.test")
    for _ in range(4):
        rw.expect("GET")
    out = b"".join(bytes(rw.feed(memoryview(p) if view else p)) for p in pieces)
    return out, rw.responses


def test_whole_stream_in_one_read():
    assert run([STREAM]) == (EXPECTED, 4)
    assert run([STREAM], view=True) == (EXPECTED, 4)


def test_random_splits_bytes_and_views():
    rnd = random.Random(1)
    for _ in range(200):
        cuts = sorted(rnd.sample(range(1, len(STREAM)), rnd.randint(1, 12)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
        assert run(pieces, view=rnd.random() < 0.5) == (EXPECTED, 4)


def test_body_read_is_passed_through_uncopied():
    rw = ResponseRewriter("1.1 x")
    rw.expect("GET")
    rw.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    chunk = memoryview(b"0123456789")
    assert rw.feed(chunk) is chunk
