"""dns.rrl: response rate limiting, fed (source, class, name, now) and reply bytes; no sockets, no clock.

Replies come from the real engine (examples/dns.toml) and are decoded with dnslib.
"""
from __future__ import annotations

import dataclasses
import struct

import dnslib
import pytest

from dns.config import ConfigError, CookieSettings, RrlSettings, load_dns_config
from dns.engine import Engine
from dns.rrl import (ANSWER, DROP, ERROR, NODATA, NXDOMAIN, REFERRAL, SEND, SLIP, ResponseRateLimiter,
                     classify, slip_reply)
from dns.wire import A, AAAA, AXFR, SOA, ecs_option, make_query, name_from_text

NAME = name_from_text("demo.app.lab.test.") + b"\x00\x01"
ZONE = name_from_text("lab.test.")
SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
CLIENT_COOKIE = bytes.fromhex("2464c4abcf10c957")


def limiter(rate: float = 5, *, window: float = 15, slip: int = 2, log: list | None = None,
            **kw) -> ResponseRateLimiter:
    lines = log if log is not None else []
    return ResponseRateLimiter({ANSWER: rate, NODATA: rate, REFERRAL: rate, NXDOMAIN: rate,
                                ERROR: rate}, window=window, slip=slip, zone=ZONE,
                               log=lambda event, **f: lines.append((event, f)), **kw)


def run(rrl: ResponseRateLimiter, n: int, now: float, source: str = "198.19.1.10",
        rclass: str = ANSWER, name: bytes = NAME) -> list[str]:
    return [rrl.decide(source, rclass, name, now) for _ in range(n)]


# -- the token bucket ---------------------------------------------------------------------------

def test_exactly_the_rate_is_answered_and_the_next_one_is_limited():
    rrl = limiter(5)
    assert run(rrl, 5, 100.0) == [SEND] * 5
    assert rrl.decide("198.19.1.10", ANSWER, NAME, 100.0) != SEND


def test_a_steady_stream_at_exactly_the_rate_is_never_limited():
    rrl = limiter(5)
    verdicts = [rrl.decide("198.19.1.10", ANSWER, NAME, 100.0 + i / 5) for i in range(200)]
    assert verdicts == [SEND] * 200
    assert rrl.stats()["limited"] == 0


def test_tokens_refill_at_the_rate_but_never_beyond_one_second_of_burst():
    rrl = limiter(5)
    run(rrl, 5, 100.0)
    assert run(rrl, 1, 100.2) == [SEND]          # 0.2 s earned one token
    assert run(rrl, 1, 100.2) != [SEND]
    rrl2 = limiter(5)
    run(rrl2, 1, 100.0)
    # 10 s idle (< window) earns 50 tokens, but the bucket holds at most `rate`.
    assert run(rrl2, 6, 110.0) == [SEND] * 5 + [SLIP]


def test_debt_accumulates_down_to_minus_window_times_rate():
    # BIND: a bucket may go down to -window * rate, so a source that keeps flooding
    # stays limited; after the flood it takes up to `window` seconds to recover.
    rrl = limiter(5, window=4)
    run(rrl, 1000, 100.0)                            # 5 answered, then debt
    key = next(iter(rrl._table))
    assert rrl._table[key][0] == -4 * 5              # floored, not -995
    # 3.9 s later: -20 + 19.5 = -0.5, minus one: still limited.
    assert run(rrl, 1, 103.9) != [SEND]
    # Now -1.5 (floored at -20, no); 4.1 s of silence from there: -1.5 + 20.5 -> capped at 5.
    assert run(rrl, 5, 108.0) == [SEND] * 5


def test_a_bucket_untouched_longer_than_the_window_starts_full():
    rrl = limiter(5, window=2)
    run(rrl, 50, 100.0)
    assert run(rrl, 5, 102.5) == [SEND] * 5


def test_a_flood_just_above_the_rate_gets_no_full_answers_once_in_debt():
    rrl = limiter(5, window=15)
    # 6 queries a second for 60 s: each earns 5/6 of a token and costs 1, so the
    # burst of 5 lasts 30 queries (5 s); then the debt only grows, to its floor.
    verdicts = [rrl.decide("198.19.1.10", ANSWER, NAME, 100.0 + i / 6) for i in range(360)]
    sent = [i for i, v in enumerate(verdicts) if v == SEND]
    assert 25 <= len(sent) <= 30 and max(sent) < 31


# -- slip ------------------------------------------------------------------------------------------

