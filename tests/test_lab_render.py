"""Configs the lab generates from its plan, checked against the loaders that read them."""
from __future__ import annotations

import tomllib

from netns import render
from netns.plan import default_plan_path, load_plan
from edge.modules import DEFAULT_ORDER

PLAN = load_plan(default_plan_path())


def test_dns_toml_is_a_valid_dns_config_with_the_labs_name_servers_and_pops(tmp_path):
    from dns.config import load_dns_config  # the one loader `gslb dns` uses: the contract

    (tmp_path / "lab.mmdb").write_bytes(b"")
    path = tmp_path / "dns.toml"
    path.write_text(render.dns_toml(PLAN, str(tmp_path / "lab.mmdb")))
    cfg = load_dns_config(str(path))
    ns = {n.name: n for n in cfg.zone.ns}
    assert ns["ns1.lab.test."].ipv4 == PLAN.host("dns1").ipv4
    assert ns["ns2.lab.test."].ipv6 == PLAN.host("dns2").ipv6
    pops = {p.id: p for p in cfg.pops}
    assert set(pops) == {p.id for p in PLAN.pops}
    assert pops["jp"].ipv4 == PLAN.host("pop-jp").ipv4 and pops["jp"].ipv6 == PLAN.host("pop-jp").ipv6
    assert cfg.policy.ttl <= 30 and cfg.policy.addresses_per_answer == 2
    assert cfg.server.geoip_db == str(tmp_path / "lab.mmdb")
    h = cfg.health
    assert h.enabled is True and h.check == "http+tcp" and h.port == 80 and h.tcp_port == 443
    assert (h.interval, h.rise, h.fall, h.path) == (1.0, 2, 3, "/healthz")


def test_edge_toml_gives_every_pop_all_its_addresses_and_loads_with_the_edge_loader(tmp_path):
    from edge.config import load  # the loader `gslb edge --config F --pop ID` uses: the contract

    path = tmp_path / "edge.toml"
    path.write_text(render.edge_toml(PLAN, "/x/ca", "/x/certs", "/x/authtoken", "20000-20099"))
    for pop in PLAN.pops:
        cfg = load(path, pop.id)
        assert cfg.listen == tuple(pop.ipv4) + tuple(pop.ipv6) and len(cfg.listen) == 8
        assert (cfg.https_port, cfg.http_port, cfg.tcp_ports) == (443, 80, (20000, 20099))
        assert (cfg.ca_dir, cfg.cert_dir, cfg.authtokens_file) == ("/x/ca", "/x/certs", "/x/authtoken")
        assert cfg.zone == "lab.test" and cfg.https_domain == "app.lab.test"
        assert cfg.module_order == DEFAULT_ORDER
        assert f"{pop.id}.connect.lab.test" in cfg.ingress_names


def test_edge_toml_shares_the_labs_etcd_and_links_every_pop_with_its_peer_and_ingress(tmp_path):
    from edge.config import load

    path = tmp_path / "edge.toml"
    path.write_text(render.edge_toml(PLAN, "/x/ca", "/x/certs", "/x/authtoken", "20000-20099"))
    members = PLAN.by_role("registry")
    assert len(members) == 3
    for pop in PLAN.pops:
        cfg = load(path, pop.id)
        assert cfg.registry.kind == "etcd"
        assert cfg.registry.endpoints == tuple(f"http://{m.ipv4[0]}:2379" for m in members)
        assert cfg.registry.lease_ttl == 10.0
        assert {p.pop for p in cfg.peers} == {p.id for p in PLAN.pops}
        # each edge listens for peers on its own first IPv4, port 4443
        assert cfg.peer_listen == ((pop.ipv4[0], 4443),)
        for other in PLAN.pops:
            assert cfg.peer_address(other.id) == (other.ipv4[0], 4443)
        own = next(p for p in cfg.peers if p.pop == pop.id)
        assert own.ingress == ((pop.ipv4[0], 443), (pop.ipv6[0], 443))


def test_edge_toml_without_registry_hosts_stays_one_node_per_pop():
    from dataclasses import replace

    plan = replace(PLAN, hosts=tuple(h for h in PLAN.hosts if h.role != "registry"))
    text = render.edge_toml(plan, "/x/ca", "/x/certs", "/x/authtoken")
    assert "[registry]" not in text and "[peers." not in text


def test_agent_toml_gives_a_bare_agent_zone_ca_and_token(tmp_path):
    from edge.agent.config import EndpointConfig, load_agent_config

    token = tmp_path / "authtoken"
    token.write_text("s3cret-token\n")
    path = tmp_path / "agent.toml"
    path.write_text(render.agent_toml(PLAN, "/x/ca/ca.pem", str(token)))
    ep = EndpointConfig(kind="http", port=8080, name="demo")
    cfg = load_agent_config(path, {}, {}, endpoints=(ep,))
    assert cfg.zone == "lab.test" and str(cfg.ca) == "/x/ca/ca.pem" and cfg.authtoken == "s3cret-token"
    assert cfg.server is None and cfg.server_address() == ("connect.lab.test", 443)
    assert "s3cret-token" not in path.read_text()


