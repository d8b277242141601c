"""ACME (RFC 8555) certificates for the edge: one store for the deployment.

    client.py    the order flow around certbot's `acme` library (in threads)
    store.py     certificates, locks, challenges and the account in the registry
                 (<prefix>acme/...), the 0600 disk cache
    crypto.py    AES-GCM sealing of private keys with the deployment key
    solvers.py   HTTP-01 and TLS-ALPN-01 through the registry; the Solver
                 interface DNS-01 (dns01.py) implements too; challenge choice
    schedule.py  when to renew, backoff, who orders (pure)
    manager.py   on-demand orders, the handshake wait, renewal

`build_manager(cfg, registry)` wires them from [edge.acme] (docs/acme.md).
This package must not import dns/ or netns/; the server imports only
`solvers` (light) until ACME is enabled.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping


def read_secrets(cfg: Any) -> tuple[bytes, bytes | None]:
    """(deployment key, account key PEM or None) from [edge.acme]'s files: read at
    start, before the edge drops root (they are 0600, root's), as the CA key is."""
    from pathlib import Path

    from edge.acme.crypto import load_key_file

    a = cfg.acme
    account = Path(a.account_key_file).read_bytes() if a.account_key_file else None
    return load_key_file(a.deployment_key_file), account


def build_manager(cfg: Any, registry: Any, *, secrets: tuple[bytes, bytes | None] | None = None,
                  extra_solvers: Mapping[str, Any] | None = None,
                  check_domain: Callable[[str], Awaitable[None]] | None = None) -> Any:
    """The AcmeManager for edge config `cfg` ([edge.acme] enabled) on `registry`.
    `secrets`: what read_secrets(cfg) returned (read now when None).
    `extra_solvers` (e.g. {"dns-01": Dns01Solver(...)}) join the ones named in
    `challenges`; a name listed there without a solver is an error."""
    from pathlib import Path

    from edge.acme.client import AcmeClient
    from edge.acme.crypto import Sealer
    from edge.acme.manager import AcmeManager, AcmeSettings
    from edge.acme.solvers import Http01Solver, TlsAlpn01Solver
    from edge.acme.store import AcmeStore

    a = cfg.acme
    deployment_key, account_key = secrets if secrets is not None else read_secrets(cfg)
    store = AcmeStore(registry, Sealer(deployment_key), cfg.pop,
                      Path(cfg.cert_dir) / "acme")
    solvers: dict[str, Any] = {}
    if "http-01" in a.challenges:
        solvers["http-01"] = Http01Solver(store)
    if "tls-alpn-01" in a.challenges:
        solvers["tls-alpn-01"] = TlsAlpn01Solver(store)
    solvers.update(extra_solvers or {})
    missing = [c for c in a.challenges if c not in solvers]
    if missing:
        raise ValueError(f"[edge.acme] challenges: no solver for {', '.join(missing)} in this build")
    settings = AcmeSettings(directory_url=a.directory_url, ca_bundle=a.ca_bundle, email=a.email,
                            renew_at=a.renew_at, handshake_wait=a.handshake_wait,
                            max_concurrent_orders=a.max_concurrent_orders, retry_base=a.retry_base,
                            retry_max=a.retry_max, order_timeout=a.order_timeout, net_timeout=a.net_timeout,
                            check_interval=a.check_interval)
    client = None
    if account_key is not None:
        client = AcmeClient(a.directory_url, account_key, email=a.email,
                            ca_bundle=a.ca_bundle, net_timeout=a.net_timeout, order_timeout=a.order_timeout)
    return AcmeManager(settings, store, https_domain=cfg.https_domain, solvers=solvers,
                       check_domain=check_domain, client=client)
