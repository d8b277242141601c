"""The abuse tracker (edge/abuse/): events and time only, no sockets, no clock."""
from __future__ import annotations

import dataclasses
import re

import pytest

from edge.abuse import AbuseConfig, AbuseTracker, MinRate, keys

CFG = AbuseConfig()


def tracker(**over) -> tuple[AbuseTracker, list[tuple[str, dict]]]:
    logged: list[tuple[str, dict]] = []
    t = AbuseTracker(dataclasses.replace(CFG, **over), on_log=lambda ev, f: logged.append((ev, f)))
    return t, logged


# -- source keys ------------------------------------------------------------------------
def test_keys_ipv4_host_and_slash24():
    assert keys("198.19.5.10") == ("198.19.5.10/32", "198.19.5.0/24")


def test_keys_ipv4_mapped_ipv6_counts_as_ipv4():
    assert keys("::ffff:198.19.5.10") == ("198.19.5.10/32", "198.19.5.0/24")


def test_keys_ipv6_slash64_and_slash48():
    assert keys("2001:db8:1:2:3:4:5:6") == ("2001:db8:1:2::/64", "2001:db8:1::/48")


def test_keys_reject_garbage():
    for bad in ("", "nonsense", "1.2", "2001:zz::1"):
        with pytest.raises(ValueError):
            keys(bad)


# -- connection rate ----------------------------------------------------------------------
def test_connection_burst_passes_exactly_and_the_next_one_blocks():
    t, logged = tracker(connections_burst=10, connections_per_second=1.0)
    conns = [t.admit("198.19.5.10", 100.0) for _ in range(10)]
    assert all(c is not None for c in conns)
    assert t.admit("198.19.5.10", 100.0) is None
    assert logged == [("abuse_block", {"prefix": "198.19.5.10/32", "reason": "connection_rate",
                                       "duration_s": 10.0, "offence": 1})]
    assert t.stats()["blocks_connection_rate"] == 1


def test_refill_at_the_rate_lets_a_steady_source_through():
    t, logged = tracker(connections_burst=5, connections_per_second=10.0)
    now = 0.0
    for _ in range(1000):   # 10/s, exactly the rate
        c = t.admit("198.19.5.10", now)
        assert c is not None
        t.closed(c, now)
        now += 0.1
    assert logged == []


def test_blocked_source_is_refused_without_a_log_line_per_connection_and_others_pass():
    t, logged = tracker(connections_burst=3)
    for _ in range(4):
        t.admit("198.19.5.10", 0.0)
    for _ in range(50):
        assert t.admit("198.19.5.10", 1.0) is None
    assert t.admit("198.19.6.20", 1.0) is not None            # another /24
    assert t.admit("198.19.5.11", 1.0) is not None            # same /24, another host
    assert [ev for ev, _ in logged] == ["abuse_block"]
    assert t.stats()["refused"] == 51


def test_slash24_aggregation_blocks_a_source_spread_over_its_network():
    t, logged = tracker(connections_burst=4, net_factor=2, connections_per_second=0.001)
    ok = [t.admit(f"203.0.113.{i}", 0.0) for i in range(1, 9)]   # 8 hosts, 1 each: /24 budget is 8
    assert all(c is not None for c in ok)
    assert t.admit("203.0.113.50", 0.0) is None
    assert logged[-1][1]["prefix"] == "203.0.113.0/24"
    assert t.admit("203.0.113.99", 0.0) is None               # the whole /24 is blocked
    assert t.admit("203.0.114.1", 0.0) is not None


def test_ipv6_hosts_of_one_slash64_share_a_budget_and_slash48_aggregates():
    t, logged = tracker(connections_burst=3, net_factor=2, connections_per_second=0.001)
    for i in range(3):
        assert t.admit(f"2001:db8:1:2::{i + 1}", 0.0) is not None
    assert t.admit("2001:db8:1:2::ff", 0.0) is None
    assert logged[-1][1]["prefix"] == "2001:db8:1:2::/64"
    for i in range(3):                                        # another /64 of the same /48
        assert t.admit(f"2001:db8:1:3::{i + 1}", 0.0) is not None
    assert t.admit("2001:db8:1:4::1", 0.0) is None            # /48 budget (6) used up
    assert logged[-1][1]["prefix"] == "2001:db8:1::/48"


