"""DNS cookies: SipHash-2-4, RFC 9018 server cookies, and the engine's RFC 7873 5.2 behaviour.

Replies are decoded with dnslib (an independent decoder); time is injected.
"""
from __future__ import annotations

import dataclasses
import socket
import struct

import dnslib
import pytest

from dns import siphash
from dns.cookies import CLIENT_ONLY, INVALID, VALID, Cookies
from dns.engine import Engine
from dns.wire import A, SOA, TXT, ecs_option, make_query
from dns.config import CookieSettings

KEY = bytes(range(16))
# The SipHash paper's reference vectors (SipHash-2-4, key 00..0f, message 00..n-1, n = 0..63).
VECTORS = [
    0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a, 0x85676696d7fb7e2d,
    0xcf2794e0277187b7, 0x18765564cd99a68d, 0xcbc9466e58fee3ce, 0xab0200f58b01d137,
    0x93f5f5799a932462, 0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
    0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee, 0xa129ca6149be45e5,
    0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794, 0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd,
    0xbed65cf21aa2ee98, 0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
    0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3, 0x2f2e6163076bcfad,
    0xde4daaaca71dc9a5, 0xa6a2506687956571, 0xad87a3535c49ef28, 0x32d892fad841c342,
    0x7127512f72f27cce, 0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
    0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d, 0x9abfd8766a33735c,
    0x0e3ea96b5304a7d0, 0xad0c42d6fc585992, 0x187306c89bc215a9, 0xd4a60abcf3792b95,
    0xf935451de4f21df2, 0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
    0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72, 0xa192d576b245165a,
    0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f, 0x7fa8220ba3b2ecea, 0x245731c13ca42499,
    0xb78dbfaf3a8d83bd, 0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
    0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57, 0x958a324ceb064572,
]

# RFC 9018 appendix A
SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
OLD_SECRET = bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715")
NEW_SECRET = bytes.fromhex("445536bcd2513298075a5d379663c962")
T0 = 1559731985
CLIENT = bytes.fromhex("2464c4abcf10c957")


@pytest.mark.parametrize("impl", [siphash.siphash24_py, siphash.siphash24])
def test_siphash24_matches_the_64_reference_vectors(impl):
    assert [impl(KEY, bytes(range(n))) for n in range(64)] == VECTORS


def test_siphash_uses_the_c_implementation_when_installed():
    pytest.importorskip("siphashc")
    assert siphash.IMPLEMENTATION == "siphashc"


# -- RFC 9018 appendix A, byte for byte ------------------------------------------------------

def at(t: int, *secrets: bytes, require: bool = False) -> Cookies:
    return Cookies(secrets or (SECRET,), require=require, clock=lambda: t)


def test_a1_learning_a_new_server_cookie():
    verdict, reply = at(T0).verdict(CLIENT, "198.51.100.100")
    assert verdict == CLIENT_ONLY
    assert reply.hex() == "2464c4abcf10c957" "010000005cf79f111f8130c3eee29480"


def test_a2_a_cookie_older_than_half_an_hour_is_renewed():
    query = bytes.fromhex("2464c4abcf10c957010000005cf79f111f8130c3eee29480")
    verdict, reply = at(1559734385).verdict(query, "198.51.100.100")
    assert verdict == VALID
    assert reply.hex() == "2464c4abcf10c957" "010000005cf7a871d4a564a1442aca77"


def test_a3_reserved_octets_as_received_are_hashed_and_the_renewal_matches():
    query = bytes.fromhex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5")
    jar = at(1559734700)
    assert jar.signed_by(query, socket.inet_aton("203.0.113.203")) == 0
    assert jar.signed_by(query, socket.inet_aton("203.0.113.204")) is None  # another address
    _, reply = jar.verdict(query, "203.0.113.203")
    assert reply.hex() == "fc93fc62807ddb86" "010000005cf7a9acf73a7810aca2381e"


def test_a4_ipv6_client_after_a_secret_rollover_gets_a_cookie_of_the_new_secret():
    query = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    ip = "2001:db8:220:1:59de:d0f4:8769:82b8"
    assert at(1559741961, NEW_SECRET).verdict(query, ip)[0] == INVALID  # old secret no longer accepted
    verdict, reply = at(1559741961, NEW_SECRET, OLD_SECRET).verdict(query, ip)
    assert verdict == VALID
    assert reply.hex() == "22681ab97d52c298" "010000005cf7c609a6bb79d16625507a"


# -- the timestamp window (RFC 9018 4.3) ---------------------------------------------------

def cookie_at(t: int, client: bytes = CLIENT, ip: str = "192.0.2.1") -> bytes:
    return client + at(t).server_cookie(client, socket.inet_aton(ip), t)


