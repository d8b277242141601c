"""The oidc module, pure: every call to the provider is an effect these tests
answer themselves (a JWKS dict, ID tokens signed with a test key through
joserfc), with the wall clock given. The lab test (tests/integration/
test_lab_oidc.py) runs the same flow against a real provider."""
from __future__ import annotations

import base64
import ipaddress
import json
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from edge import errors as E
from edge.modules import DEFAULT_ORDER, build_chain, check_bind_option
from edge.modules import session as S
from edge.modules.base import Chain, Decision, EffectResult, HttpCall, ModuleConfigError, RequestHead, Subject, Verdict
from edge.modules.oidc import (CALLBACK_PATH, LOGIN_COOKIE, SESSION_COOKIE, Oidc, TokenError, pkce_pair,
                               validate_id_token)
from edge.modules.oidc import options as O

ISSUER = "https://idp.example.test"
HOST = "demo.app.example.test"
T0 = 1_800_000_000.0
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"}, private=True)
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)  # same kid, another key


def jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def sign(claims: dict[str, Any], key: Any = KEY, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key)


def claims(nonce: str, **over: Any) -> dict[str, Any]:
    c = {"iss": ISSUER, "aud": "demo", "sub": "u-1", "exp": int(T0) + 300, "iat": int(T0), "nonce": nonce,
         "email": "alice@example.test", "name": "Alice"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def opts(**over: Any) -> dict[str, Any]:
    o = {"issuer": ISSUER, "client_id": "demo", "client_secret": "s3cret-value", "allow_domains": ["example.test"]}
    o.update(over)
    return {"oidc": check_bind_option("http", "oidc", o)}


def subject(target: str = "/", method: str = "GET", cookies: dict[str, str] | None = None, wall: float = T0,
            now: float = 100.0, options: dict[str, Any] | None = None, extra: tuple[str, ...] = ()) -> Subject:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}"]
    if cookies:
        lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()))
    lines += list(extra)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Subject(client_ip=ipaddress.ip_address("198.19.3.10"), client_port=5000, kind="http", endpoint=HOST,
                   options=options if options is not None else opts(), request=RequestHead(method, target, HOST, head),
                   now=now, wall=wall)


def set_cookies(d: Decision) -> dict[str, str]:
    out = {}
    for n, v in d.response.headers if d.response else ():
        if n == "Set-Cookie":
            name, _, rest = v.partition("=")
            out[name] = rest.split(";")[0]
    return out


def header(d: Decision, name: str) -> str | None:
    return next((v for n, v in (d.response.headers if d.response else ()) if n == name), None)


class FakeIdP:
    """Answers the module's effects as a provider would (pure: no sockets)."""

    def __init__(self) -> None:
        self.keys = jwks(KEY)
        self.calls: list[HttpCall] = []
        self.down = False
        self.token_claims: dict[str, Any] = {}
        self.userinfo: dict[str, Any] = {"sub": "u-1", "email": "alice@example.test", "name": "Alice"}
        self.id_token: str | None = None
        self.codes: dict[str, str] = {}  # code -> nonce

    def __call__(self, call: HttpCall) -> EffectResult:
        self.calls.append(call)
        if self.down:
            return EffectResult(error="ClientConnectorError")
        path = urlsplit(call.url).path
        if path == "/.well-known/openid-configuration":
            return self._json({"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth",
                               "token_endpoint": ISSUER + "/token", "jwks_uri": ISSUER + "/jwks",
                               "userinfo_endpoint": ISSUER + "/me"})
        if path == "/jwks":
            return self._json(self.keys)
        if path == "/token":
            form = parse_qs(call.body.decode())
            auth = dict(call.headers).get("Authorization", "")
            assert base64.b64decode(auth.split()[1]) == b"demo:s3cret-value"
            assert form["code_verifier"][0] and form["redirect_uri"][0] == f"https://{HOST}{CALLBACK_PATH}"
            nonce = self.codes.pop(form["code"][0], None)
            if nonce is None:
                return EffectResult(400, (), b'{"error":"invalid_grant"}')
            tok = self.id_token or sign(claims(**{"nonce": nonce, **self.token_claims}))
            return self._json({"access_token": "at-1", "token_type": "Bearer", "id_token": tok})
        if path == "/me":
            assert dict(call.headers)["Authorization"] == "Bearer at-1"
            return self._json(self.userinfo)
        return EffectResult(404)

    @staticmethod
    def _json(doc: Any) -> EffectResult:
        return EffectResult(200, (("Content-Type", "application/json"),), json.dumps(doc).encode())