def test_concurrent_connections_limit_and_close_frees_a_slot():
    t, logged = tracker(max_concurrent=3, connections_burst=1000)
    conns = [t.admit("198.19.5.10", 0.0) for _ in range(3)]
    t.closed(conns[0], 0.0)
    t.closed(conns[0], 0.0)                                   # twice: counted once
    assert t.admit("198.19.5.10", 0.0) is not None
    assert t.admit("198.19.5.10", 0.0) is None
    assert logged[-1][1]["reason"] == "concurrent"


# -- escalation, expiry, decay ---------------------------------------------------------------
def _trip(t: AbuseTracker, now: float, addr: str = "198.19.5.10") -> None:
    while t.admit(addr, now) is not None:
        pass


def test_escalation_10_60_600_and_unblock_lines():
    t, logged = tracker(connections_burst=2, connections_per_second=0.0001)
    _trip(t, 0.0)
    assert t.is_blocked("198.19.5.10", 9.99) is not None
    assert t.expire(9.99) == 0
    assert t.expire(10.0) == 1
    assert t.is_blocked("198.19.5.10", 10.0) is None
    assert logged[-1] == ("abuse_unblock", {"prefix": "198.19.5.10/32", "reason": "connection_rate",
                                            "duration_s": 10.0, "refused": 1})
    _trip(t, 20.0)
    assert logged[-1][1]["duration_s"] == 60.0 and logged[-1][1]["offence"] == 2
    assert t.is_blocked("198.19.5.10", 79.0) is not None
    assert t.is_blocked("198.19.5.10", 80.0) is None
    _trip(t, 90.0)
    assert logged[-1][1]["duration_s"] == 600.0
    t.expire(690.0)
    _trip(t, 700.0)
    assert logged[-1][1]["duration_s"] == 600.0                # the longest stays the longest


def test_escalation_decays_one_offence_per_decay_period():
    t, logged = tracker(connections_burst=2, connections_per_second=0.0001, escalation_decay=100.0)
    _trip(t, 0.0)                                              # 10 s, until 10
    _trip(t, 20.0)                                             # 60 s, until 80
    t.expire(80.0)
    _trip(t, 80.0 + 100.0)                                     # one offence forgotten: 60 s again
    assert logged[-1][1]["duration_s"] == 60.0
    t.expire(1000.0)
    _trip(t, 240.0 + 250.0)                                    # 2 periods after 240: back to 10 s
    assert logged[-1][1]["duration_s"] == 10.0


def test_after_expiry_the_next_accept_unblocks_and_the_source_starts_afresh():
    # a rate so slow the bucket would still be empty: the unblocked source gets a full one
    t, logged = tracker(connections_burst=3, connections_per_second=0.0001)
    _trip(t, 0.0)
    assert all(t.admit("198.19.5.10", 10.5) is not None for _ in range(3))
    assert [ev for ev, _ in logged] == ["abuse_block", "abuse_unblock"]
    assert t.admit("198.19.5.10", 10.5) is None               # and the limit holds again
    assert logged[-1][1]["offence"] == 2


# -- exempt sources -------------------------------------------------------------------------------
def test_loopback_is_exempt_by_default():
    t, logged = tracker(connections_burst=1, max_concurrent=1)
    for _ in range(100):
        assert t.admit("127.0.0.1", 0.0) is not None
        assert t.admit("::1", 0.0) is not None
    assert logged == []


def test_exempt_network_is_never_blocked_even_inside_a_blocked_slash24():
    t, logged = tracker(connections_burst=2, net_factor=1, max_concurrent=1,
                        exempt=("198.19.5.53/32", "2001:db8::/32"))
    for _ in range(500):                                      # a health checker, 1 connection each ...
        c = t.admit("198.19.5.53", 0.0)
        assert c is not None
        assert t.handshake(c, False, 0.0)
        assert t.request(c, "healthz", 0.0)
        assert t.error(c, "header_timeout", 0.0)
        assert t.error(c, "idle", 0.0)
        t.closed(c, 0.0)
    assert logged == []
    _trip(t, 0.0, "198.19.5.7")                               # a neighbour trips the /24 ...
    assert t.admit("198.19.5.53", 0.0) is not None            # ... the checker still gets in
    for _ in range(100):
        assert t.admit("2001:db8:5::1", 0.0) is not None


# -- HTTP patterns -----------------------------------------------------------------------------------
def test_slowloris_blocks_at_the_fifth_slow_head_in_the_window():
    t, logged = tracker(slow_headers=5)
    conns = [t.admit("198.19.5.10", 0.0) for _ in range(5)]
    for c in conns[:4]:
        assert t.error(c, "slow_header", 1.0)
    assert not t.error(conns[4], "header_timeout", 1.0)
    assert logged[-1][1]["reason"] == "slowloris"


