"""dns.wire: the query parser's verdicts (RFC 1035, 6891, 7871) and the writer."""
from __future__ import annotations

import struct

import pytest

from dns import wire
from dns.wire import (A, AAAA, BADVERS, FORMERR, NOTIMP, OPT, Drop, QueryError, Writer,
                      ecs_option, make_query, name_from_text, parse_query)


def rcode_of(data: bytes) -> QueryError:
    with pytest.raises(QueryError) as exc:
        parse_query(data)
    return exc.value


def opt_rr(options: bytes = b"", payload: int = 1232, version: int = 0) -> bytes:
    return b"\0" + struct.pack("!HHIH", OPT, payload, version << 16, len(options)) + options


def with_additional(query: bytes, *records: bytes) -> bytes:
    """A query without OPT plus extra additional records (ARCOUNT fixed up)."""
    hdr = bytearray(query[:12])
    struct.pack_into("!H", hdr, 10, len(records))
    return bytes(hdr) + query[12:] + b"".join(records)


def test_plain_query_parses_with_case_preserved_and_lowercase_key():
    q = parse_query(make_query("DeMo.App.Lab.Test", A, qid=77, rd=True))
    assert q.id == 77 and q.qtype == A and q.opcode == 0
    assert q.qname == b"\x04DeMo\x03App\x03Lab\x04Test\x00"
    assert q.qname_key == b"\x04demo\x03app\x03lab\x04test\x00"
    assert q.edns is None
    assert q.flags & wire.RD


def test_short_packet_and_responses_are_dropped():
    with pytest.raises(Drop):
        parse_query(b"\x12\x34\x00")
    resp = bytearray(make_query("a.lab.test"))
    resp[2] |= 0x80  # QR=1
    with pytest.raises(Drop):
        parse_query(bytes(resp))


@pytest.mark.parametrize("qdcount", [0, 2])
def test_not_exactly_one_question_is_formerr(qdcount):
    data = bytearray(make_query("a.lab.test"))
    struct.pack_into("!H", data, 4, qdcount)
    err = rcode_of(bytes(data))
    assert err.rcode == FORMERR and err.question_end == 0


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_unknown_opcodes_are_notimp(opcode):
    data = bytearray(make_query("a.lab.test"))
    data[2] |= opcode << 3
    err = rcode_of(bytes(data))
    assert err.rcode == NOTIMP and err.question_end == len(data)


def test_compression_pointer_in_question_is_formerr():
    data = make_query("a.lab.test")[:12] + b"\x01a\xc0\x0c" + struct.pack("!HH", A, 1)
    assert rcode_of(data).rcode == FORMERR


def test_truncated_question_and_trailing_garbage_are_formerr():
    q = make_query("a.lab.test")
    assert rcode_of(q[:-2]).rcode == FORMERR
    assert rcode_of(q + b"\0").rcode == FORMERR


def test_overlong_name_is_formerr():
    data = make_query("a")[:12] + (b"\x3f" + b"a" * 63) * 4 + b"\0" + struct.pack("!HH", A, 1)
    assert rcode_of(data).rcode == FORMERR


def test_edns_fields_are_read():
    q = parse_query(make_query("a.lab.test", edns=True, payload=4096, do=True))
    assert q.edns is not None
    assert (q.edns.udp_payload, q.edns.version, q.edns.do, q.edns.client_subnet) == (4096, 0, True, None)


def test_two_opt_records_are_formerr_with_an_opt_in_the_answer():
    err = rcode_of(with_additional(make_query("a.lab.test"), opt_rr(), opt_rr()))
    assert err.rcode == FORMERR and err.edns is not None


def test_opt_with_a_non_root_owner_is_formerr():
    rr = b"\x01x\0" + struct.pack("!HHIH", OPT, 1232, 0, 0)
    assert rcode_of(with_additional(make_query("a.lab.test"), rr)).rcode == FORMERR


def test_opt_in_the_answer_section_is_formerr():
    q = bytearray(make_query("a.lab.test") + opt_rr())
    struct.pack_into("!H", q, 6, 1)  # ANCOUNT=1
    assert rcode_of(bytes(q)).rcode == FORMERR


def test_edns_version_above_zero_is_badvers():
    err = rcode_of(make_query("a.lab.test", edns=True, version=1))
    assert err.rcode == BADVERS and err.edns is not None and err.edns.version == 1