def run(chain: Chain, idp: FakeIdP, s: Subject, limit: int = 10) -> Decision:
    """Decide, performing effects with the fake provider, as the shell does."""
    d = chain.decide(s)
    for _ in range(limit):
        if d.verdict is not Verdict.PERFORM:
            return d
        d = chain.resume(s, d, idp(d.effect))
    raise AssertionError("too many effects")


def login(chain: Chain, idp: FakeIdP, target: str = "/private?x=1", wall: float = T0, method: str = "GET",
          options: dict[str, Any] | None = None) -> tuple[Decision, dict[str, str]]:
    """A whole login: the redirect, the provider's code, the callback. Returns the callback's decision
    and the cookies the browser holds after it."""
    d = run(chain, idp, subject(target, method=method, wall=wall, options=options))
    assert d.verdict is Verdict.ANSWER and d.response.status == 302, d
    loc = urlsplit(header(d, "Location"))
    q = {k: v[0] for k, v in parse_qs(loc.query).items()}
    assert loc.geturl().startswith(ISSUER + "/auth?")
    assert q["code_challenge_method"] == "S256" and q["redirect_uri"] == f"https://{HOST}{CALLBACK_PATH}"
    jar = set_cookies(d)
    code = "code-" + q["state"][:8]
    idp.codes[code] = q.get("nonce", "")
    cb = run(chain, idp, subject(f"{CALLBACK_PATH}?code={code}&state={q['state']}", cookies=jar, wall=wall + 5,
                                 options=options))
    jar.update(set_cookies(cb))
    return cb, {k: v for k, v in jar.items() if v}


@pytest.fixture
def mod() -> Oidc:
    return Oidc.from_config({})


@pytest.fixture
def chain(mod: Oidc) -> Chain:
    return Chain((mod,))


# -- the whole flow -------------------------------------------------------------------------

def test_login_flow_sets_session_and_passes_identity(chain: Chain, mod: Oidc) -> None:
    idp = FakeIdP()
    cb, jar = login(chain, idp)
    assert cb.response.status == 302 and header(cb, "Location") == "/private?x=1"
    assert SESSION_COOKIE in jar and not any(k.startswith(LOGIN_COOKIE) for k in jar)  # login cookie cleared
    sc = next(v for n, v in cb.response.headers if n == "Set-Cookie" and v.startswith(SESSION_COOKIE))
    assert "Secure" in sc and "HttpOnly" in sc and "Domain" not in sc and "Path=/" in sc
    # a spoofed identity header from the client is stripped; the real one is added
    d = run(chain, idp, subject("/private?x=1", cookies={"theme": "dark", **jar}, wall=T0 + 10,
                                extra=("Gslb-Auth-Email: evil@x.test",)))
    assert d.verdict is Verdict.ALLOW
    assert "Gslb-Auth-Email" in d.strip_upstream and "Cookie" in d.strip_upstream
    assert dict(d.add_upstream) == {"Gslb-Auth-Subject": "u-1", "Gslb-Auth-Email": "alice@example.test",
                                    "Gslb-Auth-Name": "Alice", "Cookie": "theme=dark"}  # the session stays at the edge
    d = run(chain, idp, subject("/private", cookies=jar, wall=T0 + 10))
    assert "Cookie" in d.strip_upstream and "Cookie" not in dict(d.add_upstream)
    assert [urlsplit(c.url).path for c in idp.calls] == ["/.well-known/openid-configuration", "/token", "/jwks", "/me"]
    st = mod.stats()
    assert st["logins_ok_total"] == 1 and st["logins_started_total"] == 1 and st["discovery_fetches_total"] == 1