def test_slip_two_sends_every_second_limited_reply_truncated():
    rrl = limiter(1, slip=2)
    assert run(rrl, 9, 100.0) == [SEND, SLIP, DROP, SLIP, DROP, SLIP, DROP, SLIP, DROP]


def test_slip_one_slips_every_limited_reply():
    rrl = limiter(1, slip=1)
    assert run(rrl, 6, 100.0) == [SEND] + [SLIP] * 5


def test_slip_zero_never_slips():
    rrl = limiter(1, slip=0)
    assert run(rrl, 6, 100.0) == [SEND] + [DROP] * 5
    assert rrl.stats()["slipped"] == 0 and rrl.stats()["dropped"] == 5


def test_slip_three_slips_the_first_of_every_three():
    rrl = limiter(1, slip=3)
    assert run(rrl, 7, 100.0) == [SEND, SLIP, DROP, DROP, SLIP, DROP, DROP]


def test_counters_add_up():
    rrl = limiter(2, slip=2)
    run(rrl, 12, 100.0)
    s = rrl.stats()
    assert s["answered"] == 2 and s["limited"] == 10
    assert s["slipped"] == 5 and s["dropped"] == 5 and s["table_size"] == 1
    assert s["limited_buckets"] == 1


# -- classes and keys ----------------------------------------------------------------------------

def test_answers_are_limited_per_qname_and_qtype():
    rrl = limiter(2)
    run(rrl, 10, 100.0)
    other_name = name_from_text("x.app.lab.test.") + b"\x00\x01"
    other_type = name_from_text("demo.app.lab.test.") + b"\x00\x1c"
    assert run(rrl, 2, 100.0, name=other_name) == [SEND, SEND]
    assert run(rrl, 2, 100.0, name=other_type) == [SEND, SEND]


def test_classes_have_buckets_of_their_own():
    rrl = limiter(2)
    run(rrl, 10, 100.0, rclass=ANSWER)
    assert run(rrl, 2, 100.0, rclass=NODATA) == [SEND, SEND]
    assert run(rrl, 2, 100.0, rclass=NXDOMAIN, name=ZONE) == [SEND, SEND]
    assert run(rrl, 2, 100.0, rclass=ERROR, name=ZONE) == [SEND, SEND]


def test_a_class_with_rate_zero_is_not_limited():
    rrl = ResponseRateLimiter({ANSWER: 1, ERROR: 0}, zone=ZONE, log=lambda *a, **k: None)
    assert run(rrl, 50, 100.0, rclass=ERROR, name=ZONE) == [SEND] * 50


def test_ipv4_sources_of_one_slash_24_share_a_bucket():
    rrl = limiter(4)
    got = [rrl.decide(f"198.19.1.{i}", ANSWER, NAME, 100.0) for i in range(1, 9)]
    assert got.count(SEND) == 4
    assert run(rrl, 4, 100.0, source="198.19.2.1") == [SEND] * 4   # the next /24: its own


def test_ipv6_sources_of_one_slash_56_share_a_bucket_and_mapped_ipv4_is_ipv4():
    rrl = limiter(3)
    inside = ["fd7a:5e1b:c00:100::1", "fd7a:5e1b:c00:1ff::2", "fd7a:5e1b:c00:1aa:1:2:3:4"]
    assert [rrl.decide(s, ANSWER, NAME, 100.0) for s in inside] == [SEND] * 3
    assert rrl.decide("fd7a:5e1b:c00:1ff::9", ANSWER, NAME, 100.0) != SEND
    assert rrl.decide("fd7a:5e1b:c00:200::1", ANSWER, NAME, 100.0) == SEND   # another /56
    assert rrl.netblock("::ffff:198.19.1.7") == rrl.netblock("198.19.1.200")


def test_prefix_lengths_are_configurable():
    rrl = limiter(1, ipv4_prefix=32, ipv6_prefix=64)
    assert rrl.decide("198.19.1.1", ANSWER, NAME, 100.0) == SEND
    assert rrl.decide("198.19.1.2", ANSWER, NAME, 100.0) == SEND
    assert rrl.decide("fd7a::1", ANSWER, NAME, 100.0) == SEND
    assert rrl.decide("fd7a:0:0:1::1", ANSWER, NAME, 100.0) == SEND
    assert rrl.decide("fd7a::2", ANSWER, NAME, 100.0) != SEND


# -- the bounded table -----------------------------------------------------------------------------

