"""The lab certificate authority and the edge's per-name certificates.

Owns: creating and loading the lab CA (made with `cryptography`), issuing a
certificate for a DNS name on demand (SAN dNSName, RFC 5280 4.2.1.6), caching
it in memory and on disk, and the `ssl.SSLContext` that serves it (TLS 1.2
and 1.3 only). Private keys are written 0600 and never logged.
Must not touch: which names deserve a certificate; the caller decides that
(the edge only asks for names under its endpoint domain or its ingress name,
which bounds issuance).
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertError", "CertAuthority", "CertStore", "IssuedCert", "valid_dns_name"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
_LEAF_DAYS = 90
_CA_DAYS = 3650
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class CertError(Exception):
    """The CA or a certificate cannot be created, loaded or issued."""


def valid_dns_name(name: str) -> bool:
    """LDH host name (RFC 1123 2.1), lower case, at most 253 octets; a leading '*' label is allowed."""
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    return len(labels) >= 1 and all(_LABEL.match(label) for label in labels)


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: never a moment where the key is world-readable.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class IssuedCert:
    name: str
    cert_pem: bytes   # leaf followed by the CA certificate (the chain a client needs)
    key_pem: bytes
    not_after: _dt.datetime


class CertAuthority:
    """A self-signed CA (EC P-256) kept in a directory: ca.pem (0644), ca.key (0600)."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, directory: str | Path, common_name: str = "gslb-edge lab CA") -> "CertAuthority":
        d = Path(directory)
        if (d / CA_KEY).exists() or (d / CA_CERT).exists():
            raise CertError(f"{d}: a CA already exists there (ca.pem/ca.key); refusing to overwrite it")
        d.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(hours=1))
            .not_valid_after(now + _dt.timedelta(days=_CA_DAYS))
            # RFC 5280 4.2.1.9 / 4.2.1.3: a CA that signs leaves and nothing below them.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(
            d / CA_KEY,
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        )
        _write_public(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        return cls(d, cert, key)

    @classmethod
    def load(cls, directory: str | Path) -> "CertAuthority":
        d = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise CertError(f"{exc.filename}: no CA there (create one with `gslb edge ca init --dir {d}`)") from None
        except ValueError as exc:
            raise CertError(f"{d}: CA files do not parse: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{d / CA_KEY}: expected an EC private key")
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise CertError(f"{d}: ca.key does not match ca.pem")
        return cls(d, cert, key)

    @classmethod
    def load_or_create(cls, directory: str | Path) -> "CertAuthority":
        d = Path(directory)
        if (d / CA_CERT).exists() or (d / CA_KEY).exists():
            return cls.load(d)
        return cls.create(d)

    def issue(self, names: list[str] | tuple[str, ...], *, client_auth: bool = False) -> IssuedCert:
        """A leaf for `names` (first is the subject CN), valid 90 days, serverAuth
        (and clientAuth with `client_auth`: the edges' peer links verify both ends)."""
        for n in names:
            if not valid_dns_name(n):
                raise CertError(f"{n!r} is not a DNS name a certificate can be issued for")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + _dt.timedelta(days=_LEAF_DAYS), self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])),
                critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCert(
            name=names[0],
            cert_pem=cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem,
            key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()),
            not_after=not_after,
        )


def server_context(cert_file: Path, key_file: Path, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A server context for one certificate: TLS 1.2 and 1.3 only (RFC 8996 retires older)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_file, key_file)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class CertStore:
    """Certificates per name, issued on first use; in memory (LRU, bounded) and on disk.

    On disk: DIR/<name>.pem (chain, 0644) and DIR/<name>.key (0600); a file
    within 7 days of expiry is issued again.
    """

    def __init__(self, ca: CertAuthority, directory: str | Path, max_cached: int = 1024) -> None:
        self.ca = ca
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_cached = max_cached
        self._contexts: OrderedDict[tuple[str, tuple[str, ...]], ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()
        self._issue_lock = threading.Lock()

    def _paths(self, name: str) -> tuple[Path, Path]:
        safe = name.replace("*", "_wildcard")
        return self.directory / f"{safe}.pem", self.directory / f"{safe}.key"

    def ensure(self, names: tuple[str, ...]) -> tuple[Path, Path]:
        """Files for the certificate of names[0] (with all `names` as SANs), issuing if needed."""
        if not names or not all(valid_dns_name(n) for n in names):
            raise CertError(f"{names!r}: not DNS names")
        cert_path, key_path = self._paths(names[0])
        if cert_path.exists() and key_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                fresh = cert.not_valid_after_utc - _now() > _dt.timedelta(days=7)
                try:
                    # Same subject is not enough: a CA made again has a new key.
                    cert.verify_directly_issued_by(self.ca.cert)
                    same_ca = True
                except (ValueError, TypeError, InvalidSignature):
                    same_ca = False
                if fresh and same_ca and set(sans.get_values_for_type(x509.DNSName)) >= set(names):
                    return cert_path, key_path
            except (ValueError, x509.ExtensionNotFound):
                pass  # unreadable or foreign: issue a new one below
        issued = self.ca.issue(list(names))
        _write_private(key_path, issued.key_pem)
        _write_public(cert_path, issued.cert_pem)
        return cert_path, key_path

    def cached(self, names: tuple[str, ...], alpn: tuple[str, ...] = ()) -> ssl.SSLContext | None:
        """The context if it is in memory already (no disk, no signing): for the event loop."""
        with self._lock:
            ctx = self._contexts.get((names[0], alpn))
            if ctx is not None:
                self._contexts.move_to_end((names[0], alpn))
            return ctx

    def context(self, names: tuple[str, ...] | str, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """The server SSLContext for `names` (cached)."""
        if isinstance(names, str):
            names = (names,)
        key = (names[0], alpn)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is not None:
                self._contexts.move_to_end(key)
                return ctx
        with self._issue_lock:
            # One issuer at a time: two first connections for a name must not
            # interleave writing its cert and key files.
            with self._lock:
                ctx = self._contexts.get(key)
            if ctx is not None:
                return ctx
            cert_path, key_path = self.ensure(names)
            ctx = server_context(cert_path, key_path, alpn)
        with self._lock:
            self._contexts[key] = ctx
            while len(self._contexts) > self.max_cached:
                self._contexts.popitem(last=False)
        return ctx
