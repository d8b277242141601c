"""The saml module (the edge as a SAML 2.0 SP) against a real pysaml2 IdP
(netns/saml_idp.py) that signs with xmlsec1: the whole login, and each kind
of bad input refused. Effects (ReadBody, Compute) are performed here as the
HTTPS front would (tests/test_edge_modules.py drives them through it)."""
from __future__ import annotations

import base64
import os
import re
import zlib
from urllib.parse import parse_qs, quote, urlencode, urlparse

import pytest
from _tools import _present

from edge.modules import build_chain
from edge.modules import session as S
from edge.modules.base import Compute, EffectResult, ReadBody, RequestHead, Subject, Verdict, client_ip

HOST = "demo.app.lab.test"
ACS = f"https://{HOST}/saml/acs"
SP_ID = f"https://{HOST}/saml/metadata"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not _present("xmlsec1"):  # the tests/_tools.py rule: a skip locally, a failure in CI
        msg = "needs xmlsec1: run `make install` (it apt-get installs the tools the tests use)"
        pytest.fail(f"CI: {msg}") if os.environ.get("CI") else pytest.skip(msg)
    from netns.saml_idp import Idp, make_keypair

    d = tmp_path_factory.mktemp("saml")
    kf, cf = make_keypair(d, "idp")
    idp = Idp("https://idp.lab.test:8443", kf, cf)
    (d / "idp.xml").write_text(idp.metadata())
    okf, ocf = make_keypair(d, "forger")  # another key, the same entity ID: a forger
    forger = Idp("https://idp.lab.test:8443", okf, ocf)
    S.new_key_file(d / "saml-session.key")
    return {"dir": d, "idp": idp, "forger": forger}


def module(lab, **extra):
    opts = {"idp_metadata_files": [str(lab["dir"] / "idp.xml")],
            "session_key_file": str(lab["dir"] / "saml-session.key"), **extra}
    return build_chain(["saml"], {"saml": opts}).modules[0]


BIND = {"saml_idp": "https://idp.lab.test:8443/metadata"}


def subject(method, target, cookies=None, body=b"", options=BIND, wall=None, host=HOST, extra=b""):
    import time

    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode()
    if cookies:
        head += b"Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()).encode() + b"\r\n"
    if body:
        head += b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n" % len(body)
    head += extra + b"\r\n"
    s = Subject(client_ip=client_ip("198.19.1.10"), client_port=4000, kind="http", endpoint=host, options=options,
                request=RequestHead(method, target, host, head), now=time.monotonic(),
                wall=time.time() if wall is None else wall)
    return s, body


def drive(m, s_body):
    """decide, performing ReadBody and Compute effects; the final Decision."""
    s, body = s_body
    d = m.decide(s)
    while d.verdict is Verdict.PERFORM:
        if isinstance(d.effect, ReadBody):
            r = EffectResult(200, body=body) if len(body) <= d.effect.limit else EffectResult(error="body_too_large")
        else:
            assert isinstance(d.effect, Compute)
            r = EffectResult(value=d.effect.fn())
        d = m.resume(s, d.effect, r)
    return d


def set_cookies(d):
    out = {}
    for n, v in d.response.headers:
        if n == "Set-Cookie":
            name, _, rest = v.partition("=")
            out[name] = rest.split(";")[0]
    return out


def start_login(m, lab, target="/private?x=1"):
    """The SP-initiated start: (the IdP's parsed AuthnRequest, RelayState, the browser's cookies)."""
    d = drive(m, subject("GET", target))
    assert d.verdict is Verdict.ANSWER and d.response.status == 302
    loc = dict(d.response.headers)["Location"]
    q = parse_qs(urlparse(loc).query)
    assert loc.startswith("https://idp.lab.test:8443/sso/redirect?")
    lab["idp"].add_sp(drive(m, subject("GET", "/saml/metadata")).response.body.decode())
    req = lab["idp"].parse_request(q["SAMLRequest"][0], "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect")
    return req, q["RelayState"][0], set_cookies(d)


def acs(m, saml_response, relay, cookies, **kw):
    body = urlencode({"SAMLResponse": saml_response, "RelayState": relay}).encode()
    return drive(m, subject("POST", "/saml/acs", cookies, body, **kw))


def login(m, lab, user="alice", target="/private?x=1"):
    req, relay, cookies = start_login(m, lab, target)
    resp = lab["idp"].response(user, in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID)
    return acs(m, resp, relay, cookies), resp, relay, cookies


def test_sp_metadata_is_served_at_its_documented_path(lab):
    m = module(lab)
    d = drive(m, subject("GET", "/saml/metadata"))
    assert d.response.status == 200 and dict(d.response.headers)["Content-Type"] == "application/samlmetadata+xml"
    body = d.response.body.decode()
    assert f'entityID="{SP_ID}"' in body and f'Location="{ACS}"' in body and "HTTP-POST" in body
    assert 'WantAssertionsSigned="true"' in body


