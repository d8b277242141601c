"""Typed errors of the tunnel (yamux framing, control messages, streams).

Modelled on h11/h2: an error raised by the sans-IO core says who broke the
protocol and carries what the session should answer with (a yamux go-away
code), so the asyncio shell never has to guess.
"""
from __future__ import annotations

# yamux spec, "Go Away": the length field of a go-away frame carries one of
# these codes.
GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2


class TunnelError(Exception):
    """Base class of every error the tunnel raises."""


class ProtocolError(TunnelError):
    """The peer sent bytes that break the yamux spec or docs/protocol.md.

    The session is unusable afterwards: the shell sends a go-away frame with
    `go_away_code` and closes the connection. Other sessions are unaffected.
    """

    def __init__(self, message: str, go_away_code: int = GO_AWAY_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.go_away_code = go_away_code


class LocalProtocolError(TunnelError):
    """This side asked for something the protocol forbids (a bug in the caller),
    e.g. sending on a stream that it already closed or that does not exist."""


class StreamClosedError(LocalProtocolError):
    """The stream is closed (or reset, or never existed) in that direction."""


class SessionClosedError(TunnelError):
    """The session is gone (go-away sent or received, connection lost)."""


class StreamResetError(TunnelError):
    """The peer reset the stream (RST flag, yamux spec "Flags")."""


class MessageError(ProtocolError):
    """A control message or proxy-stream header is malformed (docs/protocol.md)."""


class ControlError(TunnelError):
    """The other side answered a control request with an error message.

    `code` is one of the error codes listed in docs/protocol.md
    (e.g. "auth_failed", "name_in_use", "port_range_exhausted").
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
