"""The one interface every edge module implements (CoreDNS-style chain), v2.

A module is asked about a `Subject` (a new TLS/TCP connection, or an HTTP
request once its head is parsed; `subject.now` is the shell's monotonic
clock, so a module keeps time without reading one) and answers with a
`Decision`:

- PASS: no opinion, ask the next module (it may still add or strip
  request headers upstream: `add_upstream`, `strip_upstream`);
- ALLOW: stop, let it through (with the header edits of every module so far);
- ANSWER: stop, the edge answers: a whole `Response` (a redirect with
  Set-Cookie, a 429 with Retry-After) or its error page (`status`, `code`);
  TLS/TCP: close;
- PERFORM: the module needs I/O before it can decide (a token exchange with
  an identity provider): `effect` is a request the shell performs; the shell
  then calls `Chain.resume(subject, decision, result)`, which hands the
  result to that module's `resume` and goes on down the chain.

After the response (HTTP) or the stream (TLS/TCP) of something the chain let
through has ended, the shell calls `observe(subject, outcome)` on every
module that `observes`, with status, bytes and duration: where stateful
modules (circuit breaker, rate limit, metrics) learn. Modules stay pure: no
I/O, no clock, no sockets; their state is their own and only changes in
decide/observe/resume.

Each module owns the bind options it reads (`bind_options`): the hub checks
an agent's options against them, the agent's config and flags come from
them (edge/modules/__init__.py), nobody else knows their names.
"""
from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from typing import Any, ClassVar

from plumbing.addr import normalise_ip

__all__ = [
    "ALLOW", "PASS", "BindOption", "Chain", "Compute", "Decision", "Effect", "EffectResult", "HttpCall", "Module",
    "ModuleConfigError", "Outcome", "ReadBody", "RequestHead", "Response", "Subject", "Verdict", "client_ip",
]


class ModuleConfigError(ValueError):
    """A module's options (edge config or bind options) are invalid."""


class Verdict(enum.Enum):
    PASS = "pass"
    ALLOW = "allow"
    ANSWER = "answer"
    PERFORM = "perform"


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 5.6.2 field-name


def _check_fields(fields: tuple[tuple[str, str], ...], what: str) -> None:
    for name, value in fields:
        if not _TOKEN.match(name):
            raise ValueError(f"{what}: {name!r} is not a header field name (RFC 9110 5.1)")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{what}: the value of {name} holds CR, LF or NUL (RFC 9110 5.5)")


@dataclass(frozen=True)
class Response:
    """A whole HTTP response the edge sends instead of forwarding the request.
    Content-Length is the body's; the connection closes after it, as after
    every answer of the edge."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"response status {self.status} is not a final status (200-599)")
        _check_fields(self.headers, "response header")
        if any(n.lower() in ("content-length", "transfer-encoding", "connection") for n, _ in self.headers):
            raise ValueError("response headers: the edge writes Content-Length and Connection itself")

    def encode(self) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Status"
        lines = [f"HTTP/1.1 {self.status} {reason}".encode("latin-1")]
        lines += [f"{n}: {v}".encode("latin-1") for n, v in self.headers]
        lines += [b"Content-Length: %d" % len(self.body), b"Connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass(frozen=True)
class HttpCall:
    """An effect: an HTTP request the shell performs for a module (e.g. a
    token exchange with an identity provider), bounded by `timeout` seconds."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float = 5.0
    ca_file: str = ""  # https: trust this CA bundle (PEM) instead of the system's

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"effect url {self.url!r} is not http(s)")
        _check_fields(self.headers, "effect header")


MAX_READ_BODY = 256 * 1024  # bytes a ReadBody effect may ask for


@dataclass(frozen=True)
class ReadBody:
    """An effect: the body of the request being decided, for a request to a
    path the module owns (a SAML assertion consumer's POST). The HTTPS front
    reads it (de-chunked) up to `limit` bytes, then `resume` gets it in
    `EffectResult.body` (`error="body_too_large"` past the limit, at once,
    without waiting for the rest). The body is consumed: should the chain
    then let the request through, it goes upstream with its body intact."""

    limit: int = MAX_READ_BODY

    def __post_init__(self) -> None:
        if not 0 < self.limit <= MAX_READ_BODY:
            raise ValueError(f"a ReadBody limit is 1..{MAX_READ_BODY} bytes")


