"""Sans-IO yamux: two Connections driven against each other, no sockets."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from edge.tunnel import frames as F
from edge.tunnel.connection import Connection, ConnectionConfig
from edge.tunnel.errors import LocalProtocolError, ProtocolError, SessionClosedError, StreamClosedError
from edge.tunnel.events import (
    DataReceived,
    GoAwayReceived,
    PingAcked,
    PingReceived,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)

KiB = 1024
MiB = 1024 * KiB


def pair(**kw):
    cfg = ConnectionConfig(**kw)
    return Connection(client=True, config=cfg), Connection(client=False, config=cfg)


def pump(a: Connection, b: Connection) -> list:
    """Move a's output into b; return b's events."""
    return b.receive_data(a.data_to_send())


def data_of(events, sid=None) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and (sid is None or e.stream_id == sid))


def test_open_accept_and_data_both_ways():
    c, s = pair()
    sid = c.open_stream()
    assert sid == 1
    assert c.send_data(sid, b"hello") == 5
    ev = pump(c, s)
    assert ev == [StreamOpened(1), DataReceived(1, b"hello")]
    assert s.send_data(1, b"world") == 5
    ev = pump(s, c)
    assert ev == [StreamAcked(1), DataReceived(1, b"world")]


def test_client_opens_odd_ids_server_even():
    c, s = pair()
    assert [c.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [s.open_stream() for _ in range(2)] == [2, 4]
    pump(c, s)
    ev = pump(s, c)
    assert StreamOpened(2) in ev and StreamOpened(4) in ev


def test_open_frame_is_window_update_with_syn_and_zero_delta():
    c, _ = pair()
    c.open_stream()
    assert c.data_to_send() == struct.pack(">BBHII", 0, 1, 1, 1, 0)


def test_fin_both_ways_forgets_stream():
    c, s = pair()
    sid = c.open_stream()
    c.send_data(sid, b"x")
    c.end_stream(sid)
    ev = pump(c, s)
    assert ev[-1] == StreamEnded(sid)
    with pytest.raises(StreamClosedError):
        c.send_data(sid, b"more")
    s.send_data(sid, b"reply")
    s.end_stream(sid)
    assert not s.is_open(sid)
    ev = pump(s, c)
    assert data_of(ev) == b"reply" and ev[-1] == StreamEnded(sid)
    assert not c.is_open(sid)
    assert c.granted_receive_window == 0 and s.granted_receive_window == 0


def test_fin_on_data_frame_comes_after_its_payload():
    c, s = pair()
    sid = c.open_stream()
    pump(c, s)
    raw = F.pack_header(F.TYPE_DATA, F.FLAG_FIN, sid, 3) + b"abc"
    ev = s.receive_data(raw)
    assert ev == [DataReceived(sid, b"abc"), StreamEnded(sid)]


def test_reset_mid_stream_drops_late_frames_quietly():
    c, s = pair()
    sid = c.open_stream()
    c.send_data(sid, b"a" * 1000)
    pump(c, s)
    s.reset_stream(sid)
    c.send_data(sid, b"b" * 1000)  # in flight while the RST travels
    ev = pump(c, s)
    assert ev == []  # late data for a reset stream: dropped, no error
    ev = pump(s, c)
    assert ev[-1] == StreamReset(sid)
    assert not c.is_open(sid)
    with pytest.raises(StreamClosedError):
        c.send_data(sid, b"c")
    # the session goes on: a new stream works
    sid2 = c.open_stream()
    c.send_data(sid2, b"ok")
    assert data_of(pump(c, s), sid2) == b"ok"


def test_reset_is_idempotent_on_closed_stream():
    c, _ = pair()
    sid = c.open_stream()
    c.reset_stream(sid)
    c.reset_stream(sid)
    c.reset_stream(999)


def test_window_exhaustion_then_update_reopens_it():
    c, s = pair()
    sid = c.open_stream()
    assert c.send_data(sid, b"x" * (300 * KiB)) == 256 * KiB
    assert c.send_data(sid, b"y") == 0
    assert c.send_window(sid) == 0
    ev = pump(c, s)
    assert len(data_of(ev)) == 256 * KiB
    # not consumed yet: no window update
    assert s.data_to_send().count(struct.pack(">BB", 0, 1)) >= 1  # only the ACK
    ev = pump(s, c)
    assert not any(isinstance(e, WindowUpdated) for e in ev)
    # consuming less than half the window sends nothing
    s.acknowledge_received(sid, 100 * KiB)
    assert s.data_to_send() == b""
    s.acknowledge_received(sid, 156 * KiB)
    ev = pump(s, c)
    (wu,) = [e for e in ev if isinstance(e, WindowUpdated)]
    assert wu.delta >= 256 * KiB
    assert c.send_window(sid) == wu.delta


def test_window_grows_to_max_for_bulk_and_never_beyond():
    c, s = pair(max_window=2 * MiB)
    sid = c.open_stream()
    total = 0
    sizes = []
    for _ in range(40):
        n = c.send_data(sid, b"z" * (4 * MiB))
        total += n
        ev = pump(c, s)
        s.acknowledge_received(sid, len(data_of(ev)))
        pump(s, c)
        sizes.append(s.receive_window(sid))
    assert sizes[0] == 512 * KiB
    assert max(sizes) == 2 * MiB and sizes[-1] == 2 * MiB
    assert total > 40 * MiB


def test_slow_reader_never_lets_sender_exceed_window():
    c, s = pair()
    sid = c.open_stream()
    sent = 0
    for _ in range(10):
        sent += c.send_data(sid, b"q" * MiB)
        pump(c, s)
        pump(s, c)
    assert sent == 256 * KiB  # nothing acknowledged: one initial window only


def test_session_window_cap_bounds_growth_across_streams():
    c, s = pair(max_window=8 * MiB, session_window_cap=4 * MiB)
    sids = [c.open_stream() for _ in range(4)]
    for _ in range(30):
        for sid in sids:
            c.send_data(sid, b"d" * MiB)
        ev = pump(c, s)
        for sid in sids:
            s.acknowledge_received(sid, len(data_of(ev, sid)))
        pump(s, c)
        assert s.granted_receive_window <= 4 * MiB
    assert s.granted_receive_window == 4 * MiB


def test_data_beyond_window_is_a_protocol_error():
    c, s = pair()
    sid = c.open_stream()
    pump(c, s)
    raw = F.pack_header(F.TYPE_DATA, 0, sid, 256 * KiB + 1)
    with pytest.raises(ProtocolError, match="exceeds the window"):
        s.receive_data(raw)


def test_ping_round_trip():
    c, s = pair()
    opaque = c.ping()
    ev = pump(c, s)
    assert ev == [PingReceived(opaque)]
    ev = pump(s, c)
    assert ev == [PingAcked(opaque)]


def test_go_away_refuses_new_streams_keeps_open_ones():
    c, s = pair()
    sid = c.open_stream()
    pump(c, s)
    s.go_away(0)
    ev = pump(s, c)
    assert GoAwayReceived(0) in ev
    with pytest.raises(SessionClosedError):
        c.open_stream()
    c.send_data(sid, b"still fine")
    assert data_of(pump(c, s)) == b"still fine"


def test_syn_after_local_go_away_is_answered_with_rst():
    c, s = pair()
    s.go_away(0)
    s.data_to_send()
    c.remote_go_away = None  # c has not seen it yet
    sid = c.open_stream()
    assert pump(c, s) == []
    assert StreamReset(sid) in pump(s, c)


def test_max_streams_refuses_with_rst_not_error():
    c, s = pair(max_streams=2)
    sids = [c.open_stream() for _ in range(3)]
    ev = pump(c, s)
    assert [e for e in ev if isinstance(e, StreamOpened)] == [StreamOpened(1), StreamOpened(3)]
    ev = pump(s, c)
    assert StreamReset(sids[2]) in ev


@pytest.mark.parametrize(
    "raw, message",
    [
        (struct.pack(">BBHII", 1, 0, 0, 1, 0), "unsupported yamux version 1"),
        (struct.pack(">BBHII", 0, 7, 0, 1, 0), "unknown frame type 7"),
        (struct.pack(">BBHII", 0, 0, 0x10, 1, 0), "unknown flags"),
        (struct.pack(">BBHII", 0, 0, 0, 0, 5), "stream 0"),
        (struct.pack(">BBHII", 0, 2, 1, 3, 0), "ping on stream 3"),
        (struct.pack(">BBHII", 0, 2, 0, 0, 0), "ping with flags"),
        (struct.pack(">BBHII", 0, 3, 0, 5, 0), "go-away on stream 5"),
        (struct.pack(">BBHII", 0, 1, 1, 2, 0), "wrong parity"),
        (struct.pack(">BBHII", 0, 0, 0, 7, 1) + b"x", "never opened"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unsupported yamux version"),
    ],
)
def test_garbage_frames_raise_clear_protocol_error(raw, message):
    _, s = pair()
    with pytest.raises(ProtocolError, match=message):
        s.receive_data(raw)
    # the connection is dead afterwards, and says so again
    with pytest.raises(ProtocolError):
        s.receive_data(b"")


def test_protocol_error_in_one_connection_leaves_another_untouched():
    c1, s1 = pair()
    c2, s2 = pair()
    sid = c2.open_stream()
    c2.send_data(sid, b"fine")
    with pytest.raises(ProtocolError):
        s1.receive_data(b"\xff" * 12)
    assert data_of(pump(c2, s2)) == b"fine"


def syn(sid: int) -> bytes:
    return F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_SYN, sid, 0)


def rst_of(sid: int) -> bytes:
    return F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_RST, sid, 0)


def data_frame(sid: int, payload: bytes, flags: int = 0) -> bytes:
    return F.pack_header(F.TYPE_DATA, flags, sid, len(payload)) + payload


def test_syns_out_of_order_open_streams_as_they_come():
    # HashiCorp's library opens concurrent streams from goroutines: their
    # SYNs may arrive in any order; the spec sets no order
    _, s = pair()
    ev = s.receive_data(syn(5) + syn(1) + data_frame(5, b"five") + syn(3) + data_frame(1, b"one"))
    assert ev == [StreamOpened(5), StreamOpened(1), DataReceived(5, b"five"), StreamOpened(3), DataReceived(1, b"one")]
    assert [s.is_open(i) for i in (1, 3, 5)] == [True, True, True]
    acks = s.data_to_send()
    assert acks == b"".join(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_ACK, i, 0) for i in (5, 1, 3))


def test_client_accepts_server_syns_out_of_order():
    c, _ = pair()
    ev = c.receive_data(syn(6) + syn(2) + syn(4))
    assert ev == [StreamOpened(6), StreamOpened(2), StreamOpened(4)]


def test_syn_for_a_live_stream_is_a_protocol_error():
    _, s = pair()
    s.receive_data(syn(3))
    with pytest.raises(ProtocolError, match="already open"):
        s.receive_data(syn(3))


def test_stream_id_reuse_after_close_is_refused_with_rst_session_lives():
    c, s = pair()
    sid = c.open_stream()
    c.end_stream(sid)
    pump(c, s)
    s.end_stream(sid)  # closed both ways: forgotten
    s.data_to_send()
    assert not s.is_open(sid)
    # the same id again: ambiguous with late frames of the old stream
    ev = s.receive_data(syn(sid) + data_frame(sid, b"late"))
    assert ev == []
    assert s.data_to_send() == rst_of(sid)
    assert not s.is_open(sid)
    # the session goes on: other streams open and carry data
    ev = s.receive_data(syn(3) + data_frame(3, b"ok"))
    assert ev == [StreamOpened(3), DataReceived(3, b"ok")]


def test_refused_id_counts_as_used():
    _, s = pair(max_streams=1)
    s.receive_data(syn(1))
    s.receive_data(syn(3))  # over the limit: refused
    s.data_to_send()
    s.reset_stream(1)
    s.data_to_send()
    assert s.receive_data(syn(3)) == []
    assert s.data_to_send() == rst_of(3)


def test_frame_on_a_skipped_id_is_never_opened_until_its_syn_arrives():
    _, s = pair()
    s.receive_data(syn(5))
    _, s2 = pair()
    s2.receive_data(syn(5))
    with pytest.raises(ProtocolError, match="never opened"):
        s2.receive_data(data_frame(3, b"x"))
    # in the first connection the SYN for 3 comes later: fine
    assert s.receive_data(syn(3) + data_frame(3, b"x")) == [StreamOpened(3), DataReceived(3, b"x")]


def test_late_frames_after_out_of_order_streams_closed_are_dropped():
    _, s = pair()
    s.receive_data(syn(7) + syn(1))
    s.receive_data(rst_of(7) + rst_of(1))
    assert s.receive_data(data_frame(7, b"late") + data_frame(1, b"late")) == []
    with pytest.raises(ProtocolError, match="never opened"):
        s.receive_data(data_frame(5, b"x"))


def test_memory_for_used_ids_is_bounded_and_old_ids_stay_refused():
    from edge.tunnel.connection import _MAX_USED_ABOVE_FLOOR

    _, s = pair()
    # id 1 never comes: every later id stays above the low-water mark
    n = 3 * _MAX_USED_ABOVE_FLOOR
    for i in range(n):
        sid = 3 + 2 * i
        s.receive_data(syn(sid))
        s.receive_data(rst_of(sid))
    s.data_to_send()
    assert len(s._remote_used) <= _MAX_USED_ABOVE_FLOOR
    # every id used is still known as used, the skipped id 1 counts as used
    for sid in (1, 3, 3 + 2 * (n // 2), 3 + 2 * (n - 1)):
        assert s.receive_data(syn(sid)) == []
        assert s.data_to_send() == rst_of(sid)
    # ids above all of them open as usual
    assert s.receive_data(syn(3 + 2 * n)) == [StreamOpened(3 + 2 * n)]


def test_window_update_overflow_is_a_protocol_error():
    c, s = pair()
    sid = c.open_stream()
    pump(c, s)
    with pytest.raises(ProtocolError, match="overflows"):
        c.receive_data(F.pack_header(F.TYPE_WINDOW_UPDATE, 0, sid, F.MAX_UINT32))


def test_acknowledging_more_than_received_is_a_local_error():
    c, s = pair()
    sid = c.open_stream()
    c.send_data(sid, b"abc")
    pump(c, s)
    with pytest.raises(LocalProtocolError):
        s.acknowledge_received(sid, 4)


def test_frames_larger_than_max_frame_size_are_split():
    c, s = pair(max_frame_size=64 * KiB)
    sid = c.open_stream()
    c.send_data(sid, b"m" * (200 * KiB))
    ev = pump(c, s)
    # payload arrives whole but the wire carried 4 frames
    assert len(data_of(ev)) == 200 * KiB


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(min_size=0, max_size=5000), cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_any_split_of_the_byte_stream_yields_the_same_data(payload, cuts):
    c, s = pair()
    sid = c.open_stream()
    c.send_data(sid, payload)
    c.end_stream(sid)
    wire = c.data_to_send()
    events = []
    pos = 0
    for n in cuts:
        events += s.receive_data(wire[pos : pos + n])
        pos += n
    events += s.receive_data(wire[pos:])
    assert data_of(events) == payload
    assert events[0] == StreamOpened(sid) and events[-1] == StreamEnded(sid)


@settings(max_examples=200, deadline=None)
@given(order=st.permutations(list(range(40))), closes=st.sets(st.integers(0, 39)))
def test_syns_in_any_order_all_open_and_reuse_is_always_refused(order, closes):
    # a real client's frames for 40 streams, SYN frames sent in a random
    # order (as concurrent opens race); some streams reset right away
    c, s = pair()
    sids = [c.open_stream() for _ in range(40)]
    c.data_to_send()
    events = []
    for i in order:
        sid = sids[i]
        wire = syn(sid) + data_frame(sid, b"%d" % sid)
        if i in closes:
            wire += rst_of(sid)
        events += s.receive_data(wire)
    assert [e.stream_id for e in events if isinstance(e, StreamOpened)] == [sids[i] for i in order]
    for i, sid in enumerate(sids):
        assert s.is_open(sid) == (i not in closes)
    s.data_to_send()
    for i in closes:  # a closed id again: refused, the session lives
        assert s.receive_data(syn(sids[i])) == []
        assert s.data_to_send() == rst_of(sids[i])
    live = [sid for i, sid in enumerate(sids) if i not in closes]
    if live:  # a live id again: the session's protocol error
        with pytest.raises(ProtocolError, match="already open"):
            s.receive_data(syn(live[0]))


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_random_bytes_never_crash_only_protocol_errors(garbage):
    _, s = pair()
    try:
        s.receive_data(garbage)
    except ProtocolError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["send_c", "send_s", "ack_c", "ack_s", "pump_cs", "pump_sc", "open"]),
            st.integers(min_value=0, max_value=600 * 1024),
        ),
        max_size=60,
    )
)
def test_random_interleavings_keep_data_intact_and_windows_bounded(ops):
    """Many streams, random sends/acks/pumps: every byte arrives once, in
    order, and no receive window is ever overrun (that would raise)."""
    c, s = pair(max_window=2 * MiB, session_window_cap=3 * MiB)
    sids = [c.open_stream()]
    sent = {("c", sids[0]): bytearray(), ("s", sids[0]): bytearray()}
    got = {("c", sids[0]): bytearray(), ("s", sids[0]): bytearray()}
    unacked = {("c", sids[0]): 0, ("s", sids[0]): 0}
    s_known: set[int] = set()
    counter = 0

    def deliver(events, side):
        for e in events:
            if isinstance(e, StreamOpened):
                s_known.add(e.stream_id)
            if isinstance(e, DataReceived):
                got[(side, e.stream_id)] += e.data
                unacked[(side, e.stream_id)] += len(e.data)

    for op, n in ops:
        sid = sids[n % len(sids)]
        if op == "open" and len(sids) < 5:
            sid = c.open_stream()
            sids.append(sid)
            for side in "cs":
                sent[(side, sid)] = bytearray()
                got[(side, sid)] = bytearray()
                unacked[(side, sid)] = 0
        elif op == "send_c":
            counter += 1
            data = bytes([counter % 256]) * n
            k = c.send_data(sid, data)
            sent[("c", sid)] += data[:k]
        elif op == "send_s" and sid in s_known:
            counter += 1
            data = bytes([counter % 256]) * n
            k = s.send_data(sid, data)
            sent[("s", sid)] += data[:k]
        elif op == "ack_c":  # client consumed what the server sent it
            k = min(n, unacked[("s", sid)])
            c.acknowledge_received(sid, k)
            unacked[("s", sid)] -= k
        elif op == "ack_s":
            k = min(n, unacked[("c", sid)])
            s.acknowledge_received(sid, k)
            unacked[("c", sid)] -= k
        elif op == "pump_cs":
            deliver(pump(c, s), "c")
        elif op == "pump_sc":
            deliver(pump(s, c), "s")
        assert s.granted_receive_window <= max(3 * MiB, len(sids) * 256 * KiB)
    deliver(pump(c, s), "c")
    deliver(pump(s, c), "s")
    for key in sent:
        assert got[key] == sent[key]


# Whole data frames inside one read take the receive fast path
# (Connection._receive); these feed complete frames, payload included, so
# that path and not the header-only one is what is checked.


def test_whole_small_frames_in_one_read_are_delivered_in_order_and_counted():
    c, s = pair()
    a, b = c.open_stream(), c.open_stream()
    pump(c, s)
    raw = data_frame(a, b"one") + data_frame(b, b"two") + data_frame(a, b"three") + data_frame(b, b"x" * 20 * KiB)
    events = s.receive_data(raw + data_frame(a, b"part")[:9])  # and a header cut short
    assert [(e.stream_id, bytes(e.data)) for e in events] == [
        (a, b"one"), (b, b"two"), (a, b"three"), (b, b"x" * 20 * KiB)]
    assert data_of(s.receive_data(data_frame(a, b"part")[9:]), a) == b"part"
    # the window counts every byte of those frames: exactly the rest fits, one more does not
    rest = 256 * KiB - (3 + 20 * KiB)
    assert data_of(s.receive_data(data_frame(b, b"y" * rest)), b) == b"y" * rest
    with pytest.raises(ProtocolError, match="exceeds the window"):
        s.receive_data(data_frame(b, b"z"))


def test_whole_frame_beyond_the_window_is_a_protocol_error():
    c, s = pair()
    sid = c.open_stream()
    pump(c, s)
    s.receive_data(data_frame(sid, b"a" * (200 * KiB)))
    with pytest.raises(ProtocolError, match="exceeds the window"):
        s.receive_data(data_frame(sid, b"b" * (56 * KiB + 1)))


def test_whole_frame_after_fin_or_on_an_unknown_stream_is_a_protocol_error():
    c, s = pair()
    sid = c.open_stream()
    pump(c, s)
    s.receive_data(data_frame(sid, b"", F.FLAG_FIN))
    with pytest.raises(ProtocolError, match="data after FIN"):
        s.receive_data(data_frame(sid, b"late"))
    c2, s2 = pair()
    with pytest.raises(ProtocolError, match="never opened"):
        s2.receive_data(data_frame(7, b"hello"))


def test_whole_frame_after_reset_is_dropped_quietly_and_others_go_on():
    c, s = pair()
    a, b = c.open_stream(), c.open_stream()
    pump(c, s)
    s.reset_stream(a)
    events = s.receive_data(data_frame(a, b"late") + data_frame(b, b"live"))
    assert [(e.stream_id, bytes(e.data)) for e in events] == [(b, b"live")]


def test_send_whole_frames_all_or_nothing():
    c, s = pair(max_frame_size=64 * KiB)
    sid = c.open_stream()
    pump(c, s)
    assert c.send_whole(sid, b"hello")
    assert c.data_to_send() == F.pack_header(F.TYPE_DATA, 0, sid, 5) + b"hello"
    assert c.send_window(sid) == 256 * KiB - 5
    assert not c.send_whole(sid, b"x" * (64 * KiB + 1))  # above max_frame_size
    c.send_data(sid, b"y" * (256 * KiB - 5 - 3))
    c.data_to_send()
    assert not c.send_whole(sid, b"four")  # 3 bytes of window left: nothing framed
    assert not c.has_data_to_send and c.send_window(sid) == 3
    assert not c.send_whole(sid, b"")
    c.end_stream(sid)
    c.data_to_send()
    assert not c.send_whole(sid, b"a")  # closed for sending
    assert not c.send_whole(99, b"a")  # no such stream
    assert not c.has_data_to_send
