"""The lab's SAML 2.0 identity provider: pysaml2's IdP side
(`saml2.server.Server`) behind a small aiohttp app with a login form and
lab users, on the `idp` host at https://idp.<zone>:8443 (a lab-CA
certificate). Also the IdP the unit tests sign assertions with.

Endpoints:
  GET  /metadata          the IdP's metadata (the edges trust it: [edge.modules.saml] idp_metadata_files)
  GET  /sso/redirect      an AuthnRequest, HTTP-Redirect binding -> the login form
  POST /sso/post          an AuthnRequest, HTTP-POST binding -> the login form
  POST /login             user + password -> an auto-submitting form POSTing the signed SAMLResponse to the ACS
  GET  /idp-initiated?sp=HOST&relay=PATH   (after login in the same form) an unsolicited response

SP metadata: the IdP knows an SP by fetching https://<host>/saml/metadata
(the edge serves it) on its first AuthnRequest, for hosts under
`--sp-domain` only, trusting the lab CA; bounded (64 SPs).

Run: python -m netns.saml_idp --dir DIR --base-url https://idp.lab.test:8443 --sp-domain app.lab.test
     --listen ADDR --port 8443 --cert CERT --key KEY --ca CA --users USERS.json
"""
from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import logging
import secrets
import ssl
import sys
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import saml2.saml
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
    from saml2.authn_context import PASSWORD
    from saml2.config import IdPConfig
    from saml2.metadata import create_metadata_string
    from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT
    from saml2.server import Server

log = logging.getLogger("saml_idp")

LAB_USERS = {  # the lab's people (docs/saml.md); passwords are lab-only
    "alice": {"password": "alice-lab-pw", "mail": "alice@lab.test", "displayName": "Alice Lab", "groups": ["staff", "admins"]},
    "bob": {"password": "bob-lab-pw", "mail": "bob@lab.test", "displayName": "Bob Lab", "groups": ["guests"]},
}
MAX_SPS = 64


