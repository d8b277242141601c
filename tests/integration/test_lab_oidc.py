"""The edge's oidc module in the lab, against a real OpenID Connect provider
(npm oidc-provider on the idp host, https://idp.lab.test, TLS from the lab CA).

Logins are driven as a browser drives them: every redirect followed, the
provider's login form filled in and posted, cookies carried in a real cookie
jar (oidc_browser.py, aiohttp, certificates checked against the lab CA), and
once in headless Chromium (login_chromium.py, playwright). A session begun at
pop-eu (client-eu) is reused at pop-jp (client-jp): every edge holds the same
session key. Every client runs inside a lab client host, never in root.

The upstream (this file, `python THIS upstream PORT LOG`) records every
request it gets: none may come without the edge's identity headers.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests/: _tools, also when run as a script

import pytest  # noqa: E402
from _polling import wait_for  # noqa: E402
from _tools import need_tools  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.timeout(400)]

HERE = Path(__file__).resolve()
PY = sys.executable
BROWSER = str(HERE.parent / "oidc_browser.py")
CHROMIUM = str(HERE.parent / "login_chromium.py")
UP_PORT = 18091
ISSUER = "https://idp.lab.test"
NEAREST = {"client-eu": "pop-eu", "client-jp": "pop-jp"}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def idp(lab, gslb_argv, tmp_path_factory):
    if not lab.role("idp"):
        pytest.fail("the lab plan has no idp host (examples/lab.toml)")
    st = lab.status["state"]
    users = json.loads((Path(st["dir"]) / "idp" / "users.json").read_text())
    tmp = tmp_path_factory.mktemp("lab-oidc")
    os.chmod(tmp, 0o755)
    seen = tmp / "upstream.log"
    secret_file = users["client_secret_file"]
    started = []
    try:
        up = lab.spawn("agent", PY, str(HERE), "upstream", str(UP_PORT), str(seen), name="oidc-upstream")
        started.append(up)
        up.wait_line(r"^upstream ready", 30)
        gslb = gslb_argv
        sso = lab.spawn("agent", *gslb, "agent", "http", str(UP_PORT), "--name", "sso", "--oidc", ISSUER,
                        "--oidc-client-id", users["client_id"], "--oidc-client-secret-file", secret_file,
                        "--oidc-allow-domain", "example.test", "-v", name="agent-sso")
        started.append(sso)
        # the agent.toml form: a generic OAuth 2.0 profile (authorize, token, a user endpoint), and an
        # endpoint whose provider is down (nothing listens on idp's :9443)
        conf = tmp / "agent.toml"
        conf.write_text(Path(st["agent_config"]).read_text() + f"""
[[endpoints]]
kind = "http"
name = "oauth"
port = {UP_PORT}
oidc = {{ provider = "oauth2", client_id = "{users['client_id']}", client_secret_file = "{secret_file}", authorize_url = "{ISSUER}/auth", token_url = "{ISSUER}/token", user_url = "{ISSUER}/me", scopes = ["openid", "email"], allow_emails = ["carol@example.test"] }}

