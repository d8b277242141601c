"""Answer policy: for a GSLB name, which addresses to answer, given ranked PoPs.

This is gdnsd's "resolve" half (its resolver plugins): `geo` decides the order of PoPs
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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FALLBACK_NEAREST, FALLBACK_ALL, FALLBACK_NONE = "nearest", "all", "none"


class HealthError(ValueError):
    """Bad input to the health machinery: an unknown PoP, a malformed health view."""


@dataclass(frozen=True, slots=True)
class HealthView:
    """Which PoP addresses answers may use, and which PoPs' health is changing.

    The one health type (the checker publishes it, workers and the control
    socket carry it, `explain --down` builds one). The default: every address up.

    - `down`: (PoP, address) pairs the checker found down;
    - `drained`: PoPs out of answers (`[health].drained` plus runtime drains);
    - `changing`: PoPs whose answers get the lowered TTL (`answer_ttl`);
    - `version`: changes whenever what the view says changes (answer caches key on it).
    """

    version: int = 0
    down: frozenset[tuple[str, str]] = frozenset()
    drained: frozenset[str] = frozenset()
    changing: frozenset[str] = frozenset()

    def is_up(self, pop: str, address: str) -> bool:
        return pop not in self.drained and (pop, address) not in self.down

    def merge(self, other: "HealthView") -> "HealthView":
        """Both views at once: an address is up only if both say so; changing in either.

        The version is the sum: each source's version only grows, so the sum
        moves whenever either view moves.
        """
        return HealthView(self.version + other.version, self.down | other.down,
                          self.drained | other.drained, self.changing | other.changing)

    def encode(self) -> bytes:
        """One JSON line (the pipe to worker processes and the control socket carry these)."""
        return (json.dumps({"version": self.version, "down": sorted(self.down),
                            "drained": sorted(self.drained), "changing": sorted(self.changing)},
                           separators=(",", ":")) + "\n").encode()

    @classmethod
    def decode(cls, line: bytes | str) -> "HealthView":
        try:
            d = json.loads(line)
            version = d["version"]
            if isinstance(version, bool) or not isinstance(version, int):
                raise TypeError("version is not an integer")
            down = frozenset((str(p), str(a)) for p, a in d["down"])
            return cls(version, down, frozenset(map(str, d["drained"])),
                       frozenset(map(str, d["changing"])))
        except (ValueError, TypeError, KeyError) as exc:
            raise HealthError(f"malformed health view: {exc}") from None


EVERY_ADDRESS_UP = HealthView()


def answer_ttl(ttl: int, changing_ttl: int, order: Sequence[str], pops_used: Sequence[str],
               changing: frozenset[str], fallback: bool = False) -> int:
    """TTL of a GSLB answer (gdnsd's state+TTL idea; docs/configuration.md, `[health].changing_ttl`).

    Lowered to min(ttl, changing_ttl) when a PoP the answer depends on is
    changing: one it answers from, or one ranked before them that it skipped
    (so clients come back soon after it recovers); and for a fallback answer
    (every address down). Otherwise `ttl`.
    """
    if fallback:
        return min(ttl, changing_ttl)
    if not changing:
        return ttl
    order = list(order)
    last = max((order.index(p) for p in pops_used if p in order), default=len(order) - 1)
    if any(p in changing for p in order[:last + 1]) or any(p in changing for p in pops_used):
        return min(ttl, changing_ttl)
    return ttl


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
    health = health or EVERY_ADDRESS_UP
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