@dataclass(frozen=True)
class Compute:
    """An effect: CPU-heavy or blocking work that must not hold the event
    loop (a password KDF, an XML signature check by xmlsec1), run by the
    shell in its thread pool within `timeout` seconds; `fn()`'s return value
    comes back in `EffectResult.value` (an exception: `error` is its name,
    `timeout` past the deadline). `fn` must not touch the module's state:
    the module changes its state in `resume` only. `what` names it in logs."""

    fn: Callable[[], Any]
    what: str = "compute"
    timeout: float = 5.0


Effect = HttpCall | ReadBody | Compute


@dataclass(frozen=True)
class EffectResult:
    """What came of an effect: the response, or `error` (timeout, refused)."""

    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: str = ""
    value: Any = None  # Compute: what fn returned


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    status: int = 0          # HTTP status of the edge's error page when verdict is ANSWER (TLS/TCP: close)
    reason: str = ""         # short, for the log line and the error page
    code: str = ""           # error code shown on the page, e.g. ERR_GSLB_3210
    module: str = ""
    response: Response | None = None  # ANSWER with a whole response instead of the error page
    add_upstream: tuple[tuple[str, str], ...] = ()  # PASS/ALLOW: header fields added to the request
    strip_upstream: tuple[str, ...] = ()  # PASS/ALLOW: header fields removed from the request first
    effect: Effect | None = None  # PERFORM: what the shell must do before the module decides
    step: int = -1  # PERFORM: which module of the chain asked (set by Chain)

    def __post_init__(self) -> None:
        _check_fields(self.add_upstream, "add_upstream")
        for name in self.strip_upstream:
            if not _TOKEN.match(name):
                raise ValueError(f"strip_upstream: {name!r} is not a header field name")
        if (self.verdict is Verdict.PERFORM) != (self.effect is not None):
            raise ValueError("an effect goes with verdict PERFORM, and PERFORM needs one")


