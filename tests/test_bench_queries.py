"""bench/queries.py and the bench's config rewriting: what dnsperf sends, and to which server config."""
from __future__ import annotations

import ipaddress
import os
import struct
import tomllib

import dnslib

from bench import queries as Q
from bench.dnsbench import compare_answers, rewrite_server_section
from bench.ours_edge import edge_config_text, parse_forwarding
from dns.config import load_dns_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DNS_TOML = os.path.join(REPO, "examples", "dns.toml")


def test_ecs_query_encodes_rfc7871_option_with_truncated_address():
    wire = Q.encode_query(Q.Query("demo.app.lab.test.", "AAAA", "198.19.5.0/24"))
    msg = dnslib.DNSRecord.parse(wire)
    assert str(msg.q.qname) == "demo.app.lab.test." and msg.q.qtype == dnslib.QTYPE.AAAA
    assert msg.header.rd == 0
    opt = msg.ar[0]
    assert opt.rtype == dnslib.QTYPE.OPT and opt.rclass == 1232
    code, data = opt.rdata[0].code, opt.rdata[0].data
    assert code == 8
    assert data == struct.pack("!HBB", 1, 24, 0) + bytes([198, 19, 5])


def test_ipv6_ecs_and_plain_query_without_opt():
    opt = Q.ecs_option("fd7a:5e1b:c00:500::/56")
    assert opt[4:8] == struct.pack("!HBB", 2, 56, 0) and len(opt) == 4 + 4 + 7
    assert dnslib.DNSRecord.parse(Q.encode_query(Q.Query("x.lab.test.", "A"))).ar == []


def test_binary_file_is_length_prefixed_messages():
    qs = [Q.Query("a.lab.test.", "A", "198.19.1.0/24"), Q.Query("b.lab.test.", "AAAA", None)]
    blob = Q.binary_file(qs)
    n1 = struct.unpack("!H", blob[:2])[0]
    assert dnslib.DNSRecord.parse(blob[2:2 + n1]).q.qname == "a.lab.test."
    rest = blob[2 + n1:]
    assert struct.unpack("!H", rest[:2])[0] == len(rest) - 2


def test_client_subnets_are_many_masked_and_include_unlocated():
    subnets = Q.client_subnets(["198.19.5.0/24", "fd7a:5e1b:c00:500::/56", "::/8"], per_network=16, unlocated=8)
    nets = [ipaddress.ip_network(s, strict=True) for s in subnets]  # strict: host bits are zero
    assert sum(1 for n in nets if n.version == 4 and n.subnet_of(ipaddress.ip_network("198.19.5.0/24"))) >= 8
    assert any(n.version == 6 and n.subnet_of(ipaddress.ip_network("fd7a:5e1b:c00:500::/56")) for n in nets)
    assert any(n.version == 4 and n.subnet_of(ipaddress.ip_network("100.64.0.0/10")) for n in nets)
    assert not any(n.subnet_of(ipaddress.ip_network("::/8")) for n in nets if n.version == 6)


def test_edge_names_expand_wildcards_and_nxdomain_names_avoid_them():
    cfg = load_dns_config(DNS_TOML)
    names = Q.edge_names(cfg, endpoints=2)
    assert "ep0.app.lab.test." in names and "ep1.tcp.lab.test." in names and "jp.connect.lab.test." in names
    for q in Q.nxdomain_queries(cfg.zone.name, count=30):
        assert ".app." not in q.qname and ".tcp." not in q.qname and q.qname.endswith(".lab.test.")


def test_text_file_is_dnsperf_format():
    assert Q.text_file([Q.Query("a.lab.test.", "A")]) == "a.lab.test. A\n"


def test_server_section_rewrite_keeps_the_rest_byte_for_byte(tmp_path):
    text = open(DNS_TOML).read()
    out = rewrite_server_section(text, {"listen": ["127.0.0.1:5300"], "geoip_db": "/tmp/x.mmdb"}, drop=("workers",))
    data = tomllib.loads(out)
    assert data["server"]["listen"] == ["127.0.0.1:5300"] and data["server"]["geoip_db"] == "/tmp/x.mmdb"
    assert "workers" not in data["server"] and data["server"]["udp_payload_max"] == 1232
    assert out.split("[zone]", 1)[1] == text.split("[zone]", 1)[1]
    p = tmp_path / "dns.toml"
    p.write_text(out)
    assert load_dns_config(str(p)).server.listen == (("127.0.0.1", 5300),)


def test_answers_compare_by_pop_and_rcode_not_by_address():
    pop_of = {"198.18.5.1": "jp", "198.18.5.3": "jp", "198.18.1.1": "ap"}
    key = ("demo.app.lab.test.", "A", "198.19.5.0/24")
    assert compare_answers({key: ("NOERROR", ["198.18.5.1"])}, {key: ("NOERROR", ["198.18.5.3"])}, pop_of) == []
    assert compare_answers({key: ("NOERROR", ["198.18.5.1"])}, {key: ("NOERROR", ["198.18.1.1"])}, pop_of)
    assert compare_answers({key: ("NXDOMAIN", [])}, {key: ("NOERROR", [])}, pop_of)


def test_agent_forwarding_line_and_edge_config(tmp_path):
    assert parse_forwarding("x\nforwarding tcp://app.lab.test:20000 -> localhost:9000\n") == [
        ("tcp://app.lab.test:20000", "localhost:9000")]
    text = edge_config_text(ca_dir=str(tmp_path / "ca"), cert_dir=str(tmp_path / "c"), authtokens=str(tmp_path / "t"))
    doc = tomllib.loads(text)
    assert doc["zone"] == "lab.test" and doc["pops"]["bench"]["listen"] == ["127.0.0.1"]
    assert doc["edge"]["https_port"] == 443 and doc["edge"]["tcp_ports"] == "20000-20019"