def test_slow_events_spread_over_windows_do_not_block():
    t, logged = tracker(slow_headers=5, window=10.0)
    now = 0.0
    for _ in range(40):
        c = t.admit("198.19.5.10", now)
        assert t.error(c, "slow_header", now)
        t.closed(c, now)
        now += 2.6                                            # 4 per window at most
    assert logged == []


def test_connections_held_without_a_request_block_at_the_limit():
    t, logged = tracker(idle_connections=20)
    for i in range(19):
        c = t.admit("198.19.5.10", 0.0)
        assert t.error(c, "idle", 0.0)
        t.closed(c, 0.0)
    c = t.admit("198.19.5.10", 0.0)
    assert not t.error(c, "idle", 0.0)
    assert logged[-1][1]["reason"] == "idle_connections"


def test_connect_and_close_probes_are_no_pattern():
    # a TCP health check (the lab's name servers: every second, each address) holds nothing
    t, logged = tracker()
    now = 0.0
    for _ in range(3000):
        c = t.admit("198.19.0.53", now)
        assert c is not None
        t.closed(c, now)
        now += 0.1
    assert logged == []


def test_request_flood_to_one_endpoint_and_keepalive_connection_gets_refused():
    t, logged = tracker(requests_burst=100, requests_per_second=1.0)
    c = t.admit("198.19.5.10", 0.0)
    for _ in range(100):
        assert t.request(c, "demo.app.lab.test", 0.0)
    assert t.request(c, "other.app.lab.test", 0.0)           # its own bucket
    assert not t.request(c, "demo.app.lab.test", 0.0)
    assert logged[-1][1]["reason"] == "request_flood"
    assert not t.request(c, "other.app.lab.test", 0.0)       # blocked now: every request answered 429
    assert t.stats()["answered"] == 2
    other = t.admit("198.19.7.1", 0.0)
    assert t.request(other, "demo.app.lab.test", 0.0)


def test_error_ratio_needs_the_minimum_events_then_blocks():
    t, logged = tracker(error_min_events=40, error_ratio=0.5)
    c = t.admit("198.19.5.10", 0.0)
    for _ in range(20):
        assert t.request(c, "demo", 0.0)
    for _ in range(19):
        assert t.error(c, "edge_4xx", 0.0)                    # 39 events: not judged yet
    assert not t.error(c, "malformed", 0.0)                   # 40 events, 20 errors: 0.5
    assert logged[-1][1]["reason"] == "error_ratio"


def test_failed_handshakes_count_as_errors_and_handshake_rate_blocks():
    t, logged = tracker(handshakes_burst=5, handshakes_per_second=0.001, connections_burst=1000,
                        error_min_events=1000)
    for i in range(5):
        c = t.admit("198.19.5.10", 0.0)
        assert t.handshake(c, False, 0.0)
    c = t.admit("198.19.5.10", 0.0)
    assert not t.handshake(c, True, 0.0)
    assert logged[-1][1]["reason"] == "handshake_rate"
    assert t.stats()["handshake_failures"] == 5


def test_unknown_event_kind_is_an_error():
    t, _ = tracker()
    c = t.admit("198.19.5.10", 0.0)
    with pytest.raises(ValueError):
        t.error(c, "nonsense", 0.0)


# -- bounded tables -------------------------------------------------------------------------------------
def test_spoofed_flood_of_1e5_sources_keeps_tables_bounded():
    t, logged = tracker(table_size=1000, max_blocks=100, connections_burst=1,
                        connections_per_second=0.0001)
    for i in range(100_000):
        addr = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        t.admit(addr, 0.0)
        t.admit(addr, 0.0)                                    # each trips its own /32 block
    s = t.stats()
    assert s["sources"] <= 1000 and s["networks"] <= 1000
    assert s["blocked"] <= 100
    assert s["evicted"] > 0 and s["blocks_evicted"] > 0
    assert len(t._expiry) <= 4 * 100 + 1 and len(t._offences) <= 4 * 100


def test_eviction_does_not_lift_a_block():
    t, logged = tracker(table_size=10, connections_burst=1, connections_per_second=0.0001)
    _trip(t, 0.0)
    for i in range(100):
        t.admit(f"10.0.{i}.1", 0.0)
    assert "198.19.5.10/32" not in t.hosts
    assert t.admit("198.19.5.10", 1.0) is None


