"""Prepare the lab's OpenID Connect provider (run by `gslb lab up` as a
separate process, like `gslb edge ca init`: netns/lab.py imports no edge/ code).

    python -m netns.idp.prepare --dir DIR --ca-dir CA_DIR --zone lab.test \
        --listen 198.18.0.80 --listen fd7a:5e1b:c00::80

Writes into DIR (created 0700), every secret 0600:
- cert.pem / key.pem: a certificate for idp.<zone> from the lab CA;
- idp.json: server.mjs's configuration (issuer, listen addresses, signing
  JWKS, cookie keys, clients, users);
- client_secret: the lab client's secret (give it to an agent with
  --oidc-client-secret-file);
- users.json: the lab users (username, password, email), for tests and people.

The lab client `lab-demo` accepts the callback of every name in ENDPOINTS
under app.<zone> (the redirect URIs must match exactly, OpenID Connect Core 3.1.2.1).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

from joserfc.jwk import RSAKey

from edge.certs import CertAuthority

CLIENT_ID = "lab-demo"
ENDPOINTS = ("demo", "sso", "oauth", "private", "denied")
PORT = 443
USERS = (  # username, email, name, groups: alice and carol may in (domain example.test), bob is refused
    ("alice", "alice@example.test", "Alice Lab", ["staff"]),
    ("bob", "bob@other.test", "Bob Other", ["guests"]),
    ("carol", "carol@example.test", "Carol Lab", ["staff", "ops"]),
)


def _write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def prepare(out: Path, ca_dir: Path, zone: str, listen: list[str]) -> dict:
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    host = f"idp.{zone}"
    issued = CertAuthority.load(ca_dir).issue([host])
    _write(out / "cert.pem", issued.cert_pem, 0o644)
    _write(out / "key.pem", issued.key_pem)
    key = RSAKey.generate_key(2048, parameters={"kid": "lab-" + secrets.token_hex(4), "use": "sig", "alg": "RS256"},
                              private=True)
    secret = secrets.token_urlsafe(32)
    users = [{"username": u, "password": secrets.token_urlsafe(12), "sub": u, "email": e, "name": n, "groups": g}
             for u, e, n, g in USERS]
    cfg = {
        "issuer": f"https://{host}",
        "listen": [[a, PORT] for a in listen],
        "cert": str(out / "cert.pem"), "key": str(out / "key.pem"),
        "cookie_keys": [secrets.token_urlsafe(32)],
        "jwks": {"keys": [key.as_dict(private=True)]},
        "clients": [{"client_id": CLIENT_ID, "client_secret": secret,
                     "redirect_uris": [f"https://{n}.app.{zone}/oauth2/callback" for n in ENDPOINTS]}],
        "users": users,
    }
    _write(out / "idp.json", json.dumps(cfg, indent=1))
    _write(out / "client_secret", secret + "\n")
    _write(out / "users.json", json.dumps({"issuer": cfg["issuer"], "client_id": CLIENT_ID,
                                           "client_secret_file": str(out / "client_secret"),
                                           "users": [{k: u[k] for k in ("username", "password", "email", "groups")}
                                                     for u in users]}, indent=1))
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="prepare the lab's OpenID Connect provider (gslb lab up runs it)")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--ca-dir", required=True, type=Path)
    p.add_argument("--zone", required=True)
    p.add_argument("--listen", action="append", required=True, help="an address of the idp host (repeatable)")
    a = p.parse_args(argv)
    cfg = prepare(a.dir, a.ca_dir, a.zone, a.listen)
    print(f"prepared {cfg['issuer']} in {a.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
