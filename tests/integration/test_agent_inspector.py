"""The inspector in the real data path: curl -> `gslb edge` -> tunnel ->
`gslb agent` (inspector on) -> upstream, read through its ngrok-shaped API."""
from __future__ import annotations

import base64
import json
import subprocess
import urllib.error

import pytest

from _helpers import CURL, GSLB, Proc, websocket
from _inspector_net import NAME, Net, poll
from _tools import need_tools

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net(tmp_path_factory.mktemp("inspect"))
    yield n
    n.stop()


def entries(net, **q):
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    return net.api(f"/api/requests/http?{qs}")[2]["requests"]


@need_tools("curl")
def test_requests_through_the_edge_are_captured_with_client_and_bodies(net):
    net.api("/api/requests/http", "DELETE")
    r = net.curl("/hello?x=1", "-H", "X-Probe: 1")
    assert r.returncode == 0, r.stderr
    r = net.curl("/post", "-H", "Content-Type: application/json", "--data-binary", '{"k": [1, 2]}')
    assert json.loads(r.stdout)["body"] == '{"k": [1, 2]}'
    got = poll("two entries, both answered",
               lambda: (lambda e: e if len(e) == 2 and all(x["response"] for x in e) else None)(entries(net, limit=10)))
    post, get = got  # newest first
    assert get["request"]["method"] == "GET" and get["request"]["uri"] == "/hello?x=1"
    assert get["request"]["headers"]["X-Probe"] == ["1"] and get["request"]["headers"]["X-Forwarded-For"] == ["127.0.0.1"]
    assert get["remote_addr"] == "127.0.0.1" and get["tunnel_name"] == "demo" and get["duration"] > 0
    assert get["response"]["status_code"] == 200
    raw = base64.b64decode(post["request"]["raw"])
    assert raw.startswith(b"POST /post HTTP/1.1\r\n") and raw.endswith(b'\r\n\r\n{"k": [1, 2]}')
    detail = net.api(f"/api/requests/http/{post['id']}?views=1")[2]
    assert detail["request"]["body"]["kind"] == "json" and detail["request"]["body"]["text"].startswith("{\n  \"k\"")
    assert detail["response"]["body"]["kind"] == "json"
    # the bytes were relayed unchanged: the upstream answered what curl sent
    assert net.up.seen[-1][3] == b'{"k": [1, 2]}'


@need_tools("curl")
def test_replay_goes_to_the_upstream_and_is_a_new_entry(net):
    net.curl("/to-replay", "-X", "PUT", "--data-binary", "payload")
    orig = poll("the PUT captured", lambda: [e for e in entries(net, limit=50)
                                            if e["request"]["uri"] == "/to-replay" and e["response"]])[0]
    before = len(net.up.seen)
    status, headers, _ = net.api("/api/requests/http", "POST", {"id": orig["id"], "tunnel_name": "demo"})
    assert status == 204
    new_id = headers["Location"].rsplit("/", 1)[1]
    poll("the upstream got the replay", lambda: len(net.up.seen) > before)
    method, path, _, body = net.up.seen[-1]
    assert (method, path, body) == ("PUT", "/to-replay", b"payload")
    new = poll("the replay answered", lambda: (lambda d: d if d["response"] else None)(
        net.api(f"/api/requests/http/{new_id}")[2]))
    assert new["replay_of"] == orig["id"] and new["response"]["status_code"] == 200


@need_tools("curl")
def test_tunnels_lists_http_inspected_and_tcp_not(net):
    tunnels = net.api("/api/tunnels")[2]["tunnels"]
    by = {t["proto"]: t for t in tunnels}
    assert by["https"]["public_url"].startswith("https://demo.app.lab.test") and by["https"]["config"]["inspect"] is True
    assert by["tcp"]["config"]["inspect"] is False


