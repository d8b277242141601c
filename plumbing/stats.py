"""Reading a component's `stats()` for /metrics (docs/metrics.md).

The convention of the stateful components (circuit breaker, rate limit, abuse
tracker, RRL): `stats(self) -> dict[str, int | float]`, flat, counters and gauges.
"""
from __future__ import annotations

from typing import Any


def stats_of(obj: Any) -> dict[str, float]:
    """`obj.stats()` (the protection components' convention: a flat dict of numbers), or {}."""
    fn = getattr(obj, "stats", None)
    if not callable(fn):
        return {}
    try:
        got = fn()
    except Exception:  # noqa: BLE001 - a broken component costs its series, not the scrape
        return {}
    return {str(k): float(v) for k, v in got.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)} if isinstance(got, dict) else {}