def test_geo_table_maps_every_client_network_to_its_place():
    doc = tomllib.loads(render.geo_table(PLAN))
    by_city = {n["city"]: n for n in doc["network"]}
    assert by_city["Tokyo"]["network"] == ["198.19.5.0/24", "fd7a:5e1b:c00:500::/56"]
    assert by_city["Johannesburg"]["country"] == "ZA" and by_city["Johannesburg"]["continent"] == "AF"
    assert len(doc["network"]) == len(PLAN.by_role("client"))


def test_geo_table_builds_with_gslb_geo_build_mmdb(tmp_path):
    from gslb.cli import main  # the command line the lab runs, in-process

    table = tmp_path / "geo.toml"
    table.write_text(render.geo_table(PLAN))
    assert main(["geo", "build-mmdb", str(table), "--out", str(tmp_path / "lab.mmdb")]) == 0
    assert (tmp_path / "lab.mmdb").stat().st_size > 0


def test_unbound_conf_sends_ecs_to_exactly_the_lab_name_servers():
    conf = render.unbound_conf(PLAN, "/run/x/unbound")
    dns = [a for h in PLAN.by_role("dns") for a in h.ipv4 + h.ipv6]
    sent = [line.split(":", 1)[1].strip() for line in conf.splitlines() if "send-client-subnet:" in line]
    stubs = [line.split(":", 1)[1].strip() for line in conf.splitlines() if "stub-addr:" in line]
    assert sent == dns and stubs == dns
    res = PLAN.host("resolver")
    assert f"    interface: {res.ipv4[0]}" in conf and f"    interface: {res.ipv6[0]}" in conf


def test_unbound_conf_keeps_lab_test_reachable_and_everything_else_refused():
    conf = render.unbound_conf(PLAN, "/run/x/unbound")
    # unbound 1.17's built-in `test.` zone would answer NXDOMAIN for lab.test.
    assert '    local-zone: "lab.test." transparent' in conf
    assert '    local-zone: "." refuse' in conf
    assert '    module-config: "subnetcache iterator"' in conf
    assert "    cache-max-ttl: 30" in conf
    assert '    username: ""' in conf


def test_resolv_conf_points_at_the_resolver_on_both_families():
    res = PLAN.host("resolver")
    assert render.resolv_nameservers(PLAN) == [res.ipv4[0], res.ipv6[0]]


def test_toml_strings_are_escaped():
    assert render._toml_value('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert tomllib.loads("x = " + render._toml_value('0 issue "ca"'))["x"] == '0 issue "ca"'


def test_dns_toml_with_a_dnssec_key_signs_with_one_csk(tmp_path):
    from dns.config import load_dns_config
    (tmp_path / "lab.mmdb").write_bytes(b"")
    path = tmp_path / "dns.toml"
    path.write_text(render.dns_toml(PLAN, str(tmp_path / "lab.mmdb"), dnssec_key="/run/x/dnssec-csk.pem"))
    keys = load_dns_config(str(path)).dnssec.keys
    assert [(k.file, k.role, k.active) for k in keys] == [("/run/x/dnssec-csk.pem", "csk", True)]
    path.write_text(render.dns_toml(PLAN, str(tmp_path / "lab.mmdb")))
    assert load_dns_config(str(path)).dnssec.keys == ()


def test_unbound_conf_with_a_trust_anchor_validates_the_lab_zone_only():
    anchor = "lab.test. DS 46060 13 2 487FD78BB625D6C853C51562C6E7957E50D78D58EA4D1E9DCC679515055A4516"
    conf = render.unbound_conf(PLAN, "/run/x/unbound", trust_anchor=anchor)
    assert '    module-config: "subnetcache validator iterator"' in conf
    assert f'    trust-anchor: "{anchor}"' in conf
    assert "domain-insecure" not in conf and "root.key" not in conf and "auto-trust-anchor" not in conf
    assert '    local-zone: "." refuse' in conf  # still nothing outside the lab
    plain = render.unbound_conf(PLAN, "/run/x/unbound")
    assert '    domain-insecure: "lab.test"' in plain and "trust-anchor" not in plain


def test_edge_toml_gives_every_edge_the_labs_saml_idp_and_session_key(tmp_path):
    from edge.config import load

    from edge.modules.session import new_key_file
    from netns.saml_idp import Idp, make_keypair

    (tmp_path / "metadata.xml").write_text(Idp("https://idp.lab.test:8443", *make_keypair(tmp_path, "idp")).metadata())
    new_key_file(tmp_path / "saml-session.key")
    path = tmp_path / "edge.toml"
    saml = {"idp_metadata_files": [str(tmp_path / "metadata.xml")], "session_key_file": str(tmp_path / "saml-session.key")}
    path.write_text(render.edge_toml(PLAN, "/x/ca", "/x/certs", "/x/authtoken", "20000-20099", saml=saml))
    for pop in PLAN.pops:
        assert load(path, pop.id).module_options["saml"] == saml
    assert "[edge.modules.saml]" not in render.edge_toml(PLAN, "/x/ca", "/x/certs", "/x/authtoken")