def test_session_valid_at_another_pop_with_the_same_key(tmp_path) -> None:
    key = S.new_key_file(tmp_path / "k")
    eu, jp = Oidc.from_config({"session_key_file": str(key)}), Oidc.from_config({"session_key_file": str(key)})
    other = Oidc.from_config({"session_key_file": str(S.new_key_file(tmp_path / "k2"))})
    idp = FakeIdP()
    # the login starts at pop-eu and its callback lands at pop-jp
    d = run(Chain((eu,)), idp, subject("/a"))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    idp.codes["c1"] = q["nonce"]
    cb = run(Chain((jp,)), idp, subject(f"{CALLBACK_PATH}?code=c1&state={q['state']}", cookies=set_cookies(d)))
    assert cb.response.status == 302 and header(cb, "Location") == "/a"
    jar = {SESSION_COOKIE: set_cookies(cb)[SESSION_COOKIE]}
    assert run(Chain((eu,)), idp, subject("/a", cookies=jar, wall=T0 + 1)).verdict is Verdict.ALLOW
    assert run(Chain((other,)), idp, subject("/a", cookies=jar, wall=T0 + 1)).response.status == 302  # another key


def test_non_get_gets_login_then_302_back(chain: Chain) -> None:
    cb, _ = login(chain, FakeIdP(), target="/api/items", method="POST")
    assert cb.response.status == 302 and header(cb, "Location") == "/api/items"  # the body is not replayed


def test_cors_preflight_passes_only_when_allowed(chain: Chain) -> None:
    pre = ("Origin: https://app.example.test", "Access-Control-Request-Method: PUT")
    d = run(chain, FakeIdP(), subject("/x", method="OPTIONS", extra=pre, options=opts(allow_cors_preflight=True)))
    assert d.verdict is Verdict.ALLOW and "Gslb-Auth-Subject" in d.strip_upstream and not d.add_upstream
    d = run(chain, FakeIdP(), subject("/x", method="OPTIONS", extra=pre))
    assert d.response.status == 302


def test_denied_user_gets_403_and_upstream_nothing(chain: Chain, mod: Oidc) -> None:
    idp = FakeIdP()
    idp.userinfo = {"sub": "u-1", "email": "mallory@other.test"}
    idp.token_claims = {"email": "mallory@other.test"}
    cb, jar = login(chain, idp)
    assert cb.verdict is Verdict.ANSWER and cb.status == 403 and cb.code == E.AUTH_DENIED.code
    assert SESSION_COOKIE not in jar and mod.stats()["logins_denied_total"] == 1


def test_allow_emails_and_groups(chain: Chain) -> None:
    idp = FakeIdP()
    idp.userinfo = {"sub": "u-1", "email": "bob@other.test", "groups": ["ops"]}
    cb, _ = login(chain, idp, options=opts(allow_domains=[], allow_emails=["BOB@other.test"]))
    assert cb.response.status == 302
    idp.userinfo = {"sub": "u-1", "email": "carol@other.test", "groups": ["ops"]}
    cb, _ = login(chain, idp, options=opts(allow_domains=[], allow_groups=["ops"]))
    assert cb.response.status == 302
    cb, _ = login(chain, idp, options=opts(allow_domains=[], allow_groups=["admins"]))
    assert cb.status == 403


def test_unverified_email_is_not_used(chain: Chain) -> None:
    idp = FakeIdP()
    idp.userinfo = {"sub": "u-1", "email": "alice@example.test", "email_verified": False}
    cb, _ = login(chain, idp)
    assert cb.status == 403 and cb.code == E.AUTH_DENIED.code


def test_logout_clears_the_session(chain: Chain, mod: Oidc) -> None:
    cb, jar = login(chain, FakeIdP())
    d = chain.decide(subject("/oauth2/logout", cookies=jar))
    assert d.response.status == 200 and set_cookies(d)[SESSION_COOKIE] == ""
    assert "Max-Age=0" in header(d, "Set-Cookie") and mod.stats()["logouts_total"] == 1


# -- sessions over time -------------------------------------------------------------------------

