"""edge/acme/dnsmsg.py (bytes) and edge/acme/dns01.py (the solver) without etcd.

Replies are made with dnslib (an independent encoder); the solver runs against
the real MemoryRegistry and a name server on loopback whose answers come from
the registry's values through the real `dns.engine.Engine` (`dns.acme.parse_range`
on what the registry holds): the same path `gslb dns` takes, minus HTTP.
The real thing (etcd, `gslb dns`) is tests/integration/test_dns_acme_etcd.py.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket

import dnslib
import pytest

from edge.acme import dnsmsg
from edge.acme.dns01 import Dns01Error, Dns01Solver, challenge_name, registry_key, txt_value
from edge.registry import InvalidKey, MemoryRegistry


def reply(query: bytes, *records: dnslib.RR, rcode: int = 0, aa: bool = True) -> bytes:
    q = dnslib.DNSRecord.parse(query)
    r = q.reply(aa=int(aa))
    r.header.rcode = rcode
    for rr in records:
        r.add_answer(rr)
    return r.pack()


# -- dnsmsg ----------------------------------------------------------------------

def test_query_bytes_parse_as_one_question_with_edns():
    q = dnslib.DNSRecord.parse(dnsmsg.build_query("_ACME-challenge.Demo.app.lab.test.", dnsmsg.TXT, 0x4242))
    assert q.header.id == 0x4242 and q.header.rd == 0 and len(q.questions) == 1
    assert str(q.q.qname) == "_acme-challenge.demo.app.lab.test." and q.q.qtype == dnsmsg.TXT
    assert q.ar[0].rtype == 41 and q.ar[0].rclass == 1232
    assert dnslib.DNSRecord.parse(dnsmsg.build_query("x.test", dnsmsg.A, 1, rd=True)).header.rd == 1


def test_parse_answers_with_compression_cname_a_aaaa_txt():
    q = dnsmsg.build_query("shop.example.test", dnsmsg.A, 7)
    data = reply(q, dnslib.RR("shop.example.test", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("demo.app.lab.test"), ttl=60),
                 dnslib.RR("demo.app.lab.test", dnslib.QTYPE.A, rdata=dnslib.A("198.18.5.1"), ttl=30),
                 dnslib.RR("demo.app.lab.test", dnslib.QTYPE.AAAA, rdata=dnslib.AAAA("fd7a::1"), ttl=30),
                 dnslib.RR("demo.app.lab.test", dnslib.QTYPE.TXT, rdata=dnslib.TXT(["ab", "cd"]), ttl=5))
    r = dnsmsg.parse_response(data, 7, "Shop.Example.Test.", dnsmsg.A)
    assert r.rcode == 0 and r.aa and not r.tc
    assert r.values(dnsmsg.CNAME, "shop.example.test") == ["demo.app.lab.test"]
    assert r.values(dnsmsg.A) == ["198.18.5.1"] and r.values(dnsmsg.AAAA) == ["fd7a::1"]
    assert r.values(dnsmsg.TXT) == ["abcd"] and r.answers[1].ttl == 30


@pytest.mark.parametrize("mutate", [
    lambda d: d[:11],                              # short
    lambda d: b"\x00\x08" + d[2:],                 # another ID
    lambda d: d[:2] + bytes([d[2] & 0x7F]) + d[3:],  # not a reply
    lambda d: d[:-3],                              # record cut short
])
def test_parse_rejects_what_is_not_our_answer(mutate):
    q = dnsmsg.build_query("a.test", dnsmsg.A, 7)
    data = reply(q, dnslib.RR("a.test", dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1")))
    with pytest.raises(dnsmsg.DnsMessageError):
        dnsmsg.parse_response(mutate(data), 7, "a.test", dnsmsg.A)
    with pytest.raises(dnsmsg.DnsMessageError):
        dnsmsg.parse_response(data, 7, "b.test", dnsmsg.A)   # another question


def test_compression_loop_is_an_error_not_a_hang():
    q = dnsmsg.build_query("a.test", dnsmsg.A, 9)
    question = q[12:-11]                      # without the OPT
    at = 12 + len(question)                   # where the answer's owner starts
    owner = bytes([0xC0 | at >> 8, at & 0xFF])  # a pointer to itself
    data = (b"\x00\x09\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00" + question + owner
            + b"\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + bytes(4))
    with pytest.raises(dnsmsg.DnsMessageError, match="loop"):
        dnsmsg.parse_response(data, 9, "a.test", dnsmsg.A)


def test_parse_server_forms():
    assert dnsmsg.parse_server("198.18.0.53") == ("198.18.0.53", 53)
    assert dnsmsg.parse_server("127.0.0.1:5300") == ("127.0.0.1", 5300)
    assert dnsmsg.parse_server("[::1]:5300") == ("::1", 5300)
    assert dnsmsg.parse_server("fd00::53") == ("fd00::53", 53)
    with pytest.raises(ValueError):
        dnsmsg.parse_server("ns1.lab.test")


# -- the solver's pure parts -------------------------------------------------------------

def test_txt_value_is_base64url_sha256_without_padding():
    ka = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
    want = base64.urlsafe_b64encode(hashlib.sha256(ka.encode()).digest()).decode().rstrip("=")
    assert txt_value(ka) == want and len(want) == 43 and "=" not in want


def test_challenge_names_drop_the_wildcard_label():
    assert challenge_name("*.App.Lab.Test.") == "_acme-challenge.app.lab.test"
    assert challenge_name("app.lab.test") == "_acme-challenge.app.lab.test"
    assert registry_key("shop.example.test") == "dns01/_acme-challenge.shop.example.test"


def test_opaque_keys_stay_inside_the_acme_space():
    async def main():
        r = MemoryRegistry()
        await r.kv_put("dns01/_acme-challenge.a.test", b"x")
        assert await r.kv_get("dns01/_acme-challenge.a.test") == b"x"
        assert await r.kv_delete("dns01/_acme-challenge.a.test")
        assert not await r.kv_delete("dns01/_acme-challenge.a.test")
        assert await r.kv_get("dns01/_acme-challenge.a.test") is None
        for bad in ("../bind/http/x", "dns01//x", "/abs", "a/./b", ""):
            with pytest.raises(InvalidKey):
                await r.kv_put(bad, b"x")
    asyncio.run(main())


# -- the solver against a name server on loopback ------------------------------------------

class RegistryNameServer(asyncio.DatagramProtocol):
    """Answers from a real `dns.engine.Engine`, re-fed from the registry's DNS-01 values on every query."""

    def __init__(self, engine, registry: MemoryRegistry, *, silent: bool = False) -> None:
        self.engine, self.registry, self.silent = engine, registry, silent

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        from dns import acme
        kvs = [{"key": base64.b64encode(("/gslb/acme/" + k).encode()).decode(),
                "value": base64.b64encode(v).decode()} for k, (v, _lease) in self.registry._kv.items()]
        self.engine.set_acme(acme.parse_range({"kvs": kvs}, "/gslb/", 0).names)
        if not self.silent:
            self.transport.sendto(self.engine.respond(data, addr[0]), addr)


