"""The `oidc` bind option: its check (hub and agent), the agent's flags and
the agent-side form (`client_secret_file` read into `client_secret`).

A bind option is a table (docs: edge/modules/oidc/README.md):

    oidc = { issuer = "https://idp.example.test", client_id = "demo",
             client_secret = "...", allow_domains = ["example.test"] }

The secret travels in the bind over the agent's TLS tunnel and is kept as a
`Secret`, a str whose repr is hidden, so a log line or a traceback that
prints the options never shows it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

OPTION = "oidc"
PROFILES = ("oidc", "oauth2", "github")
MAX_LIST = 256            # entries of an allow list
MAX_TEXT = 512            # characters of a URL, id or secret
MAX_SECRET_FILE = 4096    # bytes of a client secret file
DURATIONS = {"max_session_duration": 86400, "idle_session_duration": 3600, "userinfo_refresh_interval": 0}
MIN_REFRESH = 60          # seconds: the least userinfo_refresh_interval (0 is off)
MAX_DURATION = 30 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d{1,7})([smhd]?)$")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 3.3 scope-token
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]{1,253}$")

TEXT_KEYS = ("issuer", "client_id", "client_secret", "provider", "authorize_url", "token_url", "user_url",
             "email_claim", "subject_claim", "name_claim", "groups_claim")
LIST_KEYS = ("allow_emails", "allow_domains", "allow_groups", "scopes")
BOOL_KEYS = ("userinfo", "allow_cors_preflight")
KEYS = frozenset(TEXT_KEYS + LIST_KEYS + BOOL_KEYS + tuple(DURATIONS) + ("issuer_url",))

# The agent's flags: flag -> (key, repeatable, metavar, help).
FLAGS: dict[str, tuple[str, bool, str, str]] = {
    "--oidc": ("issuer", False, "ISSUER", "log visitors in at this OpenID Connect provider (its issuer URL)"),
    "--oidc-client-id": ("client_id", False, "ID", "the endpoint's client id at the provider"),
    "--oidc-client-secret-file": ("client_secret_file", False, "FILE", "a file holding the client secret (never logged)"),
    "--oidc-allow-email": ("allow_emails", True, "EMAIL", "let this email address in (repeatable)"),
    "--oidc-allow-domain": ("allow_domains", True, "DOMAIN", "let email addresses of this domain in (repeatable)"),
    "--oidc-allow-group": ("allow_groups", True, "GROUP", "let members of this group in (repeatable)"),
    "--oidc-scope": ("scopes", True, "SCOPE", "ask for this scope (repeatable; default openid email profile)"),
}


class Secret(str):
    """A client secret: a str everywhere (JSON, HTTP) but in repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<hidden>'"


def parse_duration(value: Any, what: str) -> int:
    """Seconds from an integer or "90s", "30m", "12h", "7d"."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected seconds or a duration like \"30m\"")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        n = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{what}: expected seconds or a duration like \"30m\", got {value!r}")
    if not 0 <= n <= MAX_DURATION:
        raise ValueError(f"{what}: {n} s is out of range (0 to {MAX_DURATION})")
    return n


def _url(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{what}: expected a URL of at most {MAX_TEXT} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment or any(
            c in value for c in " \r\n\0"):
        raise ValueError(f"{what}: {value!r} is not an http(s) URL")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or any(ord(c) < 0x20 for c in value):
        raise ValueError(f"{what}: expected a non-empty string of at most {MAX_TEXT} printable characters")
    return value


def _list(value: Any, what: str, pattern: re.Pattern[str], lower: bool) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST:
        raise ValueError(f"{what}: expected a list of at most {MAX_LIST} strings")
    out = []
    for item in value:
        if not isinstance(item, str) or not pattern.match(item.lower() if lower else item):
            raise ValueError(f"{what}: {item!r} is not valid")
        out.append(item.lower() if lower else item)
    return out


def _single(value: Any, what: str) -> Any:
    """Flags come as one-item lists."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"{what}: give it once")
        return value[0]
    return value


