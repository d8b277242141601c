"""Rate limit: a token bucket per client (address or header value) per endpoint.

Owns: the endpoint's `rate_limit` bind option (`"100/s"`, `"6000/m"`, or a
table with `rate`, `burst`, `key`), one token bucket per (endpoint, key) in
one table of at most `max_buckets` buckets for the whole edge node, least
recently used evicted first, and the answer beyond the limit: 429
(ERR_GSLB_3429) with Retry-After, a whole `Response`. A bucket holds `burst`
tokens (default: the rate's count), refills at the rate, and a request
takes one. A full bucket is the same as none, so full buckets at the old end
of the table are dropped as the table is used: a flood from rotating
sources costs at most `max_buckets` entries. Pure: time is `subject.now`.
Must not touch sockets or the request. See README.md.
"""
from __future__ import annotations

import ipaddress
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge import errors as E
from edge.front.http1 import error_response
from edge.modules.base import PASS, BindOption, Decision, Module, ModuleConfigError, Response, Subject, Verdict

OPTION = "rate_limit"
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_COUNT = 1_000_000        # requests per period, and burst
MAX_BUCKETS = 100_000        # default of max_buckets (the table of the whole edge node)
MAX_ENDPOINTS = 10_000       # endpoints whose parsed limit is kept
MAX_HEADER_VALUE = 256       # characters of a header value used as a key (the rest is ignored)
SWEEP_PER_DECIDE = 4         # full buckets dropped at most per decide (amortized, bounded work)
_RATE = re.compile(r"^\s*(\d{1,7})\s*/\s*(s|m|h)\s*$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # RFC 9110 5.6.2


@dataclass(frozen=True)
class Params:
    rate: float        # tokens per second
    burst: int         # bucket size
    key: str           # "ip" or "header:<lower-case name>"
    text: str          # the rate as given, e.g. "100/s", for logs and pages


def parse_rate(value: Any, what: str) -> tuple[int, str]:
    """'N/s', 'N/m' or 'N/h' -> (N, unit)."""
    m = _RATE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{what}: {value!r} is not a rate like \"100/s\", \"6000/m\" or \"50/h\"")
    n = int(m.group(1))
    if not 1 <= n <= MAX_COUNT:
        raise ValueError(f"{what}: {n} requests per period is outside 1 to {MAX_COUNT}")
    return n, m.group(2)


def check_key(value: Any, what: str) -> str:
    if value == "ip":
        return "ip"
    if isinstance(value, str) and value.lower().startswith("header:") and _TOKEN.match(value[7:]):
        return "header:" + value[7:].lower()
    raise ValueError(f"{what}: {value!r} is not \"ip\" or \"header:NAME\" (a header field name)")


def check_option(value: Any) -> dict[str, Any]:
    """The bind option `rate_limit`: a rate ("100/s"; flags come as a
    one-item list) or a table {rate, burst, key}. Returns the given keys,
    normalized, or raises ValueError with the agent's text."""
    what = f"option {OPTION!r}"
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"{what}: give it once (a rate like \"100/s\", or a table)")
        value = value[0]
    if isinstance(value, str):
        n, unit = parse_rate(value, what)
        return {"rate": f"{n}/{unit}"}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected a rate like \"100/s\" or a table of rate, burst, key")
    unknown = set(value) - {"rate", "burst", "key"}
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: burst, key, rate)")
    if "rate" not in value:
        raise ValueError(f"{what}: the table needs a rate like \"100/s\"")
    n, unit = parse_rate(value["rate"], f"{what}.rate")
    out: dict[str, Any] = {"rate": f"{n}/{unit}"}
    if "burst" in value:
        b = value["burst"]
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_COUNT:
            raise ValueError(f"{what}.burst: expected an integer from 1 to {MAX_COUNT}, got {b!r}")
        out["burst"] = b
    if "key" in value:
        out["key"] = check_key(value["key"], f"{what}.key")
    return out


def params(value: Any, default_key: str = "ip") -> Params:
    opt = check_option(value)
    n, unit = parse_rate(opt["rate"], "rate")
    return Params(rate=n / PERIODS[unit], burst=opt.get("burst", n), key=opt.get("key", default_key), text=opt["rate"])


def client_key(subject: Subject, key: str) -> Any:
    """The bucket's key: the client address (IPv6: its /64, which one host can
    rotate through), or a header's value (a client without it is keyed by
    its address)."""
    if key != "ip" and subject.request is not None:
        v = subject.request.header(key[7:])
        if v is not None:
            return "h", v[:MAX_HEADER_VALUE]
    ip = subject.client_ip
    if isinstance(ip, ipaddress.IPv6Address):
        return int(ip) >> 64
    return ip


