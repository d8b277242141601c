"""The circuit breaker module as a state machine: subjects with `now`, outcomes, nothing else."""
from __future__ import annotations

import logging

import pytest

from edge import errors as E
from edge.modules import Chain, ModuleConfigError, Outcome, Subject, Verdict, check_bind_option
from edge.modules.base import PASS, client_ip
from edge.modules.circuit_breaker import CircuitBreaker, check_option, is_failure

OK = Outcome(status=200)
FAIL = Outcome(status=500)


def subj(now: float, cb=None, endpoint: str = "demo.app.lab.test", addr: str = "192.0.2.1") -> Subject:
    options = {} if cb is None else {"circuit_breaker": check_option(cb)}
    return Subject(client_ip=client_ip(addr), client_port=1234, kind="http", endpoint=endpoint,
                   options=options, now=now)


def run(m: CircuitBreaker, now: float, cb, outcome: Outcome, endpoint: str = "demo.app.lab.test"):
    """One request: decide, and when let through, its outcome. The decision."""
    s = subj(now, cb, endpoint)
    d = m.decide(s)
    if d.verdict is Verdict.PASS:
        m.observe(s, outcome)
    return d


FAST = {"error_threshold": 0.5, "volume_threshold": 4, "window": 2, "buckets": 2, "tripped_duration": 1}


def trip(m: CircuitBreaker, now: float = 100.0, cb=FAST) -> None:
    for i in range(4):
        assert run(m, now + i * 0.01, cb, FAIL) is PASS
    assert m.stats()["circuits_open"] == 1


def test_no_option_passes_and_keeps_no_state():
    m = CircuitBreaker()
    for i in range(50):
        s = subj(float(i))
        assert m.decide(s) is PASS
        m.observe(s, FAIL)
    assert m.stats()["circuits"] == 0 and m.stats()["requests_total"] == 0


def test_opens_at_volume_threshold_with_errors_and_answers_503_with_retry_after():
    m = CircuitBreaker()
    for i in range(3):
        assert run(m, 100.0 + i * 0.1, FAST, FAIL) is PASS
    assert m.stats()["circuits_open"] == 0  # 3 requests: below the volume threshold of 4
    assert run(m, 100.3, FAST, FAIL) is PASS  # the 4th outcome trips it
    d = run(m, 100.4, FAST, OK)
    assert d.verdict is Verdict.ANSWER and d.module == "circuit_breaker"
    assert (d.status, d.code) == (503, E.CIRCUIT_OPEN.code) == (503, "ERR_GSLB_3503")
    r = d.response
    assert r.status == 503 and dict(r.headers)["Retry-After"] == "1"
    assert dict(r.headers)["X-Gslb-Error-Code"] == "ERR_GSLB_3503" and b"ERR_GSLB_3503" in r.body
    st = m.stats()
    assert (st["opened_total"], st["rejected_total"], st["requests_total"], st["errors_total"]) == (1, 1, 4, 4)


def test_error_ratio_below_threshold_keeps_it_closed():
    m = CircuitBreaker()
    cb = dict(FAST, volume_threshold=10)
    for i in range(20):  # OK OK OK FAIL FAIL ...: at most 40% errors from the 10th request on
        run(m, 100.0 + i * 0.01, cb, FAIL if i % 5 >= 3 else OK)
    assert m.stats()["circuits_open"] == 0
    run(m, 100.3, cb, FAIL)
    run(m, 100.31, cb, FAIL)  # 10 of 22
    run(m, 100.32, cb, FAIL)  # 11 of 23
    assert m.stats()["circuits_open"] == 0
    run(m, 100.33, cb, FAIL)  # 12 of 24 reaches 0.5
    assert m.stats()["circuits_open"] == 1


def test_many_errors_below_the_volume_threshold_do_not_trip():
    m = CircuitBreaker()
    cb = dict(FAST, volume_threshold=10, window=10, buckets=10)
    for i in range(9):  # all fail, but 9 < 10 in every window
        assert run(m, 100.0 + i * 1.5, cb, FAIL) is PASS
    assert m.stats()["opened_total"] == 0


