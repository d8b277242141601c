"""Typed errors of the endpoint registry.

Every error a caller can act on has its own type and carries what the caller
needs to answer an agent (who holds a name, which range ran out), so the hub
never parses messages.
"""
from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the registry raises."""


class InvalidKey(RegistryError, ValueError):
    """A kind, name, port or prefix that the registry refuses (bad input,
    nothing was written)."""


class NameTaken(RegistryError):
    """Another session holds the binding: (kind, name) is bound at `pop` by
    `session`. Answer the agent with "name_in_use"."""

    def __init__(self, kind: str, name: str, pop: str, session: str) -> None:
        super().__init__(f"{kind} endpoint {name!r} is bound by pop={pop} session={session}")
        self.kind = kind
        self.name = name
        self.pop = pop
        self.session = session


class PortsExhausted(RegistryError):
    """Every port of [lo, hi] is allocated (to someone else)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(f"no free TCP port in {lo}-{hi}")
        self.lo = lo
        self.hi = hi


class PortNotHeld(RegistryError):
    """A TCP binding or a release names a port that this session's lease does
    not hold (allocate it first), or a release while the port is still bound."""

    def __init__(self, port: int, reason: str) -> None:
        super().__init__(f"port {port}: {reason}")
        self.port = port


class LeaseLost(RegistryError):
    """The session's lease is gone (revoked, or expired because keepalives did
    not reach etcd for a whole TTL). Its bindings are gone with it: the session
    must open a new lease and bind again."""


class RegistryUnavailable(RegistryError):
    """etcd could not be reached, or has no quorum, within the timeout.

    `outcome_unknown` is True when a write was sent but no answer came back:
    etcd may still commit it later (docs/registry.md: a put that "failed" with a
    timeout was there once the members came back). Re-read before retrying;
    the registry's own writes do that (create-if-absent, then compare owner),
    so calling `bind`/`allocate_port` again is safe.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class EtcdRequestError(RegistryError):
    """etcd refused a request with a 4xx answer (a bug on our side, or a
    request etcd considers invalid). Not retried on another member: the
    answer would be the same. `code` is the gRPC status code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"etcd answered HTTP {status} (grpc code {code}): {message}")
        self.status = status
        self.code = code
        self.etcd_message = message


class GatewayProtocolError(RegistryError):
    """An answer from etcd's JSON gateway that does not parse as the etcd 3.4
    API says it should (a proxy in the way, or a different server)."""
