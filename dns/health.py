"""Health of PoP addresses: the rise/fall state machine and the views it publishes (sans-IO).

Owns what a probe result *means*: per (PoP, address) state with rise/fall
thresholds, IPv4 and IPv6 apart (every address is its own state), the
drained PoPs (configuration plus runtime drains), which PoPs' health is
changing (the engine lowers the TTL of answers that depend on them), and
the `dns.policy.HealthView` the DNS engine answers from. It is fed
results and timestamps (`record(pop, address, ok, now)`); it opens no
socket and reads no clock. Probing is `dns.prober`; publishing to worker
processes and the control socket are `dns.monitor`.

Rules (docs/configuration.md, `[health]`):

- every address starts up; it goes down after `fall` consecutive failed
  checks of which at least `fall` were definite failures (refused, reset,
  unreachable, a bad status), or after `timeout_fall` consecutive failed
  checks of any kind (a check that only timed out is not proof of a dead
  PoP: on a busy machine the prober or the edge may just be late); it comes
  back after `rise` consecutive successful ones;
- a PoP is "changing" while any of its addresses has a streak under way (a
  failure while up, a success while down), and for `rise + fall` intervals
  after any of its addresses changed state;
- drained = (`[health].drained` + runtime drains) - runtime undrains; a
  reload that changes whether the configuration drains a PoP drops the
  runtime override for that PoP (the new configuration wins), others stay;
- the snapshot's `version` changes whenever what it says changes (an
  address up or down, a drain, a PoP starting or stopping "changing"), and
  only then, so every answer cache keyed on it is emptied exactly when
  answers may differ.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dns.policy import HealthError, HealthView

__all__ = ["AddressState", "HealthError", "HealthStates", "HealthView", "Target", "Transition",
           "refused_targets", "targets_from_config"]


@dataclass(frozen=True, slots=True)
class Target:
    """One address to check, of one PoP."""

    pop: str
    address: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass(frozen=True, slots=True)
class Transition:
    """An address changed state: `event=health_change` in the log."""

    pop: str
    address: str
    up: bool
    after: int          # consecutive results that decided it
    at: float
    error: str = ""

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass(frozen=True, slots=True)
class AddressState:
    """What `gslb dns health` shows for one address."""

    pop: str
    address: str
    family: int
    up: bool
    successes: int      # consecutive, current streak
    failures: int       # consecutive, current streak
    checks: int
    transitions: int
    changed_at: float | None
    checked_at: float | None
    last_error: str


class _State:
    __slots__ = ("up", "ok", "fail", "hard", "checks", "transitions", "changed_at", "checked_at", "error")

    def __init__(self) -> None:
        self.up, self.ok, self.fail, self.checks, self.transitions = True, 0, 0, 0, 0
        self.hard = 0  # definite (not timeout) failures in the current failure streak
        self.changed_at: float | None = None
        self.checked_at: float | None = None
        self.error = ""


@dataclass
class HealthStates:
    """The rise/fall machine for every target. Mutable; `snapshot(now)` freezes it."""

    targets: tuple[Target, ...]
    rise: int = 2
    fall: int = 3
    interval: float = 1.0
    config_drained: frozenset[str] = frozenset()
    timeout_fall: int = 0   # 0: 2 x fall
    _states: dict[tuple[str, str], _State] = field(default_factory=dict, init=False)
    _runtime: dict[str, bool] = field(default_factory=dict, init=False)  # pop -> drained
    _version: int = field(default=0, init=False)
    _last: tuple | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise HealthError("rise and fall must be >= 1")
        if self.interval <= 0:
            raise HealthError("interval must be > 0")
        self.timeout_fall = self._timeout_fall(self.fall, self.timeout_fall)
        self.targets = tuple(self.targets)
        self.config_drained = frozenset(self.config_drained)
        self._states = {(t.pop, t.address): _State() for t in self.targets}

    @property
    def pops(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.pop for t in self.targets))

    # -- results --------------------------------------------------------------------------

    @staticmethod
    def _timeout_fall(fall: int, timeout_fall: int) -> int:
        if timeout_fall == 0:
            return 2 * fall
        if timeout_fall < fall:
            raise HealthError(f"timeout_fall ({timeout_fall}) must be >= fall ({fall})")
        return timeout_fall

    def record(self, pop: str, address: str, ok: bool, now: float, error: str = "",
               timed_out: bool = False) -> Transition | None:
        """One check result; returns the transition it caused, if any. `timed_out`: the check
        failed only by timing out (counts towards `timeout_fall`, not towards `fall`)."""
        st = self._states.get((pop, address))
        if st is None:
            raise HealthError(f"not a target: {pop} {address}")
        st.checks += 1
        st.checked_at = now
        if ok:
            st.ok, st.fail, st.hard, st.error = st.ok + 1, 0, 0, ""
            if not st.up and st.ok >= self.rise:
                st.up = True
                return self._changed(st, pop, address, now, st.ok, "")
        else:
            st.ok, st.fail, st.error = 0, st.fail + 1, error
            if not timed_out:
                st.hard += 1
            if st.up and (st.hard >= self.fall or st.fail >= self.timeout_fall):
                st.up = False
                return self._changed(st, pop, address, now, st.fail, error)
        return None

    @staticmethod
    def _changed(st: _State, pop: str, address: str, now: float, after: int, error: str) -> Transition:
        st.changed_at = now
        st.transitions += 1
        return Transition(pop, address, st.up, after, now, error)

    # -- drains ---------------------------------------------------------------------------

    @property
    def drained(self) -> frozenset[str]:
        out = set(self.config_drained)
        for pop, drained in self._runtime.items():
            (out.add if drained else out.discard)(pop)
        return frozenset(out)

    def set_drained(self, pop: str, drained: bool) -> bool:
        """Runtime drain (True) or undrain (False); returns whether the drained set changed."""
        if pop not in self.pops:
            raise HealthError(f"unknown PoP {pop!r} (known: {', '.join(self.pops)})")
        before = self.drained
        self._runtime[pop] = drained
        return self.drained != before

    # -- configuration --------------------------------------------------------------------

    def reconfigure(self, targets: Iterable[Target], *, rise: int, fall: int, interval: float,
                    config_drained: Iterable[str], timeout_fall: int = 0) -> None:
        """A reload: keep the state of addresses that stay, start new ones up, drop the rest.

        A runtime override survives unless the new configuration changed
        whether that PoP is drained (then the configuration wins).
        """
        if rise < 1 or fall < 1 or interval <= 0:
            raise HealthError("rise and fall must be >= 1, interval > 0")
        timeout_fall = self._timeout_fall(fall, timeout_fall)
        new_cfg = frozenset(config_drained)
        flipped = new_cfg ^ self.config_drained
        self.targets = tuple(targets)
        pops = set(self.pops)
        self._states = {(t.pop, t.address): self._states.get((t.pop, t.address)) or _State()
                        for t in self.targets}
        self._runtime = {p: d for p, d in self._runtime.items() if p not in flipped and p in pops}
        self.rise, self.fall, self.interval, self.config_drained = rise, fall, interval, new_cfg
        self.timeout_fall = timeout_fall

    # -- views ----------------------------------------------------------------------------

    def changing(self, now: float) -> frozenset[str]:
        """PoPs whose health is changing: a streak under way, or a transition within
        (rise + fall) intervals."""
        hold = (self.rise + self.fall) * self.interval
        out = set()
        for (pop, _), st in self._states.items():
            pending = (st.up and st.fail > 0) or (not st.up and st.ok > 0)
            recent = st.changed_at is not None and now - st.changed_at < hold
            if pending or recent:
                out.add(pop)
        return frozenset(out)

    def snapshot(self, now: float) -> HealthView:
        """The current view; its version moves on iff its content differs from the last one."""
        down = frozenset(k for k, st in self._states.items() if not st.up)
        content = (down, self.drained, self.changing(now))
        if content != self._last:
            self._last = content
            self._version += 1
        return HealthView(self._version, *content)

    def states(self) -> list[AddressState]:
        return [AddressState(t.pop, t.address, t.family, st.up, st.ok, st.fail, st.checks,
                             st.transitions, st.changed_at, st.checked_at, st.error)
                for t in self.targets for st in (self._states[(t.pop, t.address)],)]


def targets_from_config(cfg: Any) -> tuple[Target, ...]:
    """Every address of every PoP, IPv4 then IPv6, in catalogue order."""
    return tuple(Target(p.id, a) for p in cfg.pops for a in (*p.ipv4, *p.ipv6))


def refused_targets(targets: Iterable[Target], *, allow_remote: bool, in_named_netns: bool
                    ) -> tuple[str, ...]:
    """Addresses the checker must not probe from here (docs/configuration.md, `[health]`).

    Loopback is always allowed. Anything else only from inside a named
    network namespace (a lab host, `ip netns exec`) or when the operator
    said `allow_remote = true` (a production name server). This keeps a
    checker in the root namespace of a test machine from sending probes to
    lab addresses out of the machine.
    """
    if allow_remote or in_named_netns:
        return ()
    out = []
    for t in targets:
        if not ipaddress.ip_address(t.address).is_loopback:
            out.append(t.address)
    return tuple(dict.fromkeys(out))
