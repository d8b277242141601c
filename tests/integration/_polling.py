"""Bounded polling for the lab tests: every wait has a deadline."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> tuple[Any, float]:
    """Poll pred() until it returns a truthy value; bounded by time. Returns (last value, seconds)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = pred()
        if last:
            return last, time.monotonic() - t0
        time.sleep(step)
    return last, time.monotonic() - t0
