"""The one interface every edge module implements (CoreDNS-style chain).

A module is asked about a `Subject` (a new TLS/TCP connection, or an HTTP
request once its head is parsed) and answers with a `Decision`: ALLOW (stop,
let it through), ANSWER (stop, the edge answers: HTTP status, or close for
TLS/TCP), or PASS (no opinion, ask the next module). A chain where every
module passes allows. Modules are pure: no I/O, no clock.
"""
from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class ModuleConfigError(ValueError):
    """A module's options (edge config or bind options) are invalid."""


class Verdict(enum.Enum):
    PASS = "pass"
    ALLOW = "allow"
    ANSWER = "answer"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    status: int = 0          # HTTP status when verdict is ANSWER (TLS/TCP: close)
    reason: str = ""         # short, for the log line and the error page
    code: str = ""           # error code shown on the page, e.g. ERR_GSLB_3210
    module: str = ""


PASS = Decision(Verdict.PASS)
ALLOW = Decision(Verdict.ALLOW)


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    host: str


@dataclass(frozen=True)
class Subject:
    """What a module may look at."""

    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    client_port: int
    kind: str                         # "http" | "tls" | "tcp"
    endpoint: str                     # endpoint name, or str(port) for TCP
    options: Mapping[str, Any] = field(default_factory=dict)  # the binding's options
    request: RequestHead | None = None


class Module(Protocol):
    name: ClassVar[str]

    def decide(self, subject: Subject) -> Decision: ...


@dataclass(frozen=True)
class Chain:
    modules: tuple[Module, ...] = ()

    def decide(self, subject: Subject) -> Decision:
        for m in self.modules:
            d = m.decide(subject)
            if d.verdict is not Verdict.PASS:
                return d
        return ALLOW


def client_ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address as an ip object; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
