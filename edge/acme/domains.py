"""Custom domains: does a domain the user names point at the edge?

An agent may bind `--domain shop.example.com` instead of NAME.<https_domain>
(docs/acme-dns.md). The edge serves it, and orders certificates for it,
only when its DNS points at the edge, so nobody can make the edge answer
(or ask a CA) for names it does not serve:

- its CNAME chain reaches a name under one of `suffixes` (the endpoint
  domain, the zone: `shop.example.com CNAME demo.app.lab.test`), or
- it has A/AAAA records and every one is an address of an edge PoP.

The name is resolved through the configured recursive resolvers (RD=1), one
question per type, each bounded by `timeout`; a resolver that does not answer
is skipped for the next. `check_domain(name)` is the module-level interface
the ACME manager and the hub call; `configure(checker)` installs the edge's.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Iterable, Sequence

from edge.acme import dnsmsg

_DOMAIN = re.compile(r"^(?=.{3,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DomainError(Exception):
    """The domain does not point at the edge (or cannot be resolved); the message says what to do."""


def read_resolv_conf(path: str = "/etc/resolv.conf") -> list[str]:
    """The `nameserver` addresses of resolv.conf (`ip netns exec` bind-mounts the namespace's own)."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        ipaddress.ip_address(parts[1])
                    except ValueError:
                        continue
                    out.append(parts[1])
    except OSError:
        pass
    return out[:3]


class DomainChecker:
    """Checks custom domains against the edge's names and addresses (see module docstring)."""

    def __init__(self, resolvers: Sequence[str], suffixes: Iterable[str], edge_addresses: Iterable[str], *,
                 example_target: str, timeout: float = 2.0) -> None:
        self.resolvers = [dnsmsg.parse_server(r) for r in resolvers]
        self.suffixes = tuple(dnsmsg.normalize(s) for s in suffixes)
        self.addresses = frozenset(str(ipaddress.ip_address(a)) for a in edge_addresses)
        self.example_target = example_target   # "<name>.app.lab.test": what the advice says
        self.timeout = timeout
        self.counters = {"checked": 0, "accepted": 0, "refused": 0, "unresolved": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def ours(self, name: str) -> bool:
        return any(name == s or name.endswith("." + s) for s in self.suffixes)

    async def _ask(self, name: str, qtype: int) -> dnsmsg.Response:
        if not self.resolvers:
            raise DomainError(f"cannot check {name}: no resolver configured (none in /etc/resolv.conf)")
        problems = []
        for server in self.resolvers:
            try:
                r = await dnsmsg.query(server, name, qtype, self.timeout, rd=True)
            except (asyncio.TimeoutError, OSError) as exc:
                problems.append(f"{server[0]}: {type(exc).__name__}")
                continue
            if r.rcode in (dnsmsg.NOERROR, dnsmsg.NXDOMAIN):
                return r
            problems.append(f"{server[0]}: {dnsmsg.RCODE_NAMES.get(r.rcode, r.rcode)}")
        raise DomainError(f"cannot check {name}: no resolver answered ({'; '.join(problems)})")

    async def check_domain(self, name: str) -> None:
        """Return when `name` points at the edge; raise DomainError saying why not."""
        name = dnsmsg.normalize(name)
        self.counters["checked"] += 1
        try:
            self._check_syntax(name)
            await self._check(name)
        except DomainError as exc:
            self.counters["unresolved" if str(exc).startswith("cannot check") else "refused"] += 1
            raise
        self.counters["accepted"] += 1

    def _check_syntax(self, name: str) -> None:
        if not _DOMAIN.match(name):
            raise DomainError(f"{name!r} is not a hostname with a dot (e.g. shop.example.com)")
        if self.ours(name):
            raise DomainError(f"{name} is a name of the edge's own zone, not a custom domain "
                              f"(bind it with --name)")

    async def _check(self, name: str) -> None:
        advice = f"add CNAME {name} -> {self.example_target}"
        r4 = await self._ask(name, dnsmsg.A)
        if r4.rcode == dnsmsg.NXDOMAIN and not r4.answers:
            raise DomainError(f"{name} does not point at the edge: it does not exist (NXDOMAIN); {advice}")
        chain = self._chain(name, r4)
        if any(self.ours(t) for t in chain):
            return
        r6 = await self._ask(name, dnsmsg.AAAA)
        final = chain[-1] if chain else name
        addrs = [(4, a) for a in r4.values(dnsmsg.A, final)] + [(6, a) for a in r6.values(dnsmsg.AAAA, final)]
        cname = f"CNAME {name} -> {' -> '.join(chain)}, " if chain else ""
        if not addrs:
            raise DomainError(f"{name} does not point at the edge: {cname}no A or AAAA records; {advice}")
        foreign = [a for _, a in addrs if str(ipaddress.ip_address(a)) not in self.addresses]
        if foreign:
            kinds = {a: ("A" if v == 4 else "AAAA") for v, a in addrs}
            shown = ", ".join(f"{kinds[a]} {a}" for a in foreign[:4])
            raise DomainError(f"{name} does not point at the edge: {cname}{shown} "
                              f"{'is not an edge address' if len(foreign) == 1 else 'are not edge addresses'}; "
                              f"{advice}")

    @staticmethod
    def _chain(name: str, r: dnsmsg.Response) -> list[str]:
        """The CNAME targets from `name` on, in order, as the resolver gave them (bounded by the answer)."""
        out: list[str] = []
        owner = name
        for _ in range(len(r.answers)):
            targets = r.values(dnsmsg.CNAME, owner)
            if not targets or targets[0] in out:
                break
            out.append(targets[0])
            owner = targets[0]
        return out


_checker: DomainChecker | None = None


def configure(checker: DomainChecker | None) -> None:
    """Install the edge's checker (edge/cli.py at start) for `check_domain`."""
    global _checker
    _checker = checker


def current() -> DomainChecker | None:
    return _checker


async def check_domain(name: str) -> None:
    """The interface: return when `name` points at the edge, else raise DomainError with the reason."""
    if _checker is None:
        raise DomainError("custom domains are off on this edge ([edge] custom_domains)")
    await _checker.check_domain(name)
