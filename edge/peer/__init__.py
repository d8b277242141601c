"""Links between PoPs: a connection entering PoP X for an endpoint bound at
PoP Y crosses the X -> Y peer link (mutual TLS with the lab CA, yamux) and
then Y's agent session. See docs/protocol.md 7.

    header.py   the peer stream header (sans-IO)
    links.py    the asyncio shell: listener, one session per peer, splice
"""
