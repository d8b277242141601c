"""Basic auth (RFC 7617): users and password hashes per endpoint; 401 with
`WWW-Authenticate: Basic realm="...", charset="UTF-8"` for anyone else.

Hashed at rest: the agent turns `user:password` into `user:$scrypt$...`
(`hash_entry`, the bind option's `agent_form`) before it sends the bind, so the
edge stores and compares only scrypt hashes (per-user salt, bounded cost).
A KDF costs tens of milliseconds of CPU: the module asks the shell to run
it in its thread pool (a `Compute` effect) and caches a success per
(endpoint, stored hash, SHA-256 of the credential) for `cache_seconds` on
`subject.now`, so a keep-alive client pays it once, not per request. An
unknown user costs the same KDF (against a dummy hash) as a wrong password.
Comparisons use hmac.compare_digest. Passwords are never logged; the
Authorization field is stripped before the request goes upstream and
`Gslb-Auth-User` (stripped from the client's request first) names the user.
See README.md.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge import errors as E
from edge.modules.base import (
    BindOption, Compute, Decision, Effect, EffectResult, Module, ModuleConfigError, Response, Subject, Verdict,
)

MAX_USERS = 100
MAX_USER = 64          # characters of a user name
MAX_PASSWORD = 256     # characters of a password
# scrypt (RFC 7914): N = 2**14, r = 8, p = 1 (16 MiB, tens of ms); the edge accepts N 2**10..2**16, r 1..8, p 1..2
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2 ** 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
CACHE_SECONDS = 60.0
CACHE_ENTRIES = 10_000
CODE = E.AUTH_REQUIRED.code
USER_HEADER = "Gslb-Auth-User"

_ENTRY = re.compile(r"^\$scrypt\$n=(\d{1,8}),r=(\d{1,2}),p=(\d)\$([A-Za-z0-9+/]{22,}={0,2})\$([A-Za-z0-9+/]{43}=?)$")
_USER_BAD = re.compile(r"[\x00-\x1f\x7f:]")


@dataclass(frozen=True)
class Hash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _kdf(password: str, n: int, r: int, p: int, salt: bytes) -> bytes:
    pw = unicodedata.normalize("NFC", password).encode("utf-8")  # RFC 7613-ish: one form for one password
    return hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, maxmem=(128 * r * n * p + 4 * 1024 * 1024) * 2,
                          dklen=HASH_BYTES)


def _check_user(user: str) -> str:
    if not user or len(user) > MAX_USER or _USER_BAD.search(user):
        raise ValueError(f"a user name is 1..{MAX_USER} characters, without ':' or control characters")
    return user


def parse_hash(text: str) -> Hash:
    m = _ENTRY.match(text)
    if not m:
        raise ValueError("not a password hash ($scrypt$n=N,r=R,p=P$salt$hash)")
    n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if n not in [2 ** k for k in range(10, 17)] or not 1 <= r <= 8 or not 1 <= p <= 2:
        raise ValueError("scrypt cost out of bounds (n a power of two 2**10..2**16, r 1..8, p 1..2)")
    try:
        salt, digest = base64.b64decode(m.group(4), validate=True), base64.b64decode(m.group(5), validate=True)
    except binascii.Error:
        raise ValueError("the salt or hash is not base64") from None
    if len(salt) < 16 or len(digest) != HASH_BYTES:
        raise ValueError("the salt is at least 16 bytes, the hash 32")
    return Hash(n, r, p, salt, digest)


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P,
                  salt: bytes | None = None) -> str:
    """`$scrypt$n=..,r=..,p=..$<salt b64>$<hash b64>` of `password` (fresh random salt)."""
    if not 1 <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password is 1..{MAX_PASSWORD} characters")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _kdf(password, n, r, p, salt)
    return f"$scrypt$n={n},r={r},p={p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def hash_entry(value: Any) -> Any:
    """Agent side (`BindOption.agent_form`): each `user:password` -> `user:$scrypt$...`;
    an entry that is already a hash (agent.toml may hold hashes) is kept."""
    if not isinstance(value, (list, tuple)):
        return value  # `check` says what is wrong
    out = []
    for item in value:
        if isinstance(item, str):
            user, sep, secret = item.partition(":")
            if sep and not _ENTRY.match(secret):
                item = f"{user}:{hash_password(secret)}"
        out.append(item)
    return out


def check_users(value: Any) -> list[str]:
    """Edge side (the hub, and the agent before it sends): a list of at most
    MAX_USERS `user:$scrypt$...` entries, each user once. Never echoes a secret."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_USERS:
        raise ValueError(f"option 'basic_auth' must be a list of 1..{MAX_USERS} user:password-hash entries")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"option 'basic_auth' entry {i + 1}: not a string")
        user, sep, secret = item.partition(":")
        try:
            _check_user(user)
            if not sep:
                raise ValueError("expected user:password")
            parse_hash(secret)
        except ValueError as exc:
            raise ValueError(f"option 'basic_auth' entry {i + 1}: {exc}") from None
        if user in seen:
            raise ValueError(f"option 'basic_auth': user {user!r} is listed twice")
        seen.add(user)
    return list(value)


