"""SAML 2.0 and basic auth at the edge, in the lab: a browser-like client
(aiohttp with a cookie jar, run INSIDE client hosts) -> its nearest PoP's
`gslb edge` (the `saml` module) -> the idp host's pysaml2 IdP
(https://idp.lab.test:8443, netns/saml_idp.py: its login form, lab users)
-> back to the edge's assertion consumer -> the upstream behind `gslb agent`.

The whole login as a browser does it: follow redirects, submit the IdP's
login form, POST the auto-submitted SAMLResponse back, carry cookies; then
the same cookie jar at another PoP. Bad input: a tampered cookie, a replayed
assertion, a user outside the authorized groups, the IdP down. Every wait
has a deadline. Modes of this file: `upstream DIR PORT`, `browser ...`.
"""
from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from _polling import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: _tools, also when run as a script
from _tools import need_tools  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.timeout(400)]

HERE = Path(__file__).resolve()
CHROMIUM = str(HERE.parent / "login_chromium.py")
PY = sys.executable
PORT = 18280
IDP = "https://idp.lab.test:8443/metadata"
SAML_URL = "https://samldemo.app.lab.test"
BASIC_URL = "https://basicdemo.app.lab.test"
NEAREST = {"client-jp": "pop-jp", "client-lon": "pop-eu"}


@pytest.fixture(scope="module")
def net(lab, gslb_argv, tmp_path_factory):
    st = lab.status["state"]
    if not lab.role("idp"):
        pytest.fail("the lab plan has no idp host (examples/lab.toml)")
    tmp = tmp_path_factory.mktemp("lab-saml")
    started = []
    try:
        up = lab.spawn("agent", PY, str(HERE), "upstream", str(tmp), str(PORT), name="upstream")
        started.append(up)
        up.wait_line(r"^upstream ready", 30)
        g = gslb_argv
        saml = lab.spawn("agent", *g, "agent", "http", str(PORT), "--name", "samldemo", "--saml-idp", IDP,
                         "--saml-group", "staff", name="agent-saml")
        basic = lab.spawn("agent", *g, "agent", "http", str(PORT), "--name", "basicdemo",
                          "--basic-auth", "alice:alice-basic-pw", "--basic-auth", "carol:carol:with:colons",
                          name="agent-basic")
        started += [saml, basic]
        saml.wait_line(r"forwarding https://samldemo\.app\.lab\.test")
        basic.wait_line(r"forwarding https://basicdemo\.app\.lab\.test")
        for client in NEAREST:  # online at every entry PoP the tests use
            for url, want in ((SAML_URL + "/saml/metadata", "200"), (BASIC_URL + "/", "401")):
                got = []
                ok, _ = wait_for(lambda: got.append(curl_status(lab, client, url, st["ca"])) or got[-1] == want,
                                 30, 0.2)
                assert ok, (client, url, got[-1:])
        yield type("Net", (), dict(lab=lab, ca=st["ca"], tmp=tmp))
    finally:
        for p in reversed(started):
            p.stop()


def curl_status(lab, client, url, ca, *extra):
    r = lab.run(client, "curl", "-sS", "--max-time", "5", "--cacert", ca, *extra, "-o", "/dev/null", "-w",
                "%{http_code}", url, timeout=15)
    return r.stdout


def hits(net) -> int:
    f = net.tmp / "hits"
    return int(f.read_text()) if f.exists() else 0


