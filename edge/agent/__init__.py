"""The agent (`gslb agent`): connects to an edge over TLS, authenticates,
binds endpoints and carries each proxy stream to a local service.
`config.py` is its configuration, `relay.py` the byte relay, `client.py` the
session lifecycle (connect, bind, heartbeat, reconnect)."""
