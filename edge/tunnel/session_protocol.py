"""The asyncio protocol around a `Session`, for owners that hold one.

Owns: forwarding the transport's callbacks to the session it holds, and
telling its owner when the transport arrives (`on_made`), which `Session`
itself does not (its `on_stream`/`on_lost` callbacks cover the rest). The
owner holds a session instead of subclassing it or patching its methods
(the edge's agent connections, accepted peer links). Must not touch the
framing: everything goes to the session as it came.

    proto = SessionProtocol(Session(client=False, on_lost=...), on_made=lambda transport: ...)
    await loop.connect_accepted_socket(lambda: proto, sock, ssl=ctx)
"""
from __future__ import annotations

import asyncio
from typing import Callable

from edge.tunnel.session import Session


class SessionProtocol(asyncio.BufferedProtocol):
    def __init__(self, session: Session,
                 on_made: Callable[[asyncio.BaseTransport], None] | None = None) -> None:
        self.session = session
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.connection_made(transport)
        if self._on_made is not None:
            self._on_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.session.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.session.buffer_updated(nbytes)

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)

    def eof_received(self) -> bool:
        return self.session.eof_received()

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.session.connection_lost(exc)
