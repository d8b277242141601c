"""basic_auth (RFC 7617): hashed users, the 401 challenge, the KDF as a
Compute effect with a cache, the agent's hashing, and the header edits."""
from __future__ import annotations

import asyncio
import base64

import pytest
from _front_fakes import Ctx, FakeBinding, open_front, settle

from edge.agent.config import EndpointConfig, module_options, validate_endpoint
from edge.modules import BIND_OPTIONS, Chain, Decision, EffectResult, Verdict, build_chain, check_bind_option
from edge.modules.base import Compute, RequestHead, Subject, client_ip
from edge.modules.basic_auth import BasicAuth, hash_entry, hash_password, verify, parse_hash

FAST = {"n": 2 ** 10, "r": 8, "p": 1}  # the lowest cost the edge accepts: quick tests


def users(*pairs: tuple[str, str]) -> list[str]:
    return [f"{u}:{hash_password(p, **FAST)}" for u, p in pairs]


def auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def subj(options, authorization=None, now=10.0, extra=b"") -> Subject:
    head = b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\n"
    if authorization is not None:
        head += b"Authorization: " + authorization.encode("utf-8") + b"\r\n"
    head += extra + b"\r\n"
    return Subject(client_ip=client_ip("192.0.2.1"), client_port=1, kind="http", endpoint="demo.app.lab.test",
                   options=options, request=RequestHead("GET", "/", "demo.app.lab.test", head), now=now)


def run(m: BasicAuth, s: Subject) -> Decision:
    """decide, and when it asks for the KDF run it here (as the shell's thread pool would)."""
    d = m.decide(s)
    if d.verdict is Verdict.PERFORM:
        assert isinstance(d.effect, Compute)
        d = m.resume(s, d.effect, EffectResult(value=d.effect.fn()))
    return d


OPTS = {"basic_auth": users(("alice", "correct horse"), ("bob", "s3cret:with:colons"))}


def test_no_credentials_get_401_with_rfc7617_challenge():
    m = BasicAuth()
    d = m.decide(subj(OPTS))
    assert d.verdict is Verdict.ANSWER and d.response.status == 401 and d.code == "ERR_GSLB_3401"
    h = dict(d.response.headers)
    assert h["WWW-Authenticate"] == 'Basic realm="demo.app.lab.test", charset="UTF-8"'
    assert h["X-Gslb-Error-Code"] == "ERR_GSLB_3401"
    assert m.stats()["missing_total"] == 1


def test_right_password_passes_with_user_header_and_no_authorization_upstream():
    m = BasicAuth()
    for user, pw in (("alice", "correct horse"), ("bob", "s3cret:with:colons")):  # RFC 7617: split at the first ':'
        d = run(m, subj(OPTS, auth(user, pw)))
        assert d.verdict is Verdict.PASS
        assert d.add_upstream == (("Gslb-Auth-User", user),)
        assert {"authorization", "gslb-auth-user"} <= {n.lower() for n in d.strip_upstream}
    assert m.stats()["ok_total"] == 2


@pytest.mark.parametrize("user,pw", [("alice", "wrong"), ("mallory", "correct horse"), ("Alice", "correct horse"),
                                     ("alice", "correct horse ")])
def test_wrong_user_or_password_is_401(user, pw):
    m = BasicAuth()
    d = m.decide(subj(OPTS, auth(user, pw)))
    assert d.verdict is Verdict.PERFORM  # an unknown user costs a KDF too (no timing oracle)
    d = m.resume(subj(OPTS, auth(user, pw)), d.effect, EffectResult(value=d.effect.fn()))
    assert d.verdict is Verdict.ANSWER and d.response.status == 401
    assert m.stats()["failed_total"] == 1


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                                    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic"])
def test_malformed_authorization_is_401_without_a_kdf(header):
    d = BasicAuth().decide(subj(OPTS, header))
    assert d.verdict is Verdict.ANSWER and d.response.status == 401


