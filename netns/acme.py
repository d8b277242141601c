"""The lab's ACME CA: Debian's pebble on the `acme` host (docs/acme.md).

Owns: pebble's files in the state dir (`acme/`: pebble.json, its TLS
certificate and key, made here with `cryptography` and signed by the lab CA,
since the deb ships no test certificates; the edges' deployment key), its
command line (`-dnsserver` = the lab resolver, PEBBLE_VA_NOSLEEP=1 and real
validation), the [edge.acme] table the edges get, and the client trust
bundle: pebble's issuing root is random per run, so after each start it is
fetched from pebble's management interface (:15000/roots/0), from inside a
lab host, and `ca/ca.pem` becomes the lab CA followed by that root (and the
roots of earlier runs of this lab, whose certificates may still be served). Every
lab client that trusts `--cacert ca/ca.pem` trusts both; `ca/lab-ca.pem`
keeps the lab CA alone.
Must not touch: edge/ (the edges read the files; nothing here imports them).
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyroute2 import netns as pnetns

from netns.errors import LabError
from netns.guard import require_socket_in
from netns.plan import Host, LabPlan
from plumbing.addr import join_host_port

ACME_PORT = 14000        # pebble's ACME API (RFC 8555 directory at /dir)
MGMT_PORT = 15000        # pebble's management interface (roots, intermediates)
RESOLVER_PORT = 53
ROOT_TIMEOUT = 20.0      # s: pebble start until its root is fetched


def acme_host(plan: LabPlan) -> Host | None:
    hosts = plan.by_role("acme")
    return hosts[0] if hosts else None


def directory_url(host: Host) -> str:
    return f"https://{join_host_port(host.ipv4[0], ACME_PORT)}/dir"


def edge_table(host: Host, ca_bundle: str, deployment_key: str, nameservers: tuple[str, ...] = (),
               wildcards: tuple[str, ...] = ()) -> dict[str, Any]:
    """[edge.acme] of the lab's edges: on, at pebble, short waits (docs/acme.md). With the
    name servers' addresses, dns-01 too (served by our own DNS from the registry,
    docs/acme-dns.md), and the `wildcards` kept at all times through it."""
    table: dict[str, Any] = {
        "enabled": True, "directory_url": directory_url(host), "ca_bundle": ca_bundle,
        "email": "ops@lab.test", "deployment_key_file": deployment_key,
        "challenges": ["http-01", "tls-alpn-01"], "handshake_wait": 2.0, "retry_base": 5.0,
        "retry_max": 120.0, "order_timeout": 60.0, "net_timeout": 10.0, "check_interval": 10.0}
    if nameservers:
        table["challenges"].append("dns-01")
        table["dns01_nameservers"] = list(nameservers)
        if wildcards:
            table["wildcards"] = list(wildcards)
    return table


def write_files(acme_dir: Path, ca_dir: Path, host: Host) -> None:
    """pebble.json, pebble's TLS certificate (lab CA, SAN = the host's addresses) and key (0600),
    the edges' deployment key (0600), and ca/lab-ca.pem (the lab CA alone)."""
    acme_dir.mkdir(mode=0o700, exist_ok=True)
    ca_pem = (ca_dir / "ca.pem").read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise LabError(f"{ca_dir / 'ca.key'}: expected the lab CA's EC key")
    shutil.copyfile(ca_dir / "ca.pem", ca_dir / "lab-ca.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName("acme.lab.test")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in (*host.ipv4, *host.ipv6)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble (lab ACME CA)")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _secret(acme_dir / "pebble.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (acme_dir / "pebble.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _secret(acme_dir / "deployment.key", (secrets.token_hex(32) + "\n").encode())
    a4 = host.ipv4[0]
    (acme_dir / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": join_host_port(a4, ACME_PORT), "managementListenAddress": join_host_port(a4, MGMT_PORT),
        "certificate": str(acme_dir / "pebble.pem"), "privateKey": str(acme_dir / "pebble.key"),
        # Validation at the standard ports of whatever the name resolves to: an edge (RFC 8555 8.3, RFC 8737 3).
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}, indent=1))


def _secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def command(acme_dir: Path, plan: LabPlan) -> list[str]:
    pebble = shutil.which("pebble") or "/usr/bin/pebble"
    resolver = plan.by_role("resolver")[0]
    return [pebble, "-config", str(acme_dir / "pebble.json"),
            "-dnsserver", join_host_port(resolver.ipv4[0], RESOLVER_PORT)]


def env(base: dict[str, str]) -> dict[str, str]:
    # NOSLEEP only skips pebble's random 0-5 s sleep before validating; validation stays
    # real (never PEBBLE_VA_ALWAYS_VALID). No authorization reuse: every order validates.
    return {**base, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}


def _https_get(ns: str, addr: str, port: int, path: str, cafile: Path, timeout: float = 2.0) -> bytes | None:
    """GET over TLS from a socket created inside lab host `ns` (never from root); None on failure."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = pnetns.create_socket(ns, family, socket.SOCK_STREAM, flags=0)
    try:
        require_socket_in(s, ns)
        s.settimeout(timeout)
        s.connect((addr, port))
        ctx = ssl.create_default_context(cafile=str(cafile))
        with ctx.wrap_socket(s, server_hostname=addr) as t:
            t.sendall(f"GET {path} HTTP/1.1\r\nHost: {join_host_port(addr, port)}\r\nConnection: close\r\n\r\n"
                      .encode())
            data = b""
            while len(data) < (1 << 20):
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError):
        return None
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return body if head.startswith(b"HTTP/1.1 200") else None


def fetch_root_and_bundle(ns: str, host: Host, ca_dir: Path, alive: Any, timeout: float = ROOT_TIMEOUT) -> str:
    """Wait for pebble, fetch its issuing root, write ca/ca.pem = lab CA + that root (atomically).
    Returns the root's subject. `alive()` False: pebble died (fail at once)."""
    lab_ca = ca_dir / "lab-ca.pem"
    deadline = time.monotonic() + timeout
    while True:   # bounded by the deadline
        body = _https_get(ns, host.ipv4[0], MGMT_PORT, "/roots/0", lab_ca)
        if body and b"BEGIN CERTIFICATE" in body:
            break
        if not alive():
            raise LabError("pebble exited during start-up (see `gslb lab logs acme`)")
        if time.monotonic() > deadline:
            raise LabError(f"pebble's management interface ({host.ipv4[0]}:{MGMT_PORT}) gave no root in "
                           f"{timeout:.0f} s")
        time.sleep(0.1)
    root = x509.load_pem_x509_certificate(body)
    # Roots of earlier pebble runs of this lab stay (`gslb lab restart acme`): the
    # certificates they issued are still served until renewed.
    try:
        kept = [c for c in x509.load_pem_x509_certificates((ca_dir / "ca.pem").read_bytes())[1:] if c != root]
    except (OSError, ValueError):
        kept = []
    tmp = ca_dir / "ca.pem.tmp"
    tmp.write_bytes(lab_ca.read_bytes() + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)
                    + root.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)
    os.replace(tmp, ca_dir / "ca.pem")
    return root.subject.rfc4514_string()
