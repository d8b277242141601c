"""bench.faults, the parts without I/O: the tunnel case table and its judge, the frame reader,
the malformed packet generator, the loss figures of a kill."""
from __future__ import annotations

import json
import random
import struct

from bench import faults as F


def test_tunnel_cases_are_more_than_30_with_unique_names_and_known_outcomes():
    names = [c.name for c in F.TUNNEL_CASES]
    assert len(names) >= 30 and len(set(names)) == len(names)
    for c in F.TUNNEL_CASES:
        kind, _, arg = c.expect.partition(":")
        assert kind in ("goaway", "closed", "rst", "alive", "error"), c
        if kind == "rst":
            assert int(arg) % 2 == 1          # the agent's parity: the edge resets it
        assert c.wait <= 20 and c.why


def test_frame_header_matches_the_documented_first_frame():
    # docs/protocol.md 6: "00 01 00 01 00 00 00 01 00 00 00 00"
    assert F.OPEN1 == bytes.fromhex("000100010000000100000000")
    assert F.msg({"a": 1})[:4] == struct.pack(">I", len(json.dumps({"a": 1})))


def _edge_bytes() -> bytes:
    body = F.msg({"type": "error", "id": 1, "code": "bad_request"})
    return (F.frame(F.WINDOW_UPDATE, F.ACK, 1, 0) + F.data(1, body) + F.frame(F.WINDOW_UPDATE, F.RST, 3, 0)
            + F.frame(F.PING, F.ACK, 0, 99) + F.frame(F.GO_AWAY, 0, 0, 1))


def test_reader_finds_goaway_rst_pong_and_control_messages_split_anywhere():
    raw = _edge_bytes()
    for cut in range(len(raw) + 1):
        r = F._Reader()
        r.feed(raw[:cut], 99)
        r.feed(raw[cut:], 99)
        s = r.seen
        assert s.goaway == 1 and s.rst == {3} and s.pong
        assert s.messages == [{"type": "error", "id": 1, "code": "bad_request"}]


def test_judge_wants_the_whole_documented_outcome():
    s = F.Seen(goaway=1, closed=True)
    assert F.judge("goaway:1", s)[0] and F.judge("closed", s)[0]
    assert not F.judge("goaway:1", F.Seen(goaway=1))[0]           # go-away but the session stayed
    assert not F.judge("goaway:1", F.Seen(goaway=0, closed=True))[0]   # wrong code
    assert F.judge("rst:3", F.Seen(rst={3}, pong=True))[0]
    assert not F.judge("rst:3", F.Seen(rst={3}))[0]               # session not shown alive
    assert not F.judge("rst:3", F.Seen(rst={3}, pong=True, closed=True))[0]
    err = F.Seen(messages=[{"type": "error", "code": "bad_request"}], pong=True)
    assert F.judge("error:bad_request", err)[0] and not F.judge("error:not_authenticated", err)[0]
    assert F.judge("error:auth_failed+closed", F.Seen(messages=[{"type": "error", "code": "auth_failed"}],
                                                      closed=True))[0]
    assert F.judge("alive", F.Seen(pong=True))[0] and not F.judge("alive", F.Seen(pong=True, goaway=1))[0]


def test_malformed_packets_are_the_same_for_a_seed_and_cover_random_and_mutated():
    seeds = F.dns_seeds()
    a = [F.malformed_packet(random.Random(7), seeds) for _ in range(1)]
    b = [F.malformed_packet(random.Random(7), seeds) for _ in range(1)]
    assert a == b
    rng = random.Random(1)
    pkts = [F.malformed_packet(rng, seeds) for _ in range(3000)]
    assert len(set(pkts)) > 2500
    assert any(len(p) < 12 for p in pkts) and any(len(p) > 300 for p in pkts)
    assert any(p[:2] == seeds[0][:2] for p in pkts)      # mutated valid queries keep the ID


def _s(t0: float, t1: float, err: str = "") -> dict:
    return {"t0": t0, "t1": t1, "err": err}


def test_loss_figures_split_in_flight_from_lost_after_the_kill():
    samples = [_s(0, 0.1), _s(0.9, 1.2, "reset"), _s(1.3, 1.4, "refused"), _s(1.5, 1.6, "refused"),
               _s(1.7, 1.8), _s(1.9, 2.0)]
    f = F.loss_figures(samples, t_kill=1.0)
    assert f["failed"] == 3 and f["in_flight_at_kill"] == 1 and f["lost_beyond_in_flight"] == 2
    assert abs(f["recovery_s"] - 0.8) < 1e-9
    assert F.loss_figures([_s(0, 1), _s(2, 3)], 1.5)["recovery_s"] == 0.0
    assert F.loss_figures([_s(2, 3, "x")], 1.0)["recovery_s"] is None


def test_percentile_is_nearest_rank():
    vals = list(range(1, 101))
    assert F.percentile(vals, 99) == 99 and F.percentile(vals, 50) == 50 and F.percentile([], 99) is None


def test_dns_respawn_budget_allows_limit_deaths_per_window():
    from dns.server import RespawnBudget
    b = RespawnBudget(limit=2, window=10.0)
    assert b.take(0.0) and b.take(1.0) and not b.take(2.0)
    assert b.take(10.5)          # the first one left the window
    assert not b.take(10.6)
