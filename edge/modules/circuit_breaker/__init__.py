"""Circuit breaker: stop sending an endpoint requests while its upstream fails.

Owns: one circuit per endpoint name on this edge node (Hystrix semantics, as
ngrok's): a rolling window of request outcomes in buckets; the circuit opens
when the window holds at least `volume_threshold` requests and the error
ratio reaches `error_threshold`; while open the edge answers 503
(ERR_GSLB_3503, with Retry-After) and nothing reaches the agent; after
`tripped_duration` it lets `half_open_requests` probes through (half-open),
closes once they all succeed, opens again on the first failure.
An error is an upstream status >= 500 or an upstream failure (`is_failure`).
Only endpoints whose binding has the `circuit_breaker` option are watched;
`[edge.modules.circuit_breaker]` gives the defaults of what the binding
leaves out. Pure: time is `subject.now`; state changes are logged (one
kvlog line each) and counted (`stats()`). Must not touch sockets or the
request itself. See README.md.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from edge import errors as E
from edge.front.http1 import error_response
from edge.modules.base import PASS, BindOption, Decision, Module, ModuleConfigError, Outcome, Response, Subject, Verdict
from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge")

OPTION = "circuit_breaker"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# name: (type, default, lower limit, upper limit, unit for messages)
PARAMS: dict[str, tuple[type, float, float, float, str]] = {
    "error_threshold": (float, 0.5, 0.01, 1.0, ""),
    "volume_threshold": (int, 10, 1, 10_000, ""),
    "window": (float, 10.0, 1.0, 120.0, " s"),
    "buckets": (int, 10, 1, 100, ""),
    "tripped_duration": (float, 10.0, 1.0, 120.0, " s"),
    "half_open_requests": (int, 1, 1, 100, ""),
}
MAX_CIRCUITS = 10_000   # default of max_circuits: endpoints watched on one edge node
IDLE_DROP = 300.0       # s without a request: a circuit is forgotten (longer than any window or tripped_duration)
SWEEP_PER_DECIDE = 4    # idle circuits dropped at most per decide (amortized, bounded work)


@dataclass(frozen=True)
class Params:
    error_threshold: float = 0.5
    volume_threshold: int = 10
    window: float = 10.0
    buckets: int = 10
    tripped_duration: float = 10.0
    half_open_requests: int = 1


def _check_param(key: str, value: Any, what: str) -> float | int:
    kind, _default, lo, hi, unit = PARAMS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{what}.{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not (lo <= value <= hi) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{what}.{key}: {value!r}{unit} is outside {lo:g}{unit} to {hi:g}{unit}")
    return kind(value)


def check_option(value: Any) -> dict[str, float | int]:
    """The bind option `circuit_breaker`: an error threshold (a number, or a
    string from `--circuit-breaker 0.5`; flags come as a one-item list) or a
    table of the parameters. Returns the given parameters only (the edge's
    defaults fill in the rest), or raises ValueError with the agent's text."""
    what = f"option {OPTION!r}"
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"{what}: give it once (an error threshold like 0.5, or a table)")
        value = value[0]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not an error threshold (a ratio like 0.5)") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"error_threshold": float(_check_param("error_threshold", float(value), what))}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected an error threshold (0.01-1) or a table of {', '.join(PARAMS)}")
    unknown = set(value) - set(PARAMS)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: {', '.join(PARAMS)})")
    out: dict[str, float | int] = {}
    for key, v in value.items():
        if PARAMS[key][0] is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        out[key] = _check_param(key, v, what)
    return out


def is_failure(outcome: Outcome) -> bool | None:
    """What an outcome says about the upstream: True an error, False a
    success, None nothing (not counted). An error is a status >= 500 (the
    service's, the agent's 502 ERR_GSLB_AGENT_UPSTREAM) or a broken path:
    `no_response` (the stream ended before a response: the edge answered
    502), `stream_open_failed` (the agent could not be reached: 502
    ERR_GSLB_3502) or the name of the exception that ended the stream.
    `client_closed` is the client's doing: a response it got counts by its
    status, a request it gave up on counts for nothing."""
    if outcome.status >= 500:
        return True
    if outcome.error not in ("", "client_closed"):
        return True
    if outcome.status == 0:
        return None
    return False


