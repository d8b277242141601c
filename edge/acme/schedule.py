"""When to renew, when to try again, and whether this PoP orders: pure, no I/O.

Owns the time arithmetic of the ACME manager (edge/acme/manager.py), fed
times as floats (seconds since the epoch) and a random source, so tests pin
every decision without a clock:

- `renew_at`: a certificate is renewed once `renew_at` (default 2/3) of its
  lifetime has passed (what certbot and Caddy do for 90-day certificates:
  30 days left), minus a bounded jitter so that many certificates issued
  together do not all renew in the same second;
- `retry_delay`: after a failed order, exponential backoff from `base` to
  `cap`, with full jitter in [delay/2, delay] (rate-limit friendly: a CA
  that is down or limiting us is not hammered; RFC 8555 6.6 asks clients
  to back off on rateLimited);
- `decide`: given what the store holds and whether this PoP holds the
  order lock, the next step for a name.
"""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass

MAX_JITTER = 0.05   # of the lifetime, at most, and never more than 1 h
MAX_JITTER_S = 3600.0


def renew_at(not_before: float, not_after: float, fraction: float, rng: random.Random | None = None) -> float:
    """The time to renew a certificate valid [not_before, not_after]."""
    if not 0 < fraction < 1:
        raise ValueError(f"renew fraction must be in (0, 1), got {fraction}")
    life = max(0.0, not_after - not_before)
    at = not_before + life * fraction
    if rng is not None:
        at -= rng.uniform(0, min(life * MAX_JITTER, MAX_JITTER_S))
    return at


def retry_delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1 = the first)."""
    if failures < 1:
        return 0.0
    delay = min(cap, base * (2 ** min(failures - 1, 30)))
    if rng is not None:
        delay = rng.uniform(delay / 2, delay)
    return delay


class Step(enum.Enum):
    SERVE = "serve"            # the stored certificate is good: use it
    ORDER = "order"            # none (or expired) and the lock is ours: order now
    RENEW = "renew"            # due for renewal and the lock is ours: order, serve the old one meanwhile
    WAIT = "wait"              # another PoP holds the lock: poll the store for its result
    SERVE_AND_WAIT = "serve_and_wait"   # due, another PoP renews: keep serving, look again later


@dataclass(frozen=True)
class Held:
    """What the store has for a name: validity and the time it is due."""
    not_before: float
    not_after: float
    due: float


def decide(held: Held | None, now: float, lock_ours: bool | None) -> Step:
    """The next step for a name. `lock_ours` is None when the lock was not asked
    for yet (the caller asks only when the answer is not SERVE)."""
    usable = held is not None and held.not_before <= now < held.not_after
    if usable and now < held.due:  # type: ignore[union-attr]
        return Step.SERVE
    if lock_ours is None or lock_ours:
        return Step.RENEW if usable else Step.ORDER
    return Step.SERVE_AND_WAIT if usable else Step.WAIT