def check_option(value: Any) -> dict[str, Any]:
    """The normalized `oidc` table, or ValueError with the agent's text.
    Runs at the hub (the bind) and in the agent (before it connects)."""
    what = f"option {OPTION!r}"
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected a table (issuer, client_id, client_secret, allow_emails, ...)")
    unknown = set(value) - KEYS
    if unknown:
        hint = " (the agent reads client_secret_file and sends client_secret)" if "client_secret_file" in unknown else ""
        raise ValueError(f"{what}: unknown key(s) {', '.join(sorted(map(str, unknown)))}{hint}")
    if "issuer_url" in value:  # ngrok's name for it
        if "issuer" in value:
            raise ValueError(f"{what}: give issuer or issuer_url, not both")
        value = {("issuer" if k == "issuer_url" else k): v for k, v in value.items()}
    out: dict[str, Any] = {}
    provider = _single(value.get("provider", "oidc"), f"{what}.provider")
    if provider not in PROFILES:
        raise ValueError(f"{what}.provider: {provider!r} is not one of {', '.join(PROFILES)}")
    out["provider"] = provider
    for key in TEXT_KEYS:
        if key in value and key != "provider":
            v = _single(value[key], f"{what}.{key}")
            if key in ("issuer", "authorize_url", "token_url", "user_url"):
                out[key] = _url(v, f"{what}.{key}")
            elif key.endswith("_claim"):
                if not isinstance(v, str) or not _CLAIM.match(v):
                    raise ValueError(f"{what}.{key}: {v!r} is not a claim name")
                out[key] = v
            else:
                out[key] = _text(v, f"{what}.{key}")
    if "client_secret" in out:
        out["client_secret"] = Secret(out["client_secret"])
    for key in ("client_id",):
        if key not in out:
            raise ValueError(f"{what}: {key} is missing")
    if provider == "oidc" and "issuer" not in out:
        raise ValueError(f"{what}: issuer is missing (the provider's issuer URL, for discovery)")
    if provider == "oauth2":
        missing = [k for k in ("authorize_url", "token_url", "user_url") if k not in out]
        if missing:
            raise ValueError(f"{what}: provider \"oauth2\" needs {', '.join(missing)}")
    if provider in ("oauth2", "github") and "client_secret" not in out:
        raise ValueError(f"{what}: provider {provider!r} needs client_secret")
    patterns = {"allow_emails": (_EMAIL, True), "allow_domains": (_DOMAIN, True), "allow_groups": (_CLAIM, False),
                "scopes": (_SCOPE, False)}
    for key in LIST_KEYS:
        if key in value:
            pat, lower = patterns[key]
            out[key] = _list(value[key], f"{what}.{key}", pat, lower)
    for key in BOOL_KEYS:
        if key in value:
            v = _single(value[key], f"{what}.{key}")
            if not isinstance(v, bool):
                raise ValueError(f"{what}.{key}: expected true or false")
            out[key] = v
    for key in DURATIONS:
        if key in value:
            out[key] = parse_duration(_single(value[key], f"{what}.{key}"), f"{what}.{key}")
    if 0 < out.get("userinfo_refresh_interval", 0) < MIN_REFRESH:
        raise ValueError(f"{what}.userinfo_refresh_interval: at least {MIN_REFRESH} s (or 0: off)")
    if out.get("max_session_duration", 1) == 0:
        raise ValueError(f"{what}.max_session_duration: must be more than 0")
    return out


def agent_form(value: Any, base: Path | None = None) -> Any:
    """The agent's side: `client_secret_file` (flag or agent.toml) read into
    `client_secret`, then checked. The file's content is never in an error."""
    if not isinstance(value, Mapping) or "client_secret_file" not in value:
        return value
    out = dict(value)
    path = _single(out.pop("client_secret_file"), f"option {OPTION!r}.client_secret_file")
    if not isinstance(path, str) or not path:
        raise ValueError(f"option {OPTION!r}.client_secret_file: expected a file name")
    p = Path(path)
    if base is not None and not p.is_absolute():
        p = base / p
    try:
        raw = p.read_bytes()[:MAX_SECRET_FILE + 1]
    except OSError as exc:
        raise ValueError(f"option {OPTION!r}.client_secret_file: cannot read {p}: {exc.strerror}") from None
    if len(raw) > MAX_SECRET_FILE:
        raise ValueError(f"option {OPTION!r}.client_secret_file: {p} is larger than {MAX_SECRET_FILE} bytes")
    lines = [ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise ValueError(f"option {OPTION!r}.client_secret_file: {p} must hold the secret on one line")
    out["client_secret"] = Secret(lines[0])
    return out


def from_flags(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `oidc` table from the agent's flags (`values`: flag -> list of
    values, as argparse collects them); None when no --oidc* flag is given."""
    got: dict[str, Any] = {}
    for flag, (key, repeatable, _, _) in FLAGS.items():
        v = values.get(flag) or []
        if not v:
            continue
        if not repeatable and len(v) > 1:
            raise ValueError(f"{flag}: give it once")
        got[key] = list(v) if repeatable else v[0]
    if not got:
        return None
    if "issuer" not in got:
        raise ValueError("--oidc ISSUER is needed with the other --oidc-* flags")
    return got
