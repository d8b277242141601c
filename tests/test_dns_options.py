"""NSID (RFC 5001), edns-tcp-keepalive (RFC 7828), CHAOS identification, and an OPT on every
error answer to an EDNS query (RFC 6891 7): whole answers as bytes, decoded with dnslib."""
from __future__ import annotations

import dataclasses
import os
import struct

import pytest
from hypothesis import given, strategies as st

from dns import options as eo
from dns.engine import Engine
from dns.wire import A, AAAA, SOA, TXT, make_query
from dns.config import ChaosSettings, ConfigError, load_dns_config
from tests.test_dns_cookies import CLIENT, Reply, cookie_option

NSID_EMPTY = struct.pack("!HH", 3, 0)
KEEPALIVE_EMPTY = struct.pack("!HH", 11, 0)
CD, RD = 0x0010, 0x0100


def engine(cfg, *, nsid=None, chaos=None, idle=None, **kw) -> Engine:
    server = dataclasses.replace(cfg.server, nsid=nsid,
                                 **({} if idle is None else {"tcp_idle_timeout": idle}))
    return Engine(dataclasses.replace(cfg, server=server, chaos=chaos or ChaosSettings()), **kw)


def ask(e, name="lab.test", qtype=SOA, *, tcp=False, source="192.0.2.1", flags=0, **kw) -> Reply:
    q = bytearray(make_query(name, qtype, **kw))
    q[2] |= flags >> 8
    q[3] |= flags & 0xFF
    out = e.respond(bytes(q), source, tcp)
    assert out is not None
    return Reply(out)


# -- NSID --------------------------------------------------------------------------------------

def test_nsid_is_returned_only_to_a_query_with_an_empty_nsid_option(example_config):
    e = engine(example_config, nsid=b"ns1-eu")
    assert ask(e, options=NSID_EMPTY).option(3) == b"ns1-eu"
    assert ask(e, edns=True).option(3) is None
    assert ask(e, options=struct.pack("!HH", 3, 2) + b"hi").option(3) is None  # not a request
    assert ask(e, "nope.lab.test", options=NSID_EMPTY).option(3) == b"ns1-eu"   # NXDOMAIN too


def test_nsid_is_off_unless_configured(example_config):
    assert ask(engine(example_config), options=NSID_EMPTY).option(3) is None


def test_nsid_and_cookie_together(example_config):
    e = engine(example_config, nsid=b"\x01\x02")
    r = ask(e, options=NSID_EMPTY + cookie_option(CLIENT))
    assert r.option(3) == b"\x01\x02" and r.cookie[:8] == CLIENT


# -- TCP keepalive -------------------------------------------------------------------------------

def test_keepalive_is_sent_over_tcp_in_units_of_100_ms_when_asked(example_config):
    e = engine(example_config, idle=7.5)
    assert ask(e, options=KEEPALIVE_EMPTY, tcp=True).option(11) == struct.pack("!H", 75)
    assert ask(e, edns=True, tcp=True).option(11) is None


def test_keepalive_is_never_sent_over_udp_and_the_query_option_is_ignored_there(example_config):
    e = engine(example_config)
    r = ask(e, options=KEEPALIVE_EMPTY)
    assert r.rcode == 0 and r.option(11) is None
    r = ask(e, options=struct.pack("!HHH", 11, 2, 50))  # malformed for a query, but UDP: ignored
    assert r.rcode == 0 and r.option(11) is None


def test_keepalive_with_a_timeout_in_a_tcp_query_is_formerr(example_config):
    r = ask(engine(example_config), options=struct.pack("!HHH", 11, 2, 50), tcp=True)
    assert r.rcode == 1 and r.opt is not None and r.option(11) is None


def test_keepalive_with_cookie_over_tcp(example_config):
    r = ask(engine(example_config), options=KEEPALIVE_EMPTY + cookie_option(CLIENT), tcp=True)
    assert r.option(11) == struct.pack("!H", 100) and r.cookie[:8] == CLIENT


# -- an OPT for every rcode; RD/CD only for QUERY ---------------------------------------------

def opcode(n: int) -> int:
    return n << 11


def test_notimp_to_an_edns_query_carries_an_opt_and_no_rd_or_cd(example_config):
    r = ask(engine(example_config), edns=True, do=True, flags=opcode(4) | RD | CD)  # NOTIFY
    assert r.rcode == 4 and r.opt is not None and r.opt.edns_do
    assert not r.msg.header.rd and not r.msg.header.cd
    assert (r.raw[2] >> 3) & 0xF == 4  # the opcode is echoed


