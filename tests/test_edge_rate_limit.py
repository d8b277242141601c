"""The rate limit module as a state machine: subjects with `now` and nothing else."""
from __future__ import annotations

import pytest

from edge import errors as E
from edge.modules import ModuleConfigError, Subject, Verdict, check_bind_option
from edge.modules.base import PASS, RequestHead, client_ip
from edge.modules.rate_limit import RateLimit, check_option


def subj(now: float, rl=None, addr: str = "192.0.2.1", endpoint: str = "demo.app.lab.test",
         headers: tuple[tuple[str, str], ...] = ()) -> Subject:
    options = {} if rl is None else {"rate_limit": check_option(rl)}
    head = b"GET / HTTP/1.1\r\nHost: demo\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n"
    return Subject(client_ip=client_ip(addr), client_port=1234, kind="http", endpoint=endpoint, options=options,
                   request=RequestHead("GET", "/", "demo", head), now=now)


def passes(m: RateLimit, now: float, rl, **kw) -> bool:
    d = m.decide(subj(now, rl, **kw))
    assert d is PASS or d.verdict is Verdict.ANSWER
    return d is PASS


def test_no_option_passes_and_keeps_no_state():
    m = RateLimit()
    assert all(m.decide(subj(float(i))) is PASS for i in range(100))
    assert m.stats()["buckets"] == 0 and m.stats()["checked_total"] == 0


def test_burst_then_429_with_retry_after_until_a_token_refills():
    m = RateLimit()
    rl = "5/m"  # burst 5, one token every 12 s
    assert [passes(m, 100.0 + i * 0.1, rl) for i in range(6)] == [True] * 5 + [False]
    d = m.decide(subj(100.6, rl))
    assert (d.status, d.code, d.module) == (429, E.RATE_LIMITED.code, "rate_limit") == (429, "ERR_GSLB_3429",
                                                                                        "rate_limit")
    h = dict(d.response.headers)
    assert d.response.status == 429 and h["Retry-After"] == "12" and h["X-Gslb-Error-Code"] == "ERR_GSLB_3429"
    assert b"5/m" in d.response.body
    assert not passes(m, 111.9, rl)  # 0.99 of a token refilled since 100.0
    assert passes(m, 112.5, rl)
    assert not passes(m, 112.6, rl)
    st = m.stats()
    assert (st["checked_total"], st["limited_total"], st["buckets"]) == (10, 4, 1)


def test_bucket_boundary_one_token_exactly():
    m = RateLimit()
    rl = {"rate": "2/s", "burst": 1}
    assert passes(m, 10.0, rl)
    assert not passes(m, 10.25, rl)  # 0.5 token
    assert passes(m, 10.75, rl)      # 0.5 + 0.5 * 2 ... 1.0 token: exactly one
    assert not passes(m, 10.75, rl)


def test_the_bucket_never_holds_more_than_burst():
    m = RateLimit()
    rl = {"rate": "10/s", "burst": 3}
    assert [passes(m, 0.0, rl) for _ in range(4)] == [True, True, True, False]
    assert [passes(m, 1000.0, rl) for _ in range(4)] == [True, True, True, False]  # idle for long: still 3


def test_other_client_addresses_are_unaffected():
    m = RateLimit()
    rl = "2/h"
    assert [passes(m, 1.0, rl, addr="127.0.0.2") for _ in range(3)] == [True, True, False]
    assert passes(m, 1.1, rl, addr="127.0.0.3")
    assert passes(m, 1.1, rl, addr="127.0.0.2", endpoint="other.app.lab.test")  # per endpoint too


def test_ipv6_clients_are_keyed_by_their_64():
    m = RateLimit()
    rl = "1/h"
    assert passes(m, 1.0, rl, addr="2001:db8:1:2::1")
    assert not passes(m, 1.0, rl, addr="2001:db8:1:2::ffff")  # same /64
    assert passes(m, 1.0, rl, addr="2001:db8:1:3::1")
    m2 = RateLimit()  # an IPv4-mapped client is the IPv4 client
    assert passes(m2, 1.0, rl, addr="::ffff:192.0.2.9")
    assert not passes(m2, 1.0, rl, addr="192.0.2.9")


