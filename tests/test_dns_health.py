"""dns.health: the rise/fall machine, drains, versions, "changing" (fake time, no sockets)."""
from __future__ import annotations

import dataclasses

import pytest

from dns.health import (HealthError, HealthStates, HealthView, Target, refused_targets,
                        targets_from_config)

T = (Target("eu", "198.18.3.1"), Target("eu", "fd7a:5e1b:c00::3:1"), Target("jp", "198.18.5.1"))


def machine(**kw) -> HealthStates:
    return HealthStates(T, **{"rise": 2, "fall": 3, "interval": 1.0, **kw})


def fail(m: HealthStates, n: int, addr: str = "198.18.3.1", pop: str = "eu", start: float = 0.0):
    return [m.record(pop, addr, False, start + i, "refused") for i in range(n)]


def test_every_address_starts_up():
    snap = machine().snapshot(0.0)
    assert all(snap.is_up(t.pop, t.address) for t in T) and snap.down == frozenset()


def test_down_only_after_fall_consecutive_failures():
    m = machine()
    got = fail(m, 3)
    assert got[:2] == [None, None]
    tr = got[2]
    assert tr is not None and not tr.up and tr.after == 3 and tr.error == "refused" and tr.family == 4
    assert not m.snapshot(3.0).is_up("eu", "198.18.3.1")


def test_a_success_resets_the_failure_streak():
    m = machine()
    fail(m, 2)
    assert m.record("eu", "198.18.3.1", True, 2.0) is None
    assert fail(m, 2, start=3.0) == [None, None]
    assert m.snapshot(5.0).is_up("eu", "198.18.3.1")


def test_up_again_only_after_rise_consecutive_successes():
    m = machine()
    fail(m, 3)
    assert m.record("eu", "198.18.3.1", True, 3.0) is None
    assert m.record("eu", "198.18.3.1", False, 4.0, "timeout") is None   # streak broken
    assert m.record("eu", "198.18.3.1", True, 5.0) is None
    tr = m.record("eu", "198.18.3.1", True, 6.0)
    assert tr is not None and tr.up and tr.after == 2
    assert m.snapshot(6.0).is_up("eu", "198.18.3.1")


def test_timeouts_alone_withdraw_only_after_timeout_fall():
    """A probe timeout on a busy machine is not a dead PoP: fall=3 timeouts keep it up;
    the default timeout_fall (2 x fall = 6) consecutive ones take it down."""
    m = machine()
    got = [m.record("eu", "198.18.3.1", False, float(i), "http: timeout", timed_out=True) for i in range(5)]
    assert got == [None] * 5 and m.snapshot(4.5).is_up("eu", "198.18.3.1")
    tr = m.record("eu", "198.18.3.1", False, 5.0, "http: timeout", timed_out=True)
    assert tr is not None and not tr.up and tr.after == 6
    assert m.timeout_fall == 6


def test_refusals_count_even_between_timeouts():
    """Definite failures within one failure streak add up to fall, whatever timeouts lie between."""
    m = machine()
    seq = [(False, False), (False, True), (False, False), (False, True), (False, False)]
    got = [m.record("eu", "198.18.3.1", ok, float(i), "x", timed_out=t) for i, (ok, t) in enumerate(seq)]
    assert got[:4] == [None] * 4 and got[4] is not None and got[4].after == 5


def test_a_success_clears_definite_failures_too():
    m = machine()
    fail(m, 2)
    m.record("eu", "198.18.3.1", True, 2.0)
    assert m.record("eu", "198.18.3.1", False, 3.0, "refused") is None
    assert m.record("eu", "198.18.3.1", False, 4.0, "t", timed_out=True) is None
    assert m.snapshot(4.0).is_up("eu", "198.18.3.1")


def test_timeout_fall_below_fall_is_refused():
    with pytest.raises(HealthError, match="timeout_fall"):
        machine(timeout_fall=2)
    m = machine(timeout_fall=4)
    with pytest.raises(HealthError, match="timeout_fall"):
        m.reconfigure(T, rise=2, fall=5, interval=1.0, config_drained=(), timeout_fall=4)


def test_ipv4_and_ipv6_of_one_pop_are_apart():
    m = machine()
    fail(m, 3, addr="fd7a:5e1b:c00::3:1")
    snap = m.snapshot(3.0)
    assert not snap.is_up("eu", "fd7a:5e1b:c00::3:1") and snap.is_up("eu", "198.18.3.1")
    st = {s.address: s for s in m.states()}
    assert st["fd7a:5e1b:c00::3:1"].family == 6 and not st["fd7a:5e1b:c00::3:1"].up
    assert st["198.18.3.1"].up and st["198.18.3.1"].checks == 0


def test_version_moves_on_every_transition_and_only_on_changes():
    m = machine()
    v0 = m.snapshot(0.0).version
    assert m.snapshot(0.5).version == v0  # nothing happened
    fail(m, 3)
    v1 = m.snapshot(100.0).version  # down, and long after the change: not "changing" any more
    assert v1 > v0
    assert m.snapshot(101.0).version == v1
    m.record("eu", "198.18.3.1", True, 200.0)
    m.record("eu", "198.18.3.1", True, 201.0)
    assert m.snapshot(300.0).version > v1