def test_unknown_edns_options_are_ignored():
    cookie = struct.pack("!HH", 10, 8) + b"\x01" * 8
    q = parse_query(make_query("a.lab.test", options=cookie))
    assert q.edns is not None and q.edns.client_subnet is None


def test_option_running_past_the_opt_record_is_formerr():
    assert rcode_of(make_query("a.lab.test", options=struct.pack("!HH", 10, 8) + b"\1")).rcode == FORMERR


def test_ecs_is_parsed_and_echo_copies_everything_but_scope():
    opt = ecs_option("198.19.5.0/24")
    q = parse_query(make_query("a.lab.test", options=opt))
    ecs = q.edns.client_subnet
    assert (ecs.family, ecs.source_prefix, ecs.scope_prefix, ecs.address) == (1, 24, 0, bytes([198, 19, 5]))
    assert str(ecs.network()) == "198.19.5.0/24"
    echo = ecs.echo(24)
    assert echo[:7] == opt[:7] and echo[7] == 24 and echo[8:] == opt[8:]


def test_ecs_ipv6_and_source_zero_parse():
    q = parse_query(make_query("a.lab.test", options=ecs_option("fd7a:5e1b:c00:500::/56")))
    assert str(q.edns.client_subnet.network()) == "fd7a:5e1b:c00:500::/56"
    q = parse_query(make_query("a.lab.test", options=ecs_option("0.0.0.0/0")))
    assert q.edns.client_subnet.source_prefix == 0 and q.edns.client_subnet.address == b""


def _raw_ecs(family: int, source: int, scope: int, address: bytes) -> bytes:
    body = struct.pack("!HBB", family, source, scope) + address
    return struct.pack("!HH", 8, len(body)) + body


@pytest.mark.parametrize("option,why", [
    (_raw_ecs(1, 24, 0, b"\xc6\x13"), "address shorter than the source prefix needs"),
    (_raw_ecs(1, 24, 0, b"\xc6\x13\x05\x00"), "address longer than the source prefix needs"),
    (_raw_ecs(3, 24, 0, b"\xc6\x13\x05"), "unknown family"),
    (_raw_ecs(1, 33, 0, b"\xc6\x13\x05\x00\x00"), "IPv4 source prefix over 32"),
    (_raw_ecs(2, 129, 0, b"\0" * 17), "IPv6 source prefix over 128"),
    (_raw_ecs(1, 20, 0, b"\xc6\x13\x05"), "address bits past the prefix"),
    (_raw_ecs(1, 24, 8, b"\xc6\x13\x05"), "non-zero scope in a query"),
    (struct.pack("!HH", 8, 2) + b"\0\1", "shorter than 4 octets"),
    (ecs_option("198.19.5.0/24") + ecs_option("198.19.3.0/24"), "two ECS options"),
])
def test_malformed_ecs_is_formerr_with_opt(option, why):
    err = rcode_of(make_query("a.lab.test", options=option))
    assert err.rcode == FORMERR, why
    assert err.edns is not None, "RFC 6891 7: the FORMERR must carry an OPT"


def test_qtype_opt_is_formerr():
    assert rcode_of(make_query("a.lab.test", OPT)).rcode == FORMERR


def test_writer_compresses_repeated_names():
    w = Writer()
    w.question(name_from_text("demo.app.lab.test."), A, 1)
    w.rr(wire.RR(name_from_text("demo.app.lab.test."), A, 30, (b"\1\2\3\4",)))
    w.rr(wire.RR(name_from_text("x.lab.test."), AAAA, 30, (b"\0" * 16,)))
    buf = w.getvalue()
    q_end = 12 + len(name_from_text("demo.app.lab.test.")) + 4
    assert buf[q_end:q_end + 2] == b"\xc0\x0c"  # owner points at the question
    # "x" + pointer to "lab.test" inside the question name (offset 12 + 5 + 4)
    assert b"\x01x\xc0\x15" in buf


def test_name_text_round_trip():
    assert wire.name_to_text(name_from_text("Demo.App.lab.test")) == "Demo.App.lab.test."
    assert name_from_text(".") == b"\0"
    with pytest.raises(ValueError):
        name_from_text("a" * 64 + ".test")


def test_txt_character_strings():
    assert wire.character_strings("gslb-edge lab zone") == b"\x12gslb-edge lab zone"
    assert wire.character_strings('"a b" "c"') == b"\x03a b\x01c"
    long = wire.character_strings("x" * 300)
    assert long[0] == 255 and long[256] == 45
