"""IP restriction: allow and deny CIDR lists on the client address.

Options (edge-wide in `[edge.modules.ip_restriction]`, per endpoint in the
agent's bind options, both apply): `allow_cidrs`, `deny_cidrs`, lists of
IPv4/IPv6 networks. A client matching any deny list is refused; when any
allow list is non-empty, a client outside all of them is refused. Otherwise
the module passes. IPv4-mapped IPv6 clients are matched as IPv4. Refusal:
HTTP 403 (ERR_GSLB_3210), TLS/TCP close. Stateless: no clock, no observe.
The bind options are this module's own (`bind_options`); see README.md.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from edge import errors as E
from edge.modules.base import PASS, BindOption, Decision, Module, ModuleConfigError, Subject, Verdict

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_CIDRS = 1024  # per list in the edge's configuration
MAX_BIND_CIDRS = 256  # per list in an agent's bind options (docs/protocol.md 3.2)
KINDS = ("http", "tls", "tcp")


def _bind_cidrs(key: str) -> Any:
    """The check of one bind option: a list of CIDRs, host bits allowed
    (10.1.2.3/8 is kept as 10.0.0.0/8)."""

    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or len(value) > MAX_BIND_CIDRS:
            raise ValueError(f"option {key!r} must be a list of at most {MAX_BIND_CIDRS} CIDRs")
        try:
            return [str(ipaddress.ip_network(v, strict=False)) for v in value]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"option {key!r}: {exc}") from None

    return check


def parse_cidrs(value: Any, what: str) -> tuple[Network, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ModuleConfigError(f"{what}: expected a list of CIDR strings")
    if len(value) > MAX_CIDRS:
        raise ModuleConfigError(f"{what}: {len(value)} entries, at most {MAX_CIDRS}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ModuleConfigError(f"{what}: {item!r} is not a string")
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise ModuleConfigError(f"{what}: {item!r}: {exc}") from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net[0].ipv4_mapped is not None:
            # ::ffff:a.b.c.d/104 means an IPv4 network; clients are matched as IPv4.
            net = ipaddress.ip_network(f"{net[0].ipv4_mapped}/{net.prefixlen - 96}")
        out.append(net)
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _cached(allow: tuple[str, ...], deny: tuple[str, ...]) -> tuple[tuple[Network, ...], tuple[Network, ...]]:
    return parse_cidrs(list(allow), "allow_cidrs"), parse_cidrs(list(deny), "deny_cidrs")


def endpoint_lists(options: Mapping[str, Any]) -> tuple[tuple[Network, ...], tuple[Network, ...]]:
    """The parsed lists from a binding's options (cached by value; validated at bind time by callers)."""
    allow = options.get("allow_cidrs") or ()
    deny = options.get("deny_cidrs") or ()
    if not allow and not deny:
        return (), ()
    if isinstance(allow, str) or isinstance(deny, str):
        raise ModuleConfigError("allow_cidrs/deny_cidrs: expected lists")
    return _cached(tuple(allow), tuple(deny))


def _matches(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[Network, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


@dataclass(frozen=True)
class IpRestriction(Module):
    name: ClassVar[str] = "ip_restriction"
    bind_options: ClassVar[Mapping[str, BindOption]] = {
        "allow_cidrs": BindOption(KINDS, _bind_cidrs("allow_cidrs"), "only these client networks (repeatable)",
                                  flag="--allow-cidr", metavar="CIDR"),
        "deny_cidrs": BindOption(KINDS, _bind_cidrs("deny_cidrs"), "refuse these client networks (repeatable)",
                                 flag="--deny-cidr", metavar="CIDR"),
    }
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "IpRestriction":
        unknown = set(options) - {"allow_cidrs", "deny_cidrs"}
        if unknown:
            raise ModuleConfigError(f"ip_restriction: unknown option(s) {', '.join(sorted(unknown))}")
        return cls(
            allow=parse_cidrs(options.get("allow_cidrs"), "ip_restriction.allow_cidrs"),
            deny=parse_cidrs(options.get("deny_cidrs"), "ip_restriction.deny_cidrs"),
        )

    def decide(self, subject: Subject) -> Decision:
        ip = subject.client_ip
        try:
            ep_allow, ep_deny = endpoint_lists(subject.options)
        except ModuleConfigError as exc:
            # Bad per-endpoint lists fail closed: the owner asked for a restriction.
            return self._deny(f"endpoint options invalid: {exc}")
        if _matches(ip, self.deny) or _matches(ip, ep_deny):
            return self._deny("client address is in a deny list")
        for allow in (self.allow, ep_allow):
            if allow and not _matches(ip, allow):
                return self._deny("client address is not in the allow list")
        return PASS

    def idle(self, options: Mapping[str, Any]) -> bool:
        # No list here or on the endpoint: decide() passes everyone.
        return not (self.allow or self.deny or options.get("allow_cidrs") or options.get("deny_cidrs"))

    def _deny(self, reason: str) -> Decision:
        return Decision(Verdict.ANSWER, status=E.DENIED.status, reason=reason, code=E.DENIED.code, module=self.name)
