"""The edge's module chain: one module a file, one interface (see `base`).

Owns: deciding, per client connection (TLS/TCP) or per HTTP request, whether
it is allowed, answered by the edge (e.g. 403), or passed on to the next
module; the order comes from configuration. Must not touch sockets or
streams: a module sees a `Subject` and returns a `Decision`.

To add a module: a file here with a class implementing `base.Module` and a
`from_config(options)` constructor, and one line in `REGISTRY`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from edge.modules.base import Chain, Decision, Module, ModuleConfigError, Subject, Verdict
from edge.modules.ip_restriction import IpRestriction

__all__ = ["Chain", "Decision", "Module", "ModuleConfigError", "Subject", "Verdict", "REGISTRY", "build_chain"]

REGISTRY: dict[str, Callable[[Mapping[str, Any]], Module]] = {
    IpRestriction.name: IpRestriction.from_config,
}


def build_chain(order: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> Chain:
    """A chain of the modules named in `order`, each built from `options[name]`."""
    modules = []
    for name in order:
        factory = REGISTRY.get(name)
        if factory is None:
            raise ModuleConfigError(f"{name}: unknown module (known: {', '.join(sorted(REGISTRY))})")
        modules.append(factory(options.get(name, {})))
    return Chain(tuple(modules))
