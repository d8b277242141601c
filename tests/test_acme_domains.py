"""Custom domains: edge/acme/domains.py against a resolver on loopback, and the hub's bind.

The resolver is a small UDP server whose answers are made by dnslib (an
independent encoder) from a table, the way a recursive resolver answers
(RD=1: the CNAME chain and the final records in one answer).
"""
from __future__ import annotations

import asyncio

import dnslib
import pytest
from _hub_fakes import FakeConn

from edge.acme import domains
from edge.acme.domains import DomainChecker, DomainError
from edge.hub import Hub, HubConfig
from edge.tunnel.errors import ControlError

EDGE = ["198.18.5.1", "198.18.5.2", "fd7a:5e1b:c00::5:1"]
TABLE = {
    # name: [(type, value)], followed through CNAMEs like a resolver
    "shop.example.test": [("CNAME", "demo.app.lab.test")],
    "demo.app.lab.test": [("A", "198.18.5.1"), ("A", "198.18.5.2"), ("AAAA", "fd7a:5e1b:c00::5:1")],
    "bad.example.test": [("A", "203.0.113.7")],
    "mixed.example.test": [("A", "198.18.5.1"), ("AAAA", "2001:db8::1")],
    "direct.example.test": [("A", "198.18.5.2"), ("AAAA", "fd7a:5e1b:c00::5:1")],
    "other.example.test": [("CNAME", "cdn.elsewhere.test")],
    "cdn.elsewhere.test": [("A", "192.0.2.80")],
    "empty.example.test": [("TXT", "v=spf1 -all")],
    "loop.example.test": [("CNAME", "loop2.example.test")],
    "loop2.example.test": [("CNAME", "loop.example.test")],
}


class Resolver(asyncio.DatagramProtocol):
    def __init__(self, *, rcode: int | None = None, silent: bool = False) -> None:
        self.rcode, self.silent, self.queries = rcode, silent, []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        q = dnslib.DNSRecord.parse(data)
        self.queries.append((str(q.q.qname).rstrip("."), q.q.qtype, q.header.rd))
        if self.silent:
            return
        r = q.reply(ra=1, aa=0)
        name = str(q.q.qname).rstrip(".").lower()
        qtype = dnslib.QTYPE[q.q.qtype]
        if self.rcode is not None:
            r.header.rcode = self.rcode
        elif name not in TABLE:
            r.header.rcode = dnslib.RCODE.NXDOMAIN
        else:
            for _ in range(8):
                recs = TABLE.get(name, [])
                cname = [v for t, v in recs if t == "CNAME"]
                if cname:
                    r.add_answer(dnslib.RR(name, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(cname[0]), ttl=60))
                    name = cname[0]
                    continue
                for t, v in recs:
                    if t == qtype:
                        cls = {"A": dnslib.A, "AAAA": dnslib.AAAA, "TXT": dnslib.TXT}[t]
                        r.add_answer(dnslib.RR(name, getattr(dnslib.QTYPE, t), rdata=cls(v), ttl=60))
                break
        self.transport.sendto(r.pack(), addr)


async def start_resolver(**kw) -> tuple[asyncio.DatagramTransport, Resolver, str]:
    loop = asyncio.get_running_loop()
    t, p = await loop.create_datagram_endpoint(lambda: Resolver(**kw), local_addr=("127.0.0.1", 0))
    return t, p, f"127.0.0.1:{t.get_extra_info('sockname')[1]}"


def checker(*resolvers: str, timeout: float = 1.0) -> DomainChecker:
    return DomainChecker(list(resolvers), ("app.lab.test", "lab.test"), EDGE,
                         example_target="<name>.app.lab.test", timeout=timeout)


def run_check(name: str, **kw) -> str | None:
    """None when accepted, else the refusal's message."""
    async def main():
        t, p, addr = await start_resolver(**kw)
        try:
            await checker(addr).check_domain(name)
        except DomainError as exc:
            return str(exc), p
        finally:
            t.close()
        return None, p
    msg, resolver = asyncio.run(main())
    assert all(rd == 1 for _, _, rd in resolver.queries)   # asked recursively
    return msg


def test_a_cname_into_the_zone_is_accepted():
    assert run_check("shop.example.test") is None
    assert run_check("Shop.Example.Test.") is None


def test_addresses_all_of_the_edge_are_accepted():
    assert run_check("direct.example.test") is None


def test_a_foreign_address_is_refused_with_the_cname_advice():
    msg = run_check("bad.example.test")
    assert msg == ("bad.example.test does not point at the edge: A 203.0.113.7 is not an edge address; "
                   "add CNAME bad.example.test -> <name>.app.lab.test")


def test_one_foreign_address_among_edge_ones_is_refused():
    msg = run_check("mixed.example.test")
    assert "AAAA 2001:db8::1 is not an edge address" in msg and "198.18.5.1" not in msg


def test_a_cname_elsewhere_is_refused_and_shows_the_chain():
    msg = run_check("other.example.test")
    assert msg.startswith("other.example.test does not point at the edge: CNAME other.example.test -> "
                          "cdn.elsewhere.test, A 192.0.2.80 is not an edge address")


def test_nxdomain_no_addresses_and_loops_are_refused():
    assert "does not exist (NXDOMAIN)" in run_check("nothing.example.test")
    assert "no A or AAAA records" in run_check("empty.example.test")
    assert "does not point at the edge" in run_check("loop.example.test")


def test_names_of_our_own_zone_and_bad_names_are_not_custom_domains():
    assert "own zone" in run_check("x.app.lab.test")
    assert "own zone" in run_check("status.lab.test")
    assert "not a hostname" in run_check("bad_name.example.test")