PASS = Decision(Verdict.PASS)
ALLOW = Decision(Verdict.ALLOW)


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    host: str
    head: bytes = b""  # the request head as forwarded (CRLF CRLF at the end)

    @cached_property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The head's fields (the edge's X-Forwarded-* included), parsed on
        first use: a chain whose modules never look pays nothing."""
        out = []
        for line in self.head[:-4].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            out.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return tuple(out)

    def header(self, name: str) -> str | None:
        """The first field called `name` (any case), else None."""
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None


@dataclass(frozen=True)
class Subject:
    """What a module may look at."""

    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    client_port: int
    kind: str                         # "http" | "tls" | "tcp"
    endpoint: str                     # endpoint name, or str(port) for TCP
    options: Mapping[str, Any] = field(default_factory=dict)  # the binding's options
    request: RequestHead | None = None
    now: float = 0.0                  # the shell's monotonic clock, seconds
    wall: float = 0.0                 # wall-clock time (Unix seconds): for what must mean the same at every
                                      # PoP (session cookies, token expiry); `now` for everything else


@dataclass(frozen=True)
class Outcome:
    """How something the chain let through ended (`observe`)."""

    status: int = 0         # HTTP status of the response (0: none, or TLS/TCP)
    bytes_up: int = 0       # client -> agent
    bytes_down: int = 0     # agent -> client
    duration: float = 0.0   # seconds from the decision to the end
    error: str = ""         # "" for a clean end, else what broke (e.g. "upstream_no_answer")


@dataclass(frozen=True)
class BindOption:
    """One bind option a module owns (docs/protocol.md 3.2): which endpoint
    kinds take it, how a value is checked and normalized (`check(value)`
    returns the value to keep or raises ValueError with the agent's error
    text), and how `gslb agent` offers it as a flag."""

    kinds: tuple[str, ...]
    check: Callable[[Any], Any]
    help: str
    flag: str = ""  # e.g. "--allow-cidr" (repeatable, collected into a list)
    metavar: str = "VALUE"
    # A table option's flags, one per key: (flag, key, repeatable, metavar, help); the agent
    # collects those given into a table ({key: value, or a list when repeatable}).
    table_flags: tuple[tuple[str, str, bool, str, str], ...] = ()
    # The agent's side, before the check: e.g. a secret file's name read into the secret.
    agent_form: Callable[[Any], Any] | None = None


class Module:
    """Base of every module: `decide` is the module; the rest has defaults."""

    name: ClassVar[str] = ""
    bind_options: ClassVar[Mapping[str, BindOption]] = {}
    observes: ClassVar[bool] = False  # True: the shell reports outcomes to observe()

    def decide(self, subject: Subject) -> Decision:
        raise NotImplementedError

    def idle(self, options: Mapping[str, Any]) -> bool:
        """True when, for an endpoint bound with `options`, this module has nothing
        to do: `decide` would PASS every subject with no header edits and no state
        change, and `observe` would change nothing. The shell may then skip the
        chain for that endpoint (no Subject is built per request). Must not
        raise; the default, False, asks the module every time."""
        return False

    def observe(self, subject: Subject, outcome: Outcome) -> None:
        """After the response or stream of an allowed subject ended."""

    def resume(self, subject: Subject, effect: Effect, result: EffectResult) -> Decision:
        """The decision after an effect this module asked for (PERFORM)."""
        raise NotImplementedError(f"{self.name} performs no effects")

    def registry_options(self, options: dict[str, Any], wall: float) -> dict[str, Any]:
        """A binding's options as the shared registry may store them for the other PoPs: a module
        seals (with the deployment's key) what must not be stored in the clear. Default: as is."""
        return options


@dataclass(frozen=True)
class Chain:
    modules: tuple[Module, ...] = ()

    @property
    def observes(self) -> bool:
        return any(m.observes for m in self.modules)

    def idle(self, options: Mapping[str, Any]) -> bool:
        """No module has anything to do for an endpoint bound with `options`
        (`Module.idle`): the shell lets its requests through as `ALLOW` without
        asking (or observing) the chain."""
        return all(m.idle(options) for m in self.modules)

    def decide(self, subject: Subject) -> Decision:
        return self._run(subject, 0, (), ())

    def resume(self, subject: Subject, decision: Decision, result: EffectResult) -> Decision:
        """Go on after the shell performed `decision.effect` (a PERFORM from
        this chain); the header edits of the modules before it are kept."""
        if decision.verdict is not Verdict.PERFORM or not 0 <= decision.step < len(self.modules):
            raise ValueError("resume needs a PERFORM decision of this chain")
        m = self.modules[decision.step]
        d = m.resume(subject, decision.effect, result)  # type: ignore[arg-type]
        return self._after(subject, decision.step, d, decision.add_upstream, decision.strip_upstream)

    def observe(self, subject: Subject, outcome: Outcome) -> None:
        for m in self.modules:
            if m.observes:
                m.observe(subject, outcome)

    def registry_options(self, options: Mapping[str, Any], wall: float) -> dict[str, Any]:
        """The binding's options for the registry, each module's `registry_options` applied."""
        out = dict(options)
        for m in self.modules:
            out = m.registry_options(out, wall)
        return out

    def _run(self, subject: Subject, start: int, add: tuple[tuple[str, str], ...], strip: tuple[str, ...]) -> Decision:
        for i in range(start, len(self.modules)):
            d = self.modules[i].decide(subject)
            if d.verdict is Verdict.PASS:
                add, strip = add + d.add_upstream, strip + d.strip_upstream
                continue
            return self._after(subject, i, d, add, strip)
        if add or strip:
            return Decision(Verdict.ALLOW, add_upstream=add, strip_upstream=strip)
        return ALLOW

    def _after(self, subject: Subject, i: int, d: Decision, add: tuple[tuple[str, str], ...],
               strip: tuple[str, ...]) -> Decision:
        if d.verdict is Verdict.PASS:
            return self._run(subject, i + 1, add + d.add_upstream, strip + d.strip_upstream)
        if d.verdict is Verdict.ANSWER or (not add and not strip and d.verdict is Verdict.ALLOW):
            return d
        module = d.module or self.modules[i].name
        return Decision(d.verdict, d.status, d.reason, d.code, module, d.response, add + d.add_upstream,
                        strip + d.strip_upstream, d.effect, i if d.verdict is Verdict.PERFORM else -1)


def client_ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address as an ip object; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4."""
    return normalise_ip(addr)
