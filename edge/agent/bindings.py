"""The endpoints of one agent session by binding id, as the edge's bind_ok
replies name them (docs/protocol.md 3.2), for the proxy streams that name a
binding in their header (docs/protocol.md 4).

Owns: when a stream's binding counts as unknown. The edge opens streams for
a binding the moment it has sent that binding's bind_ok, so a stream can be
read before the agent has handled the reply: both come in one read, and the
coroutine waiting for the reply resumes only some loop iterations later. A
lookup therefore waits, bounded, while the session is still binding; once
binding is over, what is not known is unknown at once. Must not touch: the
control stream (client.py sends the binds and records their replies).
"""
from __future__ import annotations

import asyncio

from edge.agent.config import EndpointConfig


class BindingTable:
    """binding id -> endpoint for one session; `binding` while binds are in
    flight. A new table for each session: ids are the edge's, per session."""

    def __init__(self) -> None:
        self._by_id: dict[str, EndpointConfig] = {}
        self._binding = True
        self._changed = asyncio.Event()

    def add(self, binding_id: str, endpoint: EndpointConfig) -> None:
        """A bind_ok arrived: serve its streams from now on."""
        self._by_id[binding_id] = endpoint
        self._wake()

    def binding_done(self) -> None:
        """Every bind has its answer (or the session failed to bind):
        waiting lookups decide now."""
        self._binding = False
        self._wake()

    def get(self, binding_id: str) -> EndpointConfig | None:
        return self._by_id.get(binding_id)

    async def lookup(self, binding_id: str, timeout: float) -> EndpointConfig | None:
        """The endpoint of binding_id; while binds are in flight, wait up to
        timeout seconds for it (None: unknown)."""
        ep = self._by_id.get(binding_id)
        if ep is not None or not self._binding:
            # the common case, once bound: no timeout context, no timer per stream
            return ep
        try:
            async with asyncio.timeout(timeout):
                while binding_id not in self._by_id and self._binding:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self._by_id.get(binding_id)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
