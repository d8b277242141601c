"""The edge's module chain: one module a folder, one interface (see `base`).

Owns: deciding, per client connection (TLS/TCP) or per HTTP request, whether
it is allowed, answered by the edge (e.g. 403, a redirect, a 429), or passed
on to the next module, and what each module learns from outcomes; the order
comes from configuration. Also owns the bind options modules read: the hub
validates an agent's options with `check_bind_option`, `gslb agent` builds
its flags and config keys from `BIND_OPTIONS`. Must not touch sockets or
streams: a module sees a `Subject` and returns a `Decision`.

To add a module: a folder here with a class implementing `base.Module`, a
`from_config(options)` constructor, a README.md (syntax, options, examples,
what it logs), tests, and one line in `REGISTRY`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from edge.modules.base import (
    BindOption,
    Chain,
    Decision,
    EffectResult,
    HttpCall,
    Module,
    ModuleConfigError,
    Outcome,
    Response,
    Subject,
    Verdict,
)
from edge.modules.basic_auth import BasicAuth
from edge.modules.circuit_breaker import CircuitBreaker
from edge.modules.ip_restriction import IpRestriction
from edge.modules.oidc import Oidc
from edge.modules.rate_limit import RateLimit
from edge.modules.saml import Saml

__all__ = [
    "BIND_OPTIONS", "DEFAULT_ORDER", "OPTION_OWNER", "BindOption", "Chain", "Decision", "EffectResult", "HttpCall", "Module",
    "ModuleConfigError", "Outcome", "REGISTRY", "Response", "Subject", "Verdict", "build_chain", "check_bind_option",
]

_MODULES: tuple[type[Module], ...] = (IpRestriction, BasicAuth, Oidc, Saml, RateLimit, CircuitBreaker)

# The chain when [edge.modules] order is absent: each passes at the cost of one
# lookup on endpoints whose binding does not ask for it.
# Identity (basic_auth, oidc, saml) before rate_limit and circuit_breaker: a visitor who is not
# signed in costs the upstream nothing.
DEFAULT_ORDER: tuple[str, ...] = ("ip_restriction", "basic_auth", "oidc", "saml", "rate_limit", "circuit_breaker")

REGISTRY: dict[str, Callable[[Mapping[str, Any]], Module]] = {m.name: m.from_config for m in _MODULES}  # type: ignore[attr-defined]

# Every module's bind options, by name; a name belongs to one module (OPTION_OWNER).
BIND_OPTIONS: dict[str, BindOption] = {}
OPTION_OWNER: dict[str, str] = {}
for _m in _MODULES:
    for _key, _opt in _m.bind_options.items():
        if _key in BIND_OPTIONS:
            raise RuntimeError(f"bind option {_key!r} is claimed by two modules")
        BIND_OPTIONS[_key] = _opt
        OPTION_OWNER[_key] = _m.name


def check_bind_option(kind: str, key: str, value: Any) -> Any:
    """The normalized value of module bind option `key` for a `kind`
    endpoint. Raises KeyError when no module owns `key` for that kind, and
    ValueError (the agent's error text) for a bad value."""
    opt = BIND_OPTIONS.get(key)
    if opt is None or kind not in opt.kinds:
        raise KeyError(key)
    return opt.check(value)


def build_chain(order: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> Chain:
    """A chain of the modules named in `order`, each built from `options[name]`."""
    modules = []
    for name in order:
        factory = REGISTRY.get(name)
        if factory is None:
            raise ModuleConfigError(f"{name}: unknown module (known: {', '.join(sorted(REGISTRY))})")
        modules.append(factory(options.get(name, {})))
    return Chain(tuple(modules))