def test_max_and_idle_session_duration(chain: Chain) -> None:
    o = opts(max_session_duration="2h", idle_session_duration="30m")
    idp = FakeIdP()
    cb, jar = login(chain, idp, options=o)
    # within the idle time: allowed; after a quarter of it a GET is redirected to itself with a renewed cookie
    assert run(chain, idp, subject("/p", cookies=jar, wall=T0 + 60, options=o)).verdict is Verdict.ALLOW
    d = run(chain, idp, subject("/p", cookies=jar, wall=T0 + 600, options=o))
    assert d.response.status == 302 and header(d, "Location") == "/p"
    jar.update(set_cookies(d))
    # idle for over 30 min after the renewal: a new login
    assert run(chain, idp, subject("/p", cookies=jar, wall=T0 + 600 + 1801, options=o)).response.status == 302
    assert ISSUER in header(run(chain, idp, subject("/p", cookies=jar, wall=T0 + 600 + 1801, options=o)), "Location")
    # kept busy, it still ends after max_session_duration
    wall = T0 + 600
    for _ in range(20):
        wall += 500
        d = run(chain, idp, subject("/p", cookies=jar, wall=wall, options=o))
        if d.verdict is not Verdict.ALLOW and header(d, "Location") == "/p":
            jar.update(set_cookies(d))
            continue
        break
    assert wall - T0 >= 7200 - 500 and ISSUER in header(d, "Location")


def test_userinfo_refresh_rechecks_the_user(chain: Chain, mod: Oidc) -> None:
    o = opts(userinfo_refresh_interval="5m", idle_session_duration=0)
    idp = FakeIdP()
    _, jar = login(chain, idp, options=o)
    n = len(idp.calls)
    assert run(chain, idp, subject("/p", cookies=jar, wall=T0 + 100, options=o)).verdict is Verdict.ALLOW
    assert len(idp.calls) == n  # no call before the interval
    d = run(chain, idp, subject("/p", cookies=jar, wall=T0 + 400, options=o))
    assert d.response.status == 302 and header(d, "Location") == "/p" and urlsplit(idp.calls[-1].url).path == "/me"
    jar.update(set_cookies(d))
    assert mod.stats()["sessions_refreshed_total"] == 1
    assert run(chain, idp, subject("/p", cookies=jar, wall=T0 + 500, options=o)).verdict is Verdict.ALLOW
    # the user's email changed at the provider: refused at the next check
    idp.userinfo = {"sub": "u-1", "email": "alice@elsewhere.test"}
    d = run(chain, idp, subject("/p", cookies=jar, wall=T0 + 800, options=o))
    assert d.status == 403 and d.code == E.AUTH_DENIED.code


# -- bad input -------------------------------------------------------------------------------

def _failed(d: Decision) -> bool:
    return d.verdict is Verdict.ANSWER and d.status == 403 and d.code == E.AUTH_FAILED.code and d.response is None


@pytest.mark.parametrize("what, over, kind", [
    ("expired", {"exp": int(T0) - 3600, "iat": int(T0) - 7200}, "expired"),
    ("wrong audience", {"aud": "someone-else"}, "wrong_audience"),
    ("wrong issuer", {"iss": "https://evil.example.test"}, "wrong_issuer"),
    ("replayed (another login's nonce)", {"nonce": "nonce-of-another-login"}, "nonce_mismatch"),
    ("no nonce", {"nonce": None}, "missing_claim"),
])
def test_bad_id_tokens_are_refused(chain: Chain, mod: Oidc, what: str, over: dict[str, Any], kind: str) -> None:
    idp = FakeIdP()
    idp.token_claims = over
    cb, jar = login(chain, idp)
    assert _failed(cb), what
    assert SESSION_COOKIE not in jar and mod.stats()[f"token_error_{kind}_total"] == 1


def test_forged_token_signed_by_another_key(chain: Chain, mod: Oidc) -> None:
    idp = FakeIdP()
    d = run(chain, idp, subject("/"))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    idp.codes["c"] = q["nonce"]
    idp.id_token = sign(claims(q["nonce"]), key=OTHER_KEY)
    cb = run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}", cookies=set_cookies(d)))
    assert _failed(cb) and mod.stats()["token_error_bad_signature_total"] == 1