@pytest.mark.parametrize("age,verdict,echoed", [
    (0, VALID, True), (1800, VALID, True), (1801, VALID, False), (3600, VALID, False),
    (3601, INVALID, False), (-300, VALID, True), (-301, INVALID, False)])
def test_timestamp_window_one_hour_back_five_minutes_ahead_renewed_after_half_an_hour(age, verdict, echoed):
    now = 2_000_000_000
    sent = cookie_at(now - age)
    got, reply = at(now).verdict(sent, "192.0.2.1")
    assert got == verdict
    assert (reply == sent) is echoed
    if not echoed:
        assert int.from_bytes(reply[12:16], "big") == now


def test_timestamp_uses_serial_arithmetic_across_the_wrap():
    sent = cookie_at(0xFFFFFF00)
    assert at(0x100).verdict(sent, "192.0.2.1")[0] == VALID   # 512 s later, across 2**32


def test_wrong_hash_version_or_length_is_invalid():
    good = cookie_at(T0)
    for bad in (good[:-1] + bytes([good[-1] ^ 1]), good[:8] + b"\x02" + good[9:],
                good[:8] + bytes(8), good + bytes(8)):
        assert at(T0).verdict(bad, "192.0.2.1")[0] == INVALID


def test_secrets_are_not_in_the_repr():
    assert SECRET.hex() not in repr(at(T0)) and "SECRET" not in repr(CookieSettings(secret=SECRET))
    assert SECRET.hex() not in repr(CookieSettings(secret=SECRET)) and str(SECRET) not in repr(
        CookieSettings(secret=SECRET))


def test_without_a_configured_secret_one_random_secret_serves_the_whole_process():
    a, b = Cookies(clock=lambda: T0), Cookies(clock=lambda: T0)
    assert a.secrets == b.secrets and len(a.secrets[0]) == 16
    sent = CLIENT + a.server_cookie(CLIENT, socket.inet_aton("192.0.2.1"), T0)
    assert b.verdict(sent, "192.0.2.1")[0] == VALID


# -- the engine ---------------------------------------------------------------------------------

def cookie_option(data: bytes) -> bytes:
    return struct.pack("!HH", 10, len(data)) + data


def engine_with(cfg, t: int = T0, **cookies) -> Engine:
    settings = CookieSettings(**{"secret": SECRET, **cookies})
    return Engine(dataclasses.replace(cfg, cookies=settings), clock=lambda: t)


class Reply:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.msg = dnslib.DNSRecord.parse(raw)
        opts = [rr for rr in self.msg.ar if rr.rtype == 41]
        self.opt = opts[0] if opts else None
        self.options = [] if self.opt is None else [(o.code, bytes(o.data)) for o in self.opt.rdata]

    @property
    def rcode(self) -> int:
        ext = 0 if self.opt is None else (self.opt.ttl >> 24)
        return (ext << 4) | self.msg.header.rcode

    def option(self, code: int) -> bytes | None:
        found = [d for c, d in self.options if c == code]
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def cookie(self) -> bytes | None:
        return self.option(10)


def ask(engine, name="demo.app.lab.test", qtype=A, *, source="192.0.2.1", tcp=False, **kw) -> Reply:
    out = engine.respond(make_query(name, qtype, **kw), source, tcp)
    assert out is not None
    return Reply(out)


@pytest.fixture
def cfg(example_config):
    return example_config


def test_client_cookie_only_gets_a_normal_answer_and_a_valid_server_cookie(cfg):
    e = engine_with(cfg)
    r = ask(e, options=cookie_option(CLIENT))
    assert r.rcode == 0 and len(r.msg.rr) == 2
    assert r.cookie[:8] == CLIENT and len(r.cookie) == 24
    assert e.cookies.signed_by(r.cookie, socket.inet_aton("192.0.2.1")) == 0
    assert int.from_bytes(r.cookie[12:16], "big") == T0


def test_a_returned_valid_cookie_is_echoed_and_validated(cfg):
    e = engine_with(cfg)
    first = ask(e, options=cookie_option(CLIENT)).cookie
    later = engine_with(cfg, T0 + 600)
    r = ask(later, options=cookie_option(first))
    assert r.rcode == 0 and r.cookie == first


def test_an_invalid_server_cookie_gets_an_answer_and_a_fresh_cookie_by_default(cfg):
    e = engine_with(cfg)
    r = ask(e, options=cookie_option(CLIENT + b"\x01\x00\x00\x00" + bytes(12)))
    assert r.rcode == 0 and len(r.msg.rr) == 2
    assert e.cookies.signed_by(r.cookie, socket.inet_aton("192.0.2.1")) == 0


