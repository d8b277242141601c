"""Private keys at rest: AES-256-GCM under the deployment key.

Owns: reading the deployment key file (32 random bytes, as 64 hex digits or
44 base64 characters, or raw; the file must not be readable by group or
others), making one (`create_key_file`, 0600), and sealing/opening the
private keys the certificate store keeps in the registry. The associated
data binds a sealed blob to the key it is stored under, so a blob copied to
another name does not open. Must not touch: the registry, logs (a key or a
plaintext is never logged).

Sealed format: b"v1:" + base64(nonce(12) || ciphertext || tag(16)).
"""
from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_VERSION = b"v1:"


class CryptoError(Exception):
    """The deployment key is missing or bad, or a sealed value does not open."""


def _decode_key(data: bytes, path: str) -> bytes:
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return binascii.unhexlify(text)
        except (ValueError, binascii.Error):
            pass
    try:
        key = base64.b64decode(text, validate=True)
        if len(key) == KEY_BYTES:
            return key
    except (ValueError, binascii.Error):
        pass
    if len(data) == KEY_BYTES:
        return data
    raise CryptoError(f"{path}: expected a {KEY_BYTES}-byte key (64 hex digits, base64 or raw), "
                      f"got {len(data)} bytes that are none of these")


def load_key_file(path: str | Path) -> bytes:
    """The deployment key from `path`; refuses a file group or others can read."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except FileNotFoundError:
        raise CryptoError(f"{p}: no deployment key there (create one: gslb edge acme keygen --out {p})") from None
    except OSError as exc:
        raise CryptoError(f"{p}: cannot read: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CryptoError(f"{p}: mode {stat.S_IMODE(st.st_mode):04o} lets others read the deployment key; "
                          f"chmod 600 {p}")
    return _decode_key(data, str(p))


def create_key_file(path: str | Path) -> None:
    """A new random deployment key in `path` (hex, 0600 from the start); refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")


class Sealer:
    """AES-256-GCM with a random 96-bit nonce per value (NIST SP 800-38D 8.2.2)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CryptoError(f"deployment key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + base64.b64encode(nonce + self._aead.encrypt(nonce, plaintext, context.encode()))

    def open(self, sealed: bytes, context: str) -> bytes:
        if not sealed.startswith(_VERSION):
            raise CryptoError(f"{context}: not a sealed value (unknown format)")
        try:
            raw = base64.b64decode(sealed[len(_VERSION):], validate=True)
        except (ValueError, binascii.Error):
            raise CryptoError(f"{context}: sealed value is not base64") from None
        if len(raw) < 12 + 16:
            raise CryptoError(f"{context}: sealed value too short")
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode())
        except InvalidTag:
            raise CryptoError(f"{context}: does not open with this deployment key "
                              "(another deployment's key, or the value was altered)") from None