def test_alg_none_and_hmac_are_refused() -> None:
    keys = jwks(KEY)
    head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims("n")).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError) as exc:
        validate_id_token(f"{head}.{body}.", keys, issuer=ISSUER, client_id="demo", nonce="n", now=T0)
    assert exc.value.kind == "bad_algorithm"
    for bad in ("", "x.y", "a" * 20000):
        with pytest.raises(TokenError):
            validate_id_token(bad, keys, issuer=ISSUER, client_id="demo", nonce="n", now=T0)


def test_token_with_es256_and_several_audiences() -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "e1"}, private=True)
    tok = sign(claims("n", aud=["demo", "other"], azp="demo"), key=ec, alg="ES256")
    got = validate_id_token(tok, jwks(ec, KEY), issuer=ISSUER, client_id="demo", nonce="n", now=T0)
    assert got["sub"] == "u-1"
    tok = sign(claims("n", aud=["demo", "other"], azp="other"), key=ec, alg="ES256")
    with pytest.raises(TokenError) as exc:
        validate_id_token(tok, jwks(ec), issuer=ISSUER, client_id="demo", nonce="n", now=T0)
    assert exc.value.kind == "wrong_audience"


def test_key_rotation_refetches_jwks_once(chain: Chain, mod: Oidc) -> None:
    idp = FakeIdP()
    login(chain, idp)  # caches the JWKS with k1
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"}, private=True)
    idp.keys = jwks(new, KEY)
    d = run(chain, idp, subject("/", now=200.0))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    idp.codes["c"] = q["nonce"]
    idp.id_token = sign(claims(q["nonce"]), key=new)
    cb = run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}", cookies=set_cookies(d), now=200.0))
    assert cb.response.status == 302 and mod.stats()["jwks_fetches_total"] == 2
    # a kid nobody has: refused, and the JWKS is not fetched again within jwks_refetch_interval
    d = run(chain, idp, subject("/", now=201.0))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    idp.codes["c2"] = q["nonce"]
    idp.id_token = sign(claims(q["nonce"]), key=RSAKey.generate_key(2048, parameters={"kid": "k9"}, private=True))
    cb = run(chain, idp, subject(f"{CALLBACK_PATH}?code=c2&state={q['state']}", cookies=set_cookies(d), now=201.0))
    assert _failed(cb) and mod.stats()["jwks_fetches_total"] == 2
    assert mod.stats()["token_error_unknown_key_total"] == 1


def test_tampered_cookies_and_state_mismatch(chain: Chain) -> None:
    idp = FakeIdP()
    _, jar = login(chain, idp)
    v = jar[SESSION_COOKIE]
    tampered = v[:-6] + ("AAAAAA" if v[-6:] != "AAAAAA" else "BBBBBB")
    d = run(chain, idp, subject("/", cookies={SESSION_COOKIE: tampered}, wall=T0 + 10))
    assert d.response.status == 302 and ISSUER in header(d, "Location")  # no session: a login
    # a session cookie for another endpoint of the same edge is no session here
    s = Oidc.from_config({})
    # a callback whose state is not the login's
    d = run(chain, idp, subject("/"))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    idp.codes["c"] = q["nonce"]
    cookies = set_cookies(d)
    forged_state = q["state"][:12] + "X" * (len(q["state"]) - 12)
    assert _failed(run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={forged_state}", cookies=cookies)))
    assert _failed(run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}")))  # no login cookie
    # replayed callback: the code was used (the provider refuses it a second time)
    ok = run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}", cookies=cookies))
    assert ok.response.status == 302
    assert _failed(run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}", cookies=cookies)))
    assert _failed(run(chain, idp, subject(f"{CALLBACK_PATH}?error=access_denied&state={q['state']}", cookies=cookies)))
    assert _failed(run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}&iss=https%3A%2F%2Fevil.test",
                                           cookies=cookies)))
    assert s.stats()["logins_ok_total"] == 0


