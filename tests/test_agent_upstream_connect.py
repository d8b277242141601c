"""edge/agent/client.py open_upstream: the agent's connection to its local
service, direct for an address literal, through create_connection for a name."""
from __future__ import annotations

import asyncio
import socket

import pytest

from edge.agent.client import open_upstream


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.data += data


async def _echo_once(host: str) -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("listen,target", [("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "localhost")])
def test_open_upstream_connects_and_relays_bytes(listen: str, target: str) -> None:
    async def main() -> None:
        server, port = await _echo_once(listen)
        loop = asyncio.get_running_loop()
        proto = _Recorder()
        transport, got = await asyncio.wait_for(open_upstream(loop, lambda: proto, target, port), 5.0)
        assert got is proto and proto.made
        assert transport.get_extra_info("peername")[1] == port
        transport.write(b"ping")
        for _ in range(200):  # bounded: at most 2 s
            if proto.data == b"ping":
                break
            await asyncio.sleep(0.01)
        assert proto.data == b"ping"
        transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_open_upstream_refused_is_an_oserror() -> None:
    async def main() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        loop = asyncio.get_running_loop()
        with pytest.raises(OSError):
            await asyncio.wait_for(open_upstream(loop, _Recorder, "127.0.0.1", port), 5.0)

    asyncio.run(main())
