"""The edge's control-stream rules (docs/protocol.md 3) as a state machine:
bytes and time in, events and replies out; no session, no hub, no clock."""
from __future__ import annotations

import pytest

from edge.tunnel import messages as M
from edge.tunnel.control import (
    NEED_DATA,
    AuthRequest,
    BindRequest,
    ControlChannel,
    ControlLimits,
    ProtocolError,
    Reply,
    State,
    UnbindRequest,
)

LIMITS = ControlLimits(auth_timeout=10.0, heartbeat_timeout_min=1.0, heartbeat_timeout_max=120.0, max_bindings=2)


def wire(*msgs: M.Message) -> bytes:
    return b"".join(M.encode_message(m) for m in msgs)


def auth(i: int = 1, heartbeat_timeout: float = 15.0) -> M.Auth:
    return M.Auth(i, "tok", "0.1.0", 5.0, heartbeat_timeout, "agent-1")


def authenticated(limits: ControlLimits = LIMITS) -> ControlChannel:
    ch = ControlChannel(limits, now=100.0)
    ch.receive_data(wire(auth()))
    assert isinstance(ch.next_event(), AuthRequest)
    ch.auth_accepted("sess")
    return ch


def test_starts_awaiting_auth_and_needs_data():
    ch = ControlChannel(LIMITS, now=0.0)
    assert ch.state is State.AWAITING_AUTH
    assert ch.next_event() is NEED_DATA
    ch.receive_data(wire(auth())[:7])  # half a message
    assert ch.next_event() is NEED_DATA


def test_auth_accepted_authenticates_clamps_heartbeat_and_answers_auth_ok_with_ingress():
    ch = ControlChannel(LIMITS, now=0.0)
    ch.receive_data(wire(auth(7, heartbeat_timeout=500.0)))
    ev = ch.next_event()
    assert isinstance(ev, AuthRequest) and ev.message.authtoken == "tok" and ev.heartbeat_timeout == 120.0
    ok = ch.auth_accepted("sess-1", [{"pop": "us", "name": "us.connect.lab.test", "addresses": []}])
    assert ok == M.AuthOk(7, "sess-1", ingress=[{"pop": "us", "name": "us.connect.lab.test", "addresses": []}])
    assert ch.state is State.AUTHENTICATED and ch.agent_id == "agent-1" and ch.heartbeat_timeout == 120.0


def test_heartbeat_timeout_below_the_edge_minimum_is_raised_to_it():
    ch = ControlChannel(LIMITS, now=0.0)
    ch.receive_data(wire(auth(heartbeat_timeout=0.2)))
    assert ch.next_event().heartbeat_timeout == 1.0


def test_auth_refused_answers_auth_failed_and_closes():
    ch = ControlChannel(LIMITS, now=0.0)
    ch.receive_data(wire(auth(3), M.Heartbeat(4)))
    assert isinstance(ch.next_event(), AuthRequest)
    err = ch.auth_refused()
    assert err.code == M.ERR_AUTH_FAILED and err.id == 3
    assert ch.state is State.CLOSING
    assert ch.next_event() is NEED_DATA  # nothing after a refused auth is served
    ch.receive_data(wire(M.Heartbeat(5)))
    assert ch.next_event() is NEED_DATA


@pytest.mark.parametrize("msg", [M.Heartbeat(2), M.Bind(2, "http", "demo", {}), M.Unbind(2, "b1")])
def test_any_message_before_auth_is_not_authenticated(msg):
    ch = ControlChannel(LIMITS, now=0.0)
    ch.receive_data(wire(msg))
    ev = ch.next_event()
    assert isinstance(ev, Reply) and not ev.refused
    assert ev.message == M.Error(2, M.ERR_NOT_AUTHENTICATED, "the first message must be auth")
    assert ch.state is State.AWAITING_AUTH  # the agent may still authenticate
    ch.receive_data(wire(auth(3)))
    assert isinstance(ch.next_event(), AuthRequest)


def test_second_auth_is_a_bad_request_and_changes_nothing():
    ch = authenticated()
    ch.receive_data(wire(auth(9)))
    ev = ch.next_event()
    assert ev == Reply(M.Error(9, M.ERR_BAD_REQUEST, "already authenticated"))
    assert ch.state is State.AUTHENTICATED


def test_unknown_type_is_a_bad_request_with_its_id():
    ch = authenticated()
    ch.receive_data(M.encode({"type": "teleport", "id": 12}))
    ev = ch.next_event()
    assert isinstance(ev, Reply) and ev.message.code == M.ERR_BAD_REQUEST and ev.message.id == 12
    assert "teleport" in ev.message.message
    assert ch.state is State.AUTHENTICATED


def test_a_message_without_a_usable_id_is_answered_with_id_zero():
    ch = authenticated()
    ch.receive_data(M.encode({"type": "teleport", "id": True}))
    assert ch.next_event().message.id == 0


