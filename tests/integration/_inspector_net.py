"""A real edge, a real agent with its inspector, and a recording upstream on
loopback, for the inspector's integration and browser tests."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from _helpers import GSLB, AiohttpUpstream, Proc, curl_https, free_port, free_range, loopback_edge_toml, secret_file

from edge.certs import CertAuthority

NAME = "demo.app.lab.test"


class Recorder(AiohttpUpstream):
    """The local service: records every request; /status/N answers N, /bin
    answers binary bytes, /ws echoes WebSocket messages, anything else JSON."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        super().__init__()

    def app(self):
        from aiohttp import web

        async def ws(request):
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == web.WSMsgType.TEXT:
                    await sock.send_str("echo:" + msg.data)
            return sock

        async def any_path(request):
            body = await request.read()
            self.seen.append((request.method, request.path_qs, dict(request.headers), body))
            if request.path.startswith("/status/"):
                return web.Response(status=int(request.path.rsplit("/", 1)[1]), text="as asked")
            if request.path == "/bin":
                return web.Response(body=bytes(range(256)), content_type="application/octet-stream")
            return web.json_response({"path": request.path_qs, "n": len(self.seen), "body": body.decode(errors="replace")})

        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/ws", ws)
        app.router.add_route("*", "/{tail:.*}", any_path)
        return app

    def paths(self) -> list[str]:
        return [p for _, p, _, _ in self.seen]


class Net:
    def __init__(self, tmp: Path, agent_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.ca = CertAuthority.create(tmp / "ca")
        token = secret_file(tmp / "authtokens", "inspect-token-1\n")
        self.https_port, http_port, health_port = free_port(), free_port(), free_port()
        lo, hi = free_range(2)
        cfg = loopback_edge_toml(tmp, token, self.https_port, (lo, hi),
                                 pop_extra=f'http_port = {http_port}\nhealth_listen = "127.0.0.1:{health_port}"')
        self.up = Recorder()
        self.edge = Proc([*GSLB, "edge", "--config", str(cfg), "--pop", "t", "--workers", "1"], "edge")
        self.edge.wait_line(r"gslb edge: pop=t")
        self.common = ["--server", f"127.0.0.1:{self.https_port}", "--zone", "lab.test", "--ca", str(self.ca.cert_path),
                       "--authtoken-file", str(token)]
        self.token = token
        agent_toml = tmp / "agent.toml"
        agent_toml.write_text(f"""
inspect = "127.0.0.1:0"
[[endpoints]]
kind = "http"
name = "demo"
port = {self.up.port}
[[endpoints]]
kind = "tcp"
port = {self.up.port}
""")
        self.agent = Proc([*GSLB, "agent", "start", "--config", str(agent_toml), *self.common, *agent_args], "agent")
        self.inspector = self.agent.wait_line(r"^gslb agent: inspector (http://\S+)").group(1)
        self.agent.wait_line(r"forwarding https://demo\.app\.lab\.test")
        self.agent.wait_line(r"forwarding tcp://")

    def stop(self) -> None:
        self.agent.stop()
        self.edge.stop()

    def curl(self, path: str, *extra: str):
        return curl_https(self.ca.cert_path, self.https_port, NAME, path, *extra, max_time=30, timeout=60)

    def api(self, path: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.inspector + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, dict(r.headers), (json.loads(raw) if raw else None)


def poll(what: str, fn: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    """fn() until it is truthy, bounded; AssertionError naming `what` otherwise."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