def test_whole_login_then_the_session_passes_with_identity_headers(lab):
    m = module(lab)
    d, _, _, _ = login(m, lab)
    assert d.response.status == 302 and dict(d.response.headers)["Location"] == "/private?x=1"
    cookies = set_cookies(d)
    session = cookies["__Host-gslb_session"]
    assert any(k.startswith("__Host-gslb_saml_") and v == "" for k, v in cookies.items())  # the login cookie cleared
    d = drive(m, subject("GET", "/private", {"__Host-gslb_session": session},
                         extra=b"Gslb-Auth-Email: mallory@evil.test\r\n"))
    assert d.verdict is Verdict.PASS
    assert dict(d.add_upstream) == {"Gslb-Auth-Subject": "alice", "Gslb-Auth-Email": "alice@lab.test",
                                    "Gslb-Auth-Name": "Alice Lab"}
    assert {"Gslb-Auth-Email", "Gslb-Auth-Subject", "Gslb-Auth-Name"} <= set(d.strip_upstream)
    st = m.stats()
    assert st["logins_ok_total"] == 1 and st["sessions_ok_total"] == 1
    # another edge node (a new module, the same key file) honours the session: every PoP does
    other = module(lab)
    assert drive(other, subject("GET", "/", {"__Host-gslb_session": session})).verdict is Verdict.PASS


def test_http_post_binding_sends_an_auto_submitting_form(lab):
    m = module(lab, binding="post")
    d = drive(m, subject("GET", "/"))
    assert d.response.status == 200
    page = d.response.body.decode()
    assert 'action="https://idp.lab.test:8443/sso/post"' in page and 'name="SAMLRequest"' in page
    saml_request = re.search(r'name="SAMLRequest" value="([^"]+)"', page).group(1)
    assert b"AuthnRequest" in base64.b64decode(saml_request)


def test_non_get_login_and_target_is_kept_local(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab, target="//evil.test/x")
    d = acs(m, lab["idp"].response("alice", in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID),
            relay, cookies)
    assert dict(d.response.headers)["Location"] == "/"  # no open redirect


