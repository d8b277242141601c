"""ACME in the lab: a new endpoint gets a pebble-issued certificate that every PoP serves.

Uses the session lab (`gslb lab up`): the `acme` host runs pebble, validating
for real through the lab resolver; the edges order from it (docs/acme.md).
The agent binds a fresh name at its nearest PoP; clients in two regions enter
two other PoPs and must see the same certificate (one order for the
deployment, kept in etcd), verified by the clients' `--cacert` file (the lab
CA + pebble's root of this run). Every client runs inside a client host.
Figures (printed, never asserted): seconds from bind to a valid certificate
at a far PoP, and fresh TLS handshakes per second with the certificate warm.
"""
from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest
from _polling import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve()
PY = sys.executable
PORT = 18091
NAME = "acmelab.app.lab.test"
HANDSHAKES = 200      # fresh TLS handshakes in the warm loop (bounded in count)
HANDSHAKE_BUDGET = 60.0   # s, bound of that loop


def peer_cert(lab, client: str, name: str, ca: str) -> dict:
    r = lab.run(client, PY, str(HERE), "cert", name, ca, timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def bound(lab, gslb_argv):
    st = lab.status["state"]
    if not lab.role("acme"):
        pytest.fail("the lab plan has no acme host (examples/lab.toml)")
    started = []
    try:
        up = lab.spawn("agent", PY, "-m", "http.server", str(PORT), "--bind", "127.0.0.1", name="acme-upstream")
        started.append(up)
        agent = lab.spawn("agent", *gslb_argv, "agent", "http", str(PORT), "--name", NAME.split(".")[0],
                          name="acme-agent")
        started.append(agent)
        agent.wait_line(r"forwarding https://acmelab\.app\.lab\.test ", 30)
        t_bound = time.monotonic()

        def pebble_cert():
            r = lab.run("client-au", PY, str(HERE), "cert", NAME, st["ca"], timeout=40)
            return r.returncode == 0 and json.loads(r.stdout)["issuer"].startswith("Pebble")
        ok, _ = wait_for(pebble_cert, 60, 0.2)
        assert ok, "no pebble-issued certificate for a new endpoint within 60 s"
        yield type("Bound", (), {"ca": st["ca"], "bind_to_cert": time.monotonic() - t_bound})
    finally:
        for p in reversed(started):
            p.stop()


def test_new_endpoint_gets_one_pebble_certificate_seen_alike_from_two_regions(lab, bound):
    jp = peer_cert(lab, "client-jp", NAME, bound.ca)
    eu = peer_cert(lab, "client-eu", NAME, bound.ca)
    assert jp["issuer"].startswith("Pebble Intermediate CA") and jp["verified"], jp
    assert jp["serial"] == eu["serial"], (jp, eu)
    assert jp["remote"] != eu["remote"]          # two PoPs served it
    r = lab.run("client-jp", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", bound.ca,
                f"https://{NAME}/", timeout=30)
    assert r.stdout == "200", r.stdout + r.stderr
    print(f"bind_to_valid_certificate_s={bound.bind_to_cert:.2f} serial={jp['serial']}")


def test_ingress_and_peer_names_keep_the_lab_ca(lab, bound):
    got = peer_cert(lab, "client-jp", "connect.lab.test", bound.ca)
    assert got["issuer"] == "gslb-edge lab CA", got


def test_warm_handshakes_per_second(lab, bound):
    r = lab.run("client-jp", PY, str(HERE), "handshakes", NAME, bound.ca, str(HANDSHAKES), str(HANDSHAKE_BUDGET),
                timeout=HANDSHAKE_BUDGET + 30)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["done"] >= 1 and out["failed"] == 0, out
    print(f"warm_handshakes={out['done']} seconds={out['seconds']:.2f} per_s={out['done'] / out['seconds']:.0f}")


def test_ca_down_a_new_name_gets_the_fallback_and_served_certificates_stay(lab, bound, gslb_argv, gslb_run):
    before = peer_cert(lab, "client-jp", NAME, bound.ca)
    gslb_run("lab", "kill", "--prefix", lab.prefix, "acme", check=True)
    agent = None
    try:
        agent = lab.spawn("agent", *gslb_argv, "agent", "http", str(PORT), "--name", "acmedown", name="acme-agent-2")
        agent.wait_line(r"forwarding https://acmedown\.app\.lab\.test ", 30)
        got = peer_cert(lab, "client-eu", "acmedown.app.lab.test", bound.ca)
        assert got["issuer"] == "gslb-edge lab CA", got          # the fallback, verified by the same bundle
        assert peer_cert(lab, "client-jp", NAME, bound.ca)["serial"] == before["serial"]
        logs = Path(lab.status["state"]["dir"]) / "logs"

        def failed():
            return [line for f in logs.glob("pop-*.edge.log") for line in f.read_text().splitlines()
                    if "event=acme_order_failed" in line and "name=acmedown.app.lab.test" in line]
        lines, _ = wait_for(failed, 20, 0.2)
        assert lines and "cannot connect" in lines[0] and "198.18.0.60:14000" in lines[0], lines
    finally:
        if agent is not None:
            agent.stop()
        gslb_run("lab", "restart", "--prefix", lab.prefix, "acme", check=True)


# ---------------------------------------------------------------- helpers run inside a client host

def test_the_edges_keep_a_wildcard_certificate_through_dns01(lab):
    """[edge.acme] wildcards in the lab (*.wild.app.lab.test, docs/acme.md): one PoP orders it
    through dns-01, which our own name servers answer from the registry; pebble validates
    it through the resolver; the certificate lands in the deployment's store in etcd."""
    key = "/gslb/acme/certs/*.wild.app.lab.test"
    endpoints = ",".join(f"http://{h['ipv4'][0]}:2379" for h in lab.role("registry"))

    def stored():
        r = lab.run("agent", "etcdctl", f"--endpoints={endpoints}", "get", "--print-value-only", key, timeout=20)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
    doc, waited = wait_for(stored, 90, 0.5)
    assert doc, f"no {key} in the registry within 90 s"
    print(f"\nwildcard through dns-01 in the store {waited:.1f} s after the test began")
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(doc["chain"].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == ["*.wild.app.lab.test"], sans
    assert leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value.startswith("Pebble")
    assert "PRIVATE KEY" not in json.dumps(doc)          # the key is sealed with the deployment key


def _cert(name: str, ca: str) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    addr = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    with socket.create_connection(addr, timeout=20) as s, ctx.wrap_socket(s, server_hostname=name) as t:
        from cryptography import x509

        cert = x509.load_der_x509_certificate(t.getpeercert(binary_form=True))
        issuer = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        print(json.dumps({"serial": f"{cert.serial_number:X}", "issuer": issuer, "verified": True,
                          "remote": addr[0]}))


def _handshakes(name: str, ca: str, n: str, budget: str) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.options |= ssl.OP_NO_TICKET   # fresh handshakes: no session resumption
    addr = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    done = failed = 0
    t0 = time.monotonic()
    for _ in range(int(n)):   # bounded in count and in time
        if time.monotonic() - t0 > float(budget):
            break
        try:
            with socket.create_connection(addr, timeout=10) as s, ctx.wrap_socket(s, server_hostname=name):
                done += 1
        except OSError:
            failed += 1
    print(json.dumps({"done": done, "failed": failed, "seconds": time.monotonic() - t0}))


if __name__ == "__main__":
    sys.path[:0] = [str(HERE.parents[2])]
    mode, *rest = sys.argv[1:]
    {"cert": _cert, "handshakes": _handshakes}[mode](*rest)
