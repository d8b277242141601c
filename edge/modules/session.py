"""Sealed cookies for the edge's identity modules (OIDC, OAuth, SAML): one
deployment key, values encrypted and authenticated, valid at every PoP.

Not a module of the chain: a tool the identity modules share, so a session
started at one PoP is honoured at every PoP that holds the same key file
(`session_key_file` in each identity module's options; the lab gives every
edge the same file), and a login's state (state, nonce, PKCE verifier, the
original URI) can travel in a cookie instead of in one PoP's memory: the
identity provider may send the browser back to another PoP.

Format of a sealed value (ASCII, cookie-safe):

    v1.<base64url(nonce 12 bytes | AES-256-GCM ciphertext and tag)>

The plaintext is JSON `{"p": purpose, "iat": issued, "exp": expires, "d": data}`;
the purpose (e.g. "session:demo.app.lab.test", "login:demo.app.lab.test") is
also the GCM associated data, so a value sealed for one purpose or host is
refused for any other (a login cookie cannot pose as a session, a session for
one endpoint is not one for another). AES-GCM (NIST SP 800-38D) gives both
secrecy and integrity: a tampered, truncated or foreign value opens to None.
Times are wall-clock seconds (`Subject.wall`): a session must mean the same
at every PoP, which a process's monotonic clock cannot.

Pure: no clock (the caller passes `now`), no I/O except `load_key_file`,
which runs when the configuration is loaded.
"""
from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "MAX_VALUE", "Sealer", "SessionKeyError", "load_key_file", "set_cookie", "clear_cookie",
           "cookie_value", "new_key_file"]

KEY_BYTES = 32          # AES-256
MAX_VALUE = 3800        # bytes of a sealed value: a cookie of up to 4096 bytes with its name and attributes
_PREFIX = "v1."


class SessionKeyError(ValueError):
    """The session key file is missing, unreadable, too open, or not a key."""


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte key in `path`: base64 (standard or url-safe, one line) of 32
    random bytes, as `new_key_file` writes it. Refused when group or others
    may read it (a key is 0600, like every secret of the project)."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionKeyError(f"{p}: cannot read the session key ({exc.__class__.__name__}: {exc})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SessionKeyError(f"{p}: the session key may be read by others (mode {stat.S_IMODE(st.st_mode):o}); "
                              f"chmod 600 {p}")
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise SessionKeyError(f"{p}: not base64 (make one: umask 077; head -c 32 /dev/urandom | base64 > {p})") from None
    if len(key) != KEY_BYTES:
        raise SessionKeyError(f"{p}: the key is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def new_key_file(path: str | os.PathLike[str]) -> Path:
    """Write a fresh random key to `path` (0600, created exclusively: an
    existing key is never overwritten, so PoPs sharing it keep their sessions)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii") + "\n")
    return p


@dataclass(frozen=True)
class Sealer:
    """Seals and opens values with one deployment key."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a session key is {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never the key, in a log line or a traceback
        return "Sealer(key=<hidden>)"

    def seal(self, purpose: str, data: Any, now: float, ttl: float) -> str:
        """`data` (JSON-serialisable) sealed for `purpose`, valid for `ttl` seconds from `now`.
        Raises ValueError if the sealed value would not fit in a cookie (MAX_VALUE)."""
        plain = json.dumps({"p": purpose, "iat": int(now), "exp": int(now + ttl), "d": data},
                           separators=(",", ":"), ensure_ascii=True).encode("ascii")
        nonce = os.urandom(12)
        value = _PREFIX + _b64e(nonce + AESGCM(self.key).encrypt(nonce, plain, purpose.encode("utf-8")))
        if len(value) > MAX_VALUE:
            raise ValueError(f"sealed value of {len(value)} bytes does not fit in a cookie (at most {MAX_VALUE})")
        return value

    def open(self, purpose: str, value: str | None, now: float) -> tuple[Any, float] | None:
        """(data, issued) of a value sealed for `purpose` that has not expired
        at `now`; None for anything else (tampered, foreign key, other purpose,
        expired, malformed), never an exception."""
        if not value or len(value) > MAX_VALUE or not value.startswith(_PREFIX):
            return None
        try:
            raw = _b64d(value[len(_PREFIX):])
        except ValueError:
            return None
        if len(raw) < 12 + 16:
            return None
        try:
            plain = AESGCM(self.key).decrypt(raw[:12], raw[12:], purpose.encode("utf-8"))
            doc = json.loads(plain)
        except (InvalidTag, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("p") != purpose:
            return None
        exp, iat = doc.get("exp"), doc.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int) or now >= exp or iat > now + 300:
            return None   # expired, or issued in the future beyond clock skew between PoPs
        return doc.get("d"), float(iat)


def set_cookie(name: str, value: str, max_age: int | None, *, same_site: str = "Lax") -> str:
    """A Set-Cookie value (RFC 6265) scoped to exactly the endpoint's host:
    no Domain attribute, Path=/, Secure, HttpOnly. With a `__Host-` name
    (RFC 6265bis 4.1.3.2) browsers enforce that scope too."""
    if same_site not in ("Lax", "Strict", "None"):
        raise ValueError("SameSite is Lax, Strict or None")
    parts = [f"{name}={value}", "Path=/", "Secure", "HttpOnly", f"SameSite={same_site}"]
    if max_age is not None:
        parts.append(f"Max-Age={max(0, int(max_age))}")
    return "; ".join(parts)


def clear_cookie(name: str) -> str:
    """A Set-Cookie value that deletes the cookie `name`."""
    return set_cookie(name, "", 0)


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a request's Cookie header field (RFC 6265
    5.4: `a=b; c=d`), the first one if it is repeated; None if absent."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        n, sep, v = part.strip().partition("=")
        if sep and n == name:
            return v.strip().strip('"')
    return None