@dataclass(eq=False)  # identity: a chain holds it, its state is its own
class RateLimit(Module):
    name: ClassVar[str] = "rate_limit"
    bind_options: ClassVar[Mapping[str, BindOption]] = {
        OPTION: BindOption(("http",), check_option,
                           "at most this many requests per client, e.g. 100/s, 6000/m "
                           "(burst and key = \"ip\" | \"header:NAME\" in agent.toml)",
                           flag="--rate-limit", metavar="N/s|N/m|N/h"),
    }
    max_buckets: int = MAX_BUCKETS
    default_key: str = "ip"
    # (endpoint, key) -> [tokens, last refill, rate, burst]; least recently used first
    buckets: "OrderedDict[tuple[str, Any], list[float]]" = field(default_factory=OrderedDict)
    _params: dict[str, tuple[Any, Params | None]] = field(default_factory=dict)  # endpoint -> (raw, parsed)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("checked_total", "limited_total", "evicted_total", "dropped_full_total", "bad_options_total"), 0))

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "RateLimit":
        unknown = set(options) - {"max_buckets", "key"}
        if unknown:
            raise ModuleConfigError(f"{', '.join(sorted(unknown))}: unknown option of rate_limit "
                                    "(known: key, max_buckets)")
        mb = options.get("max_buckets", MAX_BUCKETS)
        if isinstance(mb, bool) or not isinstance(mb, int) or not 1 <= mb <= 10_000_000:
            raise ModuleConfigError(f"max_buckets: expected an integer from 1 to 10000000, got {mb!r}")
        try:
            key = check_key(options.get("key", "ip"), "key")
        except ValueError as exc:
            raise ModuleConfigError(str(exc)) from None
        return cls(max_buckets=mb, default_key=key)

    def idle(self, options: Mapping[str, Any]) -> bool:
        return options.get(OPTION) is None  # no limit on the endpoint: decide() passes

    def decide(self, subject: Subject) -> Decision:
        raw = subject.options.get(OPTION)
        if raw is None:
            return PASS  # no limit on this endpoint: one lookup
        p = self._parsed(subject.endpoint, raw)
        if p is None:
            return PASS
        now = subject.now
        self.counters["checked_total"] += 1
        buckets = self.buckets
        k = (subject.endpoint, client_key(subject, p.key))
        b = buckets.get(k)
        if b is None:
            if len(buckets) >= self.max_buckets:
                buckets.popitem(last=False)
                self.counters["evicted_total"] += 1
            b = buckets[k] = [float(p.burst), now, p.rate, float(p.burst)]
        else:
            buckets.move_to_end(k)
            if b[2] != p.rate or b[3] != p.burst:  # the endpoint was bound again with another limit
                b[:] = [float(p.burst), now, p.rate, float(p.burst)]
            else:
                b[0] = min(b[3], b[0] + max(0.0, now - b[1]) * b[2])
                b[1] = now
        self._sweep(now, k)
        if b[0] >= 1.0:
            b[0] -= 1.0
            return PASS
        self.counters["limited_total"] += 1
        wait = max(1, math.ceil((1.0 - b[0]) / b[2]))  # seconds until one token (RFC 9110 10.2.3: whole seconds)
        return Decision(Verdict.ANSWER, status=E.RATE_LIMITED.status, code=E.RATE_LIMITED.code, module=self.name,
                        reason=f"over the rate limit of {p.text}", response=page(subject.endpoint, p.text, wait))

    def stats(self) -> dict[str, int | float]:
        """Counters (monotonic, `*_total`) and the gauge `buckets`; names in README.md."""
        return {**self.counters, "buckets": len(self.buckets)}

    def _parsed(self, endpoint: str, raw: Any) -> Params | None:
        got = self._params.get(endpoint)
        if got is not None and (got[0] is raw or got[0] == raw):
            return got[1]
        try:
            p: Params | None = params(raw, self.default_key)
        except (ValueError, TypeError):
            self.counters["bad_options_total"] += 1  # a binding checked by another version: no limit
            p = None
        if len(self._params) >= MAX_ENDPOINTS:  # bounded: parsed again on next use
            self._params.clear()
        self._params[endpoint] = (raw, p)
        return p

    def _sweep(self, now: float, keep: tuple[str, Any]) -> None:
        """Drop full buckets at the old end (a full bucket is the same as none)."""
        buckets = self.buckets
        for _ in range(SWEEP_PER_DECIDE):
            k, b = next(iter(buckets.items()))
            if k == keep or b[0] + (now - b[1]) * b[2] < b[3]:
                return
            del buckets[k]
            self.counters["dropped_full_total"] += 1


def page(endpoint: str, rate: str, retry_after: int) -> Response:
    """429 (RFC 6585 4) with the edge's error page (ERR_GSLB_3429) and Retry-After."""
    raw = error_response(E.RATE_LIMITED.status, E.RATE_LIMITED.code, "Too many requests",
                         f"More requests to {endpoint} than its limit of {rate} allows. Retry in {retry_after} s.")
    body = raw[raw.index(b"\r\n\r\n") + 4:]
    return Response(E.RATE_LIMITED.status, (
        ("Content-Type", "text/html; charset=utf-8"), ("X-Gslb-Error-Code", E.RATE_LIMITED.code),
        ("Cache-Control", "no-store"), ("Retry-After", str(retry_after))), body)