def test_stats_are_flat_numbers():
    t, _ = tracker()
    c = t.admit("198.19.5.10", 0.0)
    t.request(c, "demo", 0.0)
    t.closed(c, 0.0, nbytes=1234)
    s = t.stats()
    assert all(isinstance(v, (int, float)) for v in s.values())
    assert s["connections"] == 1 and s["requests"] == 1 and s["bytes"] == 1234 and s["idle"] == 0


# -- minimum rate ------------------------------------------------------------------------------------------
def test_min_rate_judged_only_after_grace_and_exact_at_the_boundary():
    r = MinRate(100.0, 3.0)
    r.start(0.0)
    assert r.feed(1, 2.9)                                     # in the grace time anything goes
    assert r.feed(299, 3.0)                                   # 300 B in 3 s: exactly 100 B/s
    assert not r.feed(0, 3.01)
    off = MinRate(0.0, 3.0)
    off.start(0.0)
    assert off.feed(0, 1000.0)


# -- [edge.abuse] and the safety limits in the edge config ----------------------------------------------------
from edge.config import ConfigError, parse  # noqa: E402

BASE = """\
zone = "lab.test"

[edge]
ca_dir = "/tmp/ca"

[pops.us]
listen = ["198.19.1.1"]
"""


def test_abuse_is_on_by_default_with_production_limits():
    cfg = parse(BASE, "us", "e.toml")
    assert cfg.abuse == AbuseConfig()
    assert cfg.abuse.enabled and cfg.abuse.block_durations == (10.0, 60.0, 600.0)
    assert cfg.limits.max_header_count == 100 and cfg.limits.min_header_rate == 64.0
    assert cfg.limits.min_body_rate == 64.0 and cfg.timeouts.rate_grace == 3.0


def test_abuse_table_and_pop_override():
    text = BASE + """
[edge.abuse]
exempt = ["198.19.0.0/16", "2001:db8::/32"]
block_durations = [2, 4]
slow_headers = 3

[pops.us.abuse]
enabled = false
"""
    us = parse(text.replace("[pops.us.abuse]\nenabled = false\n", ""), "us", "e.toml")
    assert us.abuse.exempt == ("198.19.0.0/16", "2001:db8::/32")
    assert us.abuse.block_durations == (2.0, 4.0) and us.abuse.slow_headers == 3
    assert parse(text, "us").abuse.enabled is False


@pytest.mark.parametrize("line,message", [
    ("exempt = [\"10.0.0.1/8\"]", "e.toml:7: edge.abuse.exempt: '10.0.0.1/8' is not a network"),
    ("exempt = \"10.0.0.0/8\"", "e.toml:7: edge.abuse.exempt: expected a list"),
    ("block_durations = [60, 10]", "e.toml:7: edge.abuse.block_durations: expected ascending"),
    ("block_durations = []", "e.toml:7: edge.abuse.block_durations: expected a list of 1..8"),
    ("enabled = 1", "e.toml:7: edge.abuse.enabled: expected true or false"),
    ("error_ratio = 2", "e.toml:7: edge.abuse.error_ratio: expected a number"),
    ("max_concurrent = 0", "e.toml:7: edge.abuse.max_concurrent: expected an integer"),
    ("nonsense = 1", "e.toml:7: edge.abuse.nonsense"),
])
def test_bad_abuse_values_name_file_line_key(line, message):
    text = BASE.replace("[pops.us]", "[edge.abuse]\n" + line + "\n\n[pops.us]")
    with pytest.raises(ConfigError) as exc:
        parse(text, "us", "e.toml")
    assert str(exc.value).startswith(message), str(exc.value)


@pytest.mark.parametrize("table,line,key", [
    ("limits", "max_header_count = 2", "edge.limits.max_header_count"),
    ("limits", "min_body_rate = -1", "edge.limits.min_body_rate"),
    ("limits", "min_header_rate = \"fast\"", "edge.limits.min_header_rate"),
    ("timeouts", "rate_grace = 0", "edge.timeouts.rate_grace"),
])
def test_bad_safety_limits_name_file_line_key(table, line, key):
    text = BASE.replace("[pops.us]", f"[edge.{table}]\n{line}\n\n[pops.us]")
    with pytest.raises(ConfigError) as exc:
        parse(text, "us", "e.toml")
    assert str(exc.value).startswith(f"e.toml:7: {key}: "), str(exc.value)


# -- the HTTPS front's hooks (edge/front/http_front.py), with fakes for the sockets ------------------------------
import asyncio  # noqa: E402

