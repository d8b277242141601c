"""The agent's traffic inspector (like ngrok's on 127.0.0.1:4040): a capture
fed the bytes the agent relays on HTTP endpoints (capture.py, sans-IO), a
bounded store (store.py), the views of an entry (render.py) and the web UI +
ngrok-shaped JSON API (server.py, static/). docs/inspector.md describes it.
"""
