"""The edge side of an agent's control stream, as a sans-IO state machine.

Owns the rules of docs/protocol.md section 3 for one agent session: which
message may come in which state, what each is answered, how many endpoints
a session may hold, and the two deadlines (auth timeout, heartbeat
timeout, 3.5). Bytes and time in; events and reply messages out. No socket,
no event loop, no clock, no hub: the shell (`edge.hub.AgentConnection`)
checks authtokens and performs binds, then feeds the outcome back.

States (h11 `_state.py` style; every transition is a method below):

    AWAITING_AUTH --auth, token accepted--> AUTHENTICATED
    AWAITING_AUTH --auth, token refused---> CLOSING   (reply auth_failed, then close)
    any           --framing error---------> CLOSING   (ProtocolError, close)

Usage by the shell:

    ch = ControlChannel(ControlLimits(...), now=loop.time())
    ch.receive_data(await stream.read())
    while (ev := ch.next_event()) is not NEED_DATA:
        if isinstance(ev, Reply):          send ev.message
        elif isinstance(ev, AuthRequest):  send ch.auth_accepted(session_id, ingress) or ch.auth_refused()
        elif isinstance(ev, BindRequest):  bind; send ch.bind_done(...) or ch.request_failed(code, text)
        elif isinstance(ev, UnbindRequest): unbind; send ch.unbind_done(binding_id) or ch.request_failed(...)
        elif isinstance(ev, ProtocolError): close the session
        if ch.state is State.CLOSING: close the session
    ch.expired(loop.time(), session.last_received)   # "auth_timeout" | "agent_timeout" | None

Requests are answered in order: while one is with the shell, `next_event`
refuses to hand out the next (the registry round trip of a bind must not
let a later unbind overtake it).
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from edge.tunnel import messages as M
from edge.tunnel.errors import MessageError


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSING = "closing"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()  # no complete message buffered: read more


@dataclass(frozen=True, slots=True)
class ControlLimits:
    """What the edge allows an agent session (HubConfig carries them)."""

    auth_timeout: float = 10.0  # s from connect to a valid auth message
    heartbeat_timeout_min: float = 1.0  # bounds on what an agent may ask for (3.5)
    heartbeat_timeout_max: float = 120.0
    max_bindings: int = 64  # endpoints per session


@dataclass(frozen=True, slots=True)
class Reply:
    """Send `message` now; nothing for the shell to decide. `refused`: a
    bind or unbind the rules turned down (the shell logs control_refused)."""

    message: M.Message
    refused: bool = False


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """An auth in AWAITING_AUTH: the shell checks the token, then calls
    auth_accepted or auth_refused. `heartbeat_timeout` is the agent's ask,
    clamped to the edge's bounds."""

    message: M.Auth
    heartbeat_timeout: float


@dataclass(frozen=True, slots=True)
class BindRequest:
    """A bind the rules allow: the shell binds, then bind_done or request_failed."""

    message: M.Bind


@dataclass(frozen=True, slots=True)
class UnbindRequest:
    """An unbind of a binding this session holds (as far as the machine
    knows): the shell unbinds, then unbind_done or request_failed."""

    message: M.Unbind


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The control stream's framing is broken (docs/protocol.md 3.1): close the session."""

    reason: str


Event = Union[Reply, AuthRequest, BindRequest, UnbindRequest, ProtocolError]


def _message_id(obj: Mapping[str, Any]) -> int:
    mid = obj.get("id")
    return mid if isinstance(mid, int) and not isinstance(mid, bool) else 0


