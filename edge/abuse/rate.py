"""A minimum transfer rate (slowloris, slow bodies), judged after a grace time.

Owns: the rule "after `grace` seconds, at least `min_rate` bytes a second
on average since the start". Sans-IO: `start(now)`, `feed(n, now)` -> False
once too slow. A rate of 0 turns it off. The shell restarts it when it had
paused reading itself (backpressure is not the client's fault).
"""
from __future__ import annotations


class MinRate:
    __slots__ = ("min_rate", "grace", "t0", "n")

    def __init__(self, min_rate: float, grace: float) -> None:
        self.min_rate = min_rate
        self.grace = grace
        self.t0: float | None = None
        self.n = 0

    @property
    def running(self) -> bool:
        return self.t0 is not None

    def start(self, now: float, n: int = 0) -> None:
        self.t0 = now if self.min_rate > 0 else None
        self.n = n

    def stop(self) -> None:
        self.t0 = None

    def feed(self, n: int, now: float) -> bool:
        """`n` more bytes arrived: False when the average is below the minimum after the grace time."""
        if self.t0 is None:
            return True
        self.n += n
        elapsed = now - self.t0
        return elapsed < self.grace or self.n >= self.min_rate * elapsed
