"""bench.failover's pure parts: dig output, the settle time of a probe loop, the summary rows."""
from __future__ import annotations

from bench import failover as fo
from bench.summary import FAILOVER, complete_summary, failover_row, render_markdown, render_table

DNS_SPEC_ABSENT = {"kind": "dns", "absent": ["198.18.3.1", "198.18.3.2"]}
DNS_SPEC_PRESENT = {"kind": "dns", "present": ["198.18.3.1", "198.18.3.2"]}
HTTP_SPEC = {"kind": "http"}


def test_parse_short_keeps_addresses_only():
    text = "198.18.3.1\n198.18.3.2\n;; communications error\nedge.lab.test.\nfd7a:5e1b:c00::3:1\n\n"
    assert fo.parse_short(text) == ["198.18.3.1", "198.18.3.2", "fd7a:5e1b:c00::3:1"]
    assert fo.parse_short(";; connection timed out; no servers could be reached\n") == []


def test_parse_answer_addresses_and_lowest_ttl():
    text = ("bench.app.lab.test.\t30\tIN\tA\t198.18.3.1\n"
            "bench.app.lab.test.\t5\tIN\tA\t198.18.3.2\n"
            "bench.app.lab.test.\t30\tIN\tCNAME\tother.lab.test.\n")
    assert fo.parse_answer(text) == (["198.18.3.1", "198.18.3.2"], 5)
    assert fo.parse_answer("") == ([], None)
    assert fo.parse_answer(";; communications error to 198.18.0.11#53: timed out\n") == ([], None)


def test_steady_needs_the_pop_and_the_full_ttl():
    addrs = ["198.18.3.1", "198.18.3.2"]
    assert fo.steady({"addrs": ["198.18.3.1", "198.18.3.2"], "ttl": 30}, addrs)
    assert not fo.steady({"addrs": ["198.18.3.1"], "ttl": 5}, addrs)       # health changing
    assert not fo.steady({"addrs": ["198.18.4.1"], "ttl": 30}, addrs)      # another PoP
    assert not fo.steady({"addrs": [], "ttl": None}, addrs)


def test_sample_good():
    assert fo.sample_good({"addrs": ["198.18.4.1", "198.18.4.2"]}, DNS_SPEC_ABSENT)
    assert not fo.sample_good({"addrs": ["198.18.4.1", "198.18.3.2"]}, DNS_SPEC_ABSENT)
    assert not fo.sample_good({"addrs": []}, DNS_SPEC_ABSENT)       # no answer is not a withdrawal
    assert fo.sample_good({"addrs": ["198.18.3.2"]}, DNS_SPEC_PRESENT)
    assert not fo.sample_good({"addrs": ["198.18.4.2"]}, DNS_SPEC_PRESENT)
    assert fo.sample_good({"code": "200"}, HTTP_SPEC)
    assert not fo.sample_good({"code": "502"}, HTTP_SPEC)
    assert not fo.sample_good({"code": "000"}, HTTP_SPEC)


def _samples(t0: float, codes: list[str], step: float = 0.1, dt: float = 0.02) -> list[dict]:
    return [{"t0": t0 + i * step, "t1": t0 + i * step + dt, "code": c} for i, c in enumerate(codes)]


def test_settle_time_is_the_end_of_the_first_sample_of_the_final_good_run():
    good = lambda s: fo.sample_good(s, HTTP_SPEC)  # noqa: E731
    # before the reference: ignored (200s before the kill do not count)
    samples = _samples(99.8, ["200", "200", "502", "502", "200", "502", "200", "200", "200"])
    # t0s: 99.8 99.9 100.0 100.1 100.2 100.3 100.4 100.5 100.6 -> last run starts at 100.4
    got = fo.settle_time(samples, 100.0, good, stable=3)
    assert abs(got - 0.42) < 1e-9
    assert fo.settle_time(samples, 100.0, good, stable=4) is None       # the final run is 3 long
    assert fo.count_bad(samples, 100.0, good) == (3, 7)