def test_the_window_rolls_over_bucket_by_bucket():
    m = CircuitBreaker()
    cb = {"error_threshold": 0.5, "volume_threshold": 4, "window": 10, "buckets": 10, "tripped_duration": 5}
    for t in (100.0, 100.5, 101.2):  # three errors in buckets 100 and 101
        run(m, t, cb, FAIL)
    # 110.1: bucket 100 has left the window (buckets 101-110), 101 is still in: 101.2 and 110.1,
    # two requests (with bucket 100 it would be four: tripped)
    run(m, 110.1, cb, FAIL)
    run(m, 110.2, cb, FAIL)
    assert m.stats()["circuits_open"] == 0
    run(m, 110.3, cb, FAIL)  # 101.2, 110.1, 110.2, 110.3: four
    assert m.stats()["circuits_open"] == 1


def test_a_request_counts_when_it_ends_not_when_it_starts():
    m = CircuitBreaker()
    cb = dict(FAST, window=2, buckets=2)
    slow = [subj(100.0 + i * 0.01, cb) for i in range(3)]
    for s in slow:
        assert m.decide(s) is PASS
    for s in slow:  # they end 5 s later: their errors land in the window around 105
        m.observe(s, Outcome(status=502, duration=5.0))
    run(m, 105.2, cb, FAIL)
    assert m.stats()["circuits_open"] == 1


def test_open_sends_nothing_then_half_open_probe_success_closes():
    m = CircuitBreaker()
    trip(m)
    for t in (100.1, 100.5, 100.9):
        assert run(m, t, FAST, OK).verdict is Verdict.ANSWER  # tripped_duration 1 s from 100.03
    probe = subj(101.1, FAST)
    assert m.decide(probe) is PASS  # half-open: one probe goes through
    assert m.stats()["circuits_half_open"] == 1
    assert m.decide(subj(101.2, FAST)).verdict is Verdict.ANSWER  # only one at a time
    m.observe(probe, Outcome(status=200, duration=0.2))
    assert m.stats()["circuits_open"] == m.stats()["circuits_half_open"] == 0
    # closed with a fresh window: three errors are not enough to trip again
    for i in range(3):
        assert run(m, 101.4 + i * 0.01, FAST, FAIL) is PASS
    st = m.stats()
    assert (st["opened_total"], st["half_opened_total"], st["closed_total"], st["probes_total"]) == (1, 1, 1, 1)


def test_half_open_probe_failure_reopens_for_another_tripped_duration():
    m = CircuitBreaker()
    trip(m)
    probe = subj(101.5, FAST)
    assert m.decide(probe) is PASS
    m.observe(probe, Outcome(status=503, duration=0.1))
    d = m.decide(subj(101.7, FAST))
    assert d.verdict is Verdict.ANSWER and dict(d.response.headers)["Retry-After"] == "1"
    assert m.decide(subj(102.7, FAST)) is PASS  # 1 s after the reopen at 101.6: a new probe
    assert m.stats()["opened_total"] == 2


def test_concurrent_probes_are_bounded_and_all_must_succeed():
    m = CircuitBreaker()
    cb = dict(FAST, half_open_requests=3)
    trip(m, cb=cb)
    probes = [subj(101.5 + i * 0.01, cb) for i in range(3)]
    assert all(m.decide(p) is PASS for p in probes)
    assert m.decide(subj(101.6, cb)).verdict is Verdict.ANSWER  # three under way: no fourth
    m.observe(probes[0], OK)
    assert m.decide(subj(101.7, cb)).verdict is Verdict.ANSWER  # 1 ok + 2 under way = 3
    m.observe(probes[1], OK)
    assert m.stats()["circuits_half_open"] == 1
    m.observe(probes[2], OK)
    assert m.stats()["circuits_half_open"] == 0 and m.stats()["closed_total"] == 1


