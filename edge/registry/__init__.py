"""The edge's endpoint registry: which PoP and session serve each endpoint,
and which TCP ports are taken, shared by every PoP.

    registry = EtcdRegistry(EtcdConfig(endpoints=("http://10.77.0.21:2379", ...)))
    # or MemoryRegistry() on a single node
    await registry.start()
    lease = await registry.open_session("eu", session_id, ttl=10)
    b = await registry.bind("http", "demo.app.lab.test", "eu", session_id, lease, {"proto": "http"})
    registry.lookup("http", "demo.app.lab.test")   # local, never waits
    port = await registry.allocate_port(session_id, lease, 20000, 20099)
    await registry.bind("tcp", str(port), "eu", session_id, lease)
    await lease.close()                               # everything above is gone

See docs/registry.md. Must not import dns/ or netns/.
"""
from edge.registry.base import Lease, Registry
from edge.registry.errors import (
    EtcdRequestError,
    GatewayProtocolError,
    InvalidKey,
    LeaseLost,
    NameTaken,
    PortNotHeld,
    PortsExhausted,
    RegistryError,
    RegistryUnavailable,
)
from edge.registry.etcd import EtcdConfig, EtcdRegistry
from edge.registry.memory import MemoryRegistry
from edge.registry.model import Binding, BindingEvent

__all__ = [
    "Binding", "BindingEvent", "EtcdConfig", "EtcdRegistry", "EtcdRequestError", "GatewayProtocolError",
    "InvalidKey", "Lease", "LeaseLost", "MemoryRegistry", "NameTaken", "PortNotHeld", "PortsExhausted",
    "Registry", "RegistryError", "RegistryUnavailable",
]