def test_a_flood_of_100k_spoofed_sources_keeps_the_table_bounded_and_the_flooder_limited():
    rrl = limiter(5, table_size=1000)
    flooder = []
    for i in range(100_000):
        src = f"{10 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}.1"
        assert rrl.decide(src, ANSWER, NAME, 100.0 + i * 1e-5) == SEND   # one query each
        if i % 10 == 0:   # the real flooder, between them: always the most recent, never evicted
            flooder.append(rrl.decide("198.19.1.10", ANSWER, NAME, 100.0 + i * 1e-5))
        assert len(rrl._table) <= 1000
    s = rrl.stats()
    assert s["table_size"] == 1000 and s["evicted"] >= 99_000
    # 1 s of flood at 10 000 q/s: the burst of 5 plus 5 earned in that second, at most.
    assert flooder.count(SEND) <= 10


def test_an_evicted_limited_bucket_says_it_stopped():
    log: list = []
    rrl = limiter(1, table_size=100, log=log)
    run(rrl, 3, 100.0)
    for i in range(100):
        rrl.decide(f"10.0.{i}.1", ANSWER, NAME, 100.0)
    assert [e for e, _ in log] == ["rrl_limit_start", "rrl_limit_stop"]
    assert log[1][1]["reason"] == "evicted from a full table"


# -- exemptions ------------------------------------------------------------------------------------

def test_an_exempt_reply_is_answered_and_counted():
    rrl = limiter(1)
    run(rrl, 1, 100.0)
    asked = []

    def exempt() -> bool:
        asked.append(1)
        return True
    assert [rrl.decide("198.19.1.10", ANSWER, NAME, 100.0, exempt) for _ in range(4)] == [SEND] * 4
    assert rrl.stats()["exempted"] == 4 and rrl.stats()["limited"] == 0


def test_the_exemption_is_asked_only_for_a_reply_that_would_be_limited():
    rrl = limiter(3)
    asked = []
    for _ in range(3):
        rrl.decide("198.19.1.10", ANSWER, NAME, 100.0, lambda: asked.append(1) or False)
    assert asked == []
    assert rrl.decide("198.19.1.10", ANSWER, NAME, 100.0, lambda: asked.append(1) or False) != SEND
    assert asked == [1]


def test_exempt_cidrs_are_never_limited():
    rrl = limiter(1, exempt=["198.19.1.0/28", "fd7a::/48"])
    assert run(rrl, 5, 100.0, source="198.19.1.3") == [SEND] * 5
    assert run(rrl, 5, 100.0, source="fd7a::5") == [SEND] * 5
    assert run(rrl, 2, 100.0, source="198.19.1.100") == [SLIP, DROP]   # same /24, outside the /28


# -- logging ---------------------------------------------------------------------------------------

def test_one_line_when_limiting_starts_and_one_when_it_stops():
    log: list = []
    rrl = limiter(5, window=5, log=log)
    for i in range(2000):
        rrl.decide("198.19.1.10", ANSWER, NAME, 100.0 + i / 1000)   # 1000 q/s for 2 s
    assert [e for e, _ in log] == ["rrl_limit_start"]
    start = log[0][1]
    assert start["netblock"] == "198.19.1.0/24" and start["class"] == "answer"
    assert start["qname"] == "demo.app.lab.test." and start["qtype"] == "A"
    rrl.sweep(103.0)          # still in debt (floor -25, 1 s earns 5)
    assert len(log) == 1
    rrl.sweep(110.0)          # longer than the window since its last query
    assert [e for e, _ in log] == ["rrl_limit_start", "rrl_limit_stop"]
    stop = log[1][1]
    assert stop["limited"] == 1995 and stop["slipped"] + stop["dropped"] == 1995
    assert rrl.stats()["limited_buckets"] == 0


def test_limited_lists_the_sources_netblock_buckets():
    rrl = limiter(1)
    run(rrl, 3, 100.0)
    run(rrl, 3, 100.0, source="198.19.7.1", rclass=NXDOMAIN, name=ZONE)
    rows = rrl.limited(100.0, "198.19.1.99")
    assert [(r["netblock"], r["class"], r["limited"]) for r in rows] == [("198.19.1.0/24", "answer", 2)]
    assert len(rrl.limited(100.0)) == 2
    assert rrl.limited(100.0, "198.19.9.1") == []


# -- per worker ------------------------------------------------------------------------------------

