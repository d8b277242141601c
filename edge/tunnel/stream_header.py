"""Reading the one JSON header that opens a stream: a proxy stream's header
from the edge (docs/protocol.md 4) or a peer stream's from another PoP
(docs/protocol.md 7).

Owns: waiting, bounded in time, for the first framed message of a stream
and keeping the bytes after it (the stream's payload). The framing is
`messages.MessageReader`'s; what the header means is the caller's.

    obj, rest = await read_header(stream, timeout=10.0)
    if obj is None: the stream ended before a header (abort it)
"""
from __future__ import annotations

import asyncio
from typing import Any

from edge.tunnel import messages as M


async def read_header(stream: Any, timeout: float) -> tuple[dict[str, Any] | None, bytes]:
    """(header object, payload bytes read after it), or (None, b"") when the
    stream ends first. Raises MessageError (bad framing), TimeoutError,
    TunnelError (the stream or session broke)."""
    reader = M.MessageReader(max_messages=1)
    async with asyncio.timeout(timeout):
        while True:
            data = await stream.read()
            if not data:
                return None, b""
            got = reader.feed(data)
            if got:
                return got[0], reader.rest
