"""A stand-in agent connection for the hub's unit tests: what Hub.bind
needs of an AgentConnection (its real takeover and lease code), without a
transport or a session."""
from __future__ import annotations

import asyncio
import secrets

from edge.hub import AgentConnection, Hub, _fingerprint


class FakeConn:
    takeover_key = AgentConnection.takeover_key
    takes_over = AgentConnection.takes_over
    ensure_lease = AgentConnection.ensure_lease

    def __init__(self, hub: Hub, agent_id: str | None = None, token: str = "good-token") -> None:
        self.hub = hub
        self.bindings: dict = {}
        self.session_id = secrets.token_hex(4)
        self.is_closed = False
        self.closed = False
        self.lease = None
        self._lease_lock = asyncio.Lock()
        self._tasks: list = []
        self.agent_id = agent_id
        self.token_fp = _fingerprint(token)

    async def _watch_lease(self, lease):
        await lease.wait_lost()

    def binding_gone(self, binding_id):
        self.bindings.pop(binding_id, None)

    def close(self):
        self.closed = True
        self.is_closed = True