def test_notimp_without_edns_has_no_opt(example_config):
    r = ask(engine(example_config), flags=opcode(5) | RD)
    assert r.rcode == 4 and r.opt is None and not r.msg.header.rd


def test_query_errors_keep_rd_and_cd(example_config):
    r = ask(engine(example_config), options=cookie_option(b"short"), flags=RD | CD)
    assert r.rcode == 1 and r.msg.header.rd and r.msg.header.cd


@pytest.mark.parametrize("qdcount", [0, 2])
def test_formerr_for_qdcount_carries_the_opt_it_found(example_config, qdcount):
    q = bytearray(make_query("lab.test", SOA, edns=True))
    if qdcount == 0:
        q = q[:12] + q[12 + 14:]  # drop the question (3lab4test0 + type + class)
    q[5] = qdcount
    if qdcount == 2:
        q = q[:26] + q[12:26] + q[26:]  # a second copy of the question before the OPT
    r = Reply(engine(example_config).respond(bytes(q), "192.0.2.1"))
    assert r.rcode == 1 and r.opt is not None


def test_formerr_without_a_findable_opt_has_none(example_config):
    q = make_query("lab.test", SOA, edns=True)[:-3]  # the OPT is cut short
    out = engine(example_config).respond(q, "192.0.2.1")
    assert out[3] & 0xF == 1 and out[10:12] == b"\x00\x00"


# -- CHAOS ---------------------------------------------------------------------------------------

CHAOS = ChaosSettings(version="gslb-edge 1.0", hostname=None, id="ns1.eu")


def test_configured_chaos_names_are_answered_as_txt_ch(example_config):
    e = engine(example_config, chaos=CHAOS)
    r = ask(e, "version.bind", TXT, qclass=3)
    assert r.rcode == 0 and r.msg.header.aa
    (rr,) = r.msg.rr
    assert rr.rclass == 3 and rr.ttl == 0 and rr.rdata.data == [b"gslb-edge 1.0"]
    assert ask(e, "VERSION.SERVER", TXT, qclass=3).msg.rr[0].rdata.data == [b"gslb-edge 1.0"]
    assert ask(e, "id.server", TXT, qclass=3).msg.rr[0].rdata.data == [b"ns1.eu"]


def test_unconfigured_or_other_chaos_names_are_refused_and_other_types_nodata(example_config):
    e = engine(example_config, chaos=CHAOS)
    assert ask(e, "hostname.bind", TXT, qclass=3).rcode == 5       # not configured
    assert ask(e, "x.version.bind", TXT, qclass=3).rcode == 5
    assert ask(e, "version.bind", TXT).rcode == 5                   # class IN: outside the zone
    r = ask(e, "version.bind", A, qclass=3)
    assert r.rcode == 0 and not r.msg.rr
    assert ask(engine(example_config), "version.bind", TXT, qclass=3).rcode == 5  # off by default


# -- geo placement with cookies ---------------------------------------------------------------------

def test_cookie_answers_depend_on_the_source_as_before(example_config, lab_mmdb):
    e = Engine.from_config(example_config, lab_mmdb)
    try:
        tokyo = ask(e, "demo.app.lab.test", A, source="198.19.5.10", options=cookie_option(CLIENT))
        frankfurt = ask(e, "demo.app.lab.test", A, source="198.19.3.10", options=cookie_option(CLIENT))
        assert {str(rr.rdata) for rr in tokyo.msg.rr} <= {f"198.18.5.{i}" for i in range(1, 5)}
        assert {str(rr.rdata) for rr in frankfurt.msg.rr} <= {f"198.18.3.{i}" for i in range(1, 5)}
        assert tokyo.cookie != frankfurt.cookie
    finally:
        e.close()


# -- scan never raises; the engine never fails on option soup ---------------------------------------

@given(st.binary(max_size=300))
def test_scan_never_raises(data):
    eo.scan(data)


_OPTION = st.tuples(st.sampled_from([3, 8, 10, 11, 12, 65001]), st.binary(max_size=44)).map(
    lambda t: struct.pack("!HH", t[0], len(t[1])) + t[1])


