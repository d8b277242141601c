"""The client-facing side of an edge node.

Owns: parsing what clients send before a route is chosen (the TLS
ClientHello, HTTP/1.1 request heads), writing PROXY protocol v2 headers, and
the asyncio protocols that relay client connections to tunnel streams. Must
not touch: the tunnel's framing (`edge.tunnel`) or the registry of agent
sessions (`edge.hub`); it only calls `hub.lookup(...)` and
`await endpoint.open_stream(...)` (`edge.endpoint.Endpoint`).
"""