class ControlChannel:
    """One agent session's control stream (see module docstring)."""

    def __init__(self, limits: ControlLimits, now: float) -> None:
        self.limits = limits
        self.state = State.AWAITING_AUTH
        self.auth_deadline = now + limits.auth_timeout
        self.heartbeat_timeout = limits.heartbeat_timeout_max  # set by auth
        self.agent_id: str | None = None
        self.bindings: set[str] = set()  # binding ids this session holds
        self._reader = M.MessageReader()
        self._inbox: deque[dict[str, Any]] = deque()
        self._error: str | None = None
        self._waiting: Event | None = None  # the request the shell has not answered yet

    # ------------------------------------------------------------ input
    def receive_data(self, data: bytes) -> None:
        """Bytes from the control stream. A framing error closes the
        channel: what came in the same chunk is not served."""
        if self.state is State.CLOSING:
            return
        try:
            self._inbox.extend(self._reader.feed(data))
        except MessageError as exc:
            self._inbox.clear()
            self._error = str(exc)
            self.state = State.CLOSING

    def next_event(self) -> Event | _NeedData:
        """The next thing the shell must do, in message order."""
        if self._waiting is not None:
            raise RuntimeError(f"answer {type(self._waiting).__name__} before the next message")
        if self._error is not None:
            reason, self._error = self._error, None
            return ProtocolError(reason)
        while self.state is not State.CLOSING and self._inbox:
            ev = self._event_for(self._inbox.popleft())
            if not isinstance(ev, Reply):
                self._waiting = ev
            return ev
        return NEED_DATA

    def _event_for(self, obj: dict[str, Any]) -> Event:
        try:
            msg = M.parse_message(obj)
        except MessageError as exc:  # unknown type, missing or mistyped field
            return Reply(M.Error(_message_id(obj), M.ERR_BAD_REQUEST, str(exc)))
        if isinstance(msg, M.Auth):
            if self.state is State.AUTHENTICATED:
                return Reply(M.Error(msg.id, M.ERR_BAD_REQUEST, "already authenticated"))
            lim = self.limits
            return AuthRequest(msg, min(max(msg.heartbeat_timeout, lim.heartbeat_timeout_min),
                                        lim.heartbeat_timeout_max))
        if self.state is not State.AUTHENTICATED:
            return Reply(M.Error(msg.id, M.ERR_NOT_AUTHENTICATED, "the first message must be auth"))
        if isinstance(msg, M.Heartbeat):
            return Reply(M.HeartbeatOk(msg.id))
        if isinstance(msg, M.Bind):
            if len(self.bindings) >= self.limits.max_bindings:
                return Reply(M.Error(msg.id, M.ERR_TOO_MANY_BINDINGS,
                                     f"at most {self.limits.max_bindings} endpoints per session"), refused=True)
            return BindRequest(msg)
        if isinstance(msg, M.Unbind):
            if msg.binding_id not in self.bindings:
                return Reply(M.Error(msg.id, M.ERR_UNKNOWN_BINDING, f"no binding {msg.binding_id!r} on this session"),
                             refused=True)
            return UnbindRequest(msg)
        return Reply(M.Error(msg.id, M.ERR_BAD_REQUEST, f"{msg.type} is not a request the edge serves"))

    # ------------------------------------------------- the shell's answers
    def _answer(self, kind: type) -> Any:
        ev = self._waiting
        if not isinstance(ev, kind):
            raise RuntimeError(f"no {kind.__name__} is waiting for an answer")
        self._waiting = None
        return ev

    def auth_accepted(self, session_id: str, ingress: Sequence[Mapping[str, Any]] = ()) -> M.AuthOk:
        ev: AuthRequest = self._answer(AuthRequest)
        self.state = State.AUTHENTICATED
        self.heartbeat_timeout = ev.heartbeat_timeout
        self.agent_id = ev.message.agent_id or None
        return M.AuthOk(ev.message.id, session_id, ingress=[dict(e) for e in ingress] or None)

    def auth_refused(self) -> M.Error:
        ev: AuthRequest = self._answer(AuthRequest)
        self.state = State.CLOSING
        return M.Error(ev.message.id, M.ERR_AUTH_FAILED, "the authtoken is not valid on this edge")

    def bind_done(self, binding_id: str, url: str, hostname: str | None, port: int | None) -> M.BindOk:
        ev: BindRequest = self._answer(BindRequest)
        self.bindings.add(binding_id)
        return M.BindOk(ev.message.id, binding_id, url, hostname, port)

    def unbind_done(self) -> M.UnbindOk:
        ev: UnbindRequest = self._answer(UnbindRequest)
        self.bindings.discard(ev.message.binding_id)
        return M.UnbindOk(ev.message.id)

    def request_failed(self, code: str, message: str) -> M.Error:
        """A bind or unbind the shell could not do (name_in_use, ...)."""
        ev = self._waiting
        if not isinstance(ev, (BindRequest, UnbindRequest)):
            raise RuntimeError("no bind or unbind is waiting for an answer")
        self._waiting = None
        return M.Error(ev.message.id, code, message)

    def binding_gone(self, binding_id: str) -> None:
        """The edge dropped one of this session's bindings on its own (taken
        over by a newer session of the same agent, moved to another PoP)."""
        self.bindings.discard(binding_id)

    # ------------------------------------------------------------- time
    def deadline(self, last_received: float) -> float:
        """When the session dies if nothing changes (docs/protocol.md 3.5):
        before auth, auth_timeout from connect, whatever arrives (pings do
        not keep an unauthenticated session alive); after, heartbeat_timeout
        after the last frame of any kind."""
        if self.state is State.AUTHENTICATED:
            return last_received + self.heartbeat_timeout
        return self.auth_deadline

    def expired(self, now: float, last_received: float) -> str | None:
        """"auth_timeout" or "agent_timeout" once the deadline has passed, else None."""
        if now < self.deadline(last_received):
            return None
        return "agent_timeout" if self.state is State.AUTHENTICATED else "auth_timeout"