def test_from_settings_splits_the_rate_over_the_workers():
    s = RrlSettings(enabled=True, responses_per_second=10, errors_per_second=4, nxdomains_per_second=0)
    rrl = ResponseRateLimiter.from_settings(s, workers=2, zone=ZONE, log=lambda *a, **k: None)
    assert rrl.rates[ANSWER] == 5 and rrl.rates[NODATA] == 5 and rrl.rates[ERROR] == 2
    assert rrl.rates[NXDOMAIN] == 0
    with pytest.raises(ValueError, match="below the number of workers"):
        ResponseRateLimiter.from_settings(dataclasses.replace(s, responses_per_second=3), workers=4)


# -- classifying and slipping real replies -----------------------------------------------------

@pytest.fixture
def engine(example_config):
    cfg = dataclasses.replace(example_config, cookies=CookieSettings(secret=SECRET))
    return Engine(cfg)


def test_classify_our_replies_as_bind_does(engine):
    def cls(name, qtype=A, **kw):
        return classify(engine.respond(make_query(name, qtype, **kw), "198.19.1.10"), ZONE)
    assert cls("demo.app.lab.test") == (ANSWER, name_from_text("demo.app.lab.test.") + b"\x00\x01")
    assert cls("DEMO.app.LAB.test")[1] == cls("demo.app.lab.test")[1]      # case does not matter
    assert cls("app.lab.test") == (NODATA, name_from_text("app.lab.test.") + b"\x00\x01")
    assert cls("nope.lab.test") == (NXDOMAIN, ZONE)
    assert cls("other.nope.lab.test") == (NXDOMAIN, ZONE)                   # one bucket per zone
    assert cls("example.com") == (ERROR, ZONE)                              # REFUSED
    assert cls("lab.test", AXFR) == (ERROR, ZONE)
    assert cls("lab.test", A, edns=True, version=1)[0] == ERROR                        # BADVERS
    # A hand-made referral: NOERROR, no answer, not authoritative, an NS in authority.
    ref = dnslib.DNSRecord(dnslib.DNSHeader(qr=1, aa=0), q=dnslib.DNSQuestion("sub.lab.test"))
    ref.add_auth(dnslib.RR("sub.lab.test", dnslib.QTYPE.NS, rdata=dnslib.NS("ns.sub.lab.test"), ttl=60))
    assert classify(ref.pack(), ZONE) == (REFERRAL, name_from_text("sub.lab.test."))


def test_slip_keeps_header_question_and_opt_and_sets_tc(engine):
    query = make_query("demo.app.lab.test", A, qid=0xBEEF, rd=True,
                       options=ecs_option("198.19.5.0/24"))
    reply = engine.respond(query, "198.19.1.10")
    full = dnslib.DNSRecord.parse(reply)
    assert full.rr and not full.header.tc
    slipped = slip_reply(reply)
    msg = dnslib.DNSRecord.parse(slipped)
    assert msg.header.id == 0xBEEF and msg.header.tc == 1 and msg.header.rd == 1
    assert msg.header.aa == full.header.aa and msg.header.rcode == 0
    assert [str(q.qname) for q in msg.questions] == ["demo.app.lab.test."]
    assert msg.rr == [] and msg.auth == []
    opts = [rr for rr in msg.ar if rr.rtype == 41]
    assert len(msg.ar) == 1 and len(opts) == 1
    full_opt = [rr for rr in full.ar if rr.rtype == 41][0]
    assert (opts[0].ttl, opts[0].rclass) == (full_opt.ttl, full_opt.rclass)
    assert [(o.code, bytes(o.data)) for o in opts[0].rdata] == [(o.code, bytes(o.data)) for o in full_opt.rdata]
    qsize = len(name_from_text("demo.app.lab.test.")) + 4
    assert reply.endswith(slipped[12 + qsize:])      # the OPT record, byte for byte
    assert struct.unpack("!HHHH", slipped[4:12]) == (1, 0, 0, 1)


def test_slip_of_a_reply_without_edns_has_no_additional_record(engine):
    reply = engine.respond(make_query("nope.lab.test", A), "198.19.1.10")
    msg = dnslib.DNSRecord.parse(slip_reply(reply))
    assert msg.header.tc == 1 and msg.header.rcode == 3 and msg.rr == msg.auth == msg.ar == []
    assert len(msg.questions) == 1


def cookie_query(cookie: bytes) -> bytes:
    return make_query("demo.app.lab.test", A, options=struct.pack("!HH", 10, len(cookie)) + cookie)