[[endpoints]]
kind = "http"
name = "private"
port = {UP_PORT}
oidc = {{ issuer = "https://idp.lab.test:9443", client_id = "x", allow_domains = ["example.test"] }}
""")
        more = lab.spawn("agent", *gslb, "agent", "start", "--config", str(conf), "-v", name="agent-more")
        started.append(more)
        sso.wait_line(r"forwarding https://sso\.app\.lab\.test")
        more.wait_line(r"forwarding https://private\.app\.lab\.test")
        for client in NEAREST:
            for name in ("sso", "oauth", "private"):
                ok, _ = wait_for(lambda: curl_status(lab, client, f"https://{name}.app.lab.test/", st["ca"])
                                 in ("302", "502"), 20, 0.2)
                assert ok, f"{name} not online for {client}"
        yield type("Idp", (), dict(lab=lab, ca=st["ca"], tmp=tmp, users={u["username"]: u for u in users["users"]},
                                   secret=Path(secret_file).read_text().strip(), seen=seen, agents=(sso, more),
                                   state=st))
    finally:
        for p in reversed(started):
            p.stop()


def curl_status(lab, client, url, ca, *extra):
    r = lab.run(client, "curl", "-sS", "--max-time", "5", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}",
                *extra, url, timeout=15)
    return r.stdout


def browser(idp, client, cmd, url, *extra, user="", jar=None):
    args = [PY, BROWSER, cmd, url, "--ca", idp.ca]
    if user:
        args += ["--user", user, "--password=" + idp.users[user]["password"]]  # it may begin with "-"
    if jar:
        args += ["--jar", str(jar)]
    r = idp.lab.run(client, *args, *extra, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def entry_pop(lab, client, name):
    """The PoP the client's DNS answer for `name` points at (the lab's geography)."""
    r = lab.run(client, "dig", "+short", "+time=2", "+tries=2", "A", name)
    got = [x for x in r.stdout.split() if x[0].isdigit()]
    for pop in lab.role("pop"):
        if got and set(got) <= set(pop["ipv4"]):
            return pop["name"]
    return None


def upstream_seen(idp):
    return [json.loads(line) for line in idp.seen.read_text().splitlines()] if idp.seen.exists() else []


def hosts(chain):
    return [step[1].split("/")[2] for step in chain]


# ---------------------------------------------------------------- the login


def test_login_at_pop_eu_then_the_same_session_at_pop_jp(idp):
    lab = idp.lab
    assert entry_pop(lab, "client-eu", "sso.app.lab.test") == "pop-eu"
    assert entry_pop(lab, "client-jp", "sso.app.lab.test") == "pop-jp"
    jar = idp.tmp / "jar-alice"
    got = browser(idp, "client-eu", "login", "https://sso.app.lab.test/whoami?from=eu", user="alice", jar=jar)
    assert got["status"] == 200, got
    assert hosts(got["chain"])[:2] == ["sso.app.lab.test", "idp.lab.test"]
    assert [s[2] for s in got["chain"]][-2:] == [302, 200] and got["chain"][-2][1].endswith("/oauth2/callback")
    h = got["json"]["headers"]
    assert h["Gslb-Auth-Email"] == "alice@example.test" and h["Gslb-Auth-Subject"] == "alice"
    assert h["Gslb-Auth-Name"] == "Alice Lab" and got["json"]["path"] == "/whoami?from=eu"
    assert "__Host-gslb_session" in got["cookies"]
    assert "gslb_session" not in h.get("Cookie", "")  # the session stays at the edge
    # the same cookie jar from Tokyo: pop-jp honours pop-eu's session, no provider on the way
    again = browser(idp, "client-jp", "get", "https://sso.app.lab.test/whoami?from=jp", jar=jar)
    assert again["status"] == 200 and again["chain"] == [["GET", "https://sso.app.lab.test/whoami", 200]], again
    assert again["json"]["headers"]["Gslb-Auth-Email"] == "alice@example.test"
    jp = lab.host("client-jp")
    assert again["json"]["headers"]["X-Forwarded-For"] in jp["ipv4"] + jp["ipv6"]


@need_tools("/usr/bin/chromium")
def test_headless_chromium_logs_in_at_pop_eu_and_reuses_the_session_at_pop_jp(idp):
    lab = idp.lab
    state = idp.tmp / "chromium-state.json"
    user = idp.users["carol"]
    r = lab.run("client-eu", PY, CHROMIUM, "login", "https://sso.app.lab.test/browser", "--form", "oidc", "--user", "carol",
                "--password=" + user["password"], "--state", str(state), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["url"] == "https://sso.app.lab.test/browser"
    assert any(u.startswith("POST https://idp.lab.test/interaction/") for u in got["requests"]), got["requests"]
    assert json.loads(got["text"])["headers"]["Gslb-Auth-Email"] == "carol@example.test"
    r = lab.run("client-jp", PY, CHROMIUM, "reuse", "https://sso.app.lab.test/browser-jp", "--state", str(state),
                timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["requests"] == ["GET https://sso.app.lab.test/browser-jp"], got["requests"]
    body = json.loads(got["text"])
    assert body["headers"]["Gslb-Auth-Email"] == "carol@example.test"
    jp = lab.host("client-jp")
    assert body["headers"]["X-Forwarded-For"] in jp["ipv4"] + jp["ipv6"]


def test_identity_headers_from_the_client_are_stripped(idp):
    jar = idp.tmp / "jar-spoof"
    browser(idp, "client-eu", "login", "https://sso.app.lab.test/", user="alice", jar=jar)
    got = browser(idp, "client-eu", "get", "https://sso.app.lab.test/spoof", "--header",
                  "Gslb-Auth-Email: mallory@example.test", jar=jar)
    assert got["json"]["headers"]["Gslb-Auth-Email"] == "alice@example.test"
    # without a session the spoofed header gets a login redirect, not the upstream
    r = idp.lab.run("client-eu", "curl", "-sS", "--max-time", "5", "--cacert", idp.ca, "-o", "/dev/null", "-w",
                    "%{http_code} %{redirect_url}", "-H", "Gslb-Auth-Email: alice@example.test",
                    "https://sso.app.lab.test/spoof-anon", timeout=15)
    code, _, loc = r.stdout.partition(" ")
    assert code == "302" and loc.startswith(ISSUER + "/auth?"), r.stdout
    assert not [s for s in upstream_seen(idp) if s["path"] == "/spoof-anon"]


def test_a_denied_user_gets_the_edges_403_and_the_upstream_nothing(idp):
    got = browser(idp, "client-eu", "login", "https://sso.app.lab.test/bob-was-here", user="bob",
                  jar=idp.tmp / "jar-bob")
    assert got["status"] == 403 and "ERR_GSLB_3211" in got["body"], got
    assert "bob@other.test is not allowed" in got["body"]
    assert "__Host-gslb_session" not in got["cookies"]
    assert not [s for s in upstream_seen(idp) if s["path"] == "/bob-was-here"]


def test_a_post_that_needs_login_comes_back_as_a_get_to_the_original_uri(idp):
    got = browser(idp, "client-jp", "login", "https://sso.app.lab.test/api/items?id=7", "--method", "POST",
                  user="alice", jar=idp.tmp / "jar-post")
    assert got["chain"][0] == ["POST", "https://sso.app.lab.test/api/items", 302]
    assert got["status"] == 200 and got["json"]["method"] == "GET" and got["json"]["path"] == "/api/items?id=7"
    assert not [s for s in upstream_seen(idp) if s["method"] == "POST" and s["path"].startswith("/api/items")]


def test_logout_ends_the_session(idp):
    jar = idp.tmp / "jar-logout"
    assert browser(idp, "client-eu", "login", "https://sso.app.lab.test/", user="alice", jar=jar)["status"] == 200
    out = browser(idp, "client-eu", "get", "https://sso.app.lab.test/oauth2/logout", jar=jar)
    assert out["status"] == 200 and "Signed out" in out["body"] and "__Host-gslb_session" not in out["cookies"]
    after = browser(idp, "client-eu", "get", "https://sso.app.lab.test/after-logout", jar=jar)
    assert hosts(after["chain"])[:2] == ["sso.app.lab.test", "idp.lab.test"]  # a new login


def test_a_tampered_or_forged_cookie_is_no_session(idp):
    for value in ("v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "forged"):
        r = idp.lab.run("client-eu", "curl", "-sS", "--max-time", "5", "--cacert", idp.ca, "-o", "/dev/null", "-w",
                        "%{http_code} %{redirect_url}", "-H", f"Cookie: __Host-gslb_session={value}",
                        "https://sso.app.lab.test/tampered", timeout=15)
        code, _, loc = r.stdout.partition(" ")
        assert code == "302" and loc.startswith(ISSUER + "/auth?"), r.stdout
    # a callback without the login's cookie (a replayed or forged link) is refused
    r = idp.lab.run("client-eu", "curl", "-sS", "--max-time", "5", "--cacert", idp.ca,
                    "https://sso.app.lab.test/oauth2/callback?code=abc&state=forgedstate123", timeout=15)
    assert "ERR_GSLB_3212" in r.stdout and "state" in r.stdout
    assert not [s for s in upstream_seen(idp) if s["path"] in ("/tampered", "/oauth2/callback")]


def test_an_identity_provider_that_is_down_is_a_clear_502(idp):
    r = idp.lab.run("client-jp", "curl", "-sS", "--max-time", "10", "--cacert", idp.ca, "-w", "\n%{http_code}",
                    "https://private.app.lab.test/secret", timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    assert code == "502" and "ERR_GSLB_3504" in body and "identity provider did not answer" in body, r.stdout
    assert not [s for s in upstream_seen(idp) if s["path"] == "/secret"]


def test_the_provider_dying_in_the_middle_of_a_login_is_a_502_and_restarts(idp, gslb_run):
    lab = idp.lab
    jar = idp.tmp / "jar-dying"
    half = browser(idp, "client-eu", "login", "https://sso.app.lab.test/mid-login", "--stop-at-callback",
                   user="alice", jar=jar)
    assert half["next"].startswith("https://sso.app.lab.test/oauth2/callback?code="), half
    r = gslb_run("lab", "kill", "--prefix", lab.prefix, "idp")
    assert r.returncode == 0, r.stderr
    try:
        got = browser(idp, "client-eu", "get", half["next"], jar=jar)
        assert got["status"] == 502 and "ERR_GSLB_3504" in got["body"], got  # the token exchange failed
        assert "identity provider did not answer" in got["body"]
    finally:
        r = gslb_run("lab", "restart", "--prefix", lab.prefix, "idp", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    assert not [s for s in upstream_seen(idp) if s["path"] == "/mid-login"]
    # the provider is back (its sessions were in memory): a new login works
    again = browser(idp, "client-eu", "login", "https://sso.app.lab.test/after-restart", user="alice",
                    jar=idp.tmp / "jar-after")
    assert again["status"] == 200 and again["json"]["headers"]["Gslb-Auth-Email"] == "alice@example.test"


def test_generic_oauth2_profile_from_agent_toml(idp):
    got = browser(idp, "client-eu", "login", "https://oauth.app.lab.test/oauth2-user", user="carol",
                  jar=idp.tmp / "jar-oauth")
    assert got["status"] == 200, got
    assert got["json"]["headers"]["Gslb-Auth-Email"] == "carol@example.test"
    denied = browser(idp, "client-eu", "login", "https://oauth.app.lab.test/oauth2-alice", user="alice",
                     jar=idp.tmp / "jar-oauth-alice")
    assert denied["status"] == 403 and "ERR_GSLB_3211" in denied["body"]


def test_the_upstream_never_saw_an_unauthenticated_request_nor_the_secret_in_a_log_or_etcd(idp):
    seen = upstream_seen(idp)
    assert seen, "the upstream saw nothing at all"
    assert all(s["headers"].get("Gslb-Auth-Subject") for s in seen), [s["path"] for s in seen]
    logs = [line for a in idp.agents for line in a.log]
    logs += [line for p in Path(idp.state["dir"], "logs").glob("pop-*.edge.log") for line in p.read_text().splitlines()]
    assert logs and not [line for line in logs if idp.secret in line]
    # the registry (etcd) holds the bindings for every PoP: the secret only sealed
    members = ",".join(f"http://{m['ipv4'][0]}:2379" for m in idp.lab.role("registry"))
    r = idp.lab.run("agent", "etcdctl", f"--endpoints={members}", "get", "--prefix", "/gslb/", timeout=20)
    assert r.returncode == 0 and "sso.app.lab.test" in r.stdout and "lab-demo" in r.stdout, r.stderr
    assert idp.secret not in r.stdout and "sealed:v1." in r.stdout


def test_the_edges_count_logins_in_metrics(idp):
    lab = idp.lab
    if not lab.role("metrics"):
        pytest.skip("the plan has no metrics host: the edges serve no /metrics")
    pop = lab.host("pop-eu")
    r = lab.run("client-eu", "curl", "-sS", "--max-time", "5", f"http://{pop['ipv4'][0]}:9180/metrics", timeout=15)
    ok = [line for line in r.stdout.splitlines()
          if line.startswith('gslb_edge_module_stat{module="oidc",stat="logins_ok_total"}')]
    assert ok and float(ok[0].split()[-1]) >= 1, r.stdout[-2000:]


# ---------------------------------------------------------------- helper processes


def upstream(port: int, log_path: str) -> None:
    """An HTTP upstream that answers every request with what it saw (JSON) and appends that to log_path."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(min(n, 1 << 20))
            seen = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
            with open(log_path, "a") as fh:
                fh.write(json.dumps(seen) + "\n")
            body = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_OPTIONS = do_DELETE = _any

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("upstream ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream(int(sys.argv[2]), sys.argv[3])
