"""OpenID Connect and OAuth 2.0 login in front of an HTTP endpoint.

Owns: the `oidc` bind option (options.py), the reserved paths
`/oauth2/callback` and `/oauth2/logout` on an endpoint that has it, the
session cookie and the login-state cookie (both sealed with the edge
deployment's key, `session.Sealer`, so a login begun at one PoP may end at
another and a session is honoured at every PoP), the ID token's validation
(joserfc: signature with the provider's JWKS, iss, aud, exp, nonce), the
allow lists, and the identity headers upstream (`Gslb-Auth-Email`,
`Gslb-Auth-Subject`, `Gslb-Auth-Name`, stripped from every client request
first). Caches per provider: the discovery document and the JWKS, with
expiry in `subject.now`; an unknown `kid` refetches the JWKS at most once a
`jwks_refetch_interval`.

Pure: every call to the provider (discovery, JWKS, token, userinfo) is an
`HttpCall` effect the shell performs; the login flow goes on in `resume`
with what the effect carries (`_Step.ctx`). Wall-clock time (`subject.wall`)
for cookies and tokens, which must mean the same at every PoP. See README.md.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from joserfc import jws, jwt
from joserfc.errors import (BadSignatureError, ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError)
from joserfc.jwk import KeySet

from edge import errors as E
from edge.modules import session as S
from edge.modules.base import (
    BindOption, Decision, EffectResult, HttpCall, Module, ModuleConfigError, Response, Subject, Verdict,
)
from edge.modules.oidc import options as O

CALLBACK_PATH = "/oauth2/callback"
LOGOUT_PATH = "/oauth2/logout"
SESSION_COOKIE = "__Host-gslb_session"
LOGIN_COOKIE = "__Host-gslb_login_"        # + the first 12 characters of the state: one per login under way
IDENTITY_HEADERS = ("Gslb-Auth-Email", "Gslb-Auth-Subject", "Gslb-Auth-Name")
SEALED_SECRET = "sealed:"  # a client secret as the registry holds it: sealed with the deployment's key
SECRET_TTL = 10 * 365 * 86400  # a sealed secret lives as long as its binding; the seal itself does not expire
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_TARGET = 2048          # characters of the original URI kept for after the login
MAX_PROVIDERS = 256        # discovery documents and key sets cached
MAX_TOKEN = 16384          # characters of an ID token
CLOCK_SKEW = 60            # seconds of leeway on exp/iat/nbf between the edge and the provider
GITHUB = {"authorize_url": "https://github.com/login/oauth/authorize",
          "token_url": "https://github.com/login/oauth/access_token", "user_url": "https://api.github.com/user",
          "subject_claim": "id", "name_claim": "name", "email_claim": "email", "scopes": ["read:user", "user:email"]}
STATS = ("logins_started_total", "logins_ok_total", "logins_denied_total", "logins_failed_total",
         "sessions_refreshed_total", "sessions_expired_total", "logouts_total", "idp_errors_total",
         "discovery_fetches_total", "jwks_fetches_total", "preflights_passed_total")


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _header_value(v: Any) -> str:
    """A claim as a header value: printable ASCII kept, the rest percent-encoded (UTF-8)."""
    s = str(v)[:512]
    return "".join(c if 0x20 <= ord(c) < 0x7F and c != "%" else quote(c, safe="") for c in s)


@dataclass(frozen=True, repr=False)
class _Step(HttpCall):
    step: str = ""
    ctx: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:  # headers and body may hold the client secret or a token: never shown
        return f"HttpCall({self.method} {self.url.split('?')[0]}, step={self.step})"


class TokenError(Exception):
    """An ID token or token response the edge refuses; `kind` counts it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class _Provider:
    """What one provider's endpoints are (discovery or a profile)."""

    authorize: str
    token: str
    userinfo: str = ""
    jwks_uri: str = ""
    issuer: str = ""
    end_session: str = ""


def provider_from_discovery(issuer: str, doc: Any) -> _Provider:
    """The endpoints of an OpenID Provider Metadata document (OpenID Connect
    Discovery 1.0, 3/4.3: its issuer must be the one asked for)."""
    if not isinstance(doc, dict):
        raise TokenError("discovery", "not a JSON object")
    if doc.get("issuer") != issuer:
        raise TokenError("discovery", f"issuer {str(doc.get('issuer'))[:100]!r} is not {issuer!r}")
    try:
        p = _Provider(authorize=O._url(doc.get("authorization_endpoint"), "authorization_endpoint"),
                      token=O._url(doc.get("token_endpoint"), "token_endpoint"),
                      jwks_uri=O._url(doc.get("jwks_uri"), "jwks_uri"), issuer=issuer)
        if doc.get("userinfo_endpoint"):
            p.userinfo = O._url(doc["userinfo_endpoint"], "userinfo_endpoint")
        if doc.get("end_session_endpoint"):
            p.end_session = O._url(doc["end_session_endpoint"], "end_session_endpoint")
    except ValueError as exc:
        raise TokenError("discovery", str(exc)) from None
    return p