def test_forged_assertion_signed_with_another_key_is_refused(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    lab["forger"].add_sp(drive(m, subject("GET", "/saml/metadata")).response.body.decode())
    forged = lab["forger"].response("alice", in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID)
    d = acs(m, forged, relay, cookies)
    assert d.response.status == 400 and dict(d.response.headers)["X-Gslb-Error-Code"] == "ERR_GSLB_3441"
    assert "__Host-gslb_session" not in set_cookies(d)
    assert m.stats()["assertion_bad_signature_total"] == 1


def test_unsigned_assertion_is_refused(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    unsigned = lab["idp"].response("alice", in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID, sign=False)
    d = acs(m, unsigned, relay, cookies)
    assert d.response.status == 400 and "__Host-gslb_session" not in set_cookies(d)
    assert m.stats()["assertion_unsigned_total"] + m.stats().get("assertion_bad_signature_total", 0) == 1


def test_tampered_signed_assertion_is_refused(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    xml = base64.b64decode(lab["idp"].response("bob", in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID))
    tampered = base64.b64encode(xml.replace(b">guests<", b">admins<")).decode()
    assert tampered != base64.b64encode(xml).decode()
    d = acs(m, tampered, relay, cookies)
    assert d.response.status == 400 and m.stats()["assertion_bad_signature_total"] == 1


def test_expired_assertion_is_refused(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    from netns.saml_idp import Idp

    old = Idp("https://idp.lab.test:8443", *lab["idp"]._args[:2], lifetime_minutes=-10)  # NotOnOrAfter in the past
    old.add_sp(drive(m, subject("GET", "/saml/metadata")).response.body.decode())
    d = acs(m, old.response("alice", in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID), relay, cookies)
    assert d.response.status == 400 and m.stats()["assertion_expired_total"] == 1


def test_wrong_audience_is_refused(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    other = module(lab)
    lab["idp"].add_sp(drive(other, subject("GET", "/saml/metadata", host="other.app.lab.test")).response.body.decode())
    resp = lab["idp"].response("alice", in_response_to=req.id, destination=ACS,
                               sp_entity_id="https://other.app.lab.test/saml/metadata")
    d = acs(m, resp, relay, cookies)
    assert d.response.status == 400 and "__Host-gslb_session" not in set_cookies(d)
    assert m.stats()["assertion_wrong_audience_total"] == 1 and m.stats()["logins_ok_total"] == 0, m.stats()


def test_replayed_assertion_is_refused(lab):
    m = module(lab)
    d, resp, relay, cookies = login(m, lab)
    assert d.response.status == 302
    again = acs(m, resp, relay, cookies)  # the same assertion (and the same login cookie) once more
    assert again.response.status == 400 and "__Host-gslb_session" not in set_cookies(again)
    assert m.stats()["assertion_replayed_total"] == 1


def test_response_without_its_login_cookie_is_unsolicited_and_refused(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    resp = lab["idp"].response("alice", in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID)
    d = acs(m, resp, relay, {})
    assert d.response.status == 400 and m.stats()["assertion_unsolicited_total"] == 1


def test_idp_initiated_login_only_when_allowed(lab):
    resp = lab["idp"].response("alice", in_response_to=None, destination=ACS, sp_entity_id=SP_ID)
    assert acs(module(lab), resp, "/welcome", {}).response.status == 400
    m = module(lab, allow_idp_initiated=True)
    lab["idp"].add_sp(drive(m, subject("GET", "/saml/metadata")).response.body.decode())
    d = acs(m, lab["idp"].response("alice", in_response_to=None, destination=ACS, sp_entity_id=SP_ID), "/welcome", {})
    assert d.response.status == 302 and dict(d.response.headers)["Location"] == "/welcome"
    assert "__Host-gslb_session" in set_cookies(d)


def test_authorized_groups_from_the_group_attribute(lab):
    opts = {**BIND, "saml_authorized_groups": ["admins"]}
    m = module(lab)

    def attempt(user):
        d = drive(m, subject("GET", "/", options=opts))
        q = parse_qs(urlparse(dict(d.response.headers)["Location"]).query)
        lab["idp"].add_sp(drive(m, subject("GET", "/saml/metadata", options=opts)).response.body.decode())
        req = lab["idp"].parse_request(q["SAMLRequest"][0], "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect")
        resp = lab["idp"].response(user, in_response_to=req.id, destination=ACS, sp_entity_id=SP_ID)
        body = urlencode({"SAMLResponse": resp, "RelayState": q["RelayState"][0]}).encode()
        return drive(m, subject("POST", "/saml/acs", set_cookies(d), body, options=opts))

    denied = attempt("bob")
    assert denied.response.status == 403 and dict(denied.response.headers)["X-Gslb-Error-Code"] == "ERR_GSLB_3216"
    ok = attempt("alice")
    assert ok.response.status == 302
    session = set_cookies(ok)["__Host-gslb_session"]
    assert drive(m, subject("GET", "/", {"__Host-gslb_session": session}, options=opts)).verdict is Verdict.PASS
    # the binding's groups changed: the old session no longer passes
    other = {**BIND, "saml_authorized_groups": ["nobody"]}
    assert drive(m, subject("GET", "/", {"__Host-gslb_session": session}, options=other)).response.status == 302
    assert m.stats()["logins_denied_total"] == 1


def test_tampered_expired_or_foreign_session_cookie_means_login(lab):
    m = module(lab)
    d, _, _, _ = login(m, lab)
    session = set_cookies(d)["__Host-gslb_session"]
    flipped = session[:-3] + ("A" if session[-3] != "A" else "B") + session[-2:]
    for value, wall in ((flipped, None), (session, __import__("time").time() + 9 * 3600), ("v1.garbage", None)):
        d = drive(m, subject("GET", "/private", {"__Host-gslb_session": value}, wall=wall))
        assert d.verdict is Verdict.ANSWER and d.response.status == 302  # to the IdP, nothing upstream
    # a session of another endpoint is not one for this one
    assert drive(m, subject("GET", "/", {"__Host-gslb_session": session}, host="other.app.lab.test")).response.status == 302


def test_acs_refuses_get_bodies_too_large_and_garbage(lab):
    m = module(lab)
    assert drive(m, subject("GET", "/saml/acs")).response.status == 400
    assert drive(m, subject("POST", "/saml/acs", body=b"x" * (256 * 1024 + 1))).response.status == 400
    assert drive(m, subject("POST", "/saml/acs", body=b"SAMLResponse=%%%")).response.status == 400
    req, relay, cookies = start_login(m, lab)
    assert acs(m, base64.b64encode(b"<not-saml/>").decode(), relay, cookies).response.status == 400
    assert acs(m, "!!!notbase64", relay, cookies).response.status == 400


def test_a_failed_or_slow_verification_is_a_502_and_nothing_upstream(lab):
    m = module(lab)
    req, relay, cookies = start_login(m, lab)
    body = urlencode({"SAMLResponse": "x", "RelayState": relay}).encode()
    s, _ = subject("POST", "/saml/acs", cookies, body)
    d = m.decide(s)
    d = m.resume(s, d.effect, EffectResult(200, body=body))
    assert isinstance(d.effect, Compute)
    d = m.resume(s, d.effect, EffectResult(error="timeout"))
    assert d.verdict is Verdict.ANSWER and d.response.status == 502
    assert dict(d.response.headers)["X-Gslb-Error-Code"] == "ERR_GSLB_3521"


def test_endpoint_asking_for_an_untrusted_idp_gets_502(lab):
    m = module(lab)
    d = drive(m, subject("GET", "/", options={"saml_idp": "https://evil.test/idp"}))
    assert d.response.status == 502
    assert drive(m, subject("GET", "/", options={})).verdict is Verdict.PASS  # no saml_idp: untouched


def test_logout_clears_the_session(lab):
    m = module(lab)
    d = drive(m, subject("GET", "/saml/logout"))
    assert d.response.status == 200 and set_cookies(d)["__Host-gslb_session"] == ""


def test_replay_cache_is_bounded(lab):
    m = module(lab, replay_cache_entries=1)
    login(m, lab)
    login(m, lab)
    assert m.stats()["replay_cache_entries"] == 1


def test_config_errors_name_the_key(lab, tmp_path):
    from edge.modules import ModuleConfigError

    bad = tmp_path / "bad.xml"
    bad.write_text("<x/>")
    sp_only = tmp_path / "sp.xml"
    sp_only.write_text(drive(module(lab), subject("GET", "/saml/metadata")).response.body.decode())
    for opts, match in [
        ({"idp_metadata_files": [str(bad)], "session_key_file": str(lab["dir"] / "saml-session.key")}, "EntityDescriptor"),
        ({"idp_metadata_files": [str(sp_only)], "session_key_file": str(lab["dir"] / "saml-session.key")}, "IDPSSODescriptor"),
        ({"idp_metadata_files": [str(lab["dir"] / "idp.xml")]}, "session_key_file"),
        ({"binding": "soap"}, "binding"),
        ({"session_duration": 1}, "session_duration"),
        ({"colour": 1}, "unknown"),
    ]:
        with pytest.raises(ModuleConfigError, match=match):
            build_chain(["saml"], {"saml": opts})


def test_bind_options_are_checked():
    from edge.modules import check_bind_option

    assert check_bind_option("http", "saml_idp", ["https://idp.lab.test:8443/metadata"]) == \
        "https://idp.lab.test:8443/metadata"
    assert check_bind_option("http", "saml_authorized_groups", ["staff"]) == ["staff"]
    for key, value in (("saml_idp", ["a", "b"]), ("saml_idp", "has space"), ("saml_authorized_groups", []),
                       ("saml_authorized_groups", ["a\nb"])):
        with pytest.raises(ValueError):
            check_bind_option("http", key, value)
    with pytest.raises(KeyError):
        check_bind_option("tcp", "saml_idp", "x")


def test_edge_toml_errors_in_the_saml_table_name_their_line(lab):
    from edge.config import ConfigError, parse

    text = ('zone = "lab.test"\n\n[edge]\nca_dir = "/tmp/ca"\n\n[edge.modules.saml]\n'
            f'idp_metadata_files = ["{lab["dir"] / "idp.xml"}"]\nsession_key_file = "{lab["dir"] / "saml-session.key"}"\n'
            'binding = "soap"\n\n[pops.us]\nlisten = ["198.19.1.1"]\n')
    with pytest.raises(ConfigError, match=r"e\.toml:9: edge\.modules\.saml\.binding: 'redirect'"):
        parse(text, "us", "e.toml")
    cfg = parse(text.replace('binding = "soap"', 'binding = "post"'), "us", "e.toml")
    assert cfg.module_options["saml"]["binding"] == "post"


def test_a_hosts_sp_configuration_is_made_in_the_thread_pool_once(lab):
    m = module(lab)
    s, _ = subject("GET", "/saml/metadata")
    d = m.decide(s)
    assert d.verdict is Verdict.PERFORM and isinstance(d.effect, Compute) and d.effect.what == "saml_site"
    failed = m.resume(s, d.effect, EffectResult(error="busy"))
    assert failed.response.status == 502 and m.stats()["assertion_site_failed_total"] == 1
    d = m.resume(s, d.effect, EffectResult(value=d.effect.fn()))
    assert d.response.status == 200 and m.stats()["sites"] == 1
    assert m.decide(s).response.status == 200  # cached: no effect any more


def test_acs_refuses_a_declared_oversized_body_before_reading_it(lab):
    m = module(lab)
    drive(m, subject("GET", "/saml/metadata"))  # the host's SP is made
    s, _ = subject("POST", "/saml/acs", extra=b"Content-Length: 999999999\r\n")
    d = m.decide(s)
    assert d.verdict is Verdict.ANSWER and d.response.status == 400
    assert m.stats()["assertion_body_too_large_total"] == 1
