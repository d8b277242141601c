"""Challenge solvers: put what the CA checks where every PoP can answer it.

The interface (shared with edge/acme/dns01.py, the DNS-01 solver):

    class Solver(Protocol):
        challenge_type: str    # "http-01" | "tls-alpn-01" | "dns-01"
        async def present(self, identifier, token, key_authorization) -> None
        async def cleanup(self, identifier, token) -> None

HTTP-01 (RFC 8555 8.3): the key authorization goes to the registry key
`<prefix>acme/http01/<token>`; every PoP's :80 listener answers
`GET /.well-known/acme-challenge/<token>` from it (edge/front/redirect.py),
so it does not matter which PoP the CA's resolver picks.

TLS-ALPN-01 (RFC 8737): the key authorization goes to
`<prefix>acme/tlsalpn01/<name>`; a ClientHello for <name> offering only
ALPN "acme-tls/1" gets a self-signed certificate for <name> carrying the
critical acmeIdentifier extension (OID 1.3.6.1.5.5.7.1.31) whose value is
the DER OCTET STRING of SHA-256(key authorization) (RFC 8737 3).

`choose` picks the challenge for one authorization: pure, unit-tested.
Must not touch: the order flow (client.py), sockets.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
from typing import Mapping, Protocol, Sequence, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from edge.acme.store import AcmeStore

ACME_TLS_ALPN = "acme-tls/1"                     # RFC 8737 6.2
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")   # id-pe-acmeIdentifier, RFC 8737 6.1
HTTP01_PATH = "/.well-known/acme-challenge/"     # RFC 8555 8.3
# Preference when the CA offers several and we can solve several: HTTP-01 and
# TLS-ALPN-01 need nothing outside the edge; DNS-01 last (it waits on DNS).
PREFERENCE = ("http-01", "tls-alpn-01", "dns-01")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")   # base64url (RFC 8555 8.1: token)


@runtime_checkable
class Solver(Protocol):
    challenge_type: str

    async def present(self, identifier: str, token: str, key_authorization: str) -> None: ...

    async def cleanup(self, identifier: str, token: str) -> None: ...


class ChallengeError(Exception):
    """No challenge of the authorization can be solved here (the message says why)."""


def choose(identifier: str, offered: Sequence[str], solvers: Mapping[str, object]) -> str:
    """The challenge type to answer for `identifier`, from the types the CA offered.

    A wildcard (`*.x`) can only be proven with DNS-01 (RFC 8555 7.1.3: the CA
    offers only dns-01 for it); without a dns-01 solver it is refused with
    a message saying so."""
    if identifier.startswith("*."):
        if "dns-01" not in solvers:
            raise ChallengeError(f"{identifier}: a wildcard name needs a DNS-01 solver, and none is configured "
                                 "(wildcards are issued only through DNS-01)")
        if "dns-01" not in offered:
            raise ChallengeError(f"{identifier}: the CA offered no dns-01 challenge for a wildcard "
                                 f"(offered: {', '.join(offered) or 'none'})")
        return "dns-01"
    for kind in PREFERENCE:
        if kind in offered and kind in solvers:
            return kind
    raise ChallengeError(f"{identifier}: no offered challenge can be solved here (offered: "
                         f"{', '.join(offered) or 'none'}; solvers: {', '.join(sorted(solvers)) or 'none'})")


def valid_token(token: str) -> bool:
    return bool(_TOKEN.match(token))


class Http01Solver:
    challenge_type = "http-01"

    def __init__(self, store: AcmeStore) -> None:
        self.store = store

    async def present(self, identifier: str, token: str, key_authorization: str) -> None:
        if not valid_token(token):
            raise ChallengeError(f"{identifier}: the CA's token is not base64url")
        await self.store.put_challenge("http01", token, key_authorization)

    async def cleanup(self, identifier: str, token: str) -> None:
        if valid_token(token):
            await self.store.delete_challenge("http01", token)

    async def answer(self, token: str) -> str | None:
        """The key authorization to answer GET /.well-known/acme-challenge/<token> with."""
        if not valid_token(token):
            return None
        return await self.store.get_challenge("http01", token)


class TlsAlpn01Solver:
    challenge_type = "tls-alpn-01"

    def __init__(self, store: AcmeStore) -> None:
        self.store = store

    async def present(self, identifier: str, token: str, key_authorization: str) -> None:
        await self.store.put_challenge("tlsalpn01", identifier, key_authorization)

    async def cleanup(self, identifier: str, token: str) -> None:
        await self.store.delete_challenge("tlsalpn01", identifier)

    async def answer(self, name: str) -> str | None:
        return await self.store.get_challenge("tlsalpn01", name)


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a TLS-ALPN-01 answer (RFC 8737 3): self-signed,
    SAN = the one name, acmeIdentifier critical = OCTET STRING(SHA-256(key authorization))."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # extnValue is the DER of Authorization ::= OCTET STRING (SIZE (32)): 04 20 <digest>
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