@pytest.mark.parametrize("length", [0, 1, 7, 9, 15, 41, 60])
def test_malformed_cookie_length_is_formerr_with_an_opt_and_no_cookie(cfg, length):
    r = ask(engine_with(cfg), options=cookie_option(bytes(range(length))))
    assert r.rcode == 1 and r.opt is not None and r.cookie is None and not r.msg.rr


@pytest.mark.parametrize("length", [8, 16, 24, 40])
def test_well_formed_cookie_lengths_are_answered(cfg, length):
    r = ask(engine_with(cfg), options=cookie_option(bytes(range(1, length + 1))))
    assert r.rcode == 0 and r.cookie[:8] == bytes(range(1, 9))


def test_only_the_first_of_two_cookie_options_counts(cfg):
    e = engine_with(cfg)
    r = ask(e, options=cookie_option(CLIENT) + cookie_option(b"\xff" * 8))
    assert r.rcode == 0 and r.cookie[:8] == CLIENT and len(r.msg.rr) == 2
    assert e.cookies.signed_by(r.cookie, socket.inet_aton("192.0.2.1")) == 0
    r = ask(e, options=cookie_option(CLIENT) + cookie_option(b"bad"))  # a malformed second: ignored
    assert r.rcode == 0 and r.cookie[:8] == CLIENT


def test_require_gives_badcookie_over_udp_without_a_valid_server_cookie(cfg):
    e = engine_with(cfg, require=True)
    r = ask(e, options=cookie_option(CLIENT))
    assert r.rcode == 23 and r.msg.header.rcode == 7 and (r.opt.ttl >> 24) == 1
    assert not r.msg.rr and len(r.msg.questions) == 1
    assert e.cookies.signed_by(r.cookie, socket.inet_aton("192.0.2.1")) == 0
    # the client retries with the cookie it was given: answered
    again = ask(e, options=cookie_option(r.cookie))
    assert again.rcode == 0 and len(again.msg.rr) == 2 and again.cookie == r.cookie
    # a bad server cookie: BADCOOKIE again
    assert ask(e, options=cookie_option(r.cookie[:-1] + b"\x00")).rcode == 23


def test_require_answers_over_tcp_and_queries_without_a_cookie(cfg):
    e = engine_with(cfg, require=True)
    r = ask(e, options=cookie_option(CLIENT), tcp=True)
    assert r.rcode == 0 and len(r.msg.rr) == 2 and r.cookie[:8] == CLIENT
    assert ask(e, edns=True).rcode == 0 and ask(e).rcode == 0


def test_cookie_replies_reuse_the_cached_answer_and_share_the_rotation(cfg):
    e = engine_with(cfg)
    clients = [bytes([i]) * 8 for i in range(1, 7)]
    replies = [ask(e, options=cookie_option(c) + ecs_option("198.19.5.0/24"), source=f"192.0.2.{i}")
               for i, c in enumerate(clients, 1)]
    assert e.stats["misses"] == 1  # one slow answer; the others from the cache
    for i, (c, r) in enumerate(zip(clients, replies), 1):
        assert r.cookie[:8] == c
        assert e.cookies.signed_by(r.cookie, socket.inet_aton(f"192.0.2.{i}")) == 0
        assert r.options[-1] == (8, bytes([0, 1, 24, 0, 198, 19, 5]))  # the ECS echo stays last
    seen = {str(rr.rdata) for r in replies for rr in r.msg.rr}
    assert len(seen) == 4  # rotation continues across clients with different cookies


def test_cookie_is_echoed_on_negative_refused_notimp_and_chaos_answers(cfg):
    e = engine_with(cfg)
    opt = cookie_option(CLIENT)
    assert ask(e, "nope.lab.test", options=opt).cookie[:8] == CLIENT           # NXDOMAIN
    assert ask(e, "example.com", options=opt).cookie[:8] == CLIENT             # REFUSED
    assert ask(e, "version.bind", TXT, qclass=3, options=opt).cookie[:8] == CLIENT
    q = bytearray(make_query("lab.test", SOA, options=opt))
    q[2] |= 4 << 3  # NOTIFY
    r = Reply(e.respond(bytes(q), "192.0.2.1"))
    assert r.rcode == 4 and r.cookie[:8] == CLIENT


def test_badvers_carries_no_cookie(cfg):
    r = ask(engine_with(cfg), options=cookie_option(CLIENT), version=1)
    assert r.rcode == 16 and r.cookie is None