def test_header_key_limits_per_value_and_falls_back_to_the_address():
    m = RateLimit()
    rl = {"rate": "1/h", "key": "header:X-Api-Key"}
    assert passes(m, 1.0, rl, headers=(("x-api-key", "alice"),))
    assert not passes(m, 1.0, rl, headers=(("X-API-KEY", "alice"),), addr="198.51.100.7")  # any address
    assert passes(m, 1.0, rl, headers=(("X-Api-Key", "bob"),))
    assert passes(m, 1.0, rl)  # no header: by address
    assert not passes(m, 1.0, rl)


def test_the_table_is_bounded_under_a_rotating_source_flood():
    m = RateLimit.from_config({"max_buckets": 100})
    rl = "1/h"
    for i in range(5000):
        passes(m, 1.0, rl, addr=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    st = m.stats()
    assert st["buckets"] == 100 and st["evicted_total"] == 4900


def test_full_buckets_are_dropped_as_the_table_is_used():
    m = RateLimit()
    rl = "10/s"
    for i in range(50):
        passes(m, 1.0, rl, addr=f"10.0.0.{i}")
    assert m.stats()["buckets"] == 50
    for i in range(20):  # 2 s later every one of them is full again: the same as no bucket
        passes(m, 3.0 + i * 0.001, rl, addr="10.9.9.9")
    assert m.stats()["buckets"] < 50 and m.stats()["dropped_full_total"] > 0


def test_rebinding_with_another_limit_restarts_the_bucket():
    m = RateLimit()
    assert [passes(m, 1.0, "1/h") for _ in range(2)] == [True, False]
    assert passes(m, 1.1, "5/h")


def test_edge_default_key_applies_when_the_binding_has_none():
    m = RateLimit.from_config({"key": "header:X-Tenant"})
    assert passes(m, 1.0, "1/h", headers=(("X-Tenant", "a"),), addr="192.0.2.1")
    assert not passes(m, 1.0, "1/h", headers=(("X-Tenant", "a"),), addr="192.0.2.2")


@pytest.mark.parametrize("value, normalized", [
    ("100/s", {"rate": "100/s"}),
    (["6000/m"], {"rate": "6000/m"}),  # --rate-limit 6000/m
    (" 50 / h ", {"rate": "50/h"}),
    ({"rate": "10/s", "burst": 20, "key": "header:X-Api-Key"},
     {"rate": "10/s", "burst": 20, "key": "header:x-api-key"}),
    ({"rate": "10/s", "key": "ip"}, {"rate": "10/s", "key": "ip"}),
])
def test_bind_option_values_are_normalized(value, normalized):
    assert check_bind_option("http", "rate_limit", value) == normalized


@pytest.mark.parametrize("value, message", [
    ("100", "option 'rate_limit': '100' is not a rate like \"100/s\""),
    ("100/d", "is not a rate"),
    ("0/s", "0 requests per period is outside 1 to 1000000"),
    ("99999999/s", "is not a rate"),
    (100, "expected a rate like"),
    (["1/s", "2/s"], "give it once"),
    ({"burst": 3}, "the table needs a rate"),
    ({"rate": "1/s", "burst": 0}, "option 'rate_limit'.burst: expected an integer from 1 to 1000000"),
    ({"rate": "1/s", "burst": True}, "burst: expected an integer"),
    ({"rate": "1/s", "key": "cookie"}, "option 'rate_limit'.key: 'cookie' is not \"ip\" or \"header:NAME\""),
    ({"rate": "1/s", "key": "header:bad name"}, "is not \"ip\" or \"header:NAME\""),
    ({"rate": "1/s", "per": "ip"}, "unknown key(s) per"),
])
def test_bad_bind_values_are_refused_with_the_agents_text(value, message):
    with pytest.raises(ValueError) as ei:
        check_bind_option("http", "rate_limit", value)
    assert message in str(ei.value)


def test_only_http_endpoints_take_it():
    with pytest.raises(KeyError):
        check_bind_option("tls", "rate_limit", "1/s")


@pytest.mark.parametrize("options, message", [
    ({"max_buckets": 0}, "max_buckets: expected an integer from 1 to 10000000"),
    ({"key": "cookie"}, "key: 'cookie' is not"),
    ({"rate": "1/s"}, "rate: unknown option"),
])
def test_bad_edge_config_is_a_module_config_error(options, message):
    with pytest.raises(ModuleConfigError, match=message):
        RateLimit.from_config(options)
