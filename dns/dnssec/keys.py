"""DNSSEC keys: generation, files, DNSKEY RDATA, key tag and DS.

Owns the private keys (ECDSA P-256 SHA-256, algorithm 13, RFC 6605; Ed25519,
algorithm 15, RFC 8080), made and used with `cryptography`, and what is
derived from them: the DNSKEY RDATA (RFC 4034 2.1), the key tag (RFC 4034
appendix B) and the DS RDATA (RFC 4034 5.1, SHA-256 digest RFC 4509).

A key file is the private key as unencrypted PKCS#8 PEM, created 0600 and
refused when group or others can read it (it is a signing secret). The file
says nothing about the key's role: the DNS configuration does
(`[[dnssec.keys]]`). Private key material is never logged or printed.
"""
from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ECDSAP256SHA256, ED25519 = 13, 15
ALGORITHMS = {ECDSAP256SHA256: "ECDSAP256SHA256", ED25519: "ED25519"}
ALGORITHM_CODES = {"ecdsap256sha256": 13, "ecdsa": 13, "13": 13, "ed25519": 15, "15": 15}
ZONE, SEP = 0x0100, 0x0001  # DNSKEY flags (RFC 4034 2.1.1): zone key; secure entry point
ROLES = ("csk", "ksk", "zsk")
DIGEST_SHA256 = 2  # RFC 4509 2


class KeyError_(ValueError):
    """A key file that cannot be used, with the reason."""


@dataclass(frozen=True)
class SigningKey:
    """One DNSSEC key and its role in the zone.

    role: csk (signs everything), ksk (signs the DNSKEY RRset only), zsk
    (signs everything but the DNSKEY RRset). active: signs; a key that is
    only published (pre-publish or post-roll, RFC 7583) is in the DNSKEY RRset
    and signs nothing.
    """

    algorithm: int
    private: Any = field(repr=False, compare=False)
    role: str = "csk"
    active: bool = True
    path: str | None = None

    @property
    def flags(self) -> int:
        # RFC 4034 2.1.1: bit 7 zone key; SEP (bit 15) for what the DS points at (RFC 3757).
        return ZONE | (SEP if self.role in ("csk", "ksk") else 0)

    @property
    def public_key(self) -> bytes:
        pub = self.private.public_key()
        if self.algorithm == ECDSAP256SHA256:
            # RFC 6605 4: the public key is Q as x | y, 32 octets each (no 0x04 prefix).
            return pub.public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.UncompressedPoint)[1:]
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def dnskey_rdata(self) -> bytes:
        """RFC 4034 2.1: flags, protocol 3, algorithm, public key."""
        return struct.pack("!HBB", self.flags, 3, self.algorithm) + self.public_key

    @property
    def key_tag(self) -> int:
        return key_tag(self.dnskey_rdata())

    def ds_rdata(self, owner: bytes) -> bytes:
        """RFC 4034 5.1.4: digest = SHA-256(owner canonical | DNSKEY RDATA)."""
        digest = hashlib.sha256(owner.lower() + self.dnskey_rdata()).digest()
        return struct.pack("!HBB", self.key_tag, self.algorithm, DIGEST_SHA256) + digest

    def ds_text(self, owner: bytes) -> str:
        rd = self.ds_rdata(owner)
        return f"{self.key_tag} {self.algorithm} {DIGEST_SHA256} {rd[4:].hex().upper()}"

    def dnskey_text(self) -> str:
        return f"{self.flags} 3 {self.algorithm} {base64.b64encode(self.public_key).decode()}"

    def sign(self, data: bytes) -> bytes:
        """The signature field of an RRSIG over `data`."""
        if self.algorithm == ECDSAP256SHA256:
            # RFC 6605 4: r | s, 32 octets each, not the DER that cryptography returns.
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.private.sign(data)  # RFC 8080 4: PureEdDSA, 64 octets

    def with_role(self, role: str, active: bool = True) -> "SigningKey":
        return SigningKey(self.algorithm, self.private, role, active, self.path)


def key_tag(dnskey_rdata: bytes) -> int:
    """RFC 4034 appendix B: the 16-bit sum over the RDATA, carry folded in."""
    ac = 0
    for i, b in enumerate(dnskey_rdata):
        ac += b if i & 1 else b << 8
    ac += (ac >> 16) & 0xFFFF
    return ac & 0xFFFF


def key_from_private_bytes(algorithm: int, raw: bytes, role: str = "csk") -> SigningKey:
    """A key from the raw private value of a BIND "PrivateKey:" field (RFC vectors)."""
    if algorithm == ECDSAP256SHA256:
        return SigningKey(algorithm, ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()),
                          role)
    if algorithm == ED25519:
        return SigningKey(algorithm, ed25519.Ed25519PrivateKey.from_private_bytes(raw), role)
    raise KeyError_(f"unsupported algorithm {algorithm} (13 ECDSAP256SHA256 or 15 ED25519)")


def generate_key(algorithm: int = ECDSAP256SHA256, role: str = "csk") -> SigningKey:
    if algorithm == ECDSAP256SHA256:
        return SigningKey(algorithm, ec.generate_private_key(ec.SECP256R1()), role)
    if algorithm == ED25519:
        return SigningKey(algorithm, ed25519.Ed25519PrivateKey.generate(), role)
    raise KeyError_(f"unsupported algorithm {algorithm} (13 ECDSAP256SHA256 or 15 ED25519)")


def save_key(key: SigningKey, path: str) -> None:
    """Write the private key as PKCS#8 PEM, mode 0600; refuses to overwrite a file."""
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
    finally:
        os.close(fd)


def load_key(path: str, role: str = "csk", active: bool = True) -> SigningKey:
    """Read a key file; KeyError_ with the reason when it cannot be used."""
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            pem = fh.read(64 * 1024)
    except OSError as exc:
        raise KeyError_(f"cannot read {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise KeyError_(f"{path} is readable by group or others (mode {st.st_mode & 0o777:o}); "
                        f"chmod 600 it")
    try:
        priv = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"{path} is not an unencrypted PKCS#8 PEM private key ({exc})") from None
    if isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(priv.curve, ec.SECP256R1):
        alg = ECDSAP256SHA256
    elif isinstance(priv, ed25519.Ed25519PrivateKey):
        alg = ED25519
    else:
        raise KeyError_(f"{path}: only ECDSA P-256 and Ed25519 keys are supported")
    return SigningKey(alg, priv, role, active, path)
