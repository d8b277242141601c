"""The tunnel between agents and edges: yamux framing (HashiCorp spec) as a
sans-IO state machine (`connection.py`), control messages and proxy-stream
headers (`messages.py`), and the asyncio shell (`session.py`).
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
