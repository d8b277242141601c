"""bench CPU accounting: /proc stat fields, per-request arithmetic, bottleneck, the scaling model."""
from __future__ import annotations

import os

import pytest

from bench.edgebench import CLIENT, aggregate_cpu, aggregate_wrk, bottleneck_lines
from bench.procs import cpu_delta, cpu_snapshot, stat_cpu_ticks, tree_cpu_seconds
from bench.summary import cpu_per_unit, scaling_model, shared_cores_rps

# proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
# cutime cstime ...; a comm with spaces and a ')' of its own.
STAT = "4242 (gslb (edge) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 7 3 20 0 2 0 100 1000 200"


def test_stat_sums_utime_stime_and_reaped_children_after_the_last_paren():
    assert stat_cpu_ticks(STAT) == 150 + 50 + 7 + 3


def test_stat_rejects_a_line_that_is_too_short():
    with pytest.raises(ValueError):
        stat_cpu_ticks("1 (x) S 1 2")


def test_this_process_tree_counts_cpu_spent_in_it():
    before = tree_cpu_seconds(os.getpid())
    x = 0
    for i in range(3_000_000):   # bounded busy work, about 0.1-0.3 s of CPU
        x += i * i
    after = tree_cpu_seconds(os.getpid())
    assert after > before
    snap0 = cpu_snapshot({"me": os.getpid(), "twice": [os.getpid(), os.getpid()]})
    assert snap0["twice"] == pytest.approx(2 * snap0["me"], abs=0.05)
    assert cpu_delta({"a": 2.0, "b": 1.0}, {"a": 2.5, "b": 0.5, "c": 9.0}) == {"a": 0.5, "b": 0.0}


def test_cpu_per_request_share_and_bottleneck():
    out = cpu_per_unit({"edge": 0.9, "agent": 0.6, "upstream": 0.3}, units=30_000, seconds=3.0)
    assert out["per_unit"] == pytest.approx({"edge": 30.0, "agent": 20.0, "upstream": 10.0})
    assert out["share"] == pytest.approx({"edge": 0.3, "agent": 0.2, "upstream": 0.1})
    assert out["bottleneck"] == "edge"
    empty = cpu_per_unit({"edge": 0.5}, units=0, seconds=0)
    assert empty["per_unit"] == {"edge": None} and empty["bottleneck"] is None


def test_scaling_model_is_bounded_by_the_slowest_process_on_its_cores():
    us = {"edge": 30.0, "agent": 20.0, "upstream": 10.0}
    m = scaling_model(us, {"edge": 1})
    assert m["limit"] == "edge" and m["rps"] == pytest.approx(1e6 / 30.0)
    m4 = scaling_model(us, {"edge": 4, "agent": 1, "upstream": 1})
    assert m4["limit"] == "agent" and m4["rps"] == pytest.approx(50_000)   # 4 edge cores: the agent bounds it
    assert shared_cores_rps(us, 2) == pytest.approx(2e6 / 60.0)
    assert scaling_model({}, {})["rps"] is None


def _run(rps, edge_us, wrk_share, invalid=False):
    r = {"rps": rps, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "socket_errors": {"connect": 0},
         "non_2xx": 0, "cpu": {"per_unit": {"edge": edge_us, CLIENT: 5.0},
                               "share": {"edge": 0.5, CLIENT: wrk_share}, "bottleneck": None}}
    if invalid:
        r["invalid"] = "bad"
    return r


def test_aggregate_takes_medians_of_valid_runs_and_names_the_bottleneck():
    agg = aggregate_wrk([_run(100, 30.0, 0.4), _run(110, 34.0, 0.9), _run(90, 32.0, 0.8), _run(1, 999.0, 0.1, True)])
    assert agg["rps"] == 100 and agg["cpu_us_per_request"]["edge"] == 32.0
    assert agg["bottleneck"] == CLIENT and agg["cpu_share"][CLIENT] == 0.8
    assert "invalid" in agg
    assert aggregate_cpu([]) == {"cpu_us_per_request": {}, "cpu_share": {}, "bottleneck": None}