def browser(net, client, url, jar, *, user=None, password=None, action="get"):
    """Run this file's browser mode inside `client`; its JSON report."""
    argv = [PY, str(HERE), "browser", action, url, net.ca, str(jar)]
    if user:
        argv += [user, password]
    r = net.lab.run(client, *argv, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def upstream_headers(report):
    assert report["status"] == 200, report
    return {k.lower(): v for k, v in json.loads(report["body"])["headers"].items()}


def test_saml_login_as_a_browser_then_the_same_session_at_another_pop(net):
    jar = net.tmp / "alice.jar"
    before = hits(net)
    r = browser(net, "client-jp", SAML_URL + "/private?q=1", jar, user="alice", password="alice-lab-pw")
    assert any(u.startswith("https://idp.lab.test:8443/sso/redirect?SAMLRequest=") for u in r["trail"]), r["trail"]
    assert r["url"] == SAML_URL + "/private?q=1" and r["acs_status"] == 302
    h = upstream_headers(r)
    assert h["gslb-auth-email"] == "alice@lab.test" and h["gslb-auth-subject"] == "alice"
    assert h["gslb-auth-name"] == "Alice Lab"
    assert json.loads(r["body"])["path"] == "/private?q=1"
    assert hits(net) == before + 1  # only the request after the login reached the upstream
    jp_via = r["headers"].get("Via", "")
    # the same cookie jar from London: its nearest PoP is another one, and the session holds there
    r2 = browser(net, "client-lon", SAML_URL + "/again", jar)
    assert not any("idp.lab.test" in u for u in r2["trail"]), r2["trail"]
    assert upstream_headers(r2)["gslb-auth-email"] == "alice@lab.test"
    assert r2["headers"].get("Via", "") != jp_via, (jp_via, r2["headers"].get("Via"))


def test_client_identity_headers_are_stripped(net):
    jar = net.tmp / "alice2.jar"
    browser(net, "client-jp", SAML_URL + "/", jar, user="alice", password="alice-lab-pw")
    r = browser(net, "client-jp", SAML_URL + "/", jar, action="forge-headers")
    h = upstream_headers(r)
    assert h["gslb-auth-email"] == "alice@lab.test" and "mallory" not in json.dumps(h)


def test_user_outside_the_authorized_groups_gets_403_and_nothing_upstream(net):
    before = hits(net)
    r = browser(net, "client-jp", SAML_URL + "/", net.tmp / "bob.jar", user="bob", password="bob-lab-pw")
    assert r["status"] == 403 and r["headers"].get("X-Gslb-Error-Code") == "ERR_GSLB_3216", r
    assert hits(net) == before


def test_tampered_session_cookie_means_a_new_login(net):
    jar = net.tmp / "alice3.jar"
    browser(net, "client-jp", SAML_URL + "/", jar, user="alice", password="alice-lab-pw")
    before = hits(net)
    r = browser(net, "client-jp", SAML_URL + "/", jar, action="tamper")
    assert any(u.startswith("https://idp.lab.test:8443/sso/redirect?") for u in r["trail"]), r
    assert "Lab IdP" in r["body"] and hits(net) == before


def test_replayed_assertion_is_refused(net):
    jar = net.tmp / "alice4.jar"
    r = browser(net, "client-jp", SAML_URL + "/", jar, user="alice", password="alice-lab-pw")
    assert r["acs_status"] == 302
    before = hits(net)
    again = browser(net, "client-jp", SAML_URL + "/", jar, action="replay")
    assert again["status"] == 400 and again["headers"].get("X-Gslb-Error-Code") == "ERR_GSLB_3441", again
    assert "replayed" in again["body"] or "used before" in again["body"]
    assert hits(net) == before


def test_basic_auth_in_the_lab(net):
    lab, ca = net.lab, net.ca
    r = lab.run("client-jp", "curl", "-sS", "--max-time", "5", "--cacert", ca, "-D", "-", BASIC_URL + "/x", timeout=15)
    assert r.stdout.startswith("HTTP/1.1 401") and \
        'www-authenticate: basic realm="basicdemo.app.lab.test", charset="utf-8"' in r.stdout.lower(), r.stdout
    assert curl_status(lab, "client-jp", BASIC_URL + "/", ca, "-u", "alice:wrong") == "401"
    for client in NEAREST:
        r = lab.run(client, "curl", "-sS", "--max-time", "5", "--cacert", ca, "-u", "alice:alice-basic-pw",
                    BASIC_URL + "/h", timeout=15)
        h = {k.lower(): v for k, v in json.loads(r.stdout)["headers"].items()}
        assert h["gslb-auth-user"] == "alice" and "authorization" not in h, h
    r = lab.run("client-jp", "curl", "-sS", "--max-time", "5", "--cacert", ca, "-u", "carol:carol:with:colons",
                "-H", "Gslb-Auth-User: root", BASIC_URL + "/h", timeout=15)
    assert json.loads(r.stdout)["headers"]["Gslb-Auth-User"] == "carol"


@need_tools("/usr/bin/chromium")
def test_headless_chromium_logs_in_at_one_pop_and_reuses_the_session_at_another(net):
    state = net.tmp / "chromium-state.json"
    url = SAML_URL + "/chromium"
    r = net.lab.run("client-jp", PY, CHROMIUM, "login", url, "--form", "saml", "--user", "alice", "--password", "alice-lab-pw",
                    "--state", str(state), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["url"] == url, out
    assert "GET https://idp.lab.test:8443/sso/redirect" in out["requests"], out["requests"]
    assert "POST https://samldemo.app.lab.test/saml/acs" in out["requests"], out["requests"]  # the page's own JS
    h = {k.lower(): v for k, v in json.loads(out["text"])["headers"].items()}
    assert h["gslb-auth-email"] == "alice@lab.test"
    r = net.lab.run("client-lon", PY, CHROMIUM, "reuse", SAML_URL + "/again", "--state", str(state), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not any("idp.lab.test" in u for u in out["requests"]), out["requests"]
    assert json.loads(out["text"])["headers"]["Gslb-Auth-Subject"] == "alice"


def test_idp_down_the_login_fails_at_the_idp_and_nothing_reaches_the_upstream(net, gslb_run):
    lab = net.lab
    before = hits(net)
    r = gslb_run("lab", "kill", "--prefix", lab.prefix, "idp")
    assert r.returncode == 0, r.stderr
    try:
        rep = browser(net, "client-jp", SAML_URL + "/", net.tmp / "down.jar", user="alice", password="alice-lab-pw")
        assert rep.get("error"), rep  # the browser cannot reach the IdP
        assert any(u.startswith("https://idp.lab.test:8443/") for u in rep["trail"]), rep
        assert hits(net) == before
        # an existing session keeps working while the IdP is down (no call to the IdP per request)
    finally:
        r = gslb_run("lab", "restart", "--prefix", lab.prefix, "idp", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- modes (run inside lab hosts)


def _upstream(d: str, port: int) -> None:
    from aiohttp import web

    count = [0]

    async def any_path(request):
        count[0] += 1
        Path(d, "hits").write_text(str(count[0]))
        return web.json_response({"path": request.path_qs, "headers": dict(request.headers)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)

    async def main():
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("upstream ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _browser(action: str, url: str, ca: str, jar_path: str, user: str | None, password: str | None) -> dict:
    """A browser-like client: a cookie jar (kept in `jar_path` between runs), redirects followed one
    by one (each URL in `trail`), the IdP's login form filled in, the HTTP-POST form submitted."""
    import html as H
    from urllib.parse import urljoin

    import aiohttp
    from yarl import URL

    jar = aiohttp.CookieJar()
    if Path(jar_path).exists():
        jar.load(jar_path)
    if action == "tamper":
        for c in list(jar):
            if c.key == "__Host-gslb_session":
                v = c.value
                jar.update_cookies({c.key: v[:-4] + ("AAAA" if v[-4:] != "AAAA" else "BBBB")}, URL(url))
    out: dict = {"trail": []}
    ctx = ssl.create_default_context(cafile=ca)

    async def follow(s, method, target, data=None, headers=None):
        for i in range(10):
            out["trail"].append(target)
            r = await s.request(method, target, data=data, headers=headers, allow_redirects=False)
            if i == 0:
                out["first_status"] = r.status  # of this call's own request (the ACS POST: 302)
            if r.status not in (301, 302, 303, 307, 308):
                return r
            out.setdefault("redirects", []).append(r.status)
            target = urljoin(target, r.headers["Location"])
            if r.status in (301, 302, 303):
                method, data = "GET", None
        raise AssertionError("too many redirects")

    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=30)) as s:
        try:
            if action == "replay":
                saved = json.loads(Path(jar_path + ".acs").read_text())
                for k, v in saved["cookies"].items():
                    jar.update_cookies({k: v}, URL(saved["action"]))
                r = await follow(s, "POST", saved["action"], saved["fields"])
            else:
                headers = {"Gslb-Auth-Email": "mallory@evil.test", "Gslb-Auth-Subject": "mallory"} \
                    if action == "forge-headers" else None
                r = await follow(s, "GET", url, headers=headers)
                text = await r.text()
                if "Lab IdP" in text and user:
                    token = H.unescape(re.search(r'name="token" value="([^"]+)"', text).group(1))
                    r = await follow(s, "POST", urljoin(str(r.url), "/login"),
                                     {"token": token, "username": user, "password": password})
                    text = await r.text()
                    action_url = H.unescape(re.search(r'action="([^"]+)"', text).group(1))
                    fields = {k: H.unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', text)}
                    login_cookies = {c.key: c.value for c in jar if c.key.startswith("__Host-gslb_saml_")}
                    Path(jar_path + ".acs").write_text(json.dumps({"action": action_url, "fields": fields,
                                                                   "cookies": login_cookies}))
                    r = await follow(s, "POST", action_url, fields)  # the auto-submitted form
                    out["acs_status"] = out["first_status"]
            out.update(status=r.status, url=str(r.url), headers=dict(r.headers), body=(await r.text())[:20000])
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
    jar.save(jar_path)
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "upstream":
        _upstream(sys.argv[2], int(sys.argv[3]))
    elif mode == "browser":
        a = sys.argv[2:]
        print(json.dumps(asyncio.run(_browser(a[0], a[1], a[2], a[3], a[4] if len(a) > 4 else None,
                                              a[5] if len(a) > 5 else None))))
    else:
        raise SystemExit(f"unknown mode {mode}")