def test_a_valid_server_cookie_exempts_and_a_client_cookie_alone_slips_as_badcookie(engine):
    rrl = limiter(1, slip=1, cookies=engine.cookies)
    src = "198.19.1.10"
    first = engine.respond(cookie_query(CLIENT_COOKIE), src)
    assert rrl.filter(cookie_query(CLIENT_COOKIE), first, src, 100.0) == first      # the burst
    # Limited now. Client cookie only: BADCOOKIE with the fresh server cookie, no TC.
    out = rrl.filter(cookie_query(CLIENT_COOKIE), first, src, 100.0)
    msg = dnslib.DNSRecord.parse(out)
    opt = [rr for rr in msg.ar if rr.rtype == 41][0]
    assert ((opt.ttl >> 24) << 4 | msg.header.rcode) == 23 and not msg.header.tc
    assert not msg.header.aa and msg.rr == []
    server_cookie = bytes(opt.rdata[0].data)
    assert server_cookie[:8] == CLIENT_COOKIE and len(server_cookie) == 24
    # The client comes back with that cookie: valid, so exempt, the full answer.
    again = cookie_query(server_cookie)
    reply = engine.respond(again, src)
    assert rrl.filter(again, reply, src, 100.0) == reply
    # The same cookie from another address is not valid there: limited (TC, no: BADCOOKIE).
    other = "198.19.1.11"
    out = rrl.filter(again, engine.respond(again, other), other, 100.0)
    assert dnslib.DNSRecord.parse(out).header.rcode == 23 & 0xF
    # No cookie at all: TC=1.
    plain = make_query("demo.app.lab.test", A)
    out = rrl.filter(plain, engine.respond(plain, src), src, 100.0)
    assert dnslib.DNSRecord.parse(out).header.tc == 1
    s = rrl.stats()
    assert s["exempted"] == 1 and s["slipped"] == 3


def test_with_cookies_off_a_cookie_query_slips_with_tc(example_config):
    e = Engine(dataclasses.replace(example_config, cookies=CookieSettings(enabled=False)))
    rrl = limiter(1, slip=1, cookies=e.cookies)
    q = cookie_query(CLIENT_COOKIE)
    reply = e.respond(q, "198.19.1.10")
    rrl.filter(q, reply, "198.19.1.10", 100.0)
    out = rrl.filter(q, reply, "198.19.1.10", 100.0)
    assert dnslib.DNSRecord.parse(out).header.tc == 1


def test_filter_drops_by_returning_none(engine):
    rrl = limiter(1, slip=0)
    q = make_query("demo.app.lab.test", AAAA)
    reply = engine.respond(q, "198.19.1.10")
    assert rrl.filter(q, reply, "198.19.1.10", 100.0) == reply
    assert rrl.filter(q, reply, "198.19.1.10", 100.0) is None


# -- configuration -----------------------------------------------------------------------------

def write_config(tmp_path, example_config_dir, rrl: str) -> str:
    import pathlib
    text = (pathlib.Path(example_config_dir) / "dns.toml").read_text() + "\n[rrl]\n" + rrl
    p = tmp_path / "dns.toml"
    p.write_text(text)
    import shutil
    shutil.copy(pathlib.Path(example_config_dir) / "lab.mmdb", tmp_path / "lab.mmdb")
    return str(p)


def test_rrl_is_off_by_default(example_config):
    assert example_config.rrl == RrlSettings() and not example_config.rrl.enabled


def test_rrl_settings_load(tmp_path, example_config_dir):
    cfg = load_dns_config(write_config(tmp_path, example_config_dir, (
        "enabled = true\nresponses_per_second = 50\nerrors_per_second = 0\nwindow = 5\nslip = 1\n"
        "ipv4_prefix_length = 32\nipv6_prefix_length = 64\ntable_size = 1000\n"
        'exempt = ["10.0.0.0/8", "fd00::/8"]\n')))
    assert cfg.rrl == RrlSettings(True, 50, 0, None, 5, 1, 32, 64, 1000, ("10.0.0.0/8", "fd00::/8"))