def users_of(raw: Any) -> dict[str, Hash]:
    return {item.partition(":")[0]: parse_hash(item.partition(":")[2]) for item in raw}


def credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic <base64(user:password)>` field (RFC 7617 2), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 4 * (MAX_USER + MAX_PASSWORD + 1) * 4 // 3:
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or len(user) > MAX_USER or not 1 <= len(password) <= MAX_PASSWORD:
        return None
    return user, password


_DUMMY = Hash(DEFAULT_N, DEFAULT_R, DEFAULT_P, b"\0" * SALT_BYTES, b"\0" * HASH_BYTES)


def verify(stored: Hash, password: str) -> bool:
    """The KDF, run by the shell's thread pool (a Compute effect)."""
    return hmac.compare_digest(_kdf(password, stored.n, stored.r, stored.p, stored.salt), stored.digest)


@dataclass
class BasicAuth(Module):
    name: ClassVar[str] = "basic_auth"
    bind_options: ClassVar[Mapping[str, BindOption]] = {
        "basic_auth": BindOption(("http",), check_users,
                                 "require this user and password, RFC 7617 (repeatable; hashed by the agent)",
                                 flag="--basic-auth", metavar="USER:PASSWORD", agent_form=hash_entry),
    }
    cache_seconds: float = CACHE_SECONDS
    cache_entries: int = CACHE_ENTRIES
    realm: str = ""  # "" : the endpoint's host name
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("ok_total", "cached_total", "failed_total", "missing_total", "kdf_total", "kdf_errors_total"), 0))
    _cache: "OrderedDict[bytes, float]" = field(default_factory=OrderedDict)
    _users: dict[str, tuple[Any, dict[str, Hash]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "BasicAuth":
        unknown = set(options) - {"cache_seconds", "cache_entries", "realm"}
        if unknown:
            raise ModuleConfigError(f"basic_auth: unknown option(s) {', '.join(sorted(unknown))}")
        secs = options.get("cache_seconds", CACHE_SECONDS)
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 <= secs <= 3600:
            raise ModuleConfigError("cache_seconds: a number of seconds, 0..3600 (0: no cache)")
        entries = options.get("cache_entries", CACHE_ENTRIES)
        if isinstance(entries, bool) or not isinstance(entries, int) or not 1 <= entries <= 1_000_000:
            raise ModuleConfigError("cache_entries: an integer, 1..1000000")
        realm = options.get("realm", "")
        if not isinstance(realm, str) or len(realm) > 128 or any(c in realm for c in '"\\\r\n\0'):
            raise ModuleConfigError("realm: a string of at most 128 characters without quotes or backslashes")
        return cls(cache_seconds=float(secs), cache_entries=entries, realm=realm)

    def stats(self) -> dict[str, int]:
        """Counters (`*_total`) and the gauge `cache_entries`; names in README.md."""
        return {**self.counters, "cache_entries": len(self._cache)}

    def _table(self, endpoint: str, raw: Any) -> dict[str, Hash] | None:
        got = self._users.get(endpoint)
        if got is not None and (got[0] is raw or got[0] == raw):
            return got[1]
        try:
            table: dict[str, Hash] | None = users_of(raw)
        except (ValueError, TypeError, AttributeError):
            table = None  # checked at bind time; another version's binding: fail closed
        if len(self._users) >= 4096:
            self._users.clear()
        self._users[endpoint] = (raw, table)
        return table

    def _key(self, subject: Subject, user: str, stored: Hash, password: str) -> bytes:
        h = hashlib.sha256()
        for part in (subject.endpoint.encode(), user.encode(), stored.salt, stored.digest, password.encode()):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def idle(self, options: Mapping[str, Any]) -> bool:
        return not options.get("basic_auth")  # no users on the endpoint: decide() passes

    def decide(self, subject: Subject) -> Decision:
        raw = subject.options.get("basic_auth")
        if not raw or subject.request is None:
            return Decision(Verdict.PASS)
        table = self._table(subject.endpoint, raw)
        if table is None:
            return self._challenge(subject, "the endpoint's users are invalid")
        cred = credentials(subject.request.header("authorization"))
        if cred is None:
            self.counters["missing_total"] += 1
            return self._challenge(subject, "no credentials")
        user, password = cred
        stored = table.get(user)
        if stored is not None and self.cache_seconds > 0:
            key = self._key(subject, user, stored, password)
            until = self._cache.get(key)
            if until is not None and subject.now < until:
                self.counters["cached_total"] += 1
                return self._ok(user)
        target = stored if stored is not None else _DUMMY  # an unknown user costs a KDF too
        self.counters["kdf_total"] += 1
        return Decision(Verdict.PERFORM, module=self.name,
                        effect=Compute(lambda: verify(target, password) and stored is not None, "basic_auth_kdf", 10.0))

    def resume(self, subject: Subject, effect: Effect, result: EffectResult) -> Decision:
        cred = credentials(subject.request.header("authorization")) if subject.request else None
        if result.error:
            self.counters["kdf_errors_total"] += 1
        if result.error == "busy":  # the shell's bound on queued KDFs (a flood): not the client's fault
            return Decision(Verdict.ANSWER, status=503, reason="password checks busy", module=self.name,
                            response=Response(503, (("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8"),
                                                    ("Cache-Control", "no-store")), b"busy, retry in a second\n"))
        if result.error or result.value is not True or cred is None:
            self.counters["failed_total"] += 1
            return self._challenge(subject, "wrong user or password")
        user, password = cred
        table = self._table(subject.endpoint, subject.options.get("basic_auth")) or {}
        stored = table.get(user)
        if stored is not None and self.cache_seconds > 0:
            key = self._key(subject, user, stored, password)
            self._cache[key] = subject.now + self.cache_seconds
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        self.counters["ok_total"] += 1
        return self._ok(user)

    def _ok(self, user: str) -> Decision:
        return Decision(Verdict.PASS, add_upstream=((USER_HEADER, user),),
                        strip_upstream=("Authorization", USER_HEADER))

    def _challenge(self, subject: Subject, reason: str) -> Decision:
        realm = self.realm or subject.endpoint
        body = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Authentication required</title></head>\n"
                f"<body><h1>Authentication required</h1>\n<p>{realm} needs a user name and password.</p>\n"
                f"<p><code>{CODE}</code></p>\n</body></html>\n").encode("utf-8")
        return Decision(Verdict.ANSWER, status=401, code=CODE, reason=reason, module=self.name,
                        response=Response(401, (
                            ("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'),
                            ("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                            ("X-Gslb-Error-Code", CODE)), body))