def test_truncated_answer_still_fits_with_the_cookie(cfg):
    big = dataclasses.replace(cfg, records=cfg.records + (
        dataclasses.replace(cfg.records[0], name="big.lab.test.", type="TXT", value="x" * 440, ttl=300),))
    e = engine_with(big)
    q = make_query("big.lab.test", TXT, payload=512, options=cookie_option(CLIENT))
    out = e.respond(q, "192.0.2.1")
    r = Reply(out)
    assert len(out) <= 512 and r.msg.header.tc and r.cookie[:8] == CLIENT
    assert not Reply(engine_with(big).respond(make_query("big.lab.test", TXT, payload=512, edns=True),
                                              "192.0.2.1")).msg.header.tc  # fits without a cookie


def test_rollover_a_cookie_of_the_previous_secret_is_valid_and_renewed(cfg):
    old = engine_with(cfg, secret=OLD_SECRET)
    given = ask(old, options=cookie_option(CLIENT)).cookie
    new = engine_with(cfg, T0 + 60, secret=NEW_SECRET, secrets_accepted=(OLD_SECRET,), require=True)
    r = ask(new, options=cookie_option(given))
    assert r.rcode == 0 and r.cookie != given
    assert new.cookies.signed_by(r.cookie, socket.inet_aton("192.0.2.1")) == 0  # the new secret


def test_cookies_disabled_answer_without_a_cookie(cfg):
    r = ask(engine_with(cfg, enabled=False), options=cookie_option(CLIENT))
    assert r.rcode == 0 and r.cookie is None and len(r.msg.rr) == 2


def test_a_cookie_from_another_address_is_not_valid(cfg):
    e = engine_with(cfg, require=True)
    given = ask(e, options=cookie_option(CLIENT), source="192.0.2.1", tcp=True).cookie
    assert ask(e, options=cookie_option(given), source="192.0.2.1").rcode == 0
    assert ask(e, options=cookie_option(given), source="192.0.2.99").rcode == 23
    v6 = ask(e, options=cookie_option(CLIENT), source="2001:db8::1", tcp=True).cookie
    assert ask(e, options=cookie_option(v6), source="2001:db8::1").rcode == 0


def test_repeated_queries_reuse_the_verdict_but_a_cookie_is_renewed_after_half_an_hour(cfg):
    clock = [T0]
    e = Engine(dataclasses.replace(cfg, cookies=CookieSettings(secret=SECRET)), clock=lambda: clock[0])
    first = ask(e, options=cookie_option(CLIENT)).cookie
    clock[0] += 30
    assert ask(e, options=cookie_option(CLIENT)).cookie == first   # the same bytes: reused
    clock[0] += 31
    fresh = ask(e, options=cookie_option(CLIENT)).cookie             # past the reuse window
    assert int.from_bytes(fresh[12:16], "big") == clock[0]
    assert ask(e, options=cookie_option(fresh)).cookie == fresh     # valid: echoed
    clock[0] += 1800
    assert ask(e, options=cookie_option(fresh)).cookie == fresh     # 30 minutes old: still echoed
    clock[0] += 1
    renewed = ask(e, options=cookie_option(fresh)).cookie           # older: renewed
    assert renewed != fresh and int.from_bytes(renewed[12:16], "big") == clock[0]
    clock[0] += 3600
    e2 = ask(e, options=cookie_option(fresh))                        # expired: a fresh cookie
    assert e2.rcode == 0 and int.from_bytes(e2.cookie[12:16], "big") == clock[0]


def test_verdicts_are_per_address_even_for_the_same_bytes(cfg):
    e = engine_with(cfg, require=True)
    given = ask(e, options=cookie_option(CLIENT), source="192.0.2.1", tcp=True).cookie
    for _ in range(2):
        assert ask(e, options=cookie_option(given), source="192.0.2.1").rcode == 0
        assert ask(e, options=cookie_option(given), source="192.0.2.2").rcode == 23


def test_a_source_that_is_no_address_still_gets_an_answer_with_a_cookie(cfg):
    r = ask(engine_with(cfg), options=cookie_option(CLIENT), source="", tcp=True)
    assert r.rcode == 0 and r.cookie[:8] == CLIENT


@pytest.mark.parametrize("subnet", ["::/128", "a:18::/128", "0:a:18::/128", "198.19.5.0/24"])
def test_the_cookie_goes_in_the_right_place_whatever_the_ecs_echo_holds(cfg, subnet):
    # ECS addresses made of the placeholder's own bytes (00 0a 00 18, zeros) must not fool the splice
    e = engine_with(cfg)
    r = ask(e, options=cookie_option(CLIENT) + ecs_option(subnet))
    assert r.rcode == 0 and r.cookie[:8] == CLIENT
    assert e.cookies.signed_by(r.cookie, socket.inet_aton("192.0.2.1")) == 0
    assert r.options[-1][0] == 8 and r.options[-1][1][4:] == ecs_option(subnet)[8:]