@given(st.lists(_OPTION, max_size=4), st.booleans(), st.integers(0, 15))
def test_any_options_get_an_answer_never_an_internal_error(example_config, opts, tcp, op):
    e = _SHARED.setdefault("e", engine(example_config, nsid=b"n", chaos=CHAOS))
    q = bytearray(make_query("demo.app.lab.test", AAAA, options=b"".join(opts) or b"\x00\x0a\x00\x00"))
    q[2] |= op << 3
    out = e.respond(bytes(q), "192.0.2.1", tcp)
    assert out is not None and e.stats["internal_errors"] == 0
    Reply(out)  # well-formed for an independent decoder


_SHARED: dict = {}


# -- configuration ------------------------------------------------------------------------------

def write(tmp_path, extra: str, server: str = "") -> str:
    from tests.conftest import EXAMPLES
    text = open(os.path.join(EXAMPLES, "dns.toml")).read()
    text = text.replace("tcp_max_connections = 512", "tcp_max_connections = 512\n" + server)
    path = tmp_path / "dns.toml"
    path.write_text(text + "\n" + extra)
    return str(path)


def test_config_reads_cookies_nsid_and_chaos(tmp_path):
    cfg = load_dns_config(write(tmp_path, '[cookies]\nsecret = "' + "ab" * 16 + '"\n'
                                'secrets_accepted = ["' + "cd" * 16 + '"]\nrequire = true\n'
                                '[chaos]\nversion = "v1"\n', 'nsid = "0x6e7331"'))
    assert cfg.cookies.secret == b"\xab" * 16 and cfg.cookies.secrets_accepted == (b"\xcd" * 16,)
    assert cfg.cookies.require and cfg.cookies.enabled
    assert cfg.server.nsid == b"ns1" and cfg.chaos.version == "v1" and cfg.chaos.id is None
    assert load_dns_config(write(tmp_path, "", 'nsid = "ns1.eu"')).server.nsid == b"ns1.eu"


def test_config_defaults_cookies_on_with_a_random_secret_nsid_and_chaos_off(tmp_path):
    cfg = load_dns_config(write(tmp_path, ""))
    assert cfg.cookies.enabled and cfg.cookies.secret is None and not cfg.cookies.require
    assert cfg.server.nsid is None and cfg.chaos == ChaosSettings()


@pytest.mark.parametrize("extra,server,where", [
    ('[cookies]\nsecret = "00112233"\n', "", "cookies.secret: a cookie secret is 32 hexadecimal"),
    ('[cookies]\nsecret = "' + "zz" * 16 + '"\n', "", "cookies.secret:"),
    ('[cookies]\nsecrets_accepted = ["' + "ab" * 16 + '"]\n', "", "cookies.secrets_accepted: needs `secret`"),
    ('[cookies]\nsecret = "' + "ab" * 16 + '"\nsecrets_accepted = ["ab"]\n', "", "cookies.secrets_accepted:"),
    ('[cookies]\nrequired = true\n', "", "cookies.required: unknown key"),
    ("", 'nsid = "0x123"', "server.nsid: "),
    ("", 'nsid = "' + "x" * 129 + '"', "server.nsid: 129 octets"),
    ('[chaos]\nversion = "a\\u0007b"\n', "", "chaos.version: printable"),
    ('[cookies]\nenabled = false\nrequire = true\n', "", "cookies.require: needs cookies enabled"),
    ('[chaos]\nversoin = "1"\n', "", "chaos.versoin: unknown key"),
])
def test_config_errors_name_file_line_and_key_and_never_echo_a_secret(tmp_path, extra, server, where):
    with pytest.raises(ConfigError) as exc:
        load_dns_config(write(tmp_path, extra, server))
    msg = str(exc.value)
    assert where in msg and "dns.toml:" in msg and exc.value.line
    assert "00112233" not in msg and "zz" * 16 not in msg


def test_the_server_advertises_the_idle_timeout_it_applies_across_reloads(example_config):
    from dns.server import DnsServer
    srv = DnsServer(engine(example_config, idle=10.0), (("127.0.0.1", 0),), tcp_idle_timeout=2.5,
                    reload=lambda: engine(example_config, idle=99.0))
    assert ask(srv.engine, options=KEEPALIVE_EMPTY, tcp=True).option(11) == struct.pack("!H", 25)
    assert srv.reload()
    assert ask(srv.engine, options=KEEPALIVE_EMPTY, tcp=True).option(11) == struct.pack("!H", 25)