class _Circuit:
    """One endpoint's circuit: state, the rolling window, the probes."""

    __slots__ = ("raw", "p", "state", "reqs", "errs", "epochs", "width", "opened_at", "probes", "probe_ok",
                 "last_seen")

    def __init__(self, raw: Any, p: Params, now: float) -> None:
        self.raw = raw
        self.p = p
        self.state = CLOSED
        self.width = p.window / p.buckets
        self.reqs = [0] * p.buckets
        self.errs = [0] * p.buckets
        self.epochs = [-1] * p.buckets  # which bucket number each slot holds
        self.opened_at = 0.0
        self.probes: dict[int, tuple[Subject, float]] = {}  # id(subject) -> (subject, since); subject held
        self.probe_ok = 0
        self.last_seen = now

    def record(self, now: float, error: bool) -> None:
        k = int(now // self.width)
        i = k % self.p.buckets
        if self.epochs[i] != k:
            self.epochs[i], self.reqs[i], self.errs[i] = k, 0, 0
        self.reqs[i] += 1
        if error:
            self.errs[i] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """Requests and errors in the window ending now (the current bucket and the buckets-1 before it)."""
        k = int(now // self.width)
        lo = k - self.p.buckets
        n = e = 0
        for i, epoch in enumerate(self.epochs):
            if lo < epoch <= k:
                n += self.reqs[i]
                e += self.errs[i]
        return n, e

    def reset_window(self) -> None:
        self.epochs = [-1] * self.p.buckets


@dataclass(eq=False)  # identity: a chain holds it, its state is its own
class CircuitBreaker(Module):
    name: ClassVar[str] = "circuit_breaker"
    observes: ClassVar[bool] = True
    bind_options: ClassVar[Mapping[str, BindOption]] = {
        OPTION: BindOption(("http",), check_option,
                           "open the endpoint's circuit at this error ratio (e.g. 0.5); "
                           "other parameters in agent.toml", flag="--circuit-breaker", metavar="RATIO"),
    }
    defaults: Params = field(default_factory=Params)
    max_circuits: int = MAX_CIRCUITS
    circuits: "OrderedDict[str, _Circuit]" = field(default_factory=OrderedDict)  # least recently used first
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests_total", "errors_total", "rejected_total", "probes_total", "opened_total", "half_opened_total",
         "closed_total", "evicted_total", "dropped_idle_total", "bad_options_total"), 0))

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "CircuitBreaker":
        known = set(PARAMS) | {"max_circuits"}
        unknown = set(options) - known
        if unknown:
            raise ModuleConfigError(f"{', '.join(sorted(unknown))}: unknown option of circuit_breaker "
                                    f"(known: {', '.join(sorted(known))})")
        opts = dict(options)
        max_circuits = opts.pop("max_circuits", MAX_CIRCUITS)
        if isinstance(max_circuits, bool) or not isinstance(max_circuits, int) or not 1 <= max_circuits <= 1_000_000:
            raise ModuleConfigError(f"max_circuits: expected an integer from 1 to 1000000, got {max_circuits!r}")
        try:
            given = check_option(opts) if opts else {}
        except ValueError as exc:
            # "option 'circuit_breaker'.window: ..." -> "window: ..." (the config names the table)
            raise ModuleConfigError(str(exc).removeprefix(f"option {OPTION!r}.")) from None
        return cls(defaults=replace(Params(), **given), max_circuits=max_circuits)

    # -- the chain ---------------------------------------------------------------------
    def idle(self, options: Mapping[str, Any]) -> bool:
        return options.get(OPTION) is None  # no breaker on the endpoint: decide() passes, observe() ignores it

    def decide(self, subject: Subject) -> Decision:
        raw = subject.options.get(OPTION)
        if raw is None:
            return PASS  # the endpoint asked for no circuit breaker: one lookup
        now = subject.now
        c = self._circuit(subject.endpoint, raw, now)
        if c is None:
            return PASS
        if c.state is CLOSED:
            return PASS
        if c.state is OPEN:
            if now < c.opened_at + c.p.tripped_duration:
                return self._reject(subject, c, now)
            self._to(subject.endpoint, c, HALF_OPEN, now)
        # half-open: a probe whose outcome never came within tripped_duration counts as failed
        for key, (_s, since) in list(c.probes.items()):
            if now - since >= c.p.tripped_duration:
                del c.probes[key]
                self._to(subject.endpoint, c, OPEN, now, why="probe_timeout")
                return self._reject(subject, c, now)
        if len(c.probes) + c.probe_ok < c.p.half_open_requests:
            c.probes[id(subject)] = (subject, now)
            self.counters["probes_total"] += 1
            return PASS
        return self._reject(subject, c, now)

    def observe(self, subject: Subject, outcome: Outcome) -> None:
        raw = subject.options.get(OPTION)
        if raw is None:
            return
        c = self.circuits.get(subject.endpoint)
        if c is None:
            c = self._circuit(subject.endpoint, raw, subject.now)
            if c is None:
                return
        failed = is_failure(outcome)
        now = subject.now + outcome.duration  # when it ended, on the shell's clock
        if c.state is HALF_OPEN:
            probe = c.probes.get(id(subject))
            if probe is None or probe[0] is not subject:
                return  # decided before the circuit opened: the probes alone decide now
            del c.probes[id(subject)]
            if failed is None:
                return  # the client gave up: the slot is free for another probe
            self._count(failed)
            if failed:
                self._to(subject.endpoint, c, OPEN, now, why="probe_failed")
            else:
                c.probe_ok += 1
                if c.probe_ok >= c.p.half_open_requests:
                    self._to(subject.endpoint, c, CLOSED, now)
            return
        if c.state is OPEN or failed is None:
            return  # while open nothing is learnt: requests still under way ended after the trip
        self._count(failed)
        c.record(now, failed)
        if not failed:
            return  # a success never opens it: the window is judged at each error
        n, e = c.totals(now)
        if n >= c.p.volume_threshold and e >= c.p.error_threshold * n - 1e-9:
            self._to(subject.endpoint, c, OPEN, now, why="error_threshold", requests=n, errors=e)

    def stats(self) -> dict[str, int | float]:
        """Counters (monotonic, `*_total`) and gauges (circuits now in each state); names in README.md."""
        out: dict[str, int | float] = dict(self.counters)
        states = [c.state for c in self.circuits.values()]
        out["circuits"] = len(states)
        out["circuits_open"] = states.count(OPEN)
        out["circuits_half_open"] = states.count(HALF_OPEN)
        return out

    # -- state ---------------------------------------------------------------------------
    def _circuit(self, endpoint: str, raw: Any, now: float) -> _Circuit | None:
        """The endpoint's circuit (made on first use, again when its options changed), or None
        when the options are not valid (a binding from another PoP's older version: no breaker)."""
        circuits = self.circuits
        c = circuits.get(endpoint)
        if c is not None and (c.raw is raw or c.raw == raw):
            c.last_seen = now
            circuits.move_to_end(endpoint)
        else:
            try:
                p = replace(self.defaults, **check_option(raw))
            except (ValueError, TypeError):
                self.counters["bad_options_total"] += 1
                return None
            if c is None and len(circuits) >= self.max_circuits:
                circuits.popitem(last=False)
                self.counters["evicted_total"] += 1
            c = circuits[endpoint] = _Circuit(raw, p, now)
            circuits.move_to_end(endpoint)
        # Forget circuits nobody asked about for IDLE_DROP (least recently used first, bounded work).
        for _ in range(SWEEP_PER_DECIDE):
            oldest = next(iter(circuits.values()))
            if oldest is c or now - oldest.last_seen < IDLE_DROP:
                break
            circuits.popitem(last=False)
            self.counters["dropped_idle_total"] += 1
        return c

    def _count(self, failed: bool) -> None:
        self.counters["requests_total"] += 1
        if failed:
            self.counters["errors_total"] += 1

    def _to(self, endpoint: str, c: _Circuit, state: str, now: float, why: str | None = None,
            requests: int | None = None, errors: int | None = None) -> None:
        old, c.state = c.state, state
        c.probes.clear()
        c.probe_ok = 0
        if state is OPEN:
            c.opened_at = now
            self.counters["opened_total"] += 1
            event = "circuit_opened" if old is CLOSED else "circuit_reopened"
            log.warning(kv(event, endpoint=endpoint, module=self.name, reason=why, requests=requests, errors=errors,
                           error_threshold=c.p.error_threshold, tripped_duration=c.p.tripped_duration))
        elif state is HALF_OPEN:
            self.counters["half_opened_total"] += 1
            log.warning(kv("circuit_half_open", endpoint=endpoint, module=self.name,
                           probes=c.p.half_open_requests))
        else:
            c.reset_window()
            self.counters["closed_total"] += 1
            log.warning(kv("circuit_closed", endpoint=endpoint, module=self.name))

    def _reject(self, subject: Subject, c: _Circuit, now: float) -> Decision:
        self.counters["rejected_total"] += 1
        wait = max(1, math.ceil(c.opened_at + c.p.tripped_duration - now))
        return Decision(Verdict.ANSWER, status=E.CIRCUIT_OPEN.status, code=E.CIRCUIT_OPEN.code, module=self.name,
                        reason="circuit breaker open", response=page(subject.endpoint, wait))


def page(endpoint: str, retry_after: int) -> Response:
    """503 with the edge's error page (ERR_GSLB_3503) and Retry-After (RFC 9110 10.2.3, 15.6.4)."""
    raw = error_response(E.CIRCUIT_OPEN.status, E.CIRCUIT_OPEN.code, "Service unavailable",
                         f"Too many recent requests to {endpoint} failed: the edge holds new ones back "
                         f"while its service recovers (circuit breaker open). Retry in {retry_after} s.")
    body = raw[raw.index(b"\r\n\r\n") + 4:]
    return Response(E.CIRCUIT_OPEN.status, (
        ("Content-Type", "text/html; charset=utf-8"), ("X-Gslb-Error-Code", E.CIRCUIT_OPEN.code),
        ("Cache-Control", "no-store"), ("Retry-After", str(retry_after))), body)
