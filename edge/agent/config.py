"""Agent configuration: frozen dataclasses, loaded from TOML (tomllib) or
built from command-line flags. Errors read "file:line: key: what is wrong"
(the shared TOML layer, `plumbing.toml`); a bad value from a flag or the
environment reads "key: what is wrong".

Owns: the schema of agent.toml (docs/protocol.md does not cover it; this
docstring does). Must not touch: the network.

`gslb agent http|tls|tcp` read the same file for defaults (everything but
[[endpoints]]) from $GSLB_AGENT_CONFIG or, if it exists, DEFAULTS_PATH, so
a host can be set up once (the lab does) and a bare
`gslb agent http 8080 --name demo` connects. Flags win over the
environment, which wins over the file.

    server = "edge.example:443"     # optional; default connect.<zone>:443
    zone = "lab.test"               # or env GSLB_ZONE
    ca = "/path/lab-ca.pem"         # verify the edge certificate with this CA
    authtoken_file = "/path/token"  # or authtoken = "...", env GSLB_AUTHTOKEN(_FILE)
    heartbeat_interval = 10         # seconds
    heartbeat_timeout = 15          # seconds without any frame -> reconnect

    [[endpoints]]
    kind = "http"                   # http | tls | tcp
    name = "demo"                   # http/tls: demo.<endpoint domain>
    port = 8080                     # local service on 127.0.0.1
    # terminate_at = "agent"        # tls only: edge | agent (passthrough)
    # proxy_protocol = false        # tls/tcp: edge sends PROXY v2 first
    # allow_cidrs = ["198.19.0.0/16"]; deny_cidrs = []   # any module's bind option
                                    # (edge/modules/*/README.md), e.g. ip_restriction's
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.modules import BIND_OPTIONS, check_bind_option
from edge.tunnel.messages import KINDS, TERMINATE_AT
from plumbing.toml import ConfigError, TomlDoc
from plumbing import addr as plumbing_addr

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_ENDPOINTS = 64
DEFAULTS_PATH = Path("/etc/gslb/agent.toml")


def bad_value(key: str, problem: str) -> ConfigError:
    """A bad value that came from a flag or the environment: no file, no line.
    Read from a file, the loader re-raises it with the file, line and key."""
    return ConfigError("", None, key, problem)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    kind: str
    port: int
    name: str = ""
    host: str = "127.0.0.1"  # the local service's address
    terminate_at: str | None = None
    proxy_protocol: bool = False
    # bind options owned by edge modules (edge/modules/: BIND_OPTIONS), e.g.
    # (("allow_cidrs", ("198.19.0.0/16",)),); lists are kept as tuples
    module_options: tuple[tuple[str, Any], ...] = ()

    def bind_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.kind == "tls":
            opts["terminate_at"] = self.terminate_at or "agent"
        if self.proxy_protocol:
            opts["proxy_protocol"] = True
        for key, value in self.module_options:
            opts[key] = list(value) if isinstance(value, tuple) else value
        return opts

    def local_url(self) -> str:
        host = "localhost" if self.host == "127.0.0.1" else self.host
        return f"http://{host}:{self.port}" if self.kind == "http" else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    endpoints: tuple[EndpointConfig, ...]
    authtoken: str = field(repr=False)  # secret: never in reprs or logs
    server: str | None = None  # HOST[:PORT]; None: connect.<zone>:443
    zone: str | None = None
    ca: Path | None = None
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 15.0
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    metrics: tuple[str, int] | None = None  # /metrics listener (docs/metrics.md); None: off

    def server_address(self) -> tuple[str, int]:
        if self.server:
            return split_host_port(self.server)
        if not self.zone:
            raise bad_value("server", "neither --server nor a zone (--zone, GSLB_ZONE, zone =) is set")
        return f"connect.{self.zone}", 443

    def server_name(self) -> str:
        """The TLS server name: connect.<zone> when a zone is known."""
        if self.zone:
            return f"connect.{self.zone}"
        return self.server_address()[0]


def parse_metrics(value: str | None) -> tuple[str, int] | None:
    """`metrics = "127.0.0.1:9101"` / --metrics: where /metrics is served (an IP address, a port)."""
    if value is None:
        return None
    import ipaddress
    try:
        host, port = split_host_port(value, 0)
        ipaddress.ip_address(host)
    except (ConfigError, ValueError):
        raise bad_value("metrics", f"{value!r}: expected IP:PORT, e.g. 127.0.0.1:9101") from None
    if not 0 < port < 65536:
        raise bad_value("metrics", f"{value!r}: expected IP:PORT, e.g. 127.0.0.1:9101")
    return host, port


def split_host_port(value: str, default_port: int = 443) -> tuple[str, int]:
    """'HOST', 'HOST:PORT', '[V6]:PORT' or a bare IPv6 literal -> (host, port); ConfigError if bad."""
    try:
        host, port = plumbing_addr.split_host_port(value, default_port)
    except ValueError as exc:
        raise bad_value("server", str(exc)) from None
    if not host:
        raise bad_value("server", f"{value!r} has no host")
    if port == 0:
        raise bad_value("server", f"{value!r}: invalid port 0, expected 1-65535")
    return host, port


def validate_endpoint(ep: EndpointConfig) -> EndpointConfig:
    """Raise ConfigError (key, problem; no file) for a bad endpoint."""
    if ep.kind not in KINDS:
        raise bad_value("kind", f"{ep.kind!r} is not one of {', '.join(KINDS)}")
    if not 1 <= ep.port <= 65535:
        raise bad_value("port", f"{ep.port} is not a TCP port (1-65535)")
    if ep.kind in ("http", "tls"):
        if not _LABEL.match(ep.name):
            raise bad_value("name", f"{ep.name!r} is not a DNS label (a-z, 0-9, '-', 1-63 characters)")
    elif ep.name:
        raise bad_value("name", "tcp endpoints have no name (the edge allocates a port)")
    if ep.terminate_at is not None and (ep.kind != "tls" or ep.terminate_at not in TERMINATE_AT):
        raise bad_value("terminate_at", "only for tls endpoints, 'edge' or 'agent'")
    if ep.proxy_protocol and ep.kind == "http":
        raise bad_value("proxy_protocol", "http endpoints get the client address in X-Forwarded-For")
    for key, value in ep.module_options:
        try:
            check_bind_option(ep.kind, key, list(value) if isinstance(value, tuple) else value)
        except KeyError:
            raise bad_value(key, f"not a bind option of {ep.kind} endpoints") from None
        except ValueError as exc:
            raise bad_value(key, str(exc)) from None
    return ep


def module_options(raw: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The module bind options among an endpoint's keys, lists as tuples, in
    the agent's form (BindOption.agent_form: e.g. a secret file read)."""
    out = []
    for k, v in raw.items():
        opt = BIND_OPTIONS.get(k)
        if opt is None:
            continue
        if opt.agent_form is not None:
            try:
                v = opt.agent_form(v)
            except ValueError as exc:
                raise bad_value(k, str(exc)) from None
        out.append((k, tuple(v) if isinstance(v, list) else v))
    return tuple(out)