def validate_id_token(token: str, keys: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str,
                      now: float) -> dict[str, Any]:
    """The claims of an ID token (OpenID Connect Core 1.0, 3.1.3.7): signed by
    a key of the provider's JWKS (`keys`, a JWK Set dict) with an asymmetric
    algorithm, issued by `issuer` for `client_id` (aud, and azp when aud has
    several), not expired at `now`, with the login's `nonce`. TokenError else."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise TokenError("malformed", "no ID token, or too large")
    try:
        header = jws.extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError) as exc:
        raise TokenError("malformed", type(exc).__name__) from None
    if header.get("alg") not in ALGORITHMS:
        raise TokenError("bad_algorithm", f"alg {str(header.get('alg'))[:20]!r} is not allowed")
    try:
        key_set = KeySet.import_key_set(keys)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenError("bad_jwks", type(exc).__name__) from None
    kid = header.get("kid")
    if kid is not None and not any(k.kid == kid for k in key_set.keys):
        raise TokenError("unknown_key", f"kid {str(kid)[:64]!r} is not in the provider's JWKS")
    try:
        decoded = jwt.decode(token, key_set, algorithms=list(ALGORITHMS))
    except BadSignatureError:
        raise TokenError("bad_signature", "the signature does not verify with the provider's keys") from None
    except (JoseError, ValueError) as exc:
        raise TokenError("malformed", type(exc).__name__) from None
    claims = decoded.claims
    registry = jwt.JWTClaimsRegistry(
        now=int(now), leeway=CLOCK_SKEW,
        iss={"essential": True, "value": issuer}, aud={"essential": True, "value": client_id},
        sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise TokenError("expired", "the ID token has expired") from None
    except MissingClaimError as exc:
        raise TokenError("missing_claim", str(exc)) from None
    except InvalidClaimError as exc:
        name = str(exc).split("'")[1] if "'" in str(exc) else "claim"
        kinds = {"iss": "wrong_issuer", "aud": "wrong_audience", "nonce": "nonce_mismatch"}
        raise TokenError(kinds.get(name, "invalid_claim"), str(exc)) from None
    except JoseError as exc:
        raise TokenError("invalid_claim", str(exc)) from None
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
        raise TokenError("wrong_audience", "several audiences and azp is not this client")
    return dict(claims)


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge), RFC 7636 4.1-4.2."""
    verifier = _b64(secrets.token_bytes(32))
    return verifier, _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _page(status: int, title: str, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>\n").encode("utf-8")
    return Response(status, (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")) + headers,
                    body)


@dataclass(eq=False)  # identity: a chain holds it, its caches and counters are its own
class Oidc(Module):
    name: ClassVar[str] = "oidc"
    bind_options: ClassVar[Mapping[str, BindOption]] = {
        O.OPTION: BindOption(("http",), O.check_option,
                             "log visitors in at an OpenID Connect / OAuth 2.0 provider (a table; see "
                             "edge/modules/oidc/README.md)",
                             table_flags=tuple((flag, key, rep, metavar, text)
                                               for flag, (key, rep, metavar, text) in O.FLAGS.items()),
                             agent_form=O.agent_form),
    }
    sealer: S.Sealer | None = None
    ephemeral_key: bool = False
    ca_file: str = ""
    timeout: float = 5.0
    discovery_ttl: float = 3600.0
    jwks_ttl: float = 3600.0
    jwks_refetch_interval: float = 60.0
    login_ttl: int = 1800
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATS, 0))
    token_errors: dict[str, int] = field(default_factory=dict)
    _discovery: OrderedDict[str, tuple[_Provider, float]] = field(default_factory=OrderedDict)
    _jwks: OrderedDict[str, tuple[dict[str, Any], float, float]] = field(default_factory=OrderedDict)

    _CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"session_key_file", "ca_file", "timeout", "discovery_ttl", "jwks_ttl", "jwks_refetch_interval", "login_ttl"})

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "Oidc":
        unknown = set(options) - cls._CONFIG_KEYS
        if unknown:
            raise ModuleConfigError(f"oidc: unknown option(s) {', '.join(sorted(unknown))} "
                                    f"(known: {', '.join(sorted(cls._CONFIG_KEYS))})")
        kw: dict[str, Any] = {}
        key_file = options.get("session_key_file")
        if key_file is not None:
            if not isinstance(key_file, str) or not key_file:
                raise ModuleConfigError("oidc.session_key_file: expected a file name")
            try:
                kw["sealer"] = S.Sealer(S.load_key_file(key_file))
            except S.SessionKeyError as exc:
                raise ModuleConfigError(f"oidc.session_key_file: {exc}") from None
        else:
            # No deployment key: sessions hold at this edge process only (documented).
            kw["sealer"], kw["ephemeral_key"] = S.Sealer(secrets.token_bytes(S.KEY_BYTES)), True
        ca = options.get("ca_file")
        if ca is not None:
            if not isinstance(ca, str) or not ca:
                raise ModuleConfigError("oidc.ca_file: expected a file name (PEM CA bundle)")
            kw["ca_file"] = ca
        for key, lo, hi in (("timeout", 0.1, 60), ("discovery_ttl", 1, 86400), ("jwks_ttl", 1, 86400),
                            ("jwks_refetch_interval", 0, 3600), ("login_ttl", 60, 86400)):
            if key in options:
                v = options[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                    raise ModuleConfigError(f"oidc.{key}: expected a number from {lo} to {hi}")
                kw[key] = int(v) if key == "login_ttl" else float(v)
        return cls(**kw)

    def registry_options(self, options: dict[str, Any], wall: float) -> dict[str, Any]:
        """The client secret sealed before the binding goes to the registry: the other PoPs, which
        hold the same session key, open it to finish a login; etcd never holds it in the clear."""
        raw = options.get(O.OPTION)
        if not isinstance(raw, dict) or not raw.get("client_secret") or \
                str(raw["client_secret"]).startswith(SEALED_SECRET):
            return options
        sealed = self._sealer().seal(self._secret_purpose(raw), str(raw["client_secret"]), wall, SECRET_TTL)
        return {**options, O.OPTION: {**raw, "client_secret": O.Secret(SEALED_SECRET + sealed)}}

    @staticmethod
    def _secret_purpose(cfg: Mapping[str, Any]) -> str:
        return f"oidc-client-secret:{cfg.get('client_id', '')}"

    def _client_secret(self, cfg: Mapping[str, Any], wall: float) -> str | None:
        """The secret in the clear ("" if none); None if it is sealed with another key."""
        secret = str(cfg.get("client_secret") or "")
        if not secret.startswith(SEALED_SECRET):
            return secret
        opened = self._sealer().open(self._secret_purpose(cfg), secret[len(SEALED_SECRET):], wall)
        return O.Secret(opened[0]) if opened is not None and isinstance(opened[0], str) else None

    def stats(self) -> dict[str, int]:
        """Counters (`*_total`), token errors by kind (`token_error_<kind>_total`); README.md."""
        out = dict(self.counters)
        for kind, n in self.token_errors.items():
            out[f"token_error_{kind}_total"] = n
        return out

    # -- deciding ---------------------------------------------------------------------------
    def idle(self, options: Mapping[str, Any]) -> bool:
        return options.get(O.OPTION) is None  # the endpoint asked for no login: decide() passes

    def decide(self, subject: Subject) -> Decision:
        raw = subject.options.get(O.OPTION) if subject.kind == "http" else None
        if raw is None or subject.request is None:
            return Decision(Verdict.PASS)
        try:
            cfg = self._config(raw)
        except ValueError as exc:  # a binding checked by another version: fail closed
            return self._error(subject, 500, "bad_options", f"the endpoint's oidc options are invalid: {exc}")
        req = subject.request
        path, _, query = req.target.partition("?")
        if path == CALLBACK_PATH:
            return self._callback(subject, cfg, query)
        if path == LOGOUT_PATH:
            self.counters["logouts_total"] += 1
            return self._answer(_page(200, "Signed out", f"You are signed out of {subject.endpoint}.",
                                      (("Set-Cookie", S.clear_cookie(SESSION_COOKIE)),)), "logout")
        sess = self._session(subject, cfg)
        if sess is not None:
            data, touch = sess
            if cfg.get("userinfo_refresh_interval", 0) and \
                    subject.wall - data.get("ck", 0) >= cfg["userinfo_refresh_interval"]:
                return self._refresh(subject, cfg, data)
            if touch and req.method in ("GET", "HEAD"):
                # idle timer: the cookie is renewed by a redirect to the same URI (a response from
                # upstream cannot carry the edge's Set-Cookie)
                return self._redirect(subject, cfg, data, self._safe_target(req.target))
            return self._allow(data, subject)
        if cfg.get("allow_cors_preflight") and req.method == "OPTIONS" and \
                req.header("Access-Control-Request-Method") is not None and req.header("Origin") is not None:
            self.counters["preflights_passed_total"] += 1
            return Decision(Verdict.PASS, strip_upstream=IDENTITY_HEADERS)
        return self._with_provider(subject, cfg, {"then": "login", "target": self._safe_target(req.target)})

    def resume(self, subject: Subject, effect: Any, result: EffectResult) -> Decision:
        raw = subject.options.get(O.OPTION)
        try:
            cfg = self._config(raw)
        except ValueError as exc:
            return self._error(subject, 500, "bad_options", str(exc))
        step, ctx = getattr(effect, "step", ""), dict(getattr(effect, "ctx", {}))
        if result.error or not 200 <= result.status < 300:
            what = result.error or f"HTTP {result.status}"
            self.counters["idp_errors_total"] += 1
            if step == "token" and result.status in (400, 401):
                return self._failed(subject, "token_rejected", f"the provider refused the code ({what})", 403)
            if step == "userinfo" and ctx.get("then") == "refresh" and result.status == 401:
                self.counters["sessions_expired_total"] += 1
                return self._with_provider(subject, cfg, {"then": "login", "target": ctx.get("target", "/")})
            return self._error(subject, 502, "idp_unreachable",
                               f"the identity provider did not answer ({step}: {what})")
        try:
            doc = json.loads(result.body)
        except ValueError:
            if step == "token":  # GitHub answers form-encoded without Accept: application/json
                doc = dict(parse_qsl(result.body.decode("utf-8", "replace")))
            else:
                self.counters["idp_errors_total"] += 1
                return self._error(subject, 502, "idp_bad_answer", f"the identity provider's {step} is not JSON")
        if step == "discovery":
            self.counters["discovery_fetches_total"] += 1
            try:
                prov = provider_from_discovery(cfg["issuer"], doc)
            except TokenError as exc:
                self._count_error(exc.kind)
                return self._error(subject, 502, "idp_bad_answer", f"discovery: {exc}")
            self._put(self._discovery, cfg["issuer"], (prov, subject.now + self.discovery_ttl))
            return self._with_provider(subject, cfg, ctx)
        if step == "jwks":
            self.counters["jwks_fetches_total"] += 1
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                return self._error(subject, 502, "idp_bad_answer", "the provider's JWKS has no keys")
            self._put(self._jwks, effect.url, (doc, subject.now + self.jwks_ttl, subject.now))
            ctx["jwks_fetched"] = True
            return self._with_provider(subject, cfg, ctx)
        if step == "token":
            if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
                return self._failed(subject, "token_response", "the token response has no access_token", 403)
            ctx["tokens"] = {"access_token": doc["access_token"][:4096],
                             "id_token": doc.get("id_token") if isinstance(doc.get("id_token"), str) else ""}
            return self._with_provider(subject, cfg, ctx)
        if step == "userinfo":
            if not isinstance(doc, dict):
                return self._failed(subject, "userinfo", "userinfo is not a JSON object", 403)
            ctx["userinfo"] = doc
            return self._with_provider(subject, cfg, ctx)
        return self._error(subject, 500, "bad_step", f"unknown step {step!r}")

    # -- the flow ---------------------------------------------------------------------------
    def _with_provider(self, subject: Subject, cfg: dict[str, Any], ctx: dict[str, Any]) -> Decision:
        """Go on with the flow in `ctx` once the provider's endpoints are known."""
        prov = self._provider(subject, cfg)
        if prov is None:
            return self._perform(cfg, "discovery", "GET", cfg["issuer"].rstrip("/") + "/.well-known/openid-configuration",
                                 ctx)
        then = ctx.get("then")
        if then == "login":
            return self._begin_login(subject, cfg, prov, ctx["target"])
        if then == "callback":
            if "tokens" not in ctx:
                return self._token_request(subject, cfg, prov, ctx)
            return self._after_tokens(subject, cfg, prov, ctx)
        if then == "refresh":
            if not prov.userinfo:  # nothing to ask: the session stands until it expires
                return self._allow({**ctx["session"]}, subject)
            if not ctx["session"].get("at"):  # no access token kept: log in again
                return self._begin_login(subject, cfg, prov, ctx["target"])
            if "userinfo" not in ctx:
                return self._userinfo_request(cfg, prov, ctx, ctx["session"]["at"])
            return self._after_refresh(subject, cfg, ctx)
        return self._error(subject, 500, "bad_step", "unknown flow")

    def _begin_login(self, subject: Subject, cfg: dict[str, Any], prov: _Provider, target: str) -> Decision:
        state, nonce = _b64(secrets.token_bytes(24)), _b64(secrets.token_bytes(24))
        verifier, challenge = pkce_pair()
        login = {"s": state, "n": nonce, "v": verifier, "t": target}
        sealed = self._sealer().seal(f"login:{subject.endpoint}", login, subject.wall, self.login_ttl)
        params = {"response_type": "code", "client_id": cfg["client_id"], "redirect_uri": self._redirect_uri(subject),
                  "scope": " ".join(self._scopes(cfg)), "state": state, "code_challenge": challenge,
                  "code_challenge_method": "S256"}
        if cfg["provider"] == "oidc":
            params["nonce"] = nonce
        sep = "&" if "?" in prov.authorize else "?"
        self.counters["logins_started_total"] += 1
        return self._answer(Response(302, (("Location", prov.authorize + sep + urlencode(params)),
                                           ("Set-Cookie", S.set_cookie(LOGIN_COOKIE + state[:12], sealed,
                                                                       self.login_ttl)),
                                           ("Cache-Control", "no-store"))), "login redirect")

    def _callback(self, subject: Subject, cfg: dict[str, Any], query: str) -> Decision:
        q = dict(parse_qsl(query[:8192], keep_blank_values=True))
        state = q.get("state", "")
        if q.get("error"):
            return self._failed(subject, "provider_error", f"the provider said {q['error'][:64]!r}", 403)
        if "iss" in q and cfg["provider"] == "oidc" and q["iss"] != cfg["issuer"]:  # RFC 9207 mix-up defence
            return self._failed(subject, "wrong_issuer", "the callback's iss is not the endpoint's issuer", 403)
        code = q.get("code", "")
        if not state or not code or len(code) > 2048:
            return self._failed(subject, "bad_callback", "the callback has no code or state", 400)
        cookie = subject.request.header("Cookie") if subject.request else None
        opened = self._sealer().open(f"login:{subject.endpoint}", S.cookie_value(cookie, LOGIN_COOKIE + state[:12]),
                                     subject.wall)
        if opened is None or not isinstance(opened[0], dict):
            return self._failed(subject, "state_mismatch", "no login under way for this state (expired, "
                                "already used, or from another browser)", 400)
        login = opened[0]
        if not secrets.compare_digest(str(login.get("s", "")), state):
            return self._failed(subject, "state_mismatch", "the state does not match the login", 400)
        return self._with_provider(subject, cfg, {"then": "callback", "login": login, "code": code,
                                                  "redirect_uri": self._redirect_uri(subject)})

    def _token_request(self, subject: Subject, cfg: dict[str, Any], prov: _Provider, ctx: dict[str, Any]) -> Decision:
        form = {"grant_type": "authorization_code", "code": ctx["code"], "redirect_uri": ctx["redirect_uri"],
                "code_verifier": ctx["login"]["v"]}
        headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")]
        secret = self._client_secret(cfg, subject.wall)
        if secret is None:
            return self._failed(subject, "client_secret", "this edge cannot open the endpoint's client secret "
                                "(sealed by a PoP with another session_key_file)")
        if secret:  # client_secret_basic (RFC 6749 2.3.1: both form-urlencoded first)
            cred = f"{quote(cfg['client_id'], safe='')}:{quote(secret, safe='')}".encode("utf-8")
            headers.append(("Authorization", "Basic " + base64.b64encode(cred).decode("ascii")))
        else:
            form["client_id"] = cfg["client_id"]
        return self._perform(cfg, "token", "POST", prov.token, ctx, tuple(headers), urlencode(form).encode("ascii"))

    def _userinfo_request(self, cfg: dict[str, Any], prov: _Provider, ctx: dict[str, Any], token: str) -> Decision:
        url = prov.userinfo
        return self._perform(cfg, "userinfo", "GET", url, ctx,
                             (("Authorization", f"Bearer {token}"), ("Accept", "application/json"),
                              ("User-Agent", "gslb-edge")))

    def _after_tokens(self, subject: Subject, cfg: dict[str, Any], prov: _Provider, ctx: dict[str, Any]) -> Decision:
        login = ctx["login"]
        if cfg["provider"] == "oidc":
            if "claims" not in ctx:
                keys = self._keys(subject, prov.jwks_uri)
                if keys is None:
                    return self._perform(cfg, "jwks", "GET", prov.jwks_uri, ctx)
                try:
                    ctx["claims"] = validate_id_token(ctx["tokens"]["id_token"], keys, issuer=cfg["issuer"],
                                                      client_id=cfg["client_id"], nonce=login["n"], now=subject.wall)
                except TokenError as exc:
                    if exc.kind == "unknown_key" and not ctx.get("jwks_fetched") and self._may_refetch(subject, prov):
                        return self._perform(cfg, "jwks", "GET", prov.jwks_uri, ctx)  # the provider rotated its keys
                    return self._failed(subject, exc.kind, str(exc), 403)
            if cfg.get("userinfo", True) and prov.userinfo and "userinfo" not in ctx:
                return self._userinfo_request(cfg, prov, ctx, ctx["tokens"]["access_token"])
            claims = dict(ctx["claims"])
            info = ctx.get("userinfo")
            if info is not None:
                if str(info.get("sub")) != str(claims.get("sub")):  # OpenID Connect Core 5.3.2
                    return self._failed(subject, "userinfo_subject", "userinfo is for another subject", 403)
                claims.update({k: v for k, v in info.items() if k not in ("iss", "aud", "exp", "iat", "nonce")})
        else:
            if "userinfo" not in ctx:
                return self._userinfo_request(cfg, prov, ctx, ctx["tokens"]["access_token"])
            claims = dict(ctx["userinfo"])
        ident = self._identity(cfg, claims)
        if ident is None:
            return self._failed(subject, "no_subject", "the provider named no user", 403)
        denied = self._denied(cfg, ident)
        if denied:
            self.counters["logins_denied_total"] += 1
            return self._deny(denied)
        self.counters["logins_ok_total"] += 1
        data = {**ident, "st": int(subject.wall), "ck": int(subject.wall), "at": ctx["tokens"]["access_token"],
                "cid": self._client_tag(cfg)}
        return self._redirect(subject, cfg, data, login.get("t", "/"), clear=LOGIN_COOKIE + login["s"][:12])

    def _refresh(self, subject: Subject, cfg: dict[str, Any], data: dict[str, Any]) -> Decision:
        return self._with_provider(subject, cfg, {"then": "refresh", "session": data,
                                                  "target": self._safe_target(subject.request.target)})  # type: ignore[union-attr]

    def _after_refresh(self, subject: Subject, cfg: dict[str, Any], ctx: dict[str, Any]) -> Decision:
        data, info = dict(ctx["session"]), ctx["userinfo"]
        claims = {"sub": data["sub"], **{k: v for k, v in info.items()}}
        if cfg["provider"] == "oidc" and str(info.get("sub")) != str(data["sub"]):
            return self._failed(subject, "userinfo_subject", "userinfo is for another subject", 403)
        ident = self._identity(cfg, claims)
        denied = "the provider no longer names this user" if ident is None else self._denied(cfg, ident)
        if denied:
            self.counters["logins_denied_total"] += 1
            return self._deny(denied)
        self.counters["sessions_refreshed_total"] += 1
        data.update(ident or {})
        data["ck"] = int(subject.wall)
        if subject.request is not None and subject.request.method in ("GET", "HEAD"):
            return self._redirect(subject, cfg, data, ctx["target"])
        return self._allow(data, subject)  # a body cannot wait for a redirect: checked again on the next request

    # -- sessions ----------------------------------------------------------------------------
    def _session(self, subject: Subject, cfg: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
        """(the session's data, whether its idle timer wants renewing), or None."""
        cookie = subject.request.header("Cookie") if subject.request else None
        value = S.cookie_value(cookie, SESSION_COOKIE)
        if value is None:
            return None
        opened = self._sealer().open(f"session:{subject.endpoint}", value, subject.wall)
        if opened is None or not isinstance(opened[0], dict):
            self.counters["sessions_expired_total"] += 1
            return None
        data, issued = opened
        if data.get("cid") != self._client_tag(cfg) or not isinstance(data.get("sub"), str):
            return None  # made for another provider or client of this endpoint
        wall = subject.wall
        if wall - data.get("st", 0) >= cfg.get("max_session_duration", O.DURATIONS["max_session_duration"]):
            self.counters["sessions_expired_total"] += 1
            return None
        idle = cfg.get("idle_session_duration", O.DURATIONS["idle_session_duration"])
        if idle and wall - issued >= idle:
            self.counters["sessions_expired_total"] += 1
            return None
        if self._denied(cfg, data):  # the allow lists changed since the login
            return None
        touch = bool(idle) and wall - issued >= max(1.0, min(idle / 4, 300.0))
        return data, touch

    def _redirect(self, subject: Subject, cfg: dict[str, Any], data: dict[str, Any], target: str,
                  clear: str = "") -> Decision:
        """302 to `target` with a (re)sealed session cookie."""
        max_d = cfg.get("max_session_duration", O.DURATIONS["max_session_duration"])
        idle = cfg.get("idle_session_duration", O.DURATIONS["idle_session_duration"])
        remaining = max(1, int(data["st"] + max_d - subject.wall))
        ttl = min(remaining, idle) if idle else remaining
        try:
            sealed = self._sealer().seal(f"session:{subject.endpoint}", data, subject.wall, ttl)
        except ValueError:  # too large for a cookie (a huge access token): keep no refresh token
            data = {k: v for k, v in data.items() if k != "at"}
            sealed = self._sealer().seal(f"session:{subject.endpoint}", data, subject.wall, ttl)
        headers: tuple[tuple[str, str], ...] = (("Location", target), ("Set-Cookie", S.set_cookie(SESSION_COOKIE, sealed, ttl)),
                                                ("Cache-Control", "no-store"))
        if clear:
            headers += (("Set-Cookie", S.clear_cookie(clear)),)
        return self._answer(Response(302, headers), "session cookie set")

    def _allow(self, data: Mapping[str, Any], subject: Subject | None = None) -> Decision:
        """Pass on with the identity headers (the client's own stripped first) and without the edge's
        cookies in Cookie: the upstream sees the user, never the session."""
        add = [("Gslb-Auth-Subject", _header_value(data["sub"]))]
        strip: tuple[str, ...] = IDENTITY_HEADERS
        if subject is not None and subject.request is not None:
            values = [v for n, v in subject.request.headers if n.lower() == "cookie"]
            parts = [p.strip() for v in values for p in v.split(";") if p.strip()]
            kept = [p for p in parts if not p.startswith((SESSION_COOKIE + "=", LOGIN_COOKIE))]
            if len(kept) != len(parts):
                strip += ("Cookie",)
                if kept:
                    add.append(("Cookie", "; ".join(kept)))
        if data.get("email"):
            add.append(("Gslb-Auth-Email", _header_value(data["email"])))
        if data.get("name"):
            add.append(("Gslb-Auth-Name", _header_value(data["name"])))
        return Decision(Verdict.PASS, strip_upstream=strip, add_upstream=tuple(add))

    # -- identity and authorization ----------------------------------------------------------
    def _identity(self, cfg: dict[str, Any], claims: Mapping[str, Any]) -> dict[str, Any] | None:
        prof = GITHUB if cfg["provider"] == "github" else {}
        sub = claims.get(cfg.get("subject_claim") or prof.get("subject_claim") or "sub")
        if sub is None or isinstance(sub, (dict, list)) or str(sub) == "":
            return None
        out: dict[str, Any] = {"sub": str(sub)[:256]}
        email = claims.get(cfg.get("email_claim") or "email")
        if isinstance(email, str) and O._EMAIL.match(email) and claims.get("email_verified") is not False:
            out["email"] = email.lower()[:320]
        name = claims.get(cfg.get("name_claim") or "name")
        if isinstance(name, str) and name:
            out["name"] = name[:256]
        groups = claims.get(cfg.get("groups_claim") or "groups")
        if isinstance(groups, list):
            out["groups"] = [str(g)[:64] for g in groups[:64] if isinstance(g, (str, int))]
        return out

    @staticmethod
    def _denied(cfg: dict[str, Any], ident: Mapping[str, Any]) -> str:
        """Why this user may not in ("" if allowed); no allow list: any user of the provider."""
        emails, domains, groups = cfg.get("allow_emails", []), cfg.get("allow_domains", []), cfg.get("allow_groups", [])
        if not emails and not domains and not groups:
            return ""
        email = ident.get("email", "")
        if email and (email in emails or email.rpartition("@")[2] in domains):
            return ""
        if groups and set(ident.get("groups", ())) & set(groups):
            return ""
        return f"{email or 'this user'} is not allowed"

    # -- helpers -----------------------------------------------------------------------------
    def _config(self, raw: Any) -> dict[str, Any]:
        return raw if isinstance(raw, dict) and "provider" in raw else O.check_option(raw)

    def _sealer(self) -> S.Sealer:
        assert self.sealer is not None
        return self.sealer

    @staticmethod
    def _client_tag(cfg: Mapping[str, Any]) -> str:
        ident = f"{cfg['provider']}|{cfg.get('issuer', '')}|{cfg.get('authorize_url', '')}|{cfg['client_id']}"
        return _b64(hashlib.sha256(ident.encode("utf-8")).digest()[:9])

    @staticmethod
    def _scopes(cfg: Mapping[str, Any]) -> list[str]:
        if cfg.get("scopes"):
            scopes = list(cfg["scopes"])
        elif cfg["provider"] == "github":
            scopes = list(GITHUB["scopes"])  # type: ignore[arg-type]
        else:
            scopes = ["openid", "email", "profile"] if cfg["provider"] == "oidc" else []
        if cfg["provider"] == "oidc" and "openid" not in scopes:
            scopes.insert(0, "openid")
        return scopes

    @staticmethod
    def _redirect_uri(subject: Subject) -> str:
        return f"https://{subject.endpoint}{CALLBACK_PATH}"

    @staticmethod
    def _safe_target(target: str) -> str:
        """The original URI to come back to: a path on this host only."""
        if not target.startswith("/") or target.startswith("//") or len(target) > MAX_TARGET or \
                any(c in target for c in "\\\r\n\0") or urlsplit(target).netloc:
            return "/"
        return target

    def _provider(self, subject: Subject, cfg: dict[str, Any]) -> _Provider | None:
        if cfg["provider"] == "github":
            return _Provider(GITHUB["authorize_url"], GITHUB["token_url"], GITHUB["user_url"])  # type: ignore[arg-type]
        if cfg["provider"] == "oauth2":
            return _Provider(cfg["authorize_url"], cfg["token_url"], cfg["user_url"])
        got = self._discovery.get(cfg["issuer"])
        if got is None or subject.now >= got[1]:
            return None
        self._discovery.move_to_end(cfg["issuer"])
        return got[0]

    def _keys(self, subject: Subject, uri: str) -> dict[str, Any] | None:
        got = self._jwks.get(uri)
        if got is None or subject.now >= got[1]:
            return None
        return got[0]

    def _may_refetch(self, subject: Subject, prov: _Provider) -> bool:
        got = self._jwks.get(prov.jwks_uri)
        return got is None or subject.now - got[2] >= self.jwks_refetch_interval

    @staticmethod
    def _put(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > MAX_PROVIDERS:
            cache.popitem(last=False)

    def _perform(self, cfg: dict[str, Any], step: str, method: str, url: str, ctx: dict[str, Any],
                 headers: tuple[tuple[str, str], ...] = (("Accept", "application/json"),), body: bytes = b"") -> Decision:
        return Decision(Verdict.PERFORM, module=self.name,
                        effect=_Step(method, url, headers, body, self.timeout, self.ca_file, step=step, ctx=ctx))

    def _count_error(self, kind: str) -> None:
        if kind in self.token_errors or len(self.token_errors) < 64:
            self.token_errors[kind] = self.token_errors.get(kind, 0) + 1

    def _failed(self, subject: Subject, kind: str, reason: str, status: int = 403) -> Decision:
        """A login that went wrong (a bad token, state or callback): 403 ERR_GSLB_3212."""
        self.counters["logins_failed_total"] += 1
        self._count_error(kind)
        return Decision(Verdict.ANSWER, status=E.AUTH_FAILED.status, reason=f"login failed: {reason}",
                        code=E.AUTH_FAILED.code, module=self.name)

    def _deny(self, reason: str) -> Decision:
        """A user the allow lists do not name: 403 ERR_GSLB_3211."""
        return Decision(Verdict.ANSWER, status=E.AUTH_DENIED.status, reason=reason, code=E.AUTH_DENIED.code,
                        module=self.name)

    def _error(self, subject: Subject, status: int, kind: str, reason: str) -> Decision:
        """The provider failed (502 ERR_GSLB_3504) or the options are unusable (403 ERR_GSLB_3212)."""
        self._count_error(kind)
        err = E.IDP_UNREACHABLE if status == 502 else E.AUTH_FAILED
        return Decision(Verdict.ANSWER, status=err.status, reason=reason, code=err.code, module=self.name)

    def _answer(self, response: Response, reason: str) -> Decision:
        return Decision(Verdict.ANSWER, reason=reason, module=self.name, response=response)