def test_session_of_another_endpoint_or_client_is_refused(mod: Oidc) -> None:
    chain = Chain((mod,))
    _, jar = login(chain, FakeIdP())
    other = Subject(client_ip=ipaddress.ip_address("198.19.3.10"), client_port=1, kind="http", endpoint="other." + HOST,
                    options=opts(), request=RequestHead("GET", "/", "other." + HOST,
                    f"GET / HTTP/1.1\r\nHost: other.{HOST}\r\nCookie: {SESSION_COOKIE}={jar[SESSION_COOKIE]}\r\n\r\n"
                    .encode()), now=100.0, wall=T0 + 10)
    assert chain.decide(other).verdict is not Verdict.ALLOW
    d = run(chain, FakeIdP(), subject("/", cookies=jar, wall=T0 + 10, options=opts(client_id="another")))
    assert d.verdict is Verdict.ANSWER and d.response.status == 302


def test_idp_down_is_502_and_nothing_passes(chain: Chain, mod: Oidc) -> None:
    idp = FakeIdP()
    idp.down = True
    d = run(chain, idp, subject("/"))
    assert d.verdict is Verdict.ANSWER and d.status == 502 and d.code == E.IDP_UNREACHABLE.code
    assert "identity provider did not answer" in d.reason
    # down during the token exchange
    idp.down = False
    d = run(chain, idp, subject("/"))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    idp.down = True
    cb = run(chain, idp, subject(f"{CALLBACK_PATH}?code=c&state={q['state']}", cookies=set_cookies(d)))
    assert cb.status == 502 and mod.stats()["idp_errors_total"] == 2
    # a discovery document for another issuer is refused
    idp.down = False
    bad = Oidc.from_config({})
    d = Chain((bad,)).decide(subject("/"))
    d = Chain((bad,)).resume(subject("/"), d, FakeIdP._json({"issuer": "https://evil.test",
                                                              "authorization_endpoint": "https://evil.test/a"}))
    assert d.status == 502


def test_original_uri_stays_on_the_host(chain: Chain) -> None:
    for bad in ("//evil.test/x", "/\\evil.test"):
        d = run(chain, FakeIdP(), subject(bad))
        assert d.response.status == 302
    cb, _ = login(chain, FakeIdP(), target="//evil.test/x")
    assert header(cb, "Location") == "/"


# -- generic OAuth 2.0 ------------------------------------------------------------------------

def test_oauth2_profile_uses_the_user_endpoint(chain: Chain) -> None:
    o = {"oidc": check_bind_option("http", "oidc", {
        "provider": "oauth2", "client_id": "demo", "client_secret": "s3cret-value",
        "authorize_url": ISSUER + "/auth", "token_url": ISSUER + "/token", "user_url": ISSUER + "/me",
        "allow_emails": ["alice@example.test"], "scopes": ["email"]})}
    idp = FakeIdP()
    idp.id_token = "not-a-jwt"  # ignored: no OIDC here
    cb, jar = login(chain, idp, options=o)
    assert cb.response.status == 302
    assert [urlsplit(c.url).path for c in idp.calls] == ["/token", "/me"]
    d = run(chain, idp, subject("/", cookies=jar, wall=T0 + 10, options=o))
    assert dict(d.add_upstream)["Gslb-Auth-Email"] == "alice@example.test"


def test_github_profile_endpoints() -> None:
    o = {"oidc": check_bind_option("http", "oidc", {"provider": "github", "client_id": "gh", "client_secret": "x"})}
    d = Chain((Oidc.from_config({}),)).decide(subject("/", options=o))
    loc = header(d, "Location")
    assert loc.startswith("https://github.com/login/oauth/authorize?") and "nonce" not in loc
    assert "scope=read%3Auser+user%3Aemail" in loc


# -- options, secrets, the chain ------------------------------------------------------------------

def test_bind_option_checks() -> None:
    good = check_bind_option("http", "oidc", {"issuer": ISSUER, "client_id": "x", "max_session_duration": "12h",
                                              "allow_domains": ["Example.TEST"]})
    assert good["max_session_duration"] == 43200 and good["allow_domains"] == ["example.test"]
    assert check_bind_option("http", "oidc", {"issuer_url": ISSUER, "client_id": "x"})["issuer"] == ISSUER
    for bad in ({"client_id": "x"}, {"issuer": "ftp://x", "client_id": "x"}, {"issuer": ISSUER},
                {"issuer": ISSUER, "client_id": "x", "bogus": 1}, {"issuer": ISSUER, "client_id": "x",
                "userinfo_refresh_interval": 5}, {"issuer": ISSUER, "client_id": "x", "allow_emails": ["no-at"]},
                {"issuer": ISSUER, "client_id": "x", "client_secret_file": "/etc/shadow"},
                {"provider": "oauth2", "client_id": "x", "client_secret": "y"}, "https://x"):
        with pytest.raises(ValueError):
            check_bind_option("http", "oidc", bad)
    with pytest.raises(KeyError):
        check_bind_option("tcp", "oidc", {"issuer": ISSUER, "client_id": "x"})