def test_a_verified_credential_is_cached_for_cache_seconds_then_verified_again():
    m = BasicAuth(cache_seconds=60)
    assert run(m, subj(OPTS, auth("alice", "correct horse"), now=100)).verdict is Verdict.PASS
    d = m.decide(subj(OPTS, auth("alice", "correct horse"), now=159))
    assert d.verdict is Verdict.PASS and d.add_upstream == (("Gslb-Auth-User", "alice"),)  # no KDF
    assert m.stats()["cached_total"] == 1
    assert m.decide(subj(OPTS, auth("alice", "wrong"), now=120)).verdict is Verdict.PERFORM  # other password: KDF
    assert m.decide(subj(OPTS, auth("alice", "correct horse"), now=161)).verdict is Verdict.PERFORM  # expired
    # a rebind with a new hash for alice: the cached success does not carry over
    new = {"basic_auth": users(("alice", "correct horse"))}
    assert m.decide(subj(new, auth("alice", "correct horse"), now=120)).verdict is Verdict.PERFORM


def test_cache_is_bounded():
    m = BasicAuth(cache_entries=2)
    many = {"basic_auth": users(("a", "pa"), ("b", "pb"), ("c", "pc"))}
    for u in "abc":
        assert run(m, subj(many, auth(u, "p" + u))).verdict is Verdict.PASS
    assert m.stats()["cache_entries"] == 2
    assert m.decide(subj(many, auth("a", "pa"))).verdict is Verdict.PERFORM  # the oldest went


def test_a_failed_kdf_effect_fails_closed():
    m = BasicAuth()
    s = subj(OPTS, auth("alice", "correct horse"))
    d = m.decide(s)
    assert m.resume(s, d.effect, EffectResult(error="timeout")).response.status == 401
    assert m.stats()["kdf_errors_total"] == 1


def test_endpoints_without_basic_auth_pass_untouched():
    d = BasicAuth().decide(subj({}, auth("alice", "x"), extra=b"Gslb-Auth-User: root\r\n"))
    assert d.verdict is Verdict.PASS and not d.add_upstream and not d.strip_upstream


def test_hashes_are_salted_and_verify():
    a, b = hash_password("pw", **FAST), hash_password("pw", **FAST)
    assert a != b and a.startswith("$scrypt$n=1024,r=8,p=1$")
    assert verify(parse_hash(a), "pw") and not verify(parse_hash(a), "pW")


