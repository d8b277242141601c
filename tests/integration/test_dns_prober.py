"""dns.prober against small servers on loopback (127.0.0.1 and ::1): what counts as a success."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from dns.prober import ProbeTimeout, check, probe_http, probe_tcp

pytestmark = pytest.mark.integration


async def http_server(host: str, reply: bytes | None) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    """Answers every request with `reply`; None: accept, read, never answer (a hung edge)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            if reply is None:
                await asyncio.sleep(5)
            else:
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    srv = await asyncio.start_server(handle, host, 0)
    return srv, srv.sockets[0].getsockname()[1], seen


def closed_port(host: str) -> int:
    import socket
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]  # bound, never listening: connections are refused


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_http_200_is_success_and_sends_path_and_host(host):
    async def go():
        srv, port, seen = await http_server(host, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        async with srv:
            return await probe_http(host, port, "/healthz", 2.0), seen, port
    err, seen, port = asyncio.run(go())
    assert err is None
    want_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n") and f"Host: {want_host}".encode() in seen[0]


@pytest.mark.parametrize("reply, error", [
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", "http: status 503"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "http: not an HTTP/1.x status line"),
    (b"", "http: connection closed before a status line"),
])
def test_anything_but_200_is_a_failure_with_the_reason(reply, error):
    async def go():
        srv, port, _ = await http_server("127.0.0.1", reply)
        async with srv:
            return await probe_http("127.0.0.1", port, "/healthz", 2.0)
    assert asyncio.run(go()).startswith(error)


def test_a_hung_endpoint_fails_after_the_timeout():
    async def go():
        srv, port, _ = await http_server("127.0.0.1", None)
        async with srv:
            return await probe_http("127.0.0.1", port, "/healthz", 0.3)
    got = asyncio.run(go())
    assert got == "http: timeout after 0.3 s" and isinstance(got, ProbeTimeout)


def test_a_check_is_a_timeout_only_when_every_probe_timed_out():
    """http+tcp against a hung HTTP endpoint: a timeout; with the TCP port closed as well,
    the refusal makes it a definite failure (dns.health counts the two apart)."""
    async def go():
        srv, port, _ = await http_server("127.0.0.1", None)
        dead = closed_port("127.0.0.1")
        async with srv:
            return (await check("127.0.0.1", Settings("http+tcp", port, port, timeout=0.3)),
                    await check("127.0.0.1", Settings("http+tcp", port, dead, timeout=0.3)))
    hung, hung_and_refused = asyncio.run(go())
    assert isinstance(hung, ProbeTimeout) and hung.startswith("http: timeout")
    assert hung_and_refused is not None and not isinstance(hung_and_refused, ProbeTimeout)
    assert "refused" in hung_and_refused.lower()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_probe_connects_or_reports_refused(host):
    async def go():
        srv, port, _ = await http_server(host, b"")
        async with srv:
            ok = await probe_tcp(host, port, 2.0)
        return ok, await probe_tcp(host, closed_port(host), 2.0)
    ok, refused = asyncio.run(go())
    assert ok is None and refused is not None and refused.startswith("tcp: ") and "refused" in refused.lower()


@dataclasses.dataclass
class Settings:
    check: str
    port: int
    tcp_port: int
    path: str = "/healthz"
    timeout: float = 2.0


def test_http_plus_tcp_needs_both():
    async def go():
        srv, port, _ = await http_server("127.0.0.1", b"HTTP/1.1 200 OK\r\n\r\n")
        dead = closed_port("127.0.0.1")
        async with srv:
            return (await check("127.0.0.1", Settings("http+tcp", port, port)),
                    await check("127.0.0.1", Settings("http+tcp", port, dead)),
                    await check("127.0.0.1", Settings("http", port, dead)),
                    await check("127.0.0.1", Settings("tcp", dead, port)))
    both, no_tcp, http_only, tcp_only = asyncio.run(go())
    assert both is None and http_only is None and tcp_only is None
    assert no_tcp is not None and no_tcp.startswith("tcp: ")
