"""bench/parse.py: what dnsperf and wrk print, into numbers."""
from __future__ import annotations

import subprocess
import pytest

from bench.parse import ParseError, dnsperf_verbose_latencies, parse_dnsperf, parse_duration_s, parse_wrk, percentile

DNSPERF = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5353 -d q.txt -c 4 -T 2 -l 3
[Status] Sending queries (to 127.0.0.1:5353)
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         515333
  Queries completed:    515330 (100.00%)
  Queries lost:         3 (0.00%)

  Response codes:       NOERROR 500000 (97.03%), NXDOMAIN 15330 (2.97%)
  Average packet size:  request 33, response 77
  Run time (s):         3.000491
  Queries per second:   171749.556989

  Average Latency (s):  0.000426 (min 0.000010, max 0.003645)
  Latency StdDev (s):   0.000333

"""

WRK = """\
Running 2s test @ https://demo.app.lab.test:8443/small
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.89ms  514.31us  14.39ms   93.26%
    Req/Sec    37.58k     5.54k   43.25k    87.50%
  Latency Distribution
     50%  788.00us
     75%    0.86ms
     90%    1.20ms
     99%    3.28ms
  149422 requests in 2.00s, 48.16MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  74545.43
Transfer/sec:     24.03MB
"""


def test_dnsperf_statistics_become_numbers_with_latency_in_ms():
    st = parse_dnsperf(DNSPERF)
    assert st["sent"] == 515333 and st["completed"] == 515330 and st["lost"] == 3
    assert st["qps"] == pytest.approx(171749.556989)
    assert st["latency_avg_ms"] == pytest.approx(0.426)
    assert st["latency_max_ms"] == pytest.approx(3.645)
    assert st["latency_stddev_ms"] == pytest.approx(0.333)
    assert st["rcodes"] == {"NOERROR": 500000, "NXDOMAIN": 15330}


def test_dnsperf_output_without_statistics_is_an_error_not_zero():
    with pytest.raises(ParseError, match="Queries sent"):
        parse_dnsperf("Error: could not open socket\n")


def test_dnsperf_verbose_lines_give_per_query_latencies_and_skip_timeouts():
    lines = ["[Status] Sending", "> NOERROR demo.app.lab.test A 0.000119", "> NXDOMAIN nx1.lab.test AAAA 0.000061",
             "> T demo.app.lab.test A", "[Timeout] Query timed out: msg id 3"]
    assert dnsperf_verbose_latencies(lines) == [0.000119, 0.000061]


def test_percentile_is_nearest_rank():
    vals = list(range(1, 101))
    assert percentile(vals, 50) == 50
    assert percentile(vals, 99) == 99
    assert percentile(vals, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def test_wrk_latency_distribution_rps_and_errors():
    st = parse_wrk(WRK)
    assert st["rps"] == pytest.approx(74545.43)
    assert st["requests"] == 149422
    assert st["duration_s"] == pytest.approx(2.0)
    assert st["latency_avg_ms"] == pytest.approx(0.89)
    assert st["latency_p50_ms"] == pytest.approx(0.788)
    assert st["latency_p99_ms"] == pytest.approx(3.28)
    assert st["socket_errors"] == {"connect": 0, "read": 12, "write": 0, "timeout": 3}
    assert st["non_2xx"] == 7
    assert st["bytes_read"] == int(48.16 * 1024**2)


def test_wrk_without_latency_flag_still_parses_rps():
    text = "\n".join(line for line in WRK.splitlines() if "%" not in line or "Latency" in line)
    st = parse_wrk(text)
    assert st["rps"] == pytest.approx(74545.43) and st["latency_p99_ms"] is None


def test_wrk_failure_is_an_error():
    with pytest.raises(ParseError):
        parse_wrk("unable to connect to 127.0.0.1:8443 Connection refused\n")


@pytest.mark.parametrize("text,seconds", [("788.00us", 788e-6), ("0.86ms", 0.86e-3), ("1.20s", 1.2), ("2.00m", 120.0)])
def test_wrk_durations(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


def test_wrk_runs_aggregate_to_medians_leaving_invalid_runs_out():
    from bench.edgebench import aggregate_wrk

    good = parse_wrk(WRK.replace("Non-2xx or 3xx responses: 7", "").replace("read 12", "read 0")
                     .replace("timeout 3", "timeout 0"))
    fast = dict(good, rps=90000.0, latency_p50_ms=0.5)
    broken = dict(good, rps=1e6, invalid="149422 non-2xx of 149422 responses")
    agg = aggregate_wrk([good, fast, broken])
    assert agg["rps"] == (good["rps"] + 90000.0) / 2   # median of the two valid runs
    assert agg["rps_runs"] == [74545.4, 90000.0, 1000000.0]
    assert "non-2xx" in agg["invalid"] and "all_invalid" not in agg
    assert aggregate_wrk([broken])["rps"] is None


def test_wrk_runs_made_at_once_are_summed_and_their_latencies_weighted_by_requests():
    from bench.parse import merge_wrk
    a = parse_wrk(WRK)
    b = dict(a, rps=a["rps"] / 2, requests=a["requests"] // 2, latency_p50_ms=a["latency_p50_ms"] * 4,
             non_2xx=3, socket_errors=dict(a["socket_errors"], read=2), duration_s=a["duration_s"] + 0.5)
    m = merge_wrk([a, b])
    assert m["rps"] == a["rps"] + b["rps"] and m["requests"] == a["requests"] + b["requests"]
    assert m["non_2xx"] == a["non_2xx"] + 3 and m["socket_errors"]["read"] == a["socket_errors"]["read"] + 2
    assert m["duration_s"] == b["duration_s"]
    want = (a["latency_p50_ms"] * a["requests"] + b["latency_p50_ms"] * b["requests"]) / m["requests"]
    assert abs(m["latency_p50_ms"] - want) < 1e-9
    assert merge_wrk([a]) is a


def test_load_generators_run_at_once_and_an_overrun_is_killed():
    import pytest as _pytest
    from bench.procs import run_bounded_all
    rs = run_bounded_all([["sh", "-c", "sleep 0.3; echo a"], ["sh", "-c", "sleep 0.3; echo b"]], timeout=20)
    assert [r.stdout.strip() for r in rs] == ["a", "b"] and all(r.returncode == 0 for r in rs)
    with _pytest.raises(subprocess.TimeoutExpired):
        run_bounded_all([["sleep", "30"]], timeout=0.5)