def test_changing_while_a_streak_is_under_way_and_for_rise_plus_fall_intervals_after():
    m = machine()
    assert m.changing(0.0) == frozenset()
    fail(m, 1)
    assert m.changing(0.5) == {"eu"}      # one failure while up: may be going down
    fail(m, 2, start=1.0)                  # down at t=2
    assert m.changing(2.0 + 4.9) == {"eu"}  # hold = (rise + fall) * interval = 5 s
    assert m.changing(2.0 + 5.0) == frozenset()
    m.record("eu", "198.18.3.1", True, 10.0)
    assert m.changing(10.0) == {"eu"}     # one success while down: may be coming back


def test_changing_moves_the_version_too():
    m = machine()
    v0 = m.snapshot(0.0).version
    fail(m, 1)
    s1 = m.snapshot(0.1)
    assert s1.version > v0 and s1.changing == {"eu"} and s1.is_up("eu", "198.18.3.1")


def test_runtime_drain_and_undrain():
    m = machine()
    assert m.set_drained("jp", True) is True
    snap = m.snapshot(0.0)
    assert not snap.is_up("jp", "198.18.5.1") and snap.drained == {"jp"}
    assert m.set_drained("jp", True) is False  # already
    assert m.set_drained("jp", False) is True
    assert m.snapshot(0.0).is_up("jp", "198.18.5.1")


def test_drain_of_an_unknown_pop_is_refused_and_changes_nothing():
    m = machine()
    v = m.snapshot(0.0).version
    with pytest.raises(HealthError, match=r"unknown PoP 'mars' \(known: eu, jp\)"):
        m.set_drained("mars", True)
    assert m.snapshot(0.0).version == v and m.drained == frozenset()


def test_runtime_undrain_beats_a_config_drain():
    m = machine(config_drained=frozenset({"jp"}))
    assert m.drained == {"jp"}
    m.set_drained("jp", False)
    assert m.drained == frozenset()


def test_reload_keeps_runtime_drains_unless_the_config_changes_that_pop():
    m = machine(config_drained=frozenset({"jp"}))
    m.set_drained("eu", True)
    m.set_drained("jp", False)
    m.reconfigure(T, rise=2, fall=3, interval=1.0, config_drained=("jp",))  # same config
    assert m.drained == {"eu"}
    m.reconfigure(T, rise=2, fall=3, interval=1.0, config_drained=())  # config stops draining jp
    assert m.drained == {"eu"}
    m.reconfigure(T, rise=2, fall=3, interval=1.0, config_drained=("eu", "jp"))  # config drains eu
    assert m.drained == {"eu", "jp"}
    m.set_drained("eu", False)
    assert m.drained == {"jp"}


def test_reload_keeps_the_state_of_addresses_that_stay():
    m = machine()
    fail(m, 3)
    m.reconfigure(T[:1] + (Target("eu", "198.18.3.9"),), rise=2, fall=3, interval=1.0, config_drained=())
    snap = m.snapshot(100.0)
    assert not snap.is_up("eu", "198.18.3.1") and snap.is_up("eu", "198.18.3.9")
    with pytest.raises(HealthError):
        m.record("jp", "198.18.5.1", True, 101.0)  # gone from the configuration


def test_bad_thresholds_are_refused():
    with pytest.raises(HealthError):
        HealthStates(T, rise=0)
    with pytest.raises(HealthError):
        HealthStates(T, interval=0)


def test_snapshot_round_trips_through_the_worker_pipe_encoding():
    snap = HealthView(7, frozenset({("eu", "198.18.3.1")}), frozenset({"jp"}), frozenset({"eu"}))
    line = snap.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert HealthView.decode(line) == snap
    for bad in (b"", b"{", b'{"version": "7"}', b'{"version": true, "down": [], "drained": [], "changing": []}',
                b'{"version": 1, "down": [1], "drained": [], "changing": []}'):
        with pytest.raises(HealthError):
            HealthView.decode(bad)


def test_targets_are_every_address_of_every_pop(example_config):
    ts = targets_from_config(example_config)
    assert len(ts) == 8 * 8 and Target("jp", "fd7a:5e1b:c00::5:4") in ts
    assert {t.family for t in ts} == {4, 6}


# -- where probes may go ---------------------------------------------------------------------

def test_non_loopback_targets_are_refused_from_the_root_namespace():
    ts = (Target("a", "127.0.0.2"), Target("a", "::1"), Target("b", "198.18.3.1"), Target("b", "fd7a::1"))
    assert refused_targets(ts, allow_remote=False, in_named_netns=False) == ("198.18.3.1", "fd7a::1")


def test_inside_a_named_netns_or_with_allow_remote_everything_may_be_probed():
    ts = (Target("b", "198.18.3.1"),)
    assert refused_targets(ts, allow_remote=False, in_named_netns=True) == ()
    assert refused_targets(ts, allow_remote=True, in_named_netns=False) == ()


def test_check_probe_targets_refuses_the_example_config_with_health_on(example_config):
    from dns.monitor import check_probe_targets
    cfg = dataclasses.replace(example_config, health=dataclasses.replace(example_config.health, enabled=True))
    with pytest.raises(HealthError, match=r"non-loopback addresses \(198\.18\.1\.1, .*allow_remote"):
        check_probe_targets(cfg)
    check_probe_targets(example_config)  # off: nothing is probed, nothing to refuse
    check_probe_targets(dataclasses.replace(cfg, health=dataclasses.replace(cfg.health, allow_remote=True)))
