"""Worker processes: what `gslb dns --workers` and `gslb edge --workers` both need.

Owns: a forked worker's death with its parent, closing what a worker forked from a running
supervisor inherited, and the respawn budget (how many crashed workers are replaced before the
supervisor gives up). Standard library only.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

# A worker killed by a signal (a crash, SIGKILL, the OOM killer) is replaced
# at once, as nginx and gunicorn replace theirs (one that exits with a status,
# e.g. it could not listen, is not: it would fail again); more than this many deaths in
# this window is a crash loop (a bug or a bad environment that a new process
# would only repeat): then every worker is stopped and the exit status is 1.
RESPAWN_LIMIT = 5
RESPAWN_WINDOW = 60.0   # seconds


class RespawnBudget:
    """At most `limit` respawns in any `window` seconds (sans-IO: the caller gives the time)."""

    def __init__(self, limit: int = RESPAWN_LIMIT, window: float = RESPAWN_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: list[float] = []

    def take(self, now: float) -> bool:
        self._times = [t for t in self._times if now - t < self.window]
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


def fork_worker_process(child_sighup: Callable[[], None]) -> int:
    """fork() for a supervisor that relays SIGTERM, SIGINT and SIGHUP to its workers: the parent
    gets the child's pid; the child (0) starts with SIGTERM/SIGINT at their defaults, the
    parent's wakeup fd dropped, and SIGHUP as `child_sighup()` sets it.

    The relayed signals stay blocked across the fork: one sent to the new worker before it has
    reset the parent's handlers would otherwise run the parent's asyncio handler, which only
    writes to a wakeup fd the child has dropped, and a SIGTERM would be lost (the worker would
    never stop). Blocked, it waits and meets the child's own dispositions. A respawn forks from
    inside the parent's running loop: the child drops that signal wiring first."""
    relayed = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, relayed)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    child_sighup()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return 0


def die_with_parent() -> None:
    """Linux prctl(PR_SET_PDEATHSIG, SIGTERM): a worker never outlives its parent."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def close_inherited(keep: set[int]) -> None:
    """Close every descriptor but stdio and `keep`. A worker forked from the running parent must not
    hold the parent's sockets or its loop's epoll: a socket the parent closes would stay registered
    in that shared epoll set, and events for a stale descriptor confuse the parent's loop."""
    import gc
    import resource
    # Objects of the parent's loop stay in this copy; never collect them (their finalizers would
    # close descriptor numbers this process has reused).
    gc.freeze()
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, top if top != resource.RLIM_INFINITY else 65536)