def test_bottleneck_lines_add_the_profile_of_our_bottleneck_process():
    results = {"small": {"ours": aggregate_wrk([_run(100, 30.0, 0.2)]),
                         "nginx1w": aggregate_wrk([_run(100, 30.0, 0.9)])}}
    prof = {"small": {"edge": {"self": [("write (ssl.py)", 20.0), ("_read (edge/server.py)", 10.0)]}}}
    lines = bottleneck_lines(results, prof)
    text = "\n".join(lines)
    assert "ours, 1 edge worker: **edge** 50%" in text and "`write (ssl.py)` 20.0%" in text
    assert "nginx, 1 worker: **wrk (client)** 90%" in text


def test_scaling_lines_predict_this_machine_and_n_edge_cores():
    from bench.edgebench import scaling_lines

    def agg(rps, cpu):
        return {"rps": rps, "cpu_us_per_request": cpu}
    results = {"small": {"ours": agg(20_000, {"edge": 40.0, "agent": 20.0, "upstream": 10.0, CLIENT: 10.0}),
                         "nginx1w": agg(60_000, {"nginx proxy": 16.0, "upstream": 8.0, CLIENT: 8.0})}}
    text = "\n".join(scaling_lines(results, 2))
    # ours here: min(2e6 / 80 us = 25,000, 1 worker: 1e6 / 40 us = 25,000); 16 edge cores: the agent, 50,000
    assert "| ours, 1 edge worker | 20,000 | 25,000 |" in text
    assert "50,000 (agent)" in text
    # nginx 1 worker here: min(2e6 / 32 us = 62,500, 1e6 / 16 us = 62,500); 16 cores: 1,000,000
    assert "| nginx, 1 worker | 60,000 | 62,500 |" in text and "1,000,000" in text


def test_a_bottleneck_that_is_not_python_shows_the_edges_profile():
    results = {"close": {"ours": aggregate_wrk([_run(100, 30.0, 0.9)])}}
    prof = {"close": {"edge": {"self": [("do_handshake (ssl.py)", 40.0)]}, "agent": None}}
    text = "\n".join(bottleneck_lines(results, prof))
    assert "**wrk (client)** 90% (py-spy self of the edge: `do_handshake (ssl.py)` 40.0%)" in text


def test_a_child_that_ended_and_was_reaped_stays_counted_in_the_tree():
    import subprocess
    import sys

    before = tree_cpu_seconds(os.getpid())
    # Fixed work (not a duration): about 0.2-0.5 s of CPU on this machine, far above one 10 ms tick.
    subprocess.run([sys.executable, "-c", "x = 0\nfor i in range(5_000_000): x += i"], check=True, timeout=120)
    assert tree_cpu_seconds(os.getpid()) - before >= 0.05   # the child's time is now this process's cstime/cutime


def test_machine_busy_is_everything_but_idle_and_iowait():
    from bench.procs import machine_busy_seconds, parse_proc_stat_busy

    hz = os.sysconf("SC_CLK_TCK")
    text = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\n"
    assert parse_proc_stat_busy(text) == pytest.approx((100 + 5 + 50 + 3 + 7 + 2) / hz)   # guest is inside user
    with pytest.raises(ValueError):
        parse_proc_stat_busy("intr 1 2 3\n")
    assert machine_busy_seconds() > 0


def test_other_work_is_never_the_bottleneck_and_leaves_fewer_cores_to_the_model():
    from bench.edgebench import OTHER, scaling_lines

    out = cpu_per_unit({"edge": 0.3, OTHER: 2.0}, units=10_000, seconds=3.0)
    assert out["bottleneck"] == "edge"
    results = {"small": {"nginx1w": {"rps": 30_000, "cpu_us_per_request": {"nginx proxy": 16.0, "upstream": 8.0,
                                                                           CLIENT: 8.0, OTHER: 50.0},
                                     "cpu_share": {OTHER: 1.0}}}}
    text = "\n".join(scaling_lines(results, 2))
    # 1 core left: 1e6 / 32 us = 31,250 (the other work's us per request is not part of the path)
    assert "| nginx, 1 worker | 30,000 | 31,250 | all processes on the 1.0 cores left |" in text
