"""The lab's idp host: the plan holds it (address, zone records), the edges of the lab share one
session key and trust the lab CA for it, and netns/idp/prepare.py writes the provider's files
(its certificate from the lab CA, secrets 0600)."""
from __future__ import annotations

import json
import stat

import pytest
from cryptography import x509

from edge.certs import CertAuthority
from edge.config import load
from netns import render
from netns.errors import PlanError
from netns.idp import prepare
from netns.plan import default_plan_path, load_plan

PLAN = load_plan(default_plan_path())


def test_the_example_plan_has_one_idp_host_named_in_the_zone():
    (idp,) = PLAN.by_role("idp")
    assert idp.name == "idp" and idp.ipv4 == ("198.18.0.80",) and idp.ipv6 == ("fd7a:5e1b:c00::80",)
    recs = {(r["name"], r["type"]): r["value"] for r in PLAN.records}
    assert recs[("idp", "A")] == "198.18.0.80" and recs[("idp", "AAAA")] == "fd7a:5e1b:c00::80"


def test_at_most_one_idp_host(tmp_path):
    text = default_plan_path().read_text()
    block = '[[host]]\nname = "idp"\nrole = "idp"\nipv4 = ["198.18.0.80"]\nipv6 = ["fd7a:5e1b:c00::80"]\n'
    assert block in text
    p = tmp_path / "lab.toml"
    p.write_text(text.replace(block, block + "\n" + block.replace('"idp"\nrole', '"idp2"\nrole')
                              .replace("0.80", "0.81").replace("::80", "::81")))
    with pytest.raises(PlanError, match="at most one host with role 'idp'"):
        load_plan(p)


def test_every_edge_of_the_lab_runs_oidc_with_the_shared_key_and_the_lab_ca(tmp_path):
    key = tmp_path / "session.key"
    key.write_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    key.chmod(0o600)
    path = tmp_path / "edge.toml"
    path.write_text(render.edge_toml(PLAN, "/x/ca", "/x/certs", "/x/authtoken", "20000-20099",
                                     session_key_file=str(key), idp_ca_file="/x/ca/ca.pem"))
    for pop in PLAN.pops:
        cfg = load(path, pop.id)
        assert "oidc" in cfg.module_order
        assert cfg.module_options["oidc"] == {"session_key_file": str(key), "ca_file": "/x/ca/ca.pem"}


def test_prepare_writes_the_providers_files(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    out = tmp_path / "idp"
    cfg = prepare.prepare(out, tmp_path / "ca", "lab.test", ["198.18.0.80", "fd7a:5e1b:c00::80"])
    assert cfg["issuer"] == "https://idp.lab.test"
    assert cfg["listen"] == [["198.18.0.80", 443], ["fd7a:5e1b:c00::80", 443]]
    for name in ("idp.json", "key.pem", "client_secret", "users.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert cert.issuer == ca.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["idp.lab.test"]
    users = json.loads((out / "users.json").read_text())
    assert {u["username"] for u in users["users"]} == {"alice", "bob", "carol"}
    assert (out / "client_secret").read_text().strip() == cfg["clients"][0]["client_secret"]
    assert "https://sso.app.lab.test/oauth2/callback" in cfg["clients"][0]["redirect_uris"]
    assert len({u["password"] for u in users["users"]}) == 3
    assert "d" in cfg["jwks"]["keys"][0]  # the provider's private signing key, only in idp.json
