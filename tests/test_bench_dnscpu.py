"""bench/dnsbench.py: the CPU-per-query arithmetic of the DNS bench and its summary rows."""
from __future__ import annotations

import os
import subprocess
import sys

from bench import dnsbench as D
from bench.summary import complete_summary, figure_row

# proc(5) /proc/PID/stat: field 2 in parentheses (may hold spaces and ')'), 14 utime, 15 stime.
STAT = ("4242 (gslb dns (w) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 "
        "250 75 3 1 20 0 1 0 12345 1000000 2000 18446744073709551615")


def test_stat_ticks_are_utime_plus_stime_after_the_last_parenthesis():
    assert D.stat_cpu_ticks(STAT) == 250 + 75


def test_cpu_per_query_is_the_run_cpu_over_answered_queries():
    assert D.cpu_us_per_query(10.0, 10.5, 100_000) == 5.0
    assert D.cpu_us_per_query(1.0, 1.0, 10) == 0.0
    assert D.cpu_us_per_query(1.0, 2.0, 0) is None   # nothing answered: no figure, not infinity


def test_tree_cpu_counts_a_child_process_too():
    # A real child burning CPU: the tree's CPU includes it, this process alone does not.
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\n"
                              "while time.process_time()-t<0.3: pass\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        import time
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/stat") as fh:
                if D.stat_cpu_ticks(fh.read()) >= 0.3 * os.sysconf("SC_CLK_TCK") - 1:
                    break
            time.sleep(0.05)
        with open(f"/proc/{os.getpid()}/stat") as fh:
            own = D.stat_cpu_ticks(fh.read()) / os.sysconf("SC_CLK_TCK")
        assert D.tree_cpu_seconds(os.getpid()) >= own + 0.25
    finally:
        child.communicate(b"", timeout=10)


def _run(qps: float, completed: int, cpu_s: float) -> dict:
    return {"qps": qps, "latency_avg_ms": 0.1, "lost": 0, "sent": completed, "completed": completed,
            "rcodes": {"NOERROR": completed}, "cpu_s": cpu_s, "cpu_us_per_query": cpu_s / completed * 1e6}


def test_aggregate_weighs_runs_by_the_queries_they_answered():
    lat = {"latency_p50_ms": 0.1, "latency_p99_ms": 0.3}
    a = D.aggregate([_run(100_000, 300_000, 0.9), _run(50_000, 100_000, 0.5)], lat)
    assert a["cpu_us_per_query"] == (0.9 + 0.5) / 400_000 * 1e6   # 3.5, not the mean 4.0 of 3 and 5
    assert a["cpu_us_runs"] == [3.0, 5.0] and a["completed"] == 400_000
    assert a["qps_median"] == 75_000


def test_cpu_rows_judge_ours_against_twice_gdnsd():
    assert figure_row("dns_plain_cpu_us", 5.0, 3.0)["target_met"] is True     # 1.67x <= 2x
    row = figure_row("dns_ecs_cpu_us", 7.0, 3.0)
    assert row["ratio"] == round(7 / 3, 4) and row["target_met"] is False
    assert row["unit"] == "us/query" and row["peer_name"] == "gdnsd"
    keys = [r["figure"] for r in complete_summary([], "not measured")]
    assert {"dns_plain_cpu_us", "dns_ecs_cpu_us", "dns_nxdomain_cpu_us", "dns_workers2_qps"} <= set(keys)


def test_workers_rows_sum_the_mixes():
    lat = {"latency_p50_ms": None, "latency_p99_ms": None}
    mixes = {m: {"ours": D.aggregate([_run(100_000, 300_000, 1.2)], lat),
                 "ours_w2": D.aggregate([_run(110_000, 330_000, 1.65)], lat)} for m in D.MIXES}
    qps, cpu = D.workers_rows(mixes, "ours_w2")
    assert qps["figure"] == "dns_workers2_qps" and qps["ours"] == 330_000 and qps["peer"] == 300_000
    assert qps["target_met"] is True
    assert cpu["ours"] == 5.0 and cpu["peer"] == 4.0 and cpu["ratio"] == 1.25


def test_section_shows_cpu_per_query_for_every_server():
    lat = {"latency_p50_ms": 0.05, "latency_p99_ms": 0.2}
    dns = {"mixes": {"plain": {"ours": D.aggregate([_run(100_000, 300_000, 1.2)], lat),
                               "gdnsd": D.aggregate([_run(120_000, 360_000, 0.72)], lat)}}}
    text = "\n".join(D.section_lines(dns))
    assert "| plain | gslb dns (1 process) | 100,000 | 100,000 | 4.00 |" in text
    assert "| plain | gdnsd | 120,000 | 120,000 | 2.00 |" in text
