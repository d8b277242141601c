"""The :80 listener's HTTP-01 answers (RFC 8555 8.3), from the registry, for any Host."""
from __future__ import annotations

import asyncio
import os

from _front_fakes import FakeTransport

from edge.acme.crypto import Sealer
from edge.acme.solvers import Http01Solver
from edge.acme.store import AcmeStore
from edge.front.redirect import RedirectFront
from edge.registry import MemoryRegistry


def answer(solver, head: bytes, is_https=lambda n: n.endswith(".app.lab.test")) -> bytes:
    async def run():
        t = FakeTransport()
        front = RedirectFront(is_https, 443, 5.0, None, solver.answer if solver else None)
        front.connection_made(t)
        front.data_received(head)
        for _ in range(50):   # bounded: the answer needs one registry read
            if t.closed:
                break
            await asyncio.sleep(0.001)
        front.connection_lost(None)
        return t.data
    return asyncio.run(run())


def test_known_token_is_answered_with_its_key_authorization_even_for_an_https_name(tmp_path):
    store = AcmeStore(MemoryRegistry(), Sealer(os.urandom(32)), "eu", tmp_path)
    solver = Http01Solver(store)
    asyncio.run(solver.present("demo.app.lab.test", "tok_EN-1", "tok_EN-1.thumb"))
    out = answer(solver, b"GET /.well-known/acme-challenge/tok_EN-1 HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\ntok_EN-1.thumb")
    asyncio.run(solver.cleanup("demo.app.lab.test", "tok_EN-1"))
    out = answer(solver, b"GET /.well-known/acme-challenge/tok_EN-1 HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 ")


def test_malformed_tokens_are_404(tmp_path):
    store = AcmeStore(MemoryRegistry(), Sealer(os.urandom(32)), "eu", tmp_path)
    solver = Http01Solver(store)
    for token in (b"..%2f", b"a/b", b"x" * 300, b""):
        out = answer(solver, b"GET /.well-known/acme-challenge/" + token + b" HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 404 "), (token, out[:40])


def test_without_acme_the_challenge_path_is_redirected_as_before():
    out = answer(None, b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 308 ") and b"https://demo.app.lab.test/.well-known/acme-challenge/tok" in out