def test_resolver_errors_and_silence_say_cannot_check():
    assert run_check("shop.example.test", rcode=2).startswith("cannot check shop.example.test: no resolver "
                                                               "answered (127.0.0.1: SERVFAIL)")

    async def main():
        t, _, mute = await start_resolver(silent=True)
        t2, _, good = await start_resolver()
        try:
            c = checker(mute, timeout=0.2)
            with pytest.raises(DomainError, match="TimeoutError"):
                await c.check_domain("shop.example.test")
            await checker(mute, good, timeout=0.2).check_domain("shop.example.test")   # next resolver
            assert c.stats() == {"checked": 1, "accepted": 0, "refused": 0, "unresolved": 1}
        finally:
            t.close()
            t2.close()
    asyncio.run(main())


def test_module_interface_needs_a_configured_checker():
    async def main():
        domains.configure(None)
        with pytest.raises(DomainError, match="custom domains are off"):
            await domains.check_domain("shop.example.test")
        t, _, addr = await start_resolver()
        try:
            domains.configure(checker(addr))
            await domains.check_domain("shop.example.test")
        finally:
            domains.configure(None)
            t.close()
    asyncio.run(main())


def test_read_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# lab\nsearch lab.test\nnameserver 198.18.0.53\nnameserver fd7a:5e1b:c00::53\nnameserver x\n")
    assert domains.read_resolv_conf(str(p)) == ["198.18.0.53", "fd7a:5e1b:c00::53"]
    assert domains.read_resolv_conf(str(tmp_path / "none")) == []


# -- the hub ---------------------------------------------------------------------------

def test_hub_binds_a_domain_that_points_at_the_edge_and_refuses_one_that_does_not():
    async def main():
        t, _, addr = await start_resolver()
        try:
            c = checker(addr)
            h = Hub(HubConfig(domain="app.lab.test", domain_check=c.check_domain), ["good-token"])
            conn = FakeConn(h)
            b = await h.bind(conn, "http", "Shop.Example.Test", {})
            assert b.hostname == "shop.example.test" and b.url == "https://shop.example.test"
            assert h.lookup("http", "shop.example.test") is b
            assert h.registry.lookup("http", "shop.example.test") is not None   # every PoP routes it
            with pytest.raises(ControlError) as info:
                await h.bind(conn, "http", "bad.example.test", {})
            assert info.value.code == "bad_request"
            assert info.value.message == ("bad.example.test does not point at the edge: A 203.0.113.7 is not "
                                          "an edge address; add CNAME bad.example.test -> <name>.app.lab.test")
            with pytest.raises(ControlError, match="--name instead"):
                await h.bind(conn, "http", "demo.app.lab.test", {})
            assert [x.hostname for x in h.bindings()] == ["shop.example.test"]
        finally:
            t.close()
    asyncio.run(main())


def test_agent_config_takes_a_domain_instead_of_a_name():
    from edge.agent.config import EndpointConfig, validate_endpoint
    from plumbing.toml import ConfigError
    validate_endpoint(EndpointConfig(kind="http", port=8080, domain="shop.example.test"))
    for ep, what in ((EndpointConfig(kind="http", port=8080, name="x", domain="shop.example.test"), "not both"),
                     (EndpointConfig(kind="tcp", port=22, domain="shop.example.test"), "only http and tls"),
                     (EndpointConfig(kind="http", port=8080, domain="nodot"), "with a dot")):
        with pytest.raises(ConfigError, match=what):
            validate_endpoint(ep)


def test_agent_cli_domain_flag_and_toml_key(tmp_path, monkeypatch):
    import argparse

    import edge.agent.config
    from edge import agent_cli
    monkeypatch.setattr(edge.agent.config, "DEFAULTS_PATH", tmp_path / "absent.toml")
    p = argparse.ArgumentParser()
    agent_cli.add_parser(p.add_subparsers())
    env = {"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"}
    cfg = agent_cli.build_config(p.parse_args(["agent", "http", "8080", "--domain", "Shop.Example.Test."]), env=env)
    assert (cfg.endpoints[0].name, cfg.endpoints[0].domain) == ("", "shop.example.test")
    with pytest.raises(SystemExit):   # --name and --domain exclude each other; one is required
        p.parse_args(["agent", "http", "8080", "--domain", "a.test", "--name", "x"])
    with pytest.raises(SystemExit):
        p.parse_args(["agent", "http", "8080"])
    toml = tmp_path / "agent.toml"
    toml.write_text('zone = "lab.test"\nauthtoken = "t"\n[[endpoints]]\nkind = "tls"\nport = 8443\n'
                    'domain = "secure.example.test"\n')
    cfg = edge.agent.config.load_agent_config(str(toml), {}, {})
    assert cfg.endpoints[0].domain == "secure.example.test"


def test_edge_config_custom_domain_keys_and_every_pops_addresses():
    from edge.config import ConfigError, parse
    base = ('zone = "lab.test"\n[edge]\nca_dir = "/tmp/ca"\n{extra}\n[pops.us]\nlisten = ["198.19.1.1", "2001:db8::1"]\n'
            '[pops.eu]\nlisten = ["198.19.2.1"]\n')
    cfg = parse(base.format(extra=""), "us", "e.toml")
    assert cfg.custom_domains is True and cfg.resolvers == ()
    assert cfg.edge_addresses == ("198.19.1.1", "2001:db8::1", "198.19.2.1")
    cfg = parse(base.format(extra='custom_domains = false\nresolvers = ["198.18.0.53"]'), "eu", "e.toml")
    assert cfg.custom_domains is False and cfg.resolvers == ("198.18.0.53",)
    for extra, key in (('custom_domains = "yes"', "edge.custom_domains"), ('resolvers = ["ns1"]', "edge.resolvers")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse(base.format(extra=extra), "us", "e.toml")