def test_secret_never_in_repr(tmp_path) -> None:
    f = tmp_path / "secret"
    f.write_text("# the client secret\ns3cret-value\n")
    form = O.agent_form({"issuer": ISSUER, "client_id": "demo", "client_secret_file": str(f)})
    checked = check_bind_option("http", "oidc", form)
    assert checked["client_secret"] == "s3cret-value"
    assert "s3cret" not in repr(form) and "s3cret" not in repr(checked) and "s3cret" not in str(checked)
    assert json.loads(json.dumps(checked))["client_secret"] == "s3cret-value"  # the bind carries it
    idp = FakeIdP()
    mod = Oidc.from_config({})
    d = run(Chain((mod,)), idp, subject("/"))
    q = {k: v[0] for k, v in parse_qs(urlsplit(header(d, "Location")).query).items()}
    d = Chain((mod,)).decide(subject(f"{CALLBACK_PATH}?code=c&state={q['state']}", cookies=set_cookies(d)))
    d = Chain((mod,)).resume(subject("/"), d, idp(d.effect))  # the token call
    assert "s3cret" not in repr(d) and "s3cret" not in d.reason
    with pytest.raises(ValueError, match="cannot read"):
        O.agent_form({"client_secret_file": str(tmp_path / "missing")})


def test_from_config(tmp_path) -> None:
    key = S.new_key_file(tmp_path / "k")
    m = Oidc.from_config({"session_key_file": str(key), "ca_file": "/ca.pem", "timeout": 2})
    assert not m.ephemeral_key and m.ca_file == "/ca.pem" and "Sealer(key=<hidden>)" in repr(m)
    assert Oidc.from_config({}).ephemeral_key
    os.chmod(key, 0o644)
    with pytest.raises(ModuleConfigError, match="read by others"):
        Oidc.from_config({"session_key_file": str(key)})
    with pytest.raises(ModuleConfigError, match="unknown"):
        Oidc.from_config({"sesion_key_file": "x"})
    with pytest.raises(ModuleConfigError):
        Oidc.from_config({"timeout": 0})


def test_default_order_puts_auth_before_rate_limit() -> None:
    assert DEFAULT_ORDER.index("ip_restriction") < DEFAULT_ORDER.index("oidc") < DEFAULT_ORDER.index("rate_limit")
    chain = build_chain(DEFAULT_ORDER, {})
    s = subject("/", options={})
    assert chain.decide(s).verdict is Verdict.ALLOW  # an endpoint without oidc: nothing to do
    d = chain.decide(subject("/"))  # with oidc: the first login step before any other module
    assert d.verdict is Verdict.PERFORM and d.module == "oidc" and d.effect.ca_file == ""


def test_pkce_pair() -> None:
    v, c = pkce_pair()
    import hashlib
    assert 43 <= len(v) <= 128
    assert c == base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()


# -- the agent's flags and agent.toml -------------------------------------------------------------

def _parse(argv: list[str]) -> Any:
    import argparse

    from edge import agent_cli

    p = argparse.ArgumentParser()
    agent_cli.add_parser(p.add_subparsers())
    return p.parse_args(argv)