def make_keypair(directory: Path, name: str, days: int = 30) -> tuple[Path, Path]:
    """A self-signed RSA-2048 signing key and certificate (SAML metadata
    carries the certificate itself; no CA is involved in the XML signature)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subj).issuer_name(subj).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    kf, cf = directory / f"{name}.key", directory / f"{name}.crt"
    kf.touch(0o600)
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kf, cf


class Idp:
    """pysaml2's IdP with the lab's users; SPs are added by their metadata."""

    def __init__(self, base_url: str, key_file: Path, cert_file: Path, *, sp_metadata: list[str] = (),
                 lifetime_minutes: int = 5, xmlsec: str = "/usr/bin/xmlsec1") -> None:
        self.base_url = base_url.rstrip("/")
        self.entity_id = self.base_url + "/metadata"
        self._args = (key_file, cert_file, lifetime_minutes, xmlsec)
        self.sp_metadata: list[str] = list(sp_metadata)
        self.server = self._server()

    def _server(self) -> Any:
        key_file, cert_file, lifetime, xmlsec = self._args
        c = IdPConfig()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c.load({
                "entityid": self.entity_id,
                "service": {"idp": {
                    "endpoints": {"single_sign_on_service": [(self.base_url + "/sso/redirect", BINDING_HTTP_REDIRECT),
                                                             (self.base_url + "/sso/post", BINDING_HTTP_POST)]},
                    "policy": {"default": {"lifetime": {"minutes": lifetime}, "attribute_restrictions": None,
                                           "name_form": NAME_FORMAT_URI}},
                    "sign_assertion": True, "sign_response": False, "want_authn_requests_signed": False,
                    "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                }},
                "key_file": str(key_file), "cert_file": str(cert_file), "xmlsec_binary": xmlsec,
                "metadata": {"inline": list(self.sp_metadata)} if self.sp_metadata else {},
                "allow_unknown_attributes": True,
            })
            return Server(config=c)

    def metadata(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_metadata_string(None, config=self.server.config, valid=None).decode("utf-8")

    def add_sp(self, xml: str) -> None:
        if xml not in self.sp_metadata:
            self.sp_metadata = (self.sp_metadata + [xml])[-MAX_SPS:]
            self.server = self._server()

    def parse_request(self, saml_request: str, binding: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.server.parse_authn_request(saml_request, binding).message

    def response(self, user: str, *, in_response_to: str | None, destination: str, sp_entity_id: str,
                 sign: bool = True) -> str:
        """A SAMLResponse (base64) with the user's assertion, signed with the IdP's key unless `sign` is False."""
        u = LAB_USERS[user] if isinstance(user, str) and user in LAB_USERS else user
        name = user if isinstance(user, str) else u["name"]
        identity = {"mail": [u["mail"]], "displayName": [u["displayName"]], "groups": list(u["groups"])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resp = self.server.create_authn_response(
                identity, in_response_to=in_response_to, destination=destination, sp_entity_id=sp_entity_id,
                userid=name, name_id=saml2.saml.NameID(format=NAMEID_FORMAT_PERSISTENT, text=name),
                authn={"class_ref": PASSWORD, "authn_auth": self.entity_id}, sign_assertion=sign,
                sign_response=False)
        return base64.b64encode(str(resp).encode("utf-8")).decode("ascii")


def post_form(action: str, fields: dict[str, str]) -> str:
    """The auto-submitting HTML form of the HTTP-POST binding (SAML bindings 3.5.4)."""
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
                     for k, v in fields.items())
    return (f'<!doctype html><html><body onload="document.forms[0].submit()"><form method="post" '
            f'action="{html.escape(action)}">{inputs}<input type="submit" value="Continue"/></form></body></html>')


def login_form(error: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
                     for k, v in fields.items())
    err = f"<p class=error>{html.escape(error)}</p>" if error else ""
    return (f'<!doctype html><html><head><title>Lab IdP login</title></head><body><h1>Lab IdP</h1>{err}'
            f'<form method="post" action="/login">{inputs}<label>User <input name="username"/></label>'
            f'<label>Password <input type="password" name="password"/></label>'
            f'<input type="submit" value="Log in"/></form></body></html>')


def make_app(idp: Idp, sp_domain: str, ca_file: str | None) -> Any:
    from aiohttp import web

    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    pending: dict[str, dict[str, str]] = {}  # login form token -> the request (bounded)

    def fetch_sp(entity_id: str) -> None:
        u = urlparse(entity_id)
        host = (u.hostname or "").lower()
        if u.scheme != "https" or not (host == sp_domain or host.endswith("." + sp_domain)):
            raise web.HTTPForbidden(text=f"unknown SP {entity_id}")
        with urllib.request.urlopen(entity_id, context=ctx, timeout=5) as r:  # noqa: S310 - https, lab CA
            idp.add_sp(r.read(256 * 1024).decode("utf-8"))

    def start(saml_request: str, relay: str, binding: str) -> Any:
        from saml2.saml import Issuer  # noqa: F401
        try:
            req = idp.parse_request(saml_request, binding)
        except Exception:  # noqa: BLE001 - an SP we do not know yet: fetch its metadata once
            import xml.etree.ElementTree as ET
            import zlib

            raw = base64.b64decode(saml_request)
            xml = zlib.decompress(raw, -15) if binding == BINDING_HTTP_REDIRECT else raw
            issuer = ET.fromstring(xml).find("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer")
            if issuer is None or not issuer.text:
                raise web.HTTPBadRequest(text="AuthnRequest without Issuer")
            fetch_sp(issuer.text.strip())
            req = idp.parse_request(saml_request, binding)
        token = secrets.token_urlsafe(16)
        pending[token] = {"id": req.id, "acs": req.assertion_consumer_service_url or "",
                          "sp": req.issuer.text.strip(), "relay": relay}
        while len(pending) > 1000:
            pending.pop(next(iter(pending)))
        return web.Response(text=login_form("", {"token": token}), content_type="text/html")

    async def metadata(request: web.Request) -> web.Response:
        return web.Response(text=idp.metadata(), content_type="application/samlmetadata+xml")

    async def sso_redirect(request: web.Request) -> web.Response:
        q = request.query
        if "SAMLRequest" not in q:
            raise web.HTTPBadRequest(text="no SAMLRequest")
        return start(q["SAMLRequest"], q.get("RelayState", ""), BINDING_HTTP_REDIRECT)

    async def sso_post(request: web.Request) -> web.Response:
        f = await request.post()
        if "SAMLRequest" not in f:
            raise web.HTTPBadRequest(text="no SAMLRequest")
        return start(str(f["SAMLRequest"]), str(f.get("RelayState", "")), BINDING_HTTP_POST)

    async def login(request: web.Request) -> web.Response:
        f = await request.post()
        user, pw = str(f.get("username", "")), str(f.get("password", ""))
        token = str(f.get("token", ""))
        u = LAB_USERS.get(user)
        ok = u is not None and secrets.compare_digest(u["password"], pw)
        if token.startswith("idpinit:"):
            sp_host, relay = token[8:].split("|", 1)
            p = {"id": None, "acs": f"https://{sp_host}/saml/acs", "sp": f"https://{sp_host}/saml/metadata",
                 "relay": relay}
            if p["sp"] not in "".join(idp.sp_metadata):
                fetch_sp(p["sp"])
        else:
            p = pending.get(token)  # type: ignore[assignment]
        if p is None:
            raise web.HTTPBadRequest(text="no login under way")
        if not ok:
            log.info("login_failed user=%s", user[:64])
            return web.Response(text=login_form("wrong user or password", {"token": token}), content_type="text/html",
                                status=401)
        pending.pop(token, None)
        resp = idp.response(user, in_response_to=p["id"], destination=p["acs"], sp_entity_id=p["sp"])
        log.info("login_ok user=%s sp=%s", user, p["sp"])
        fields = {"SAMLResponse": resp}
        if p["relay"]:
            fields["RelayState"] = p["relay"]
        return web.Response(text=post_form(p["acs"], fields), content_type="text/html")

    async def idp_initiated(request: web.Request) -> web.Response:
        sp_host = request.query.get("sp", "")
        relay = request.query.get("relay", "/")
        if not (sp_host == sp_domain or sp_host.endswith("." + sp_domain)) or "|" in sp_host:
            raise web.HTTPBadRequest(text="sp must be a host under the SP domain")
        return web.Response(text=login_form("", {"token": f"idpinit:{sp_host}|{relay}"}), content_type="text/html")

    app = web.Application(client_max_size=512 * 1024)
    app.add_routes([web.get("/metadata", metadata), web.get("/sso/redirect", sso_redirect),
                    web.post("/sso/post", sso_post), web.post("/login", login),
                    web.get("/idp-initiated", idp_initiated)])
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netns.saml_idp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="state directory: signing key and certificate, metadata.xml")
    p.add_argument("--base-url", required=True, help="e.g. https://idp.lab.test:8443")
    p.add_argument("--sp-domain", required=True, help="SPs are trusted under this domain, e.g. app.lab.test")
    p.add_argument("--listen", action="append", default=[], help="address to listen on (repeatable)")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--cert", help="TLS certificate (lab CA)")
    p.add_argument("--key", help="TLS key")
    p.add_argument("--ca", help="CA to trust for SP metadata fetches")
    p.add_argument("--prepare", metavar="CA_DIR",
                   help="make DIR's files and exit: the signing key, metadata.xml, a TLS certificate for the "
                   "--base-url host from the CA in CA_DIR (tls.crt, tls.key), and the edges' saml-session.key")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    kf, cf = d / "saml-signing.key", d / "saml-signing.crt"
    if not kf.exists():
        kf, cf = make_keypair(d, "saml-signing")
    idp = Idp(args.base_url, kf, cf)
    (d / "metadata.xml").write_text(idp.metadata(), "utf-8")
    if args.prepare:
        from edge.certs import CertAuthority
        from edge.modules.session import new_key_file

        issued = CertAuthority.load(args.prepare).issue([urlparse(args.base_url).hostname])
        (d / "tls.crt").write_bytes(issued.cert_pem)
        (d / "tls.key").touch(0o600)
        (d / "tls.key").write_bytes(issued.key_pem)
        if not (d / "saml-session.key").exists():
            new_key_file(d / "saml-session.key")
        print(f"prepared the SAML IdP {idp.entity_id} in {d}")
        return 0
    from aiohttp import web

    sslctx = None
    if args.cert:
        sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sslctx.load_cert_chain(args.cert, args.key)
    web.run_app(make_app(idp, args.sp_domain, args.ca), host=args.listen or None, port=args.port, ssl_context=sslctx,
                print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