def test_websocket_is_listed_with_its_frame_counts(net):
    with websocket(net.ca.cert_path, net.https_port, name=NAME) as ws:
        for i in range(3):
            ws.send(f"m{i}")
            assert ws.recv(timeout=10) == f"echo:m{i}"
        e = poll("ws entry with 3 frames each way", lambda: [
            x for x in entries(net, limit=50)
            if x["websocket"] and x["websocket"]["frames_out"] >= 3 and x["websocket"]["frames_in"] >= 3])[0]
    assert e["response"]["status_code"] == 101 and e["request"]["uri"] == "/ws"


def test_host_header_of_another_name_is_refused(net):
    with pytest.raises(urllib.error.HTTPError) as exc:
        net.api("/api/tunnels", headers={"Host": "rebind.example:4040"})
    assert exc.value.code == 403


@need_tools("curl")
def test_chunked_upload_is_captured_whole(net):
    r = subprocess.run(f"printf 'part one, part two' | {CURL} -sS --max-time 30 --cacert {net.ca.cert_path} "
                       f"--resolve {NAME}:{net.https_port}:127.0.0.1 -T - -X POST https://{NAME}:{net.https_port}/chunky",
                       shell=True, capture_output=True, timeout=60)
    assert json.loads(r.stdout)["body"] == "part one, part two", r.stderr
    e = poll("the chunked upload", lambda: [x for x in entries(net, limit=50) if x["request"]["uri"] == "/chunky"
                                            and x["response"]])[0]
    d = net.api(f"/api/requests/http/{e['id']}?views=1")[2]
    assert d["request"]["headers"]["Transfer-Encoding"] == ["chunked"]
    assert d["request"]["body"]["text"] == "part one, part two" and d["request"]["truncated"] is False


@need_tools("curl", "ss")
def test_inspect_false_listens_nowhere_and_still_relays(net):
    # a second agent with the inspector off: it prints no inspector line and serves the same
    a = Proc([*GSLB, "agent", "http", str(net.up.port), "--name", "quiet", "--inspect", "false", *net.common], "quiet")
    try:
        a.wait_line(r"forwarding https://quiet")
        assert not any("inspector" in line for line in a.log)
        r = subprocess.run([CURL, "-sS", "--max-time", "30", "--cacert", str(net.ca.cert_path), "--resolve",
                            f"quiet.app.lab.test:{net.https_port}:127.0.0.1",
                            f"https://quiet.app.lab.test:{net.https_port}/q"], capture_output=True, timeout=60)
        assert json.loads(r.stdout)["path"] == "/q"
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        assert f"pid={a.pid}," not in listening
    finally:
        a.stop()


@need_tools("curl")
def test_large_bodies_are_kept_up_to_the_cap_and_the_store_stays_bounded(net):
    from edge.agent.inspect.store import DEFAULT_BODY_CAP, DEFAULT_MAX_BYTES

    n = 3 * DEFAULT_BODY_CAP
    body = net.tmp / "big.bin"
    body.write_bytes(b"\x00\x01" * (n // 2))
    for i in range(3):
        r = net.curl(f"/big/{i}", "--data-binary", f"@{body}", "-H", "Content-Type: application/octet-stream",
                     "-o", "/dev/null", "-w", "%{http_code}")
        assert r.stdout == b"200", r.stderr
    got = poll("three big uploads answered", lambda: [
        e for e in entries(net, limit=50, summary=1) if e["path"].startswith("/big/") and e["status_code"]])
    assert len(got) == 3
    d = net.api(f"/api/requests/http/{got[0]['id']}?views=1")[2]
    assert d["request"]["body"]["size"] == n and d["request"]["body"]["captured"] == DEFAULT_BODY_CAP
    assert d["request"]["truncated"] is True and d["request"]["body"]["kind"] == "binary"
    assert net.up.seen[-1][3] == body.read_bytes()  # the upstream got every byte
    stats = net.api("/api/")[2]["store"]
    assert 3 * DEFAULT_BODY_CAP <= stats["bytes"] <= DEFAULT_MAX_BYTES