def test_settle_time_never_settled_or_no_outage_seen():
    good = lambda s: fo.sample_good(s, HTTP_SPEC)  # noqa: E731
    assert fo.settle_time(_samples(100.0, ["502", "502"]), 100.0, good) is None
    assert fo.settle_time([], 100.0, good) is None
    # no failure after the reference: settled with its first sample
    got = fo.settle_time(_samples(100.05, ["200"] * 5), 100.0, good, stable=5)
    assert abs(got - 0.07) < 1e-9


def test_first_line_after():
    lines = [(9.0, "forwarding https://bench.app.lab.test -> http://localhost:1"),
             (10.5, "ts=... event=session_lost"),
             (10.7, "forwarding https://bench.app.lab.test -> http://localhost:1")]
    assert abs(fo.first_line_after(lines, 10.0, "forwarding https://bench.app.lab.test") - 0.7) < 1e-9
    assert fo.first_line_after(lines, 11.0, "forwarding") is None


def test_stats_and_pop_of():
    assert fo.stats([2.7, None, 2.3, 2.5]) == {"median": 2.5, "min": 2.3, "max": 2.7, "n": 3}
    assert fo.stats([None]) is None
    status = {"hosts": [{"role": "pop", "region": "eu", "ipv4": ["198.18.3.1"], "ipv6": ["fd7a:5e1b:c00::3:1"]},
                        {"role": "client", "region": "eu", "ipv4": ["198.19.3.10"], "ipv6": []}]}
    assert fo.pop_of(status, "fd7a:5e1b:c00::3:1") == "eu"
    assert fo.pop_of(status, "198.19.3.10") is None


def test_failover_row_median_min_max_no_peer():
    row = failover_row("dns_withdrawal_s", [2.72, 2.31, None, 2.69])
    assert row["ours"] == 2.69 and row["min"] == 2.31 and row["max"] == 2.72 and row["n"] == 3
    assert row["peer"] is None and row["ratio"] is None and row["target_met"] is None
    assert row["unit"] == "s" and "no peer" in row["note"]
    empty = failover_row("agent_failover_s", [None])
    assert empty["ours"] is None and "no peer" in empty["note"]


def test_summary_rows_and_report():
    rounds = [{"round": 1, "victim": "eu", "client": "client-eu", "withdrawal_s": 2.3, "answer_after": ["in"],
               "return_s": 1.4, "agent_pop": "us", "rebind_s": 0.24, "new_pop": "ap", "served_s": 0.26,
               "watcher": "client-ap", "http_failed": 2, "http_samples": 7},
              {"round": 2, "victim": "eu", "client": "client-eu", "withdrawal_s": 2.7, "return_s": 1.5,
               "agent_pop": "ap", "rebind_s": None, "served_s": None}]
    rows = fo.summary_rows(rounds, 4.2, 1.4)
    assert [r["figure"] for r in rows] == list(FAILOVER)
    by = {r["figure"]: r for r in rows}
    assert by["dns_withdrawal_s"]["ours"] == 2.5 and by["dns_withdrawal_s"]["n"] == 2
    assert by["agent_failover_s"]["ours"] == 0.24 and by["agent_failover_s"]["n"] == 1
    assert by["lab_up_s"]["ours"] == 4.2 and by["lab_down_s"]["ours"] == 1.4
    summary = complete_summary(rows)
    assert {r["figure"] for r in summary} >= set(FAILOVER)
    assert "dns_withdrawal_s" in render_table(summary)
    details = {"prefix": "gslbbf", "hosts": 27, "lab_up_s": 4.2, "lab_down_s": 1.4, "rounds": rounds,
               "errors": ["round 2: RuntimeError: x"]}
    lines = fo.section_lines(details)
    md = render_markdown({"started": "now", "summary": summary,
                          "sections": [{"title": "Failover (lab)", "lines": lines}]})
    assert "| 1 | pop-eu (client-eu) | 2.30 | pop-in | 1.40 | pop-us | 0.24 | pop-ap | 0.26 (client-ap) | 2/7 |" in md
    assert "error: round 2" in md
