"""The module chain (interface v2: clock, observe, whole responses, header
edits, effects, bind options) and IP restriction."""
from __future__ import annotations

import pytest

from edge.modules import BIND_OPTIONS, Decision, EffectResult, HttpCall, Module, ModuleConfigError, Outcome
from edge.modules import Response, Subject, Verdict, build_chain, check_bind_option
from edge.modules.base import ALLOW, PASS, Chain, RequestHead, client_ip
from edge.modules.ip_restriction import IpRestriction


def subj(addr: str, **options) -> Subject:
    return Subject(client_ip=client_ip(addr), client_port=1234, kind="http", endpoint="demo", options=options)


def test_empty_chain_allows():
    assert Chain().decide(subj("192.0.2.1")) == ALLOW


def test_deny_list_answers_403():
    m = IpRestriction.from_config({"deny_cidrs": ["192.0.2.0/24"]})
    d = m.decide(subj("192.0.2.7"))
    assert d.verdict is Verdict.ANSWER and d.status == 403 and d.code == "ERR_GSLB_3210"
    assert m.decide(subj("198.51.100.1")) is PASS


def test_allow_list_refuses_outsiders_and_passes_members():
    m = IpRestriction.from_config({"allow_cidrs": ["10.0.0.0/8", "2001:db8::/32"]})
    assert m.decide(subj("10.1.2.3")) is PASS
    assert m.decide(subj("2001:db8::5")) is PASS
    assert m.decide(subj("11.0.0.1")).status == 403
    assert m.decide(subj("2001:db9::1")).status == 403


def test_ipv4_mapped_client_matches_ipv4_lists():
    m = IpRestriction.from_config({"deny_cidrs": ["127.0.0.0/8"]})
    assert m.decide(subj("::ffff:127.0.0.1")).status == 403


def test_ipv4_mapped_cidr_is_treated_as_ipv4():
    m = IpRestriction.from_config({"deny_cidrs": ["::ffff:192.0.2.0/120"]})
    assert m.decide(subj("192.0.2.9")).status == 403


def test_endpoint_options_apply_on_top_of_edge_lists():
    m = IpRestriction.from_config({})
    assert m.decide(subj("192.0.2.7", deny_cidrs=["192.0.2.0/24"])).status == 403
    assert m.decide(subj("192.0.2.7", allow_cidrs=["198.51.100.0/24"])).status == 403
    assert m.decide(subj("198.51.100.4", allow_cidrs=["198.51.100.0/24"])) is PASS


def test_deny_wins_over_allow():
    m = IpRestriction.from_config({"allow_cidrs": ["192.0.2.0/24"], "deny_cidrs": ["192.0.2.7/32"]})
    assert m.decide(subj("192.0.2.7")).status == 403
    assert m.decide(subj("192.0.2.8")) is PASS


def test_bad_endpoint_options_fail_closed():
    m = IpRestriction.from_config({})
    assert m.decide(subj("192.0.2.7", allow_cidrs=["not-a-cidr"])).status == 403


@pytest.mark.parametrize("opts", [
    {"allow_cidrs": "10.0.0.0/8"}, {"deny_cidrs": ["10.0.0.1/8"]}, {"deny_cidrs": ["x"]}, {"color": "red"},
])
def test_bad_config_is_a_typed_error(opts):
    with pytest.raises(ModuleConfigError):
        IpRestriction.from_config(opts)


def test_chain_order_first_non_pass_wins():
    class AllowAll(Module):
        name = "allow_all"

        def decide(self, s):
            return ALLOW

    deny = IpRestriction.from_config({"deny_cidrs": ["0.0.0.0/0"]})
    assert Chain((AllowAll(), deny)).decide(subj("192.0.2.1")) == ALLOW
    assert Chain((deny, AllowAll())).decide(subj("192.0.2.1")).status == 403


def test_build_chain_rejects_unknown_module():
    with pytest.raises(ModuleConfigError, match="unknown module"):
        build_chain(["rate_limit_typo"], {})
    chain = build_chain(["ip_restriction"], {"ip_restriction": {"deny_cidrs": ["::1/128"]}})
    assert chain.decide(subj("::1")).status == 403


# ------------------------------------------------------------ interface v2


class Tag(Module):
    """Passes, stripping what a client must not send and adding its own field."""

    name = "tag"

    def __init__(self, value):
        self.value = value

    def decide(self, subject):
        return Decision(Verdict.PASS, add_upstream=(("X-Tag", self.value),), strip_upstream=("X-Tag",))