from _front_fakes import REQ, Ctx, FakeBinding, FakeTransport, settle  # noqa: E402

from edge.front.http_front import HttpFront  # noqa: E402

CLIENT = ("192.0.2.7", 40000)


def front_with_tracker(binding, **over) -> tuple[HttpFront, FakeTransport, AbuseTracker]:
    ctx = Ctx(binding)
    ctx.abuse = AbuseTracker(dataclasses.replace(CFG, **over))
    ctx.max_header_count = 100
    conn = ctx.abuse.admit(CLIENT[0], asyncio.get_running_loop().time())
    front = HttpFront(ctx, "demo.app.lab.test", abuse=conn)
    client = FakeTransport(peer=CLIENT, tls=True)
    front.connection_made(client)
    return front, client, ctx.abuse


def test_front_counts_requests_and_a_keepalive_request_of_a_blocked_source_gets_429_with_retry_after():
    async def main():
        front, client, t = front_with_tracker(FakeBinding(), connections_burst=2,
                                              connections_per_second=0.0001)
        front.data_received(REQ)
        await settle()
        assert t.stats()["requests"] == 1 and b"HTTP/1.1 429" not in client.data
        now = asyncio.get_running_loop().time()
        while t.admit(CLIENT[0], now) is not None:   # the same source floods new connections
            pass
        front.data_received(REQ)                     # its old keep-alive connection asks again
        await settle()
        assert front.stream.closed                   # nothing more to the agent ...
        front.stream_eof()                           # ... and once its stream ends, the page
        page = client.data.split(b"HTTP/1.1 429", 1)[1]
        assert b"X-Gslb-Error-Code: ERR_GSLB_3430" in page
        retry = re.search(rb"\r\nRetry-After: (\d+)\r\n", page)
        assert retry and 1 <= int(retry.group(1)) <= 10           # the rest of the 10 s block
        assert t.stats()["answered"] == 1
    asyncio.run(main())


def test_front_edge_4xx_and_malformed_requests_count_as_errors_an_offline_endpoint_does_not():
    async def main():
        front, client, t = front_with_tracker(None)  # no agent: 404 ERR_GSLB_3200, not the client's fault
        front.data_received(REQ)
        assert client.data.startswith(b"HTTP/1.1 404") and t.stats()["errors"] == 0
        front1, client1, t1 = front_with_tracker(FakeBinding())   # Host is not the connection's SNI
        front1.data_received(b"GET / HTTP/1.1\r\nHost: other.app.lab.test\r\n\r\n")
        assert client1.data.startswith(b"HTTP/1.1 421") and t1.stats()["errors"] == 1
        front2, client2, t2 = front_with_tracker(FakeBinding())
        front2.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\nBad Header\r\n\r\n")
        assert client2.data.startswith(b"HTTP/1.1 400") and t2.stats()["errors"] == 1
        front3, client3, t3 = front_with_tracker(FakeBinding())
        front3.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\n" + b"X: y\r\n" * 101 + b"\r\n")
        assert client3.data.startswith(b"HTTP/1.1 431") and t3.stats()["errors"] == 1
    asyncio.run(main())


def test_front_closed_connection_reports_its_bytes_once():
    async def main():
        front, client, t = front_with_tracker(None)
        front.data_received(REQ)
        front.connection_lost(None)
        s = t.stats()
        assert s["bytes"] == len(REQ)              # from the client; the edge's own page is not the agent's bytes
        assert t.hosts["192.0.2.7/32"].open == 0
    asyncio.run(main())


def test_header_count_limit_is_configurable():
    from edge.front.http1 import HttpError, RequestRewriter

    rw = RequestRewriter("192.0.2.7", max_header_count=8)
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 7 + b"\r\n"
    assert rw.feed(head)                                   # 8 fields: at the limit
    rw = RequestRewriter("192.0.2.7", max_header_count=8)
    with pytest.raises(HttpError) as exc:
        rw.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 8 + b"\r\n")
    assert exc.value.status == 431


def test_an_exempt_hosts_connections_do_not_fill_its_networks_budget():
    t, logged = tracker(max_concurrent=2, net_factor=1, exempt=("198.19.5.53/32",))
    held = [t.admit("198.19.5.53", 0.0) for _ in range(50)]   # a checker holding many connections
    assert all(c is not None for c in held)
    assert t.admit("198.19.5.7", 0.0) is not None             # its neighbour is not over the /24 limit
    for c in held:
        t.closed(c, 0.0)
    assert t.nets["198.19.5.0/24"].open == 1 and logged == []
