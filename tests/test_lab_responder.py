"""The PoP stand-in's HTTP answers, fed through in-memory streams (no sockets)."""
from __future__ import annotations

import argparse
import asyncio

import pytest

from netns import responder


class FakeWriter:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def get_extra_info(self, key: str):
        return {"peername": ("198.19.5.10", 40000), "sockname": ("198.18.5.1", 80)}[key]

    def write(self, b: bytes) -> None:
        self.data += b

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def answer(request: bytes) -> bytes:
    async def go() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(request)
        reader.feed_eof()
        w = FakeWriter()
        await responder._handle(reader, w, "jp")
        assert w.closed
        return w.data
    return asyncio.run(go())


def test_healthz_answers_200_with_the_pop():
    out = answer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Gslb-Pop: jp\r\n" in out and out.endswith(b"ok pop=jp\n")


def test_other_paths_get_404():
    assert answer(b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")


def test_head_has_no_body():
    out = answer(b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"\r\n\r\n")


def test_truncated_request_gets_no_answer():
    assert answer(b"GET /healthz HTTP/1.1\r\n") == b""


@pytest.mark.parametrize("value,want", [("198.18.5.1:80", ("198.18.5.1", 80)),
                                        ("[fd7a:5e1b:c00::5:1]:8080", ("fd7a:5e1b:c00::5:1", 8080))])
def test_parse_listen(value, want):
    assert responder.parse_listen(value) == want


@pytest.mark.parametrize("value", ["198.18.5.1", "[::1]", "x:0", ":80", "h:99999"])
def test_parse_listen_refuses_bad_values(value):
    with pytest.raises(argparse.ArgumentTypeError):
        responder.parse_listen(value)