class Breaker(Module):
    """A small circuit breaker driven only by the clock it is handed and the
    outcomes it observes: after `trip` 5xx in a row it answers 503 with
    Retry-After until `cool` seconds have passed."""

    name = "breaker"
    observes = True

    def __init__(self, trip=2, cool=30.0):
        self.trip, self.cool = trip, cool
        self.failures = 0
        self.open_until = None

    def decide(self, subject):
        if self.open_until is not None and subject.now < self.open_until:
            left = int(self.open_until - subject.now) + 1
            return Decision(Verdict.ANSWER, reason="circuit open", module=self.name,
                            response=Response(503, (("Retry-After", str(left)),), b"try later\n"))
        return PASS

    def observe(self, subject, outcome):
        self.failures = self.failures + 1 if outcome.status >= 500 or outcome.error else 0
        if self.failures >= self.trip:
            self.open_until, self.failures = subject.now + outcome.duration + self.cool, 0


class Login(Module):
    """Exchanges a code for a user at an identity provider (an effect the
    shell performs), then passes with the user upstream; no code: a redirect
    that sets a cookie."""

    name = "login"

    def decide(self, subject):
        code = subject.request.header("X-Code") if subject.request else None
        if code is None:
            return Decision(Verdict.ANSWER, module=self.name, reason="login needed",
                            response=Response(302, (("Location", "https://idp.example/login"),
                                                    ("Set-Cookie", "state=abc; Secure; HttpOnly"))))
        return Decision(Verdict.PERFORM, effect=HttpCall("POST", "https://idp.example/token", body=code.encode()))

    def resume(self, subject, effect, result):
        if result.status != 200:
            return Decision(Verdict.ANSWER, status=403, reason=f"token exchange failed {result.error}",
                            module=self.name)
        return Decision(Verdict.PASS, add_upstream=(("X-User", result.body.decode()),), strip_upstream=("X-User",))


def http_subj(now=0.0, **headers):
    head = "GET / HTTP/1.1\r\nHost: demo\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return Subject(client_ip=client_ip("192.0.2.1"), client_port=1, kind="http", endpoint="demo", now=now,
                   request=RequestHead("GET", "/", "demo", head.encode("latin-1")))


def test_header_edits_of_passing_modules_reach_the_allow():
    d = Chain((Tag("a"), Tag("b"))).decide(http_subj())
    assert d.verdict is Verdict.ALLOW
    assert d.add_upstream == (("X-Tag", "a"), ("X-Tag", "b")) and d.strip_upstream == ("X-Tag", "X-Tag")


def test_an_answer_drops_the_edits_before_it():
    deny = IpRestriction.from_config({"deny_cidrs": ["0.0.0.0/0"]})
    d = Chain((Tag("a"), deny)).decide(http_subj())
    assert d.verdict is Verdict.ANSWER and d.add_upstream == () and d.status == 403