def read_authtoken(
    explicit: str | None,
    token_file: str | None,
    env: dict[str, str] | None = None,
    *,
    file_token: str | None = None,
    file_token_file: str | None = None,
) -> str:
    """The first source that is set wins: --authtoken, --authtoken-file,
    GSLB_AUTHTOKEN, GSLB_AUTHTOKEN_FILE, then the config file's `authtoken`
    and `authtoken_file` (flags > environment > file, as everywhere else).
    The token itself never appears in an error."""
    env = os.environ if env is None else env
    sources = (
        ("token", explicit),
        ("file", token_file),
        ("token", env.get("GSLB_AUTHTOKEN")),
        ("file", env.get("GSLB_AUTHTOKEN_FILE")),
        ("token", file_token),
        ("file", file_token_file),
    )
    for kind, value in sources:
        if value and value.strip():
            return value.strip() if kind == "token" else _read_token_file(value)
    raise bad_value("authtoken", "none given (--authtoken, --authtoken-file, GSLB_AUTHTOKEN, GSLB_AUTHTOKEN_FILE)")


def _read_token_file(path: str) -> str:
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise bad_value("authtoken_file", f"cannot read {path}: {exc.strerror}") from None
    for line in raw.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if len(line) > 512:
                raise bad_value("authtoken_file", f"{path}: token longer than 512 characters")
            return line
    raise bad_value("authtoken_file", f"{path} holds no token")