def test_agent_flags_build_the_oidc_table(tmp_path, monkeypatch, caplog) -> None:
    import logging

    import edge.agent.config
    from edge import agent_cli

    monkeypatch.setattr(edge.agent.config, "DEFAULTS_PATH", tmp_path / "absent.toml")
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    args = _parse(["agent", "http", "8080", "--name", "demo", "--oidc", ISSUER, "--oidc-client-id", "demo",
                   "--oidc-client-secret-file", str(secret), "--oidc-allow-domain", "example.test",
                   "--oidc-allow-domain", "example.org", "--oidc-allow-email", "bob@else.test"])
    with caplog.at_level(logging.DEBUG):
        cfg = agent_cli.build_config(args, env={"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t0k"})
    bind = cfg.endpoints[0].bind_options()
    assert bind["oidc"] == {"issuer": ISSUER, "client_id": "demo", "client_secret": "s3cret-value",
                            "allow_domains": ["example.test", "example.org"], "allow_emails": ["bob@else.test"]}
    assert check_bind_option("http", "oidc", bind["oidc"])["client_secret"] == "s3cret-value"
    assert "s3cret" not in repr(cfg) and "s3cret" not in caplog.text
    with pytest.raises(edge.agent.config.ConfigError, match="give it once"):
        agent_cli.build_config(_parse(["agent", "http", "8080", "--name", "d", "--oidc", ISSUER, "--oidc", ISSUER,
                                       "--oidc-client-id", "x"]), env={"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"})
    with pytest.raises(edge.agent.config.ConfigError, match="client_id is missing"):
        agent_cli.build_config(_parse(["agent", "http", "8080", "--name", "d", "--oidc", ISSUER]),
                               env={"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"})
    with pytest.raises(edge.agent.config.ConfigError, match="cannot read"):
        agent_cli.build_config(_parse(["agent", "http", "8080", "--name", "d", "--oidc", ISSUER, "--oidc-client-id",
                                       "x", "--oidc-client-secret-file", str(tmp_path / "nope")]),
                               env={"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"})


def test_agent_toml_oidc_table(tmp_path) -> None:
    from edge.agent.config import ConfigError, load_agent_config

    (tmp_path / "secret").write_text("s3cret-value\n")
    (tmp_path / "token").write_text("t0k\n")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'''zone = "lab.test"
authtoken_file = "{tmp_path / 'token'}"

[[endpoints]]
kind = "http"
name = "demo"
port = 8080
oidc = {{ issuer = "{ISSUER}", client_id = "demo", client_secret_file = "{tmp_path / 'secret'}", allow_domains = ["example.test"], max_session_duration = "8h" }}
''')
    cfg = load_agent_config(conf, env={})
    got = cfg.endpoints[0].bind_options()["oidc"]
    assert got["client_secret"] == "s3cret-value" and got["max_session_duration"] == "8h"
    assert "s3cret" not in repr(cfg)
    conf.write_text(conf.read_text().replace("max_session_duration", "max_sesion_duration"))
    with pytest.raises(ConfigError, match="unknown key"):
        load_agent_config(conf, env={})


def test_the_registry_holds_the_client_secret_sealed_and_other_pops_open_it(tmp_path) -> None:
    key = S.new_key_file(tmp_path / "k")
    here, there = Oidc.from_config({"session_key_file": str(key)}), Oidc.from_config({"session_key_file": str(key)})
    stranger = Oidc.from_config({"session_key_file": str(S.new_key_file(tmp_path / "k2"))})
    local = opts()
    stored = json.loads(json.dumps(Chain((here,)).registry_options(local, T0)))  # what etcd gets
    assert "s3cret" not in json.dumps(stored) and stored["oidc"]["client_secret"].startswith("sealed:")
    assert stored["oidc"]["client_id"] == "demo" and local["oidc"]["client_secret"] == "s3cret-value"
    assert Chain((here,)).registry_options(stored, T0) == stored  # sealed once
    # another PoP finishes a login with the stored options: FakeIdP checks the Basic credentials
    idp = FakeIdP()
    cb, _ = login(Chain((there,)), idp, options=stored)
    assert cb.response.status == 302 and header(cb, "Location") == "/private?x=1"
    # a PoP with another key cannot use it: a clear refusal, no call to the provider's token endpoint
    n = len(idp.calls)
    cb, _ = login(Chain((stranger,)), idp, options=stored)
    assert _failed(cb) and "cannot open the endpoint's client secret" in cb.reason
    assert not [c for c in idp.calls[n:] if c.url.endswith("/token")]
    assert Chain(()).registry_options({"a": 1}, T0) == {"a": 1}
