"""Health probes (asyncio): an HTTP GET of the edge's health endpoint and a TCP connect.

Owns the network side of one check and nothing else: what a result means
(rise/fall, versions) is `dns.health`; when checks run is `dns.monitor`.
Each probe is bounded by the timeout and reports `None` (success) or a short
error string for the log and `gslb dns health`; an error that is only a
timeout is a `ProbeTimeout` (the health machine counts those apart).

Also owns finding out whether this process runs inside a *named* network
namespace (`ip netns add`/`exec`, as every lab host does): the checker
probes non-loopback addresses only from there or with
`[health] allow_remote = true` (`dns.health.refused_targets`).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

_MAX_STATUS_LINE = 1024


class ProbeTimeout(str):
    """A probe error that is only a timeout: no answer in time, which on a busy machine need
    not mean a dead PoP. `dns.health` counts it apart from refusals, resets and bad statuses
    (docs/configuration.md, `[health] timeout_fall`)."""


def _host_header(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return host if port == 80 else f"{host}:{port}"


async def probe_http(address: str, port: int, path: str, timeout: float) -> str | None:
    """GET path over plain HTTP/1.1; a 200 status is success (RFC 9110 15.3.1)."""
    async def go() -> str | None:
        reader, writer = await asyncio.open_connection(address, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {_host_header(address, port)}\r\n"
                         f"User-Agent: gslb-dns-health\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            return "http: connection closed before a status line"
        if len(line) > _MAX_STATUS_LINE:
            return "http: status line too long"
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            return f"http: not an HTTP/1.x status line: {line[:60]!r}"
        if parts[1] != b"200":
            return f"http: status {parts[1].decode('latin-1')}"
        return None
    return await _bounded(go(), timeout, "http")


async def probe_tcp(address: str, port: int, timeout: float) -> str | None:
    """A TCP handshake to address:port (the edge's TLS listener); success = connected."""
    async def go() -> str | None:
        _, writer = await asyncio.open_connection(address, port)
        writer.close()
        return None
    return await _bounded(go(), timeout, "tcp")


async def _bounded(coro: Any, timeout: float, what: str) -> str | None:
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        return ProbeTimeout(f"{what}: timeout after {timeout:g} s")
    except OSError as exc:
        # asyncio words it "Connect call failed (addr)", uvloop "Connection refused": say the errno's name.
        return f"{what}: {os.strerror(exc.errno) if exc.errno else exc}"
    except (ValueError, UnicodeError) as exc:  # asyncio's reader limits and the like
        return f"{what}: {exc}"


async def check(address: str, settings: Any) -> str | None:
    """One check as `[health].check` says: http, tcp, or both (both must succeed)."""
    mode = settings.check
    probes = []
    if "http" in mode:
        probes.append(probe_http(address, settings.port, settings.path, settings.timeout))
    if "tcp" in mode:
        probes.append(probe_tcp(address, settings.tcp_port, settings.timeout))
    errors = [e for e in await asyncio.gather(*probes) if e is not None]
    if not errors:
        return None
    joined = "; ".join(errors)
    # Only a timeout if every probe of the check timed out: one refusal is a definite failure.
    return ProbeTimeout(joined) if all(isinstance(e, ProbeTimeout) for e in errors) else joined


def named_netns(run_netns: str = "/run/netns") -> str | None:
    """The name of the named network namespace this process is in, or None.

    A named namespace is one `ip netns add` pinned under /run/netns; this
    process is in it when /proc/self/ns/net is the same namespace inode.
    """
    try:
        mine = os.stat("/proc/self/ns/net")
        entries = sorted(os.listdir(run_netns))
    except OSError:
        return None
    for name in entries:
        try:
            st = os.stat(os.path.join(run_netns, name))
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
            return name
    return None
