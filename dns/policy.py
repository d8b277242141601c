"""Answer policy: for a GSLB name, which addresses to answer, given ranked PoPs.

This is gdnsd's "resolve" half (STYLE.md): `geo` decides the order of PoPs
for a client; this module decides what that order means for one answer:
health, how many addresses, rotation, fallback. Sans-IO and deterministic:
no sockets, no clock, no randomness. It must not locate clients or touch
the wire format.

The rule (docs/configuration.md, `[policy]`):

- candidates: the pinned PoP first when the name is pinned, then the ranking;
- take N (`addresses_per_answer`) usable addresses of the first PoP that has
  any; when it has fewer than N, fill from the next PoPs in order;
- rotation: the answer is a window over each PoP's usable addresses, started
  one further on each successive query, so every address is handed out;
  `Selection.variants` lists the windows in cycling order;
- when no address of the family is usable anywhere, the fallback decides:
  `nearest` (default) answers the first-ranked PoP's addresses regardless of
  health (like gdnsd: an answer that may work beats none), `all` answers every
  address of every PoP in ranking order, `none` answers nothing (NODATA).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

FALLBACK_NEAREST, FALLBACK_ALL, FALLBACK_NONE = "nearest", "all", "none"


class HealthView:
    """Which PoP addresses are usable. The default: every address is up.

    `dns.health.HealthSnapshot` (the checker's view) replaces this; anything
    with `is_up(pop, address) -> bool` and an integer `version` that changes
    whenever an answer may change will do (the answer cache keys on it).
    """

    version: int = 0
    # PoPs whose health is changing: answers depending on them get a lower TTL
    # (dns.health.answer_ttl). A view without the attribute means none.
    changing: frozenset[str] = frozenset()

    def is_up(self, pop: str, address: str) -> bool:
        return True


@dataclass
class StaticHealth(HealthView):
    """A fixed set of down addresses (tests, `explain --down`, drained PoPs)."""

    down: frozenset[str] = field(default_factory=frozenset)
    down_pops: frozenset[str] = field(default_factory=frozenset)
    version: int = 0

    def is_up(self, pop: str, address: str) -> bool:
        return address not in self.down and pop not in self.down_pops


class Drained(HealthView):
    """PoPs the operator took out of answers (`[health].drained`), over another view."""

    def __init__(self, base: HealthView, pops: frozenset[str]) -> None:
        self.base, self.pops = base, frozenset(pops)

    @property
    def version(self) -> int:  # type: ignore[override]
        return self.base.version

    @property
    def changing(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(getattr(self.base, "changing", ()))

    def is_up(self, pop: str, address: str) -> bool:
        return pop not in self.pops and self.base.is_up(pop, address)


@dataclass(frozen=True, slots=True)
class PopAddresses:
    """The addresses of one PoP in one family, in configuration order."""

    id: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """What to answer for one (name, family, ranking).

    `variants` are the address lists of successive answers (rotation);
    `pops_used` the PoPs they come from, in order; `fallback` names the
    fallback applied ("" when health allowed a normal answer);
    `location_dependent` is False when the ranking did not matter (a pinned
    PoP answered alone), which makes the ECS scope 0 (RFC 7871 7.2.1).
    """

    order: tuple[str, ...]
    pops_used: tuple[str, ...]
    variants: tuple[tuple[str, ...], ...]
    fallback: str
    location_dependent: bool
    reason: str

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.variants[0] if self.variants else ()


def select(
    ranking: Sequence[str],
    pops: Mapping[str, PopAddresses],
    *,
    family: int,
    count: int,
    pin: str | None = None,
    health: HealthView | None = None,
    fallback: str = FALLBACK_NEAREST,
) -> Selection:
    """Choose the addresses of an A (family 4) or AAAA (family 6) answer."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family}")
    if count < 1:
        raise ValueError("count must be >= 1")
    health = health or HealthView()
    order = tuple(ranking)
    if pin is not None:
        order = (pin,) + tuple(p for p in order if p != pin)

    def addrs(pop_id: str) -> tuple[str, ...]:
        p = pops.get(pop_id)
        if p is None:
            return ()
        return p.ipv4 if family == 4 else p.ipv6

    usable = [(p, tuple(a for a in addrs(p) if health.is_up(p, a))) for p in order]
    picked = _fill(usable, count)
    fb = ""
    if picked:
        reason = "nearest usable PoP" if len(picked) == 1 else "nearest usable PoPs, filled in order"
        if pin is not None:
            reason = f"pinned to {pin}" + ("" if picked[0][0] == pin else f", {pin} down: next in ranking")
    elif not any(addrs(p) for p in order):
        # No PoP has an address of this family at all: NODATA, not a fallback.
        return Selection(order, (), (), "", False, f"no PoP has IPv{family} addresses")
    elif fallback == FALLBACK_NONE:
        return Selection(order, (), (), FALLBACK_NONE, False, "every address is down; fallback none")
    elif fallback == FALLBACK_ALL:
        fb = FALLBACK_ALL
        everything = tuple(a for p in order for a in addrs(p))
        pops_used = tuple(p for p in order if addrs(p))
        return Selection(order, pops_used, (everything,), fb, pin is None or pops_used[0] != pin,
                         "every address is down; fallback all: every address, ranking order")
    else:
        fb = FALLBACK_NEAREST
        picked = _fill([(p, addrs(p)) for p in order], count)
        reason = "every address is down; fallback nearest: health ignored"

    pops_used = tuple(p for p, _, _ in picked)
    nvar = max(len(u) for _, u, _ in picked)
    variants = tuple(
        tuple(u[(i + j) % len(u)] for _, u, take in picked for j in range(take))
        for i in range(nvar)
    )
    # A pinned name answered wholly by its pin does not depend on where the client is.
    dependent = not (pin is not None and pops_used == (pin,))
    return Selection(order, pops_used, variants, fb, dependent, reason)


def _fill(usable: Sequence[tuple[str, tuple[str, ...]]], count: int
          ) -> list[tuple[str, tuple[str, ...], int]]:
    """[(pop, usable addresses, how many to take)] until `count` are taken."""
    picked, need = [], count
    for pop_id, u in usable:
        if need <= 0:
            break
        if u:
            take = min(len(u), need)
            picked.append((pop_id, u, take))
            need -= take
    return picked