@pytest.mark.parametrize("text, key, words", [
    ("slip = 11", "rrl.slip", "<= 10"),
    ("window = 0", "rrl.window", ">= 1"),
    ("responses_per_second = 0", "rrl.responses_per_second", ">= 1"),
    ("ipv6_prefix_length = 130", "rrl.ipv6_prefix_length", "<= 128"),
    ("table_size = 5", "rrl.table_size", ">= 100"),
    ('exempt = ["10.0.0.1/8"]', "rrl.exempt", "host bits"),
    ("enabled = 1", "rrl.enabled", "true or false"),
    ("rate = 5", "rrl.rate", "unknown"),
])
def test_bad_rrl_values_name_file_line_and_key(tmp_path, example_config_dir, text, key, words):
    path = write_config(tmp_path, example_config_dir, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_dns_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and f": {key}: " in msg and words in msg, msg


# -- explain -------------------------------------------------------------------------------------

def test_explain_says_whether_the_clients_netblock_is_limited():
    from dns.explain import rrl_status
    on = RrlSettings(enabled=True, responses_per_second=10)
    assert rrl_status(RrlSettings(), "198.19.1.10", None) == {"enabled": False}
    rows = {"11": [{"netblock": "198.19.1.0/24", "class": "answer", "qname": "demo.app.lab.test.",
                    "qtype": "A", "limited": 7}],
            "12": [{"netblock": "198.19.2.0/24", "class": "nxdomain", "qname": "lab.test.", "limited": 3}]}
    r = rrl_status(on, "198.19.1.200", rows)
    assert r["netblock"] == "198.19.1.0/24" and r["workers"] == 2 and r["per_worker_rate"] == 5
    assert [(b["worker"], b["class"]) for b in r["limited"]] == [("11", "answer")]
    assert rrl_status(on, "198.19.3.1", rows)["limited"] == []
    assert rrl_status(on, "198.19.3.1", None)["limited"] is None          # the server not asked
    assert rrl_status(on, "fd7a:5e1b:c00:1ff::1", {})["netblock"] == "fd7a:5e1b:c00:100::/56"
    assert rrl_status(on, "::ffff:198.19.1.1", {})["netblock"] == "198.19.1.0/24"


def test_the_parent_keeps_each_workers_last_rrl_report_and_ignores_garbage():
    import os
    from dns.monitor import PipePublisher
    r, w = os.pipe()
    ack_r, ack_w = os.pipe()
    try:
        pub = PipePublisher([(101, w)], ack_r)
        os.write(ack_w, b'101 3\nrrl 101 [{"netblock":"198.19.1.0/24","limited":4}]\n'
                        b'rrl 999 []\nrrl x y\nrrl 101 not-json\n')
        pub._on_ack()
        assert pub.acked[101] == 3
        assert pub.rrl_reports() == {"101": [{"netblock": "198.19.1.0/24", "limited": 4}]}
    finally:
        for fd in (r, w, ack_r, ack_w):
            os.close(fd)


def test_repeated_slips_carry_each_querys_own_id(engine):
    rrl = limiter(1, slip=1)
    slipped = []
    for qid in (1, 2, 0xABCD, 7):
        q = make_query("demo.app.lab.test", A, qid=qid, edns=True)
        out = rrl.filter(q, engine.respond(q, "198.19.1.10"), "198.19.1.10", 100.0)
        slipped.append(out)
    for qid, out in zip((2, 0xABCD, 7), slipped[1:]):
        msg = dnslib.DNSRecord.parse(out)
        assert msg.header.id == qid and msg.header.tc == 1 and msg.rr == []
    assert slipped[2][2:] == slipped[3][2:]


# -- the server's hook ---------------------------------------------------------------------------

def test_the_server_builds_rrl_from_the_config_splits_it_over_workers_and_keeps_it_on_reload(example_config):
    from dns.server import DnsServer
    on = dataclasses.replace(example_config, rrl=RrlSettings(enabled=True, responses_per_second=30))
    off = Engine(example_config)
    assert DnsServer(off, ()).rrl is None                       # off by default: nothing on the path
    engine = Engine(on)
    srv = DnsServer(engine, (), workers=3)
    assert srv.rrl.rates[ANSWER] == 10 and srv.rrl.cookies is engine.cookies
    table = srv.rrl
    srv._reload = lambda: Engine(on)
    assert srv.reload() and srv.rrl is table and srv.rrl.cookies is srv.engine.cookies   # buckets kept
    srv._reload = lambda: Engine(dataclasses.replace(on, rrl=RrlSettings(enabled=True, responses_per_second=60)))
    assert srv.reload() and srv.rrl is not table and srv.rrl.rates[ANSWER] == 20
    srv._reload = lambda: Engine(dataclasses.replace(on, rrl=RrlSettings(enabled=True, responses_per_second=2)))
    kept = srv.rrl
    assert not srv.reload() and srv.rrl is kept                 # 2/s over 3 workers: refused, old kept
    srv._reload = lambda: Engine(example_config)
    assert srv.reload() and srv.rrl is None