_TOP_KEYS = {
    "server", "zone", "ca", "authtoken", "authtoken_file", "heartbeat_interval",
    "heartbeat_timeout", "connect_timeout", "endpoints", "metrics",
}
_EP_KEYS = {"kind", "name", "port", "host", "terminate_at", "proxy_protocol"} | set(BIND_OPTIONS)


def load_agent_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    *,
    endpoints: tuple[EndpointConfig, ...] | None = None,
) -> AgentConfig:
    """Load agent.toml; `overrides` (from flags: server, zone, ca, authtoken,
    authtoken_file) win over the file. With `endpoints` given (the one of
    `gslb agent http|tls|tcp`), the file only supplies defaults and its
    [[endpoints]] are neither needed nor used."""
    doc = TomlDoc(path)
    root = doc.root()
    data = root.data
    env = os.environ if env is None else env
    root.reject_unknown(_TOP_KEYS)
    ep_tables = [] if endpoints is not None else root.array("endpoints")
    if endpoints is None and not ep_tables:
        raise root.error("endpoints", "at least one [[endpoints]] table is needed")
    if len(ep_tables) > MAX_ENDPOINTS:
        raise root.error("endpoints", f"at most {MAX_ENDPOINTS} endpoints")
    eps = []
    for et in ep_tables:
        et.reject_unknown(_EP_KEYS)
        raw = et.data
        try:
            ep = EndpointConfig(
                kind=_typed(raw, "kind", str, None),
                port=_typed(raw, "port", int, None),
                name=_typed(raw, "name", str, "").lower(),
                host=_typed(raw, "host", str, "127.0.0.1"),
                terminate_at=_typed(raw, "terminate_at", str, None),
                proxy_protocol=_typed(raw, "proxy_protocol", bool, False),
                module_options=module_options(raw),
            )
            validate_endpoint(ep)
        except ConfigError as exc:
            raise et.error(exc.key, exc.problem) from None
        eps.append(ep)
    ov = overrides or {}
    try:
        token_file = _typed(data, "authtoken_file", str, None)
        authtoken = read_authtoken(
            ov.get("authtoken"),
            ov.get("authtoken_file"),
            env,
            file_token=_typed(data, "authtoken", str, None),
            file_token_file=doc.resolve_path(token_file) if token_file else None,
        )
        hb_i = float(_typed(data, "heartbeat_interval", (int, float), 10.0))
        hb_t = float(_typed(data, "heartbeat_timeout", (int, float), 15.0))
        ct = float(_typed(data, "connect_timeout", (int, float), 10.0))
        check_timers(hb_i, hb_t, ct)
        server = ov.get("server") or _typed(data, "server", str, None)
        if server:
            split_host_port(server)
        file_ca = _typed(data, "ca", str, None)
        metrics = parse_metrics(_typed(data, "metrics", str, None))
        file_zone = _typed(data, "zone", str, None)
    except ConfigError as exc:
        raise root.error(exc.key, exc.problem) from None
    ca = ov.get("ca") or (doc.resolve_path(file_ca) if file_ca else None)
    return AgentConfig(
        endpoints=tuple(eps) if endpoints is None else endpoints,
        authtoken=authtoken,
        server=server,
        zone=ov.get("zone") or file_zone or env.get("GSLB_ZONE") or None,
        ca=Path(ca) if ca else None,
        heartbeat_interval=hb_i,
        heartbeat_timeout=hb_t,
        connect_timeout=ct,
        metrics=metrics,
    )


def check_timers(interval: float, timeout: float, connect_timeout: float = 10.0) -> None:
    if not 0.1 <= interval <= 3600:
        raise bad_value("heartbeat_interval", "must be between 0.1 and 3600 seconds")
    if not interval < timeout <= 3600:
        raise bad_value("heartbeat_timeout", "must be above heartbeat_interval and at most 3600 seconds")
    if not 0.1 <= connect_timeout <= 300:
        raise bad_value("connect_timeout", "must be between 0.1 and 300 seconds")


def _typed(raw: dict[str, Any], key: str, typ: Any, default: Any) -> Any:
    if key not in raw:
        if default is None and key in ("kind", "port"):
            raise bad_value(key, "missing")
        return default
    v = raw[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(v, bool) and bool not in types:
        raise bad_value(key, f"wrong type ({type(v).__name__})")
    if not isinstance(v, types):
        raise bad_value(key, f"wrong type ({type(v).__name__})")
    if typ is list and not all(isinstance(x, str) for x in v):
        raise bad_value(key, "must be a list of strings")
    return v
