"""What the edge's front routes a client connection to: an `Endpoint`.

Owns the one face every endpoint shows the front, wherever its agent is:
its kind and name, the bind options the front reads (PROXY protocol, where
TLS ends), and one async `open_stream` that returns a stream shaped like an
asyncio transport (write/close/abort/pause_reading/resume_reading/
set_protocol). `edge.hub.LocalEndpoint` opens a proxy stream on this PoP's
agent session; `edge.hub.RemoteEndpoint` opens one through the peer link to
the agent's PoP. The front awaits the open either way, bounded by
`open_stream_within`. Must not touch: sockets, HTTP, the registry.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Mapping


class Endpoint(ABC):
    """An endpoint bound by an agent session (docs/protocol.md 3.2)."""

    __slots__ = ()

    kind: str  # http | tls | tcp
    hostname: str | None  # http/tls: demo.app.lab.test
    port: int | None  # tcp: the allocated port
    url: str
    options: Mapping[str, Any]  # validated bind options, read-only
    pop: str  # the PoP whose agent session serves it

    @property
    def proxy_protocol(self) -> bool:
        """tls/tcp: the edge writes a PROXY v2 header first."""
        return bool(self.options.get("proxy_protocol", False))

    @property
    def terminate_at(self) -> str | None:
        """tls: "edge" or "agent" (passthrough); None for http and tcp."""
        return self.options.get("terminate_at")

    @abstractmethod
    async def open_stream(self, client_addr: str, client_port: int, *, sni: str | None = None,
                          tls_terminated: bool = False) -> Any:
        """A stream to the agent with its proxy header written (docs/protocol.md
        4, 7). The caller writes the PROXY v2 header next if `proxy_protocol`.
        Raises (SessionClosedError, PeerUnavailable, ...) when it cannot."""


async def open_stream_within(endpoint: Endpoint, client: tuple[str, int], sni: str | None, tls_terminated: bool,
                             timeout: float) -> Any:
    """`endpoint.open_stream(...)`, or TimeoutError after `timeout` seconds
    (a peer link that does not answer must not hold the client forever)."""
    async with asyncio.timeout(timeout):
        return await endpoint.open_stream(client[0], client[1], sni=sni, tls_terminated=tls_terminated)
