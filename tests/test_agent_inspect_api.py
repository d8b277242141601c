"""The inspector's JSON API (ngrok's shape) and its guards, through aiohttp's
test client, with a real upstream on loopback for replays."""
from __future__ import annotations

import asyncio
import base64

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edge.agent.client import Forwarding
from edge.agent.config import EndpointConfig, read_inspect
from edge.agent.inspect.server import Inspector, parse_inspect
from edge.agent.inspect.store import Store

import pytest
from plumbing.toml import ConfigError


class BoundAgent:
    """What the inspector reads of an agent: its forwardings."""

    def __init__(self, *forwardings: Forwarding) -> None:
        self.forwardings = list(forwardings)


async def upstream() -> tuple[web.AppRunner, int, list]:
    seen: list = []

    async def any_path(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        return web.json_response({"got": request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1], seen


def run(coro):
    return asyncio.run(coro)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def setup(port: int | None = None):
    port = closed_port() if port is None else port
    insp = Inspector(Store())
    insp.agents.append(BoundAgent(
        Forwarding("https://demo.app.lab.test", EndpointConfig("http", port, "demo")),
        Forwarding("tcp://connect.lab.test:20001", EndpointConfig("tcp", 22)),
    ))
    client = TestClient(TestServer(insp.app(), host="127.0.0.1"))
    await client.start_server()
    return insp, client


def capture_one(insp: Inspector, req: bytes, resp: bytes):
    cap = insp.new_capture(EndpointConfig("http", 1, "demo"), "203.0.113.9")
    cap.feed_request(req)
    cap.feed_response(resp)
    return cap.last_entry


REQ = b"POST /hook?a=1 HTTP/1.1\r\nHost: demo.app.lab.test\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
RESP = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi"


def test_tunnels_list_http_inspected_and_tcp_not():
    async def go():
        insp, c = await setup()
        try:
            r = await c.get("/api/tunnels")
            d = await r.json()
            assert r.status == 200 and d["uri"] == "/api/tunnels"
            by = {t["name"]: t for t in d["tunnels"]}
            assert by["demo"]["proto"] == "https" and by["demo"]["config"]["inspect"] is True
            assert by["demo"]["config"]["addr"].startswith("127.0.0.1:")
            assert by["demo"]["public_url"] == "https://demo.app.lab.test" and by["demo"]["uri"] == "/api/tunnels/demo"
            assert by["tcp-22"]["config"]["inspect"] is False
        finally:
            await c.close()
    run(go())


def test_list_and_detail_follow_ngrok_shape_with_raw_base64():
    async def go():
        insp, c = await setup()
        try:
            e = capture_one(insp, REQ, RESP)
            d = await (await c.get("/api/requests/http?limit=10&tunnel_name=demo")).json()
            assert d["uri"] == "/api/requests/http" and [x["id"] for x in d["requests"]] == [e.id]
            x = (await (await c.get(f"/api/requests/http/{e.id}")).json())
            assert x == d["requests"][0]
            assert x["uri"] == f"/api/requests/http/{e.id}" and x["tunnel_name"] == "demo" and x["remote_addr"] == "203.0.113.9"
            assert x["request"]["method"] == "POST" and x["request"]["uri"] == "/hook?a=1" and x["request"]["proto"] == "HTTP/1.1"
            assert x["request"]["headers"]["Content-Type"] == ["application/json"]
            assert base64.b64decode(x["request"]["raw"]) == REQ
            assert x["response"]["status"] == "201 Created" and x["response"]["status_code"] == 201
            assert base64.b64decode(x["response"]["raw"]) == RESP
            assert isinstance(x["duration"], int) and x["start"].endswith("Z")
            assert (await (await c.get("/api/requests/http?tunnel_name=other")).json())["requests"] == []
            assert (await (await c.get("/api/requests/http?limit=0")).json())["requests"] == []
            v = await (await c.get(f"/api/requests/http/{e.id}?views=1")).json()
            assert v["request"]["body"]["kind"] == "json" and v["request"]["body"]["text"] == '{\n  "ok": true\n}'
            s = await (await c.get("/api/requests/http?summary=1&status=2xx&path=/hook")).json()
            assert s["requests"][0]["status_code"] == 201 and s["requests"][0]["path"] == "/hook?a=1"
            assert (await c.get("/api/requests/http/nope")).status == 404
            v = d["version"]
            assert (await (await c.get(f"/api/requests/http?unless_version={v}")).json())["unchanged"] is True
            capture_one(insp, REQ, RESP)
            later = await (await c.get(f"/api/requests/http?unless_version={v}&summary=1")).json()
            assert "unchanged" not in later and len(later["requests"]) == 2 and later["version"] > v
        finally:
            await c.close()
    run(go())


def test_delete_clears_with_204():
    async def go():
        insp, c = await setup()
        try:
            capture_one(insp, REQ, RESP)
            r = await c.delete("/api/requests/http")
            assert r.status == 204 and len(insp.store) == 0
        finally:
            await c.close()
    run(go())


def test_replay_reaches_the_upstream_and_is_a_new_entry_marked_replay():
    async def go():
        runner, port, seen = await upstream()
        insp, c = await setup(port)
        try:
            e = capture_one(insp, REQ, RESP)
            r = await c.post("/api/requests/http", json={"id": e.id, "tunnel_name": "demo"})
            assert r.status == 204, await r.text()
            new_id = r.headers["Location"].rsplit("/", 1)[1]
            for _ in range(200):  # bounded: the upstream answers on loopback
                new = insp.store.get(new_id)
                if new.end is not None:
                    break
                await asyncio.sleep(0.02)
            assert seen[0][:2] == ("POST", "/hook?a=1") and seen[0][3] == b'{"ok":true}'
            assert new.replay_of == e.id and new.response.status == 200 and new.remote_addr == "replay"
            # edited: method, path, headers, body
            r = await c.post("/api/requests/http", json={"id": e.id, "method": "PUT", "path": "/edited",
                                                         "headers": [["X-Test", "yes"]], "body": "new body"})
            assert r.status == 204
            for _ in range(200):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.02)
            method, path, headers, body = seen[1]
            assert (method, path, headers["X-Test"], body) == ("PUT", "/edited", "yes", b"new body")
            assert "Content-Type" not in headers
        finally:
            await c.close()
            await runner.cleanup()
    run(go())


def test_replay_refuses_bad_input_with_clear_errors():
    async def go():
        insp, c = await setup()
        try:
            e = capture_one(insp, REQ, RESP)
            cases = [
                ({"id": "missing"}, 404),
                ({"id": e.id, "tunnel_name": "nope"}, 404),
                ({"id": e.id, "path": "/a b"}, 400),
                ({"id": e.id, "path": "/a\r\nX: y"}, 400),
                ({"id": e.id, "method": "GE T"}, 400),
                ({"id": e.id, "headers": [["X", "a\r\nInjected: 1"]]}, 400),
                ({"id": e.id, "headers": [["Bad Name", "v"]]}, 400),
                ({"nothing": 1}, 400),
            ]
            for body, status in cases:
                r = await c.post("/api/requests/http", json=body)
                assert r.status == status, (body, await r.text())
                assert "msg" in await r.json()
            # nothing listens on this test's upstream port: a clear 502
            r = await c.post("/api/requests/http", json={"id": e.id})
            assert r.status == 502 and "unreachable" in (await r.json())["msg"]
            # a form post (no preflight cross-site) is not taken
            r = await c.post("/api/requests/http", data=f'{{"id": "{e.id}"}}', headers={"Content-Type": "text/plain"})
            assert r.status == 415
        finally:
            await c.close()
    run(go())


def test_truncated_body_is_not_replayed_unless_edited():
    async def go():
        insp = Inspector(Store(body_cap=4))
        insp.agents.append(BoundAgent(Forwarding("https://demo.app.lab.test", EndpointConfig("http", 9, "demo"))))
        e = capture_one(insp, REQ, RESP)
        assert e.request.truncated
        from edge.agent.inspect.server import ApiError
        with pytest.raises(ApiError) as exc:
            insp.replay_bytes(e, {})
        assert exc.value.status == 409
        assert insp.replay_bytes(e, {"body": "abc"}).endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
    run(go())


def test_dns_rebinding_host_and_cross_site_origin_are_refused():
    async def go():
        insp, c = await setup()
        try:
            for host in ("127.0.0.1:4040", "localhost:4040", "[::1]:4040", "localhost"):
                assert (await c.get("/api/tunnels", headers={"Host": host})).status == 200, host
            for host in ("evil.example:4040", "evil.example", "127.0.0.1.evil.example", ""):
                r = await c.get("/api/tunnels", headers={"Host": host})
                assert r.status == 403, host
            r = await c.delete("/api/requests/http", headers={"Origin": "http://evil.example"})
            assert r.status == 403
            r = await c.delete("/api/requests/http", headers={"Origin": "http://127.0.0.1:4040"})
            assert r.status == 204
            r = await c.get("/")
            assert r.status == 200 and "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert (await c.get("/static/app.js")).status == 200
            assert (await c.get("/static/../server.py")).status == 404
        finally:
            await c.close()
    run(go())


def test_inspect_option_values():
    assert parse_inspect("127.0.0.1:4040") == ("127.0.0.1", 4040)
    assert parse_inspect("[::1]:4041") == ("::1", 4041)
    assert parse_inspect("4042") == ("127.0.0.1", 4042)
    assert parse_inspect("false") is None and read_inspect(False) is None
    assert read_inspect(True) == ("127.0.0.1", 4040)
    for bad in ("127.0.0.1:99999", "127.0.0.1:abc", ":4040"):
        with pytest.raises(ConfigError) as exc:
            read_inspect(bad)
        assert exc.value.key == "inspect"
    with pytest.raises(ConfigError):
        read_inspect(4040)


def _parse(argv):
    import argparse

    from edge import agent_cli

    p = argparse.ArgumentParser()
    agent_cli.add_parser(p.add_subparsers())
    return p.parse_args(argv)


def test_inspect_key_in_agent_toml_and_flag_override(tmp_path, monkeypatch):
    import edge.agent.config
    from edge import agent_cli
    from edge.agent.config import load_agent_config

    monkeypatch.setattr(edge.agent.config, "DEFAULTS_PATH", tmp_path / "absent.toml")
    base = 'zone = "lab.test"\nauthtoken = "t"\n{extra}\n[[endpoints]]\nkind = "http"\nname = "d"\nport = 80\n'
    p = tmp_path / "agent.toml"
    p.write_text(base.format(extra=""))
    assert load_agent_config(p, env={}).inspect == ("127.0.0.1", 4040)
    p.write_text(base.format(extra="inspect = false"))
    assert load_agent_config(p, env={}).inspect is None
    p.write_text(base.format(extra='inspect = "127.0.0.1:4999"'))
    assert load_agent_config(p, env={}).inspect == ("127.0.0.1", 4999)
    cfg = agent_cli.build_config(_parse(["agent", "start", "--config", str(p), "--inspect", "false"]), env={})
    assert cfg.inspect is None
    cfg = agent_cli.build_config(_parse(["agent", "http", "80", "--name", "d", "--zone", "z.test", "--authtoken", "t",
                                         "--inspect", "[::1]:4050"]), env={})
    assert cfg.inspect == ("::1", 4050)
    p.write_text(base.format(extra='inspect = "nowhere:port"'))
    with pytest.raises(ConfigError) as exc:
        load_agent_config(p, env={})
    assert str(exc.value).startswith(f"{p}:3: inspect:")
    p.write_text(base.format(extra="inspect = 4040"))
    with pytest.raises(ConfigError) as exc:
        load_agent_config(p, env={})
    assert "inspect: wrong type" in str(exc.value)


def test_agent_help_documents_inspect_with_examples(capsys):
    with pytest.raises(SystemExit):
        _parse(["agent", "http", "--help"])
    out = capsys.readouterr().out
    assert "--inspect ADDR:PORT|false" in out and "--inspect false" in out and "/api/requests/http" in out
