"""Request head rewriting: X-Forwarded-*, hop-by-hop removal, bodies, upgrade."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.front.http1 import (
    BodyData, HttpError, RequestEnd, RequestHead, RequestRewriter, Upgraded, error_response,
)


def feed_all(data: bytes, **kw):
    return RequestRewriter("192.0.2.7", **kw).feed(data)


def head_lines(ev: RequestHead) -> list[bytes]:
    return ev.data.split(b"\r\n")


def test_forwarded_headers_added_and_client_values_replaced():
    (head, end) = feed_all(
        b"GET /a?b=1 HTTP/1.1\r\nHost: demo.app.lab.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Proto: http\r\nAccept: */*\r\n\r\n"
    )
    assert isinstance(head, RequestHead) and isinstance(end, RequestEnd)
    lines = head_lines(head)
    assert lines[0] == b"GET /a?b=1 HTTP/1.1"
    assert b"X-Forwarded-For: 192.0.2.7" in lines
    assert b"X-Forwarded-Proto: https" in lines
    assert b"X-Forwarded-Host: demo.app.lab.test" in lines
    assert b"X-Forwarded-Port: 443" in lines
    assert b"X-Forwarded-For: 6.6.6.6" not in lines and b"X-Forwarded-Proto: http" not in lines
    assert b"Accept: */*" in lines
    assert head.data.endswith(b"\r\n\r\n") and head.keep_alive and head.host == "demo.app.lab.test"


def test_hop_by_hop_and_connection_named_fields_are_removed():
    (head, _) = feed_all(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Kept: 2\r\n\r\n"
    )
    low = head.data.lower()
    for gone in (b"connection:", b"x-secret", b"keep-alive:", b"te:", b"proxy-connection"):
        assert gone not in low, gone
    assert b"x-kept: 2" in low


def test_connection_close_is_forwarded_so_the_upstream_closes():
    (head, _) = feed_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not head.keep_alive
    assert b"Connection: close\r\n" in head.data


def test_bytes_after_a_closing_request_are_dropped():
    rw = RequestRewriter("192.0.2.7")
    evs = rw.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
    assert [type(e) for e in evs] == [RequestHead, RequestEnd]
    assert rw.feed(b"more") == []


def test_keep_alive_pipelined_requests_each_rewritten():
    evs = feed_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    heads = [e for e in evs if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == ["/1", "/2"]


def test_content_length_body_streams_as_is_across_feeds():
    rw = RequestRewriter("192.0.2.7")
    evs = rw.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    assert b"Content-Length: 10" in evs[0].data
    assert evs[1] == BodyData(b"hello")
    evs = rw.feed(b"world")
    assert evs == [BodyData(b"world"), RequestEnd(b"")]


def test_chunked_body_is_rechunked_and_trailers_dropped():
    rw = RequestRewriter("192.0.2.7")
    evs = rw.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel")
    assert b"Transfer-Encoding: chunked\r\n" in evs[0].data
    out = b"".join(e.data for e in evs[1:])
    out += b"".join(e.data for e in rw.feed(b"lo\r\n0\r\nX-Trailer: t\r\n\r\n"))
    assert out == b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"


def test_websocket_upgrade_keeps_upgrade_and_switches_to_raw():
    rw = RequestRewriter("192.0.2.7")
    evs = rw.feed(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello"
    )
    head = evs[0]
    assert head.upgrade
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in head.data
    assert evs[-1] == Upgraded(b"\x81\x05hello")
    assert rw.feed(b"\x88\x00") == [Upgraded(b"\x88\x00")]


def test_http10_keep_alive_is_kept():
    (head, _) = feed_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert head.keep_alive and b"Connection: keep-alive\r\n" in head.data


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
])
def test_bad_requests_get_a_typed_error_with_status(raw, status):
    with pytest.raises(HttpError) as ei:
        feed_all(raw)
    assert ei.value.status == status


def test_head_size_bound_applies_to_a_slow_head():
    rw = RequestRewriter("192.0.2.7", max_header_bytes=100)
    rw.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    with pytest.raises(HttpError):
        for _ in range(20):
            rw.feed(b"yyyyyyyyyy")


def test_error_page_names_endpoint_and_code():
    page = error_response(404, "ERR_GSLB_3200", "Endpoint offline", "demo.app.lab.test is not online <x>")
    head, body = page.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 404 Not Found")
    assert b"Content-Length: %d" % len(body) in head
    assert b"ERR_GSLB_3200" in body and b"demo.app.lab.test" in body and b"&lt;x&gt;" in body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_fuzz_any_bytes_in_any_split_only_typed_errors(data, step):
    rw = RequestRewriter("192.0.2.7")
    try:
        for i in range(0, len(data), step):
            rw.feed(data[i:i + step])
    except HttpError:
        pass


@pytest.mark.parametrize("raw", [
    # RFC 9112 6.1 / 6.3: framing an intermediary must not guess about (request smuggling)
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
    b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
])
def test_ambiguous_framing_is_refused_with_400(raw):
    with pytest.raises(HttpError) as ei:
        feed_all(raw)
    assert ei.value.status == 400


def test_codings_before_chunked_are_kept():
    evs = feed_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert b"Transfer-Encoding: gzip, chunked\r\n" in evs[0].data
    assert b"".join(e.data for e in evs[1:]) == b"3\r\nabc\r\n0\r\n\r\n"


def test_every_error_code_is_defined_once_in_edge_errors_and_documented_with_its_status():
    import pathlib
    import re

    from edge import errors as E

    repo = pathlib.Path(__file__).resolve().parent.parent
    literal = re.compile(r'"ERR_GSLB_\w+"')
    stray = [str(p.relative_to(repo)) for p in sorted((repo / "edge").rglob("*.py"))
             if p.name != "errors.py" and literal.search(p.read_text())]
    assert stray == [], f"ERR_GSLB_* literals outside edge/errors.py: {stray}"
    documented = dict(re.findall(r"^\| `(ERR_GSLB_\w+)` \| (\d{3}) \|", (repo / "docs" / "errors.md").read_text(),
                                 re.M))
    assert documented == {c: str(e.status) for c, e in E.CODES.items()}


@pytest.mark.parametrize("value, name", [
    ("Demo.App.Lab.Test", "demo.app.lab.test"), ("demo.app.lab.test:8443", "demo.app.lab.test"),
    ("demo.app.lab.test.", "demo.app.lab.test"), ("[::1]:443", "[::1]"), (" x.test ", "x.test"),
])
def test_host_name_drops_port_trailing_dot_and_case(value, name):
    from edge.front.http1 import host_name
    assert host_name(value) == name
