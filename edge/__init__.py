"""edge: the edge network a GSLB answer steers clients to (`gslb edge`, `gslb agent`).

    server.py     an edge node (one PoP): listeners, SNI dispatch, health endpoint
    hub.py        agents' tunnel sessions, their authtokens and bound endpoints
    endpoint.py   what the front routes a client connection to (`open_stream`)
    front/        what clients send first (ClientHello, HTTP/1.1 heads), the relays
    tunnel/       yamux and the control protocol (docs/protocol.md), sans-IO + asyncio
    agent/        the agent: session lifecycle, relay to the local service
    peer/         links between PoPs for endpoints bound elsewhere
    registry/     which PoP and session serve each endpoint (memory or etcd)
    modules/      the per-connection / per-request module chain (IP allow/deny)
    config.py     edge.toml;  certs.py  the lab CA and per-name certificates
    cli.py, agent_cli.py   `gslb edge`, `gslb agent`;  memtrim.py  heap back to the OS

Must not touch: DNS (`dns/`) or geo lookups (`geo/`); the edge only serves
the names the DNS hands out.
"""