def test_a_reply_type_sent_by_the_agent_is_not_a_request_the_edge_serves():
    ch = authenticated()
    ch.receive_data(wire(M.HeartbeatOk(4)))
    ev = ch.next_event()
    assert ev == Reply(M.Error(4, M.ERR_BAD_REQUEST, "heartbeat_ok is not a request the edge serves"))


def test_heartbeat_is_answered_without_the_shell():
    ch = authenticated()
    ch.receive_data(wire(M.Heartbeat(5), M.Heartbeat(6)))
    assert ch.next_event() == Reply(M.HeartbeatOk(5))
    assert ch.next_event() == Reply(M.HeartbeatOk(6))
    assert ch.next_event() is NEED_DATA


def test_bind_limit_counts_bound_endpoints_and_frees_on_unbind_and_binding_gone():
    ch = authenticated()
    ch.receive_data(wire(M.Bind(2, "http", "a", {}), M.Bind(3, "tcp", "", {}), M.Bind(4, "http", "c", {})))
    assert isinstance(ch.next_event(), BindRequest)
    assert ch.bind_done("b1", "https://a.app.lab.test", "a.app.lab.test", None).binding_id == "b1"
    assert isinstance(ch.next_event(), BindRequest)
    ch.bind_done("b2", "tcp://0.tcp.lab.test:20000", None, 20000)
    ev = ch.next_event()
    assert isinstance(ev, Reply) and ev.refused
    assert ev.message == M.Error(4, M.ERR_TOO_MANY_BINDINGS, "at most 2 endpoints per session")
    ch.receive_data(wire(M.Unbind(5, "b1"), M.Bind(6, "http", "c", {})))
    assert isinstance(ch.next_event(), UnbindRequest)
    assert ch.unbind_done() == M.UnbindOk(5)
    assert isinstance(ch.next_event(), BindRequest)  # room again
    ch.bind_done("b3", "https://c.app.lab.test", "c.app.lab.test", None)
    ch.binding_gone("b2")  # taken over by a newer session of the agent
    assert ch.bindings == {"b3"}


def test_a_failed_bind_takes_no_room():
    ch = authenticated(ControlLimits(max_bindings=1))
    ch.receive_data(wire(M.Bind(2, "http", "a", {}), M.Bind(3, "http", "b", {})))
    assert isinstance(ch.next_event(), BindRequest)
    assert ch.request_failed(M.ERR_NAME_IN_USE, "a is online") == M.Error(2, M.ERR_NAME_IN_USE, "a is online")
    assert isinstance(ch.next_event(), BindRequest)


def test_unbind_of_a_binding_the_session_does_not_hold_is_refused():
    ch = authenticated()
    ch.receive_data(wire(M.Unbind(8, "nope")))
    ev = ch.next_event()
    assert ev.refused and ev.message == M.Error(8, M.ERR_UNKNOWN_BINDING, "no binding 'nope' on this session")


def test_requests_are_answered_in_order_one_at_a_time():
    ch = authenticated()
    ch.receive_data(wire(M.Bind(2, "http", "a", {}), M.Heartbeat(3)))
    assert isinstance(ch.next_event(), BindRequest)
    with pytest.raises(RuntimeError, match="answer BindRequest"):
        ch.next_event()  # the heartbeat must not overtake the bind's answer
    with pytest.raises(RuntimeError):
        ch.unbind_done()  # not what is waiting
    ch.bind_done("b1", "https://a.app.lab.test", "a.app.lab.test", None)
    assert ch.next_event() == Reply(M.HeartbeatOk(3))


def test_broken_framing_is_a_protocol_error_and_drops_the_rest_of_the_chunk():
    ch = authenticated()
    ch.receive_data(wire(M.Heartbeat(2)) + b"\x00\x00\x00\x00")  # length 0 is outside 1..65536
    ev = ch.next_event()
    assert isinstance(ev, ProtocolError) and "length 0" in ev.reason
    assert ch.state is State.CLOSING and ch.next_event() is NEED_DATA


def test_non_json_body_is_a_protocol_error():
    ch = ControlChannel(LIMITS, now=0.0)
    ch.receive_data(b"\x00\x00\x00\x03abc")
    assert isinstance(ch.next_event(), ProtocolError)


def test_auth_deadline_runs_from_connect_whatever_arrives():
    ch = ControlChannel(LIMITS, now=100.0)
    assert ch.deadline(last_received=105.0) == 110.0
    assert ch.expired(109.9, last_received=109.9) is None
    assert ch.expired(110.0, last_received=109.9) == "auth_timeout"  # pings do not extend it


def test_after_auth_the_heartbeat_timeout_runs_from_the_last_frame():
    ch = authenticated()  # heartbeat_timeout 15
    assert ch.deadline(last_received=200.0) == 215.0
    assert ch.expired(214.0, last_received=200.0) is None
    assert ch.expired(215.0, last_received=200.0) == "agent_timeout"
    assert ch.expired(215.0, last_received=214.0) is None