def test_a_probe_the_client_gave_up_frees_its_slot():
    m = CircuitBreaker()
    trip(m)
    p1 = subj(101.5, FAST)
    assert m.decide(p1) is PASS
    m.observe(p1, Outcome(status=0, error="client_closed"))
    assert m.stats()["circuits_half_open"] == 1
    p2 = subj(101.6, FAST)
    assert m.decide(p2) is PASS
    m.observe(p2, OK)
    assert m.stats()["closed_total"] == 1


def test_a_probe_without_outcome_for_tripped_duration_counts_as_failed():
    m = CircuitBreaker()
    trip(m)
    assert m.decide(subj(101.5, FAST)) is PASS  # never observed (hangs)
    assert m.decide(subj(102.0, FAST)).verdict is Verdict.ANSWER
    assert m.decide(subj(102.6, FAST)).verdict is Verdict.ANSWER  # expired: reopened at 102.6
    assert m.stats()["opened_total"] == 2
    assert m.decide(subj(103.7, FAST)) is PASS


def test_outcomes_of_requests_from_before_the_trip_change_nothing():
    m = CircuitBreaker()
    early = subj(99.0, FAST)
    assert m.decide(early) is PASS
    trip(m)
    m.observe(early, OK)  # while open: nothing learnt
    probe = subj(101.5, FAST)
    assert m.decide(probe) is PASS
    late = subj(99.5, FAST)
    m.observe(late, OK)  # not a probe: half-open waits for its probe
    assert m.stats()["circuits_half_open"] == 1
    m.observe(probe, FAIL)
    assert m.stats()["circuits_open"] == 1


def test_circuits_are_per_endpoint():
    m = CircuitBreaker()
    trip(m)
    assert run(m, 100.2, FAST, OK, endpoint="other.app.lab.test") is PASS
    assert run(m, 100.2, FAST, OK).verdict is Verdict.ANSWER


def test_what_counts_as_an_upstream_failure():
    assert is_failure(Outcome(status=500)) and is_failure(Outcome(status=502))
    assert is_failure(Outcome(status=0, error="no_response"))  # the edge's 502: the stream ended unanswered
    assert is_failure(Outcome(status=502, error="stream_open_failed"))  # the agent could not be reached
    assert is_failure(Outcome(status=200, error="StreamReset"))  # cut mid-response
    assert is_failure(Outcome(status=200)) is False and is_failure(Outcome(status=404)) is False
    assert is_failure(Outcome(status=200, error="client_closed")) is False
    assert is_failure(Outcome(status=0, error="client_closed")) is None  # gave up before an answer: no verdict


def test_client_closed_before_an_answer_is_not_counted():
    m = CircuitBreaker()
    for i in range(10):
        run(m, 100.0 + i * 0.01, FAST, Outcome(status=0, error="client_closed"))
    assert m.stats()["requests_total"] == 0 and m.stats()["circuits_open"] == 0


def test_rebinding_with_other_options_starts_a_new_circuit():
    m = CircuitBreaker()
    trip(m)
    other = dict(FAST, error_threshold=0.9)
    assert run(m, 100.2, other, OK) is PASS


def test_edge_defaults_fill_what_the_binding_leaves_out():
    m = CircuitBreaker.from_config({"volume_threshold": 2, "tripped_duration": 30, "window": 5})
    run(m, 100.0, 0.5, FAIL)
    run(m, 100.1, 0.5, FAIL)
    d = m.decide(subj(100.2, 0.5))
    assert d.verdict is Verdict.ANSWER and dict(d.response.headers)["Retry-After"] == "30"


def test_idle_circuits_are_dropped_and_the_table_is_bounded():
    m = CircuitBreaker.from_config({"max_circuits": 3})
    for i in range(5):
        run(m, 100.0, 0.5, OK, endpoint=f"e{i}")
    assert m.stats()["circuits"] == 3 and m.stats()["evicted_total"] == 2
    run(m, 500.0, 0.5, OK, endpoint="e4")  # the other two idle for 400 s
    assert m.stats()["circuits"] == 1 and m.stats()["dropped_idle_total"] == 2