def test_bind_option_accepts_only_hashes_within_limits():
    ok = users(("alice", "x"))
    assert check_bind_option("http", "basic_auth", ok) == ok
    for bad, match in [
        (["alice:plaintext"], "not a password hash"),
        ("alice:x", "must be a list"),
        ([], "must be a list"),
        (ok * 2, "listed twice"),
        ([f"u{i}:{ok[0].partition(':')[2]}" for i in range(101)], "1..100"),
        (["a" * 65 + ":" + ok[0].partition(":")[2]], "1..64"),
        ([":" + ok[0].partition(":")[2]], "1..64"),
        (["alice:" + ok[0].partition(":")[2].replace("n=1024", "n=2097152")], "cost out of bounds"),
        (["alice:" + ok[0].partition(":")[2].replace("n=1024", "n=1000")], "cost out of bounds"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            check_bind_option("http", "basic_auth", bad)
        assert "plaintext" not in str(info.value)  # never echoes what may be a password
    with pytest.raises(KeyError):
        check_bind_option("tcp", "basic_auth", ok)


def test_agent_hashes_passwords_before_the_bind_and_keeps_given_hashes():
    assert BIND_OPTIONS["basic_auth"].flag == "--basic-auth"
    given = users(("bob", "y"))[0]
    opts = module_options({"basic_auth": ["alice:correct horse", given]})
    ep = validate_endpoint(EndpointConfig(kind="http", port=8080, name="demo", module_options=opts))
    sent = ep.bind_options()["basic_auth"]
    assert sent[1] == given and sent[0].startswith("alice:$scrypt$n=16384,r=8,p=1$")
    assert "correct horse" not in repr(ep.bind_options())
    assert verify(parse_hash(sent[0].partition(":")[2]), "correct horse")
    assert hash_entry(["a:b"]) != hash_entry(["a:b"])  # a fresh salt each time


def test_module_config_is_checked():
    assert build_chain(["basic_auth"], {"basic_auth": {"cache_seconds": 0, "realm": "Lab"}}).modules[0].realm == "Lab"
    for bad in ({"cache_seconds": -1}, {"cache_entries": 0}, {"realm": 'a"b'}, {"color": 1}):
        with pytest.raises(ValueError):
            BasicAuth.from_config(bad)


def test_realm_option_and_no_cache():
    m = BasicAuth(cache_seconds=0, realm="Lab")
    assert dict(m.decide(subj(OPTS)).response.headers)["WWW-Authenticate"] == 'Basic realm="Lab", charset="UTF-8"'
    assert run(m, subj(OPTS, auth("alice", "correct horse"))).verdict is Verdict.PASS
    assert m.decide(subj(OPTS, auth("alice", "correct horse"))).verdict is Verdict.PERFORM


# ------------------------------------------------------------------ in the HTTPS front (real thread pool)


def test_front_runs_the_kdf_off_the_loop_and_forwards_without_the_password():
    async def main():
        b = FakeBinding(OPTS)
        front, client = open_front(Ctx(b, chain=Chain((BasicAuth(),))))
        req = (b"GET /1 HTTP/1.1\r\nHost: demo.app.lab.test\r\nAuthorization: " + auth("alice", "correct horse").encode()
               + b"\r\nGslb-Auth-User: root\r\n\r\n")
        front.data_received(req + req.replace(b"GET /1", b"GET /2"))
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while (not b.streams or b"GET /2" not in b.streams[0].data) and loop.time() < end:
            await asyncio.sleep(0.01)
        data = b.streams[0].data
        assert data.count(b"Gslb-Auth-User: alice\r\n") == 2 and b"root" not in data
        assert b"Authorization" not in data and b"Basic " not in data
        assert front.ctx.chain.modules[0].stats()["cached_total"] == 1  # the second request used the cache
        assert not client.closed

    asyncio.run(main())


def test_front_answers_401_and_sends_nothing_upstream():
    async def main():
        b = FakeBinding(OPTS)
        front, client = open_front(Ctx(b, chain=Chain((BasicAuth(),))))
        front.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\nAuthorization: "
                            + auth("alice", "nope").encode() + b"\r\n\r\n")
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while not client.closed and loop.time() < end:
            await asyncio.sleep(0.01)
        await settle()
        assert client.data.startswith(b"HTTP/1.1 401 ")
        assert b'WWW-Authenticate: Basic realm="demo.app.lab.test", charset="UTF-8"' in client.data
        assert b.streams == []

    asyncio.run(main())


def test_agent_refuses_a_too_long_password_naming_the_key_not_the_secret():
    from edge.agent.config import ConfigError

    secret = "p" * 257
    with pytest.raises(ConfigError) as info:
        module_options({"basic_auth": [f"alice:{secret}"]})
    assert "basic_auth" in str(info.value) and secret not in str(info.value)


def test_a_busy_thread_pool_is_a_503_with_retry_after_not_a_401():
    m = BasicAuth()
    s = subj(OPTS, auth("alice", "correct horse"))
    d = m.resume(s, m.decide(s).effect, EffectResult(error="busy"))
    assert d.response.status == 503 and dict(d.response.headers)["Retry-After"] == "1"


def test_agent_toml_form_hashes_and_cli_flags_repeat(tmp_path, monkeypatch):
    import argparse

    import edge.agent.config
    from edge import agent_cli
    from edge.agent.config import load_agent_config

    monkeypatch.setattr(edge.agent.config, "DEFAULTS_PATH", tmp_path / "absent.toml")
    tok = tmp_path / "token"
    tok.write_text("secret-token-value\n")
    given = users(("bob", "y"))[0]
    p = tmp_path / "agent.toml"
    p.write_text(f'zone = "lab.test"\nauthtoken_file = "{tok}"\n\n[[endpoints]]\nkind = "http"\nname = "demo"\n'
                 f'port = 8080\nbasic_auth = ["alice:correct horse", "{given}"]\n')
    sent = load_agent_config(p, env={}).endpoints[0].bind_options()["basic_auth"]
    assert sent[0].startswith("alice:$scrypt$") and sent[1] == given
    assert verify(parse_hash(sent[0].partition(":")[2]), "correct horse")
    parser = argparse.ArgumentParser()
    agent_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["agent", "http", "8080", "--name", "demo", "--basic-auth", "a:pw-1",
                              "--basic-auth", "b:pw:2"])
    cfg = agent_cli.build_config(args, env={"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"})
    sent = cfg.endpoints[0].bind_options()["basic_auth"]
    assert [e.partition(":")[0] for e in sent] == ["a", "b"]
    assert "pw-1" not in "".join(sent) and "pw:2" not in "".join(sent)  # "-" and ":" are no base64
    assert verify(parse_hash(sent[1].partition(":")[2]), "pw:2")
