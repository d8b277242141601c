"""Parsers for what the load generators print: dnsperf and wrk.

Owns: turning their text output into numbers (plain dicts of floats/ints),
and percentiles over per-query latencies. Pure functions, no processes. A
parser that cannot find the figures it needs raises `ParseError` with the
tail of the text, so a failed run is never recorded as zero.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

__all__ = ["ParseError", "parse_dnsperf", "dnsperf_verbose_latencies", "percentile", "parse_wrk",
           "parse_duration_s"]


class ParseError(ValueError):
    def __init__(self, tool: str, problem: str, text: str) -> None:
        tail = "\n".join(text.strip().splitlines()[-8:])
        super().__init__(f"{tool}: {problem}; output ended with:\n{tail}")


def _num(pattern: str, text: str, tool: str, what: str, cast=float):
    m = re.search(pattern, text, re.MULTILINE)
    if not m:
        raise ParseError(tool, f"no {what} in the output", text)
    return cast(m.group(1))


def parse_dnsperf(text: str) -> dict:
    """dnsperf's final statistics -> qps, sent, completed, lost, latency avg/min/max/stddev (ms), rcodes."""
    t = "dnsperf"
    out = {
        "sent": _num(r"^\s*Queries sent:\s+(\d+)", text, t, "'Queries sent'", int),
        "completed": _num(r"^\s*Queries completed:\s+(\d+)", text, t, "'Queries completed'", int),
        "lost": _num(r"^\s*Queries lost:\s+(\d+)", text, t, "'Queries lost'", int),
        "run_time_s": _num(r"^\s*Run time \(s\):\s+([\d.]+)", text, t, "'Run time'"),
        "qps": _num(r"^\s*Queries per second:\s+([\d.]+)", text, t, "'Queries per second'"),
    }
    m = re.search(r"^\s*Average Latency \(s\):\s+([\d.]+)\s+\(min ([\d.]+), max ([\d.]+)\)", text, re.MULTILINE)
    if not m:
        raise ParseError(t, "no 'Average Latency' in the output", text)
    out["latency_avg_ms"] = float(m.group(1)) * 1e3
    out["latency_min_ms"] = float(m.group(2)) * 1e3
    out["latency_max_ms"] = float(m.group(3)) * 1e3
    m = re.search(r"^\s*Latency StdDev \(s\):\s+([\d.]+)", text, re.MULTILINE)
    out["latency_stddev_ms"] = float(m.group(1)) * 1e3 if m else None
    rc: dict[str, int] = {}
    m = re.search(r"^\s*Response codes:\s+(.*)$", text, re.MULTILINE)
    if m:
        for name, count in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
            rc[name] = int(count)
    out["rcodes"] = rc
    return out


_VERBOSE = re.compile(r"^> (\S+) .* ([\d.]+)$")


def dnsperf_verbose_latencies(lines: Iterable[str]) -> list[float]:
    """Per-query latencies (seconds) from `dnsperf -v` lines: '> NOERROR name A 0.000119'."""
    out = []
    for line in lines:
        if line.startswith("> "):
            m = _VERBOSE.match(line.rstrip("\n"))
            if m and m.group(1) != "T":  # timeouts carry no latency
                out.append(float(m.group(2)))
    return out


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[min(k, len(s)) - 1]


_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(s: str) -> float:
    """wrk's durations: '788.00us', '0.86ms', '1.20s', '2.00m'."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", s.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {s!r}")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(text: str) -> dict:
    """`wrk --latency` output -> rps, requests, duration, latency avg/p50/p75/p90/p99 (ms), errors."""
    t = "wrk"
    out: dict = {
        "rps": _num(r"^Requests/sec:\s+([\d.]+)", text, t, "'Requests/sec'"),
    }
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", text, re.MULTILINE)
    if not m:
        raise ParseError(t, "no 'N requests in T' line", text)
    out["requests"] = int(m.group(1))
    out["duration_s"] = parse_duration_s(m.group(2))
    out["bytes_read"] = int(float(m.group(3)) * _SIZE.get(m.group(4), 1))
    m = re.search(r"^\s*Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", text, re.MULTILINE)
    out["latency_avg_ms"] = parse_duration_s(m.group(1)) * 1e3 if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+\w+)", text, re.MULTILINE)
        out[f"latency_p{pct}_ms"] = parse_duration_s(m.group(1)) * 1e3 if m else None
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors = dict(zip(errors, map(int, m.groups())))
    out["socket_errors"] = errors
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    return out


def merge_wrk(outs: list[dict]) -> dict:
    """Several `parse_wrk` results of wrk runs made at once (one per endpoint) as one: counts and
    rates summed, the duration the longest, latencies the request-weighted mean of each run's
    (an approximation of the pooled percentile: the runs' distributions are not kept)."""
    if len(outs) == 1:
        return outs[0]
    total = sum(o["requests"] for o in outs)
    out = {"rps": sum(o["rps"] for o in outs), "requests": total,
           "duration_s": max(o["duration_s"] for o in outs), "bytes_read": sum(o["bytes_read"] for o in outs),
           "socket_errors": {k: sum(o["socket_errors"][k] for o in outs) for k in outs[0]["socket_errors"]},
           "non_2xx": sum(o["non_2xx"] for o in outs)}
    for key in ("latency_avg_ms", "latency_p50_ms", "latency_p75_ms", "latency_p90_ms", "latency_p99_ms"):
        vals = [(o[key], o["requests"]) for o in outs if o.get(key) is not None]
        weight = sum(w for _, w in vals)
        out[key] = sum(v * w for v, w in vals) / weight if vals and weight else None
    return out