def test_state_changes_are_logged_one_line_each(caplog):
    m = CircuitBreaker()
    with caplog.at_level(logging.WARNING, logger="gslb.edge"):
        trip(m)
        probe = subj(101.5, FAST)
        m.decide(probe)
        m.observe(probe, OK)
    events = [r.getMessage().split()[0] for r in caplog.records]
    assert events == ["event=circuit_opened", "event=circuit_half_open", "event=circuit_closed"]
    assert "endpoint=demo.app.lab.test" in caplog.records[0].getMessage()
    assert "requests=4 errors=4" in caplog.records[0].getMessage()


def test_in_a_chain_after_other_modules():
    from edge.modules.ip_restriction import IpRestriction

    m = CircuitBreaker()
    chain = Chain((IpRestriction(), m))
    assert chain.observes
    for i in range(4):
        s = subj(100.0 + i * 0.01, FAST)
        assert chain.decide(s).verdict is Verdict.ALLOW
        chain.observe(s, FAIL)
    assert chain.decide(subj(100.1, FAST)).module == "circuit_breaker"


@pytest.mark.parametrize("value, normalized", [
    (0.5, {"error_threshold": 0.5}),
    (["0.25"], {"error_threshold": 0.25}),  # --circuit-breaker 0.25
    (1, {"error_threshold": 1.0}),
    ({"error_threshold": 0.5, "volume_threshold": 20, "window": 1, "buckets": 1, "tripped_duration": 120,
      "half_open_requests": 100},
     {"error_threshold": 0.5, "volume_threshold": 20, "window": 1.0, "buckets": 1, "tripped_duration": 120.0,
      "half_open_requests": 100}),
])
def test_bind_option_values_are_normalized(value, normalized):
    assert check_bind_option("http", "circuit_breaker", value) == normalized


@pytest.mark.parametrize("value, message", [
    (0, "option 'circuit_breaker'.error_threshold: 0.0 is outside 0.01 to 1"),
    (1.5, "error_threshold: 1.5 is outside 0.01 to 1"),
    ("half", "'half' is not an error threshold"),
    (True, "expected an error threshold"),
    (["0.5", "0.6"], "give it once"),
    ({"window": 0.5}, "window: 0.5 s is outside 1 s to 120 s"),
    ({"window": 121}, "window: 121.0 s is outside 1 s to 120 s"),
    ({"tripped_duration": 0.9}, "tripped_duration: 0.9 s is outside 1 s to 120 s"),
    ({"volume_threshold": 0}, "volume_threshold: 0 is outside 1 to 10000"),
    ({"volume_threshold": 2.5}, "volume_threshold: expected an integer"),
    ({"buckets": 101}, "buckets: 101 is outside 1 to 100"),
    ({"half_open_requests": 0}, "half_open_requests: 0 is outside 1 to 100"),
    ({"error_threshold": float("nan")}, "error_threshold: nan is outside"),
    ({"colour": 1}, "unknown key"),
])
def test_bad_bind_values_are_refused_with_the_agents_text(value, message):
    with pytest.raises(ValueError) as ei:
        check_bind_option("http", "circuit_breaker", value)
    assert message in str(ei.value)


def test_only_http_endpoints_take_it():
    with pytest.raises(KeyError):
        check_bind_option("tcp", "circuit_breaker", 0.5)


@pytest.mark.parametrize("options, message", [
    ({"window": 0.1}, "window: 0.1 s is outside 1 s to 120 s"),
    ({"max_circuits": 0}, "max_circuits: expected an integer from 1"),
    ({"colour": "red"}, "colour: unknown option"),
])
def test_bad_edge_config_is_a_module_config_error(options, message):
    with pytest.raises(ModuleConfigError, match=message):
        CircuitBreaker.from_config(options)