@pytest.fixture
def engine(tmp_path, lab_mmdb):
    from dns.config import load_dns_config
    from dns.engine import Engine
    from tests.conftest import EXAMPLES
    shutil.copy(os.path.join(EXAMPLES, "dns.toml"), tmp_path / "dns.toml")
    shutil.copy(lab_mmdb, tmp_path / "lab.mmdb")
    with open(tmp_path / "dns.toml", "a") as fh:
        fh.write('\n[acme]\nenabled = true\nendpoints = ["http://127.0.0.1:1"]\nttl = 5\n')
    e = Engine.from_config(load_dns_config(str(tmp_path / "dns.toml")))
    yield e
    e.close()


def test_present_waits_for_every_server_then_cleanup_removes_only_its_value(engine):
    async def main():
        loop = asyncio.get_running_loop()
        reg = MemoryRegistry()
        servers = []
        for _ in range(2):
            t, _p = await loop.create_datagram_endpoint(lambda: RegistryNameServer(engine, reg),
                                                        local_addr=("127.0.0.1", 0))
            servers.append(t)
        addrs = [f"127.0.0.1:{t.get_extra_info('sockname')[1]}" for t in servers]
        solver = Dns01Solver(reg, addrs, timeout=10, interval=0.05)
        # A wildcard and its base name: one owner, two values.
        await solver.present("*.app.lab.test", "tok1", "tok1.thumb")
        await solver.present("app.lab.test", "tok2", "tok2.thumb")
        stored = json.loads(await reg.kv_get("dns01/_acme-challenge.app.lab.test"))
        assert sorted(stored["values"]) == sorted([txt_value("tok1.thumb"), txt_value("tok2.thumb")])
        r = await dnsmsg.query(("127.0.0.1", int(addrs[1].rsplit(":", 1)[1])),
                               "_acme-challenge.app.lab.test", dnsmsg.TXT, 2)
        assert sorted(r.values(dnsmsg.TXT)) == sorted(stored["values"]) and r.aa
        await solver.cleanup("*.app.lab.test", "tok1")
        assert json.loads(await reg.kv_get("dns01/_acme-challenge.app.lab.test"))["values"] == \
            [txt_value("tok2.thumb")]
        await solver.cleanup("app.lab.test", "tok2")
        assert await reg.kv_get("dns01/_acme-challenge.app.lab.test") is None
        await solver.cleanup("app.lab.test", "tok2")   # twice: harmless
        assert solver.stats()["presented"] == 2 and solver.stats()["cleaned"] == 2
        for t in servers:
            t.close()
    asyncio.run(main())


def test_present_gives_up_after_its_timeout_naming_the_server_that_never_answered(engine):
    async def main():
        loop = asyncio.get_running_loop()
        reg = MemoryRegistry()
        good, _ = await loop.create_datagram_endpoint(lambda: RegistryNameServer(engine, reg),
                                                      local_addr=("127.0.0.1", 0))
        mute, _ = await loop.create_datagram_endpoint(lambda: RegistryNameServer(engine, reg, silent=True),
                                                      local_addr=("127.0.0.1", 0))
        mute_addr = f"127.0.0.1:{mute.get_extra_info('sockname')[1]}"
        solver = Dns01Solver(reg, [f"127.0.0.1:{good.get_extra_info('sockname')[1]}", mute_addr],
                             timeout=0.6, interval=0.05, query_timeout=0.2)
        with pytest.raises(Dns01Error) as err:
            await solver.present("demo.app.lab.test", "t", "t.thumb")
        assert mute_addr in str(err.value) and "TimeoutError" in str(err.value)
        assert solver.stats()["timeouts"] == 1
        good.close()
        mute.close()
    asyncio.run(main())
