"""The tunnel between agents and edges: yamux framing (HashiCorp spec) as a
sans-IO state machine (`connection.py`), control messages and proxy-stream
headers (`messages.py`), the edge's control-stream rules as a sans-IO state
machine (`control.py`), and the asyncio shell: `session.py` (one session
over a TLS transport), `stream.py` (its streams, shaped like asyncio
transports, with their `StreamState`), `session_protocol.py` for owners
that hold a session and `stream_header.py` for a stream's opening header.
docs/protocol.md is the wire specification."""
from edge.tunnel.connection import Connection, ConnectionConfig
from edge.tunnel.errors import (
    ControlError,
    LocalProtocolError,
    MessageError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    TunnelError,
)

__all__ = [
    "Connection",
    "ConnectionConfig",
    "ControlError",
    "LocalProtocolError",
    "MessageError",
    "ProtocolError",
    "SessionClosedError",
    "StreamClosedError",
    "StreamResetError",
    "TunnelError",
]
