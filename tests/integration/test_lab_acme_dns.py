"""DNS-01 and custom domains in the lab (docs/acme-dns.md).

- `Dns01Solver.present` in a lab host, against the lab's etcd and both name servers;
  the TXT is then seen signed and validated (AD) through the lab's validating resolver.
- A real wildcard order: Debian's pebble, started by this file inside a lab host with
  `-dnsserver` pointing at a lab name server, and the PyPI `acme` library as a minimal
  client, with Dns01Solver answering the dns-01 challenges of `*.app.lab.test` and
  `app.lab.test` (one owner, two values at once).
- Custom domains: `gslb agent http --domain bad.example.test` is refused with the
  reason; `--domain shop.example.test` (CNAME to demo.app.lab.test in the lab's customer
  zone) is served, and clients at two PoPs reach the upstream through it.

The solver and the ACME client run in lab hosts (`python THIS <mode> ...` through
`ip netns exec`): every packet stays inside the lab.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from _polling import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(400)]

HERE = Path(__file__).resolve()
PY = sys.executable
HTTP_PORT = 18180


def ns_addresses(lab) -> list[str]:
    out = []
    for h in lab.role("dns"):
        out += [h["ipv4"][0], f"[{h['ipv6'][0]}]:53"]
    return out


def etcd_endpoints(lab) -> list[str]:
    return [f"http://{h['ipv4'][0]}:2379" for h in lab.role("registry")]


def test_dns01_present_reaches_both_name_servers_signed_and_validated(lab, tmp_path):
    flag = tmp_path / "cleanup"
    proc = lab.spawn("pop-eu", PY, str(HERE), "present", ",".join(etcd_endpoints(lab)),
                     ",".join(ns_addresses(lab)), str(flag), name="dns01-present")
    try:
        m = proc.wait_line(r"^presented (\{.*\})$", 60)
        info = json.loads(m.group(1))
        values = sorted(info["values"])
        for ns in lab.role("dns"):
            r = lab.run("client-jp", "dig", f"@{ns['ipv4'][0]}", "+norec", "+dnssec", "+time=2", "+tries=2",
                        "_acme-challenge.app.lab.test", "TXT")
            assert "status: NOERROR" in r.stdout and " aa" in r.stdout.split("flags:")[1].split(";")[0]
            got = sorted(line.split()[-1].strip('"') for line in r.stdout.splitlines()
                         if not line.startswith(";") and "\tTXT\t" in line)
            assert got == values, r.stdout
            assert "RRSIG\tTXT" in r.stdout or "RRSIG TXT" in r.stdout, r.stdout
        # Through the lab's validating resolver: AD=1 (the TXT RRset is signed like the zone).
        r = lab.run("client-jp", "dig", "+dnssec", "+time=2", "+tries=2", "_acme-challenge.app.lab.test", "TXT")
        assert "status: NOERROR" in r.stdout and " ad" in r.stdout.split("flags:")[1].split(";")[0], r.stdout
        flag.write_text("go")
        proc.wait_line(r"^cleaned$", 60)
    finally:
        proc.stop()
    print(f"\nDns01Solver.present (2 values, 2 name servers x 2 addresses) in the lab: {info['seconds'] * 1000:.0f} ms")
    for ns in lab.role("dns"):
        ok, _ = wait_for(lambda: "ANSWER: 0" in lab.run(
            "client-jp", "dig", f"@{ns['ipv4'][0]}", "+norec", "_acme-challenge.app.lab.test", "TXT").stdout, 10, 0.2)
        assert ok, "the TXT is still served after cleanup"


def test_wildcard_certificate_from_pebble_through_dns01(lab, tmp_path):
    if shutil.which("pebble") is None:
        msg = "pebble is not installed (apt-get install pebble)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import acme  # noqa: F401
    except ImportError:
        msg = "the PyPI acme library is not installed (pip install acme)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    dns1 = lab.role("dns")[0]["ipv4"][0]
    r = lab.run("pop-eu", PY, str(HERE), "order", ",".join(etcd_endpoints(lab)), ",".join(ns_addresses(lab)),
                f"{dns1}:53", str(tmp_path), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("issued "))
    info = json.loads(line[len("issued "):])
    assert sorted(info["sans"]) == ["*.app.lab.test", "app.lab.test"]
    assert info["issuer"].startswith("CN=Pebble Intermediate")
    print(f"\npebble wildcard order through DNS-01: {info['seconds']:.1f} s")


def test_custom_domain_refused_when_it_does_not_point_at_the_edge_served_when_it_does(lab, gslb_argv, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the shop upstream\n")
    bad = lab.spawn("agent", *gslb_argv, "agent", "http", str(HTTP_PORT), "--domain", "bad.example.test",
                    name="agent-bad")
    try:
        m = bad.wait_line(r"gslb agent: error: (.*)$", 30)
        assert bad.wait(10) == 1
        assert m.group(1) == ("bad.example.test does not point at the edge: A 203.0.113.7 is not an edge address; "
                              "add CNAME bad.example.test -> <name>.app.lab.test (bad_request)")
    finally:
        bad.stop()
    up = lab.spawn("agent", PY, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1", "--directory", str(www),
                   name="upstream")
    agent = lab.spawn("agent", *gslb_argv, "agent", "http", str(HTTP_PORT), "--domain", "shop.example.test",
                      name="agent-shop")
    try:
        agent.wait_line(r"forwarding https://shop\.example\.test -> http://localhost:18180", 30)
        ca = lab.status["state"]["ca"]
        for client, extra in (("client-jp", ()), ("client-lon", ("-6",))):
            def fetch():
                r = lab.run(client, "curl", "-sS", "--max-time", "10", *extra, "--cacert", ca,
                            "https://shop.example.test/", timeout=20)
                return r.stdout if r.returncode == 0 else None
            body, _ = wait_for(fetch, 30, 0.3)
            assert body == "hello from the shop upstream\n", (client, body)
    finally:
        agent.stop()
        up.stop()


# -- the parts that run inside a lab host ------------------------------------------------

def _present(endpoints: str, servers: str, flag: str) -> None:
    import asyncio

    from edge.acme.dns01 import Dns01Solver
    from edge.registry import EtcdConfig, EtcdRegistry

    async def main():
        async with EtcdRegistry(EtcdConfig(endpoints=tuple(endpoints.split(",")))) as reg:
            solver = Dns01Solver(reg, servers.split(","), timeout=30, interval=0.1)
            t0 = time.monotonic()
            await solver.present("*.app.lab.test", "tok-wild", "tok-wild.thumbprint")
            await solver.present("app.lab.test", "tok-base", "tok-base.thumbprint")
            raw = await reg.kv_get("dns01/_acme-challenge.app.lab.test")
            print("presented " + json.dumps({"values": json.loads(raw)["values"],
                                             "seconds": time.monotonic() - t0}), flush=True)
            deadline = time.monotonic() + 120
            while not os.path.exists(flag) and time.monotonic() < deadline:   # bounded
                await asyncio.sleep(0.1)
            await solver.cleanup("*.app.lab.test", "tok-wild")
            await solver.cleanup("app.lab.test", "tok-base")
            print("cleaned", flush=True)
    asyncio.run(main())


def _order(endpoints: str, servers: str, dnsserver: str, workdir: str) -> None:
    """Start pebble here (loopback of this lab host), order *.app.lab.test + app.lab.test with dns-01."""
    import asyncio
    import datetime
    import subprocess
    import urllib.request
    import ssl

    import josepy as jose
    from acme import challenges, client, crypto_util, messages
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from edge.acme.dns01 import Dns01Solver
    from edge.certs import CertAuthority
    from edge.registry import EtcdConfig, EtcdRegistry

    work = Path(workdir)
    ca = CertAuthority.create(work / "pebble-ca", common_name="pebble listener test CA")
    leaf = ca.issue(["localhost"])
    (work / "pebble.pem").write_bytes(leaf.cert_pem)
    (work / "pebble.key").write_bytes(leaf.key_pem)
    (work / "pebble.key").chmod(0o600)
    cfg = {"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
                      "certificate": str(work / "pebble.pem"), "privateKey": str(work / "pebble.key"),
                      "httpPort": 5002, "tlsPort": 5001, "ocspResponderURL": "",
                      "externalAccountBindingRequired": False}}
    (work / "pebble.json").write_text(json.dumps(cfg))
    log = open(work / "pebble.log", "wb")
    pebble = subprocess.Popen(["pebble", "-config", str(work / "pebble.json"), "-dnsserver", dnsserver],
                              stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0"))
    try:
        ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        deadline = time.monotonic() + 20
        while True:   # bounded by the deadline
            try:
                urllib.request.urlopen("https://localhost:14000/dir", context=ctx, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or pebble.poll() is not None:
                    raise SystemExit("pebble did not start: " + (work / "pebble.log").read_text()[-2000:])
                time.sleep(0.1)

        acc_key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        net = client.ClientNetwork(acc_key, user_agent="gslb-edge-test", verify_ssl=str(ca.cert_path))
        directory = client.ClientV2.get_directory("https://localhost:14000/dir", net)
        acme_client = client.ClientV2(directory, net)
        acme_client.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr = crypto_util.make_csr(key_pem, ["*.app.lab.test", "app.lab.test"])

        async def main():
            t0 = time.monotonic()
            async with EtcdRegistry(EtcdConfig(endpoints=tuple(endpoints.split(",")))) as reg:
                solver = Dns01Solver(reg, servers.split(","), timeout=30, interval=0.1)
                order = await asyncio.to_thread(acme_client.new_order, csr)
                presented = []
                for authz in order.authorizations:
                    ident = authz.body.identifier.value
                    name = ("*." + ident) if authz.body.wildcard else ident
                    chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))
                    response, validation = chall.chall.response_and_validation(acc_key)
                    await solver.present(name, chall.chall.encode("token"), chall.chall.key_authorization(acc_key))
                    presented.append((name, chall.chall.encode("token"), chall, response))
                for _name, _token, chall, response in presented:
                    await asyncio.to_thread(acme_client.answer_challenge, chall, response)
                deadline = datetime.datetime.now() + datetime.timedelta(seconds=90)
                done = await asyncio.to_thread(acme_client.poll_and_finalize, order, deadline)
                for name, token, _c, _r in presented:
                    await solver.cleanup(name, token)
            return done, time.monotonic() - t0
        done, seconds = asyncio.run(main())
        cert = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        print("issued " + json.dumps({"sans": sans.get_values_for_type(x509.DNSName),
                                      "issuer": cert.issuer.rfc4514_string(), "seconds": seconds}), flush=True)
    finally:
        pebble.terminate()
        try:
            pebble.wait(5)
        except subprocess.TimeoutExpired:
            pebble.kill()
            pebble.wait(5)
        log.close()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    mode = sys.argv[1]
    if mode == "present":
        _present(*sys.argv[2:5])
    elif mode == "order":
        _order(*sys.argv[2:6])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