def test_a_stateful_module_keeps_time_with_the_clock_it_is_given():
    b = Breaker(trip=2, cool=30.0)
    chain = Chain((b,))
    s0 = http_subj(now=100.0)
    assert chain.decide(s0) == ALLOW
    chain.observe(s0, Outcome(status=502, duration=0.5))
    chain.observe(s0, Outcome(status=0, error="upstream_no_answer", duration=0.5))
    d = chain.decide(http_subj(now=110.0))
    assert d.verdict is Verdict.ANSWER and d.response.status == 503
    assert dict(d.response.headers)["Retry-After"] == "21"
    wire = d.response.encode()
    assert wire.startswith(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 21\r\n")
    assert b"Content-Length: 10\r\nConnection: close\r\n\r\ntry later\n" in wire
    assert chain.decide(http_subj(now=131.0)) == ALLOW  # cooled down
    chain.observe(s0, Outcome(status=200))
    assert b.failures == 0


def test_only_observing_modules_are_told_outcomes():
    seen = []

    class Quiet(Module):
        name = "quiet"

        def decide(self, subject):
            return PASS

        def observe(self, subject, outcome):
            seen.append(outcome)

    chain = Chain((Quiet(),))
    assert not chain.observes
    chain.observe(http_subj(), Outcome(status=200))
    assert seen == []
    assert Chain((Quiet(), Breaker())).observes


def test_an_effect_is_performed_by_the_shell_and_the_chain_goes_on_after_it():
    deny_after = IpRestriction.from_config({"deny_cidrs": ["198.51.100.0/24"]})
    chain = Chain((Tag("t"), Login(), deny_after))
    s = http_subj(**{"X-Code": "c0de"})
    d = chain.decide(s)
    assert d.verdict is Verdict.PERFORM and d.module == "login" and d.step == 1
    assert d.effect == HttpCall("POST", "https://idp.example/token", body=b"c0de")
    assert d.add_upstream == (("X-Tag", "t"),)  # kept for after the effect
    after = chain.resume(s, d, EffectResult(200, (), b"alice"))
    assert after.verdict is Verdict.ALLOW
    assert after.add_upstream == (("X-Tag", "t"), ("X-User", "alice"))
    assert after.strip_upstream == ("X-Tag", "X-User")
    failed = chain.resume(s, d, EffectResult(error="timeout"))
    assert failed.verdict is Verdict.ANSWER and failed.status == 403 and "timeout" in failed.reason
    with pytest.raises(ValueError, match="PERFORM"):
        chain.resume(s, after, EffectResult())


def test_a_module_answer_can_be_a_whole_response():
    d = Chain((Login(),)).decide(http_subj())
    assert d.response.status == 302
    wire = d.response.encode()
    assert wire.startswith(b"HTTP/1.1 302 Found\r\nLocation: https://idp.example/login\r\n")
    assert b"Set-Cookie: state=abc; Secure; HttpOnly\r\nContent-Length: 0\r\n" in wire


@pytest.mark.parametrize("make, match", [
    (lambda: Response(302, (("Location", "x\r\nSet-Cookie: evil"),)), "CR, LF or NUL"),
    (lambda: Response(200, (("Bad Name", "x"),)), "not a header field name"),
    (lambda: Response(200, (("Content-Length", "5"),)), "writes Content-Length"),
    (lambda: Response(101), "final status"),
    (lambda: Decision(Verdict.PASS, add_upstream=(("X-A", "1\n2"),)), "CR, LF or NUL"),
    (lambda: Decision(Verdict.PASS, strip_upstream=("X A",)), "not a header field name"),
    (lambda: Decision(Verdict.PERFORM), "PERFORM needs one"),
    (lambda: Decision(Verdict.ALLOW, effect=HttpCall("GET", "https://idp.example/")), "PERFORM"),
    (lambda: HttpCall("GET", "file:///etc/passwd"), "not http"),
])
def test_decisions_that_would_break_http_are_refused_where_they_are_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_modules_own_their_bind_options():
    assert set(BIND_OPTIONS) == {"allow_cidrs", "deny_cidrs", "basic_auth", "oidc", "saml_idp", "saml_authorized_groups",
                                 "rate_limit", "circuit_breaker"}
    assert BIND_OPTIONS["allow_cidrs"] is IpRestriction.bind_options["allow_cidrs"]
    assert check_bind_option("tcp", "allow_cidrs", ["10.1.2.3/8"]) == ["10.0.0.0/8"]
    with pytest.raises(KeyError):
        check_bind_option("http", "color", "red")
    with pytest.raises(ValueError, match="at most 256 CIDRs"):
        check_bind_option("http", "deny_cidrs", ["10.0.0.0/8"] * 257)
    with pytest.raises(ValueError, match="option 'deny_cidrs': "):
        check_bind_option("http", "deny_cidrs", ["nope"])


def test_request_head_fields_are_parsed_from_the_forwarded_head_on_first_use():
    head = RequestHead("GET", "/", "demo", b"GET / HTTP/1.1\r\nHost: demo\r\nX-Code:  42 \r\nx-code: 43\r\n\r\n")
    assert head.headers == (("Host", "demo"), ("X-Code", "42"), ("x-code", "43"))
    assert head.header("x-CODE") == "42" and head.header("Cookie") is None


# ------------------------------------------------ ReadBody and Compute effects, through the HTTPS front


class BodyReader(Module):
    """POST /read: reads the body (at most 16 bytes); answers it back, or with
    X-Pass lets the request go upstream with X-Len of what it read."""

    name = "body_reader"

    def decide(self, subject):
        from edge.modules.base import ReadBody

        if subject.request.method == "POST" and subject.request.target == "/read":
            return Decision(Verdict.PERFORM, effect=ReadBody(16))
        return PASS

    def resume(self, subject, effect, result):
        if result.error:
            return Decision(Verdict.ANSWER, response=Response(413, body=result.error.encode()))
        if subject.request.header("x-pass"):
            return Decision(Verdict.PASS, add_upstream=(("X-Len", str(len(result.body))),))
        return Decision(Verdict.ANSWER, response=Response(200, body=b"got:" + result.body))


def _front(chain):
    from _front_fakes import Ctx, FakeBinding, open_front

    b = FakeBinding()
    front, client = open_front(Ctx(b, chain=chain))
    return b, front, client


def test_read_body_effect_hands_the_body_to_resume_across_reads():
    import asyncio

    async def main():
        b, front, client = _front(Chain((BodyReader(),)))
        front.data_received(b"POST /read HTTP/1.1\r\nHost: demo.app.lab.test\r\nContent-Length: 11\r\n\r\nhello")
        assert client.data == b"" and not client.closed  # the rest of the body is still coming
        front.data_received(b" world")
        assert client.data.startswith(b"HTTP/1.1 200 OK\r\n") and client.data.endswith(b"\r\n\r\ngot:hello world")
        assert client.closed and b.streams == []  # nothing went upstream

    asyncio.run(main())


def test_read_body_effect_dechunks():
    import asyncio

    async def main():
        b, front, client = _front(Chain((BodyReader(),)))
        front.data_received(b"POST /read HTTP/1.1\r\nHost: demo.app.lab.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n")
        assert client.data.endswith(b"\r\n\r\ngot:abcdefg")

    asyncio.run(main())


def test_read_body_effect_past_its_limit_is_an_error_at_once():
    import asyncio

    async def main():
        b, front, client = _front(Chain((BodyReader(),)))
        front.data_received(b"POST /read HTTP/1.1\r\nHost: demo.app.lab.test\r\nContent-Length: 1000\r\n\r\n"
                            + b"x" * 17)
        assert client.data.startswith(b"HTTP/1.1 413 ") and client.data.endswith(b"body_too_large")
        assert b.streams == []

    asyncio.run(main())


def test_read_body_then_pass_forwards_the_request_with_its_body_and_keeps_order():
    import asyncio

    from _front_fakes import settle

    async def main():
        b, front, client = _front(Chain((BodyReader(),)))
        front.data_received(b"POST /read HTTP/1.1\r\nHost: demo.app.lab.test\r\nX-Pass: 1\r\nContent-Length: 4\r\n\r\nab")
        front.data_received(b"cd" + b"GET /next HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
        await settle()
        data = b.streams[0].data
        assert b"X-Len: 4\r\n" in data and b"\r\n\r\nabcdGET /next " in data
        assert not client.closed

    asyncio.run(main())


def test_compute_effect_runs_in_the_thread_pool_and_its_value_reaches_resume():
    import asyncio
    import threading

    from edge.modules.base import Compute

    class Hasher(Module):
        name = "hasher"

        def decide(self, subject):
            return Decision(Verdict.PERFORM, effect=Compute(lambda: threading.current_thread().name, "t", 5.0))

        def resume(self, subject, effect, result):
            return Decision(Verdict.PASS, add_upstream=(("X-Thread", str(result.value)),))

    async def main():
        b, front, client = _front(Chain((Hasher(),)))
        front.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while not b.streams and loop.time() < end:
            await asyncio.sleep(0.01)
        thread = b.streams[0].data.split(b"X-Thread: ")[1].split(b"\r\n")[0]
        assert thread and thread != threading.current_thread().name.encode()

    asyncio.run(main())


def test_compute_effects_are_bounded_per_process_busy_beyond():
    import asyncio
    import threading

    from edge.front import http_front
    from edge.modules.base import Compute

    gate = threading.Event()
    results = []

    class Slow(Module):
        name = "slow"

        def decide(self, subject):
            return Decision(Verdict.PERFORM, effect=Compute(lambda: gate.wait(30), "slow", 30.0))

        def resume(self, subject, effect, result):
            results.append(result.error or "ok")
            return Decision(Verdict.ANSWER, response=Response(200 if not result.error else 503))

    async def main():
        old = http_front.MAX_COMPUTE
        http_front.MAX_COMPUTE = 2
        try:
            fronts = [_front(Chain((Slow(),))) for _ in range(3)]
            for _, front, _ in fronts:
                front.data_received(b"GET / HTTP/1.1\r\nHost: demo.app.lab.test\r\n\r\n")
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while "busy" not in results and loop.time() < end:
                await asyncio.sleep(0.01)
            assert results == ["busy"]  # the third, at once; the first two wait for the gate
            gate.set()
            while len(results) < 3 and loop.time() < end:
                await asyncio.sleep(0.01)
            assert sorted(results) == ["busy", "ok", "ok"]
            while http_front._compute[0] and loop.time() < end:
                await asyncio.sleep(0.01)
            assert http_front._compute[0] == 0
        finally:
            http_front.MAX_COMPUTE = old
            gate.set()

    asyncio.run(main())
