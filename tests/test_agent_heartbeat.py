"""The agent's heartbeat loop ends as soon as its session is lost (failover speed)."""
from __future__ import annotations

import asyncio

from edge.agent.client import Agent
from edge.agent.config import AgentConfig, EndpointConfig


class _LostSession:
    """A session that is already closed, as after an RST from a killed PoP."""

    last_received = 0.0
    is_closed = True

    async def wait_closed(self) -> None:
        return None

    def abort(self) -> None:  # pragma: no cover - must not be needed
        raise AssertionError("a closed session needs no abort")


class _Control:
    def send(self, msg) -> None:  # pragma: no cover - no beat is due
        raise AssertionError("no heartbeat is due")


def test_heartbeat_returns_when_the_session_is_lost_without_waiting_a_tick():
    cfg = AgentConfig(endpoints=(EndpointConfig(kind="tcp", port=1),), authtoken="t",
                      heartbeat_interval=1000.0, heartbeat_timeout=3000.0)

    async def main() -> None:
        agent = Agent(cfg, ssl_context=object())  # no TLS needed: nothing connects
        session = _LostSession()
        session.last_received = asyncio.get_running_loop().time()
        # A tick here is 250 s: before the fix the loop slept it out.
        await asyncio.wait_for(agent._heartbeat(session, _Control()), timeout=10)

    asyncio.run(main())
