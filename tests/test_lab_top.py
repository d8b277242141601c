"""`gslb lab top`'s core: samples (dicts and times) in, rows out; no lab, no clock.

Plus the /healthz fetch against loopback listeners, and the command line's refusals."""
from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from gslb.cli import main
from netns import top
from netns.errors import NotRootError
from netns.top import ALIVE, DEAD, NO_ANSWER, DnsView, EdgeSample, Sample


def health(pid=100, requests=0, connections=0, sessions=0):
    return {"status": "ok", "pid": pid, "requests": requests, "connections": connections, "sessions": sessions}


def edge(host="pop-eu", health_=None, alive=True, pid=100, error=None, city="Frankfurt"):
    return EdgeSample(host=host, pop=host.removeprefix("pop-"), city=city, pid=pid, alive=alive,
                      health=health_, error=error)


def view(states_by_pop, drained=()):
    """A control socket health reply: {pop: [state of each address]}."""
    return {"ok": True, "drained": list(drained),
            "addresses": [{"pop": pop, "address": f"198.18.0.{i}", "state": st}
                          for pop, states in states_by_pop.items() for i, st in enumerate(states)]}


def sample(t, *edges, views=None, wall=1_800_000_000.0, started=None):
    return Sample(t=t, wall=wall + t, edges=tuple(edges), views=views or {}, started=started)


def row(rows, host):
    return next(r for r in rows if r.host == host)


# ---------------------------------------------------------------- rates


def test_rate_is_the_counter_difference_over_the_time_between_samples():
    a = sample(10.0, edge(health_=health(requests=100)))
    b = sample(10.5, edge(health_=health(requests=160)))
    assert row(top.pop_rows(a, b), "pop-eu").rps == pytest.approx(120.0)


def test_first_sample_has_no_rate_but_shows_the_total():
    r = row(top.pop_rows(None, sample(1.0, edge(health_=health(requests=42)))), "pop-eu")
    assert r.rps is None and r.requests == 42 and r.state == ALIVE


def test_a_restarted_edge_has_no_rate_for_one_interval_instead_of_a_negative_one():
    a = sample(1.0, edge(health_=health(pid=100, requests=5000)))
    b = sample(2.0, edge(health_=health(pid=200, requests=3), pid=200))
    c = sample(3.0, edge(health_=health(pid=200, requests=13), pid=200))
    assert row(top.pop_rows(a, b), "pop-eu").rps is None
    assert row(top.pop_rows(b, c), "pop-eu").rps == pytest.approx(10.0)


def test_a_counter_that_goes_back_under_the_same_pid_gives_no_rate():
    a = sample(1.0, edge(health_=health(requests=50)))
    b = sample(2.0, edge(health_=health(requests=40)))
    assert top.request_rate(a.edges[0], b.edges[0], 1.0) is None


def test_an_edge_without_a_request_counter_shows_no_rate_and_no_total():
    old = {"status": "ok", "pid": 100, "connections": 3}
    a, b = sample(1.0, edge(health_=old)), sample(2.0, edge(health_=old))
    r = row(top.pop_rows(a, b), "pop-eu")
    assert r.rps is None and r.requests is None and r.connections == 3


def test_zero_or_negative_time_between_samples_gives_no_rate():
    e1, e2 = edge(health_=health(requests=1)), edge(health_=health(requests=2))
    assert top.request_rate(e1, e2, 0.0) is None
    assert top.request_rate(e1, e2, -1.0) is None


def test_a_pop_missing_from_the_previous_sample_has_no_rate():
    a = sample(1.0, edge("pop-jp", health_=health(requests=1)))
    b = sample(2.0, edge("pop-jp", health_=health(requests=9)), edge("pop-eu", health_=health(requests=9)))
    rows = top.pop_rows(a, b)
    assert row(rows, "pop-jp").rps == pytest.approx(8.0) and row(rows, "pop-eu").rps is None


def test_booleans_are_not_counters():
    e1 = edge(health_={**health(), "requests": True})
    e2 = edge(health_={**health(), "requests": True})
    assert top.request_rate(e1, e2, 1.0) is None


# ---------------------------------------------------------------- dead and silent edges


def test_a_dead_edge_shows_dead_with_nothing_from_healthz():
    a = sample(1.0, edge(health_=health(requests=10, connections=4)))
    b = sample(2.0, edge(alive=False, error="Connection refused"))
    r = row(top.pop_rows(a, b), "pop-eu")
    assert r.state == DEAD and r.rps is None and r.connections is None and r.requests is None
    assert r.error == "Connection refused"


def test_a_dead_process_whose_port_still_answers_is_dead_not_alive():
    # The recorded process is gone; what answers the port is not the edge the lab runs.
    r = row(top.pop_rows(None, sample(1.0, edge(alive=False, health_=health()))), "pop-eu")
    assert r.state == DEAD and r.connections is None and r.error == "process gone"


def test_an_alive_edge_that_does_not_answer_is_no_answer():
    r = row(top.pop_rows(None, sample(1.0, edge(health_=None, error="timeout"))), "pop-eu")
    assert r.state == NO_ANSWER and r.error == "timeout" and r.rps is None


def test_a_pop_the_lab_runs_no_edge_on_is_none():
    r = row(top.pop_rows(None, sample(1.0, edge(pid=None, alive=False))), "pop-eu")
    assert r.state == top.NONE and r.error is None


def test_rows_keep_the_order_of_the_sample():
    s = sample(1.0, edge("pop-us"), edge("pop-ap"), edge("pop-eu"))
    assert [r.host for r in top.pop_rows(None, s)] == ["pop-us", "pop-ap", "pop-eu"]


# ---------------------------------------------------------------- the name servers' views


def test_dns_views_count_the_pops_addresses_up_per_name_server():
    views = {"dns1": view({"eu": ["up"] * 8, "jp": ["up"] * 8}),
             "dns2": view({"eu": ["up"] * 5 + ["down"] * 3, "jp": ["up"] * 8})}
    r = row(top.pop_rows(None, sample(1.0, edge(health_=health()), views=views)), "pop-eu")
    assert dict(r.dns) == {"dns1": DnsView(8, 8), "dns2": DnsView(5, 8)}
    assert dict(r.dns)["dns2"].label == "5/8 up"


def test_a_drained_pop_is_marked_drained():
    v = top.dns_view(view({"eu": ["drained"] * 8}, drained=["eu"]), "eu")
    assert v == DnsView(0, 8, drained=True) and v.label == "drained 0/8"


def test_a_name_server_without_a_reply_has_no_view():
    r = row(top.pop_rows(None, sample(1.0, edge(health_=health()), views={"dns1": None})), "pop-eu")
    assert r.dns == (("dns1", None),)


def test_a_malformed_view_is_no_view():
    assert top.dns_view({"ok": True, "addresses": "nope"}, "eu") is None
    assert top.dns_view({"ok": True, "addresses": [1, "x", {"pop": "eu", "state": "up"}]}, "eu") == DnsView(1, 1)


def test_a_dead_edge_still_shows_what_the_name_servers_think():
    views = {"dns1": view({"eu": ["down"] * 8})}
    r = row(top.pop_rows(None, sample(1.0, edge(alive=False), views=views)), "pop-eu")
    assert r.state == DEAD and dict(r.dns)["dns1"] == DnsView(0, 8)


# ---------------------------------------------------------------- totals, header, JSON


def test_totals_sum_rates_connections_and_sessions_and_count_answering_pops():
    a = sample(1.0, edge("pop-eu", health_=health(requests=0)), edge("pop-jp", health_=health(requests=0)),
               edge("pop-us", health_=health(requests=0)))
    b = sample(2.0, edge("pop-eu", health_=health(requests=30, connections=2, sessions=1)),
               edge("pop-jp", health_=health(requests=10, connections=1)), edge("pop-us", alive=False))
    t = top.totals(top.pop_rows(a, b))
    assert (t.pops, t.alive, t.connections, t.sessions) == (3, 2, 3, 1)
    assert t.rps == pytest.approx(40.0)


def test_totals_without_any_rate_is_none_not_zero():
    assert top.totals(top.pop_rows(None, sample(1.0, edge(health_=health())))).rps is None


@pytest.mark.parametrize("seconds, label", [(None, "-"), (-1, "-"), (0, "00:00:00"), (61.9, "00:01:01"),
                                            (3 * 86400 + 3723, "3d 01:02:03")])
def test_uptime_label(seconds, label):
    assert top.uptime_label(seconds) == label


def test_snapshot_json_has_the_documented_keys_and_is_json():
    a = sample(1.0, edge(health_=health(requests=0)), started=1_800_000_000.0 - 100)
    b = sample(1.5, edge(health_=health(requests=5)), views={"dns1": view({"eu": ["up"] * 8}), "dns2": None},
               started=1_800_000_000.0 - 100)
    snap = json.loads(json.dumps(top.snapshot_json("gslb", a, b, 0.5)))
    assert set(snap) == {"prefix", "time", "uptime_s", "interval_s", "every_s", "pops", "totals", "dns"}
    assert snap["uptime_s"] == 101.5 and snap["interval_s"] == 0.5 and snap["time"].endswith("Z")
    assert snap["dns"] == {"dns1": True, "dns2": False}
    (p,) = snap["pops"]
    assert set(p) == {"host", "pop", "city", "pid", "state", "connections", "sessions", "rps", "requests", "dns",
                      "error"}
    assert p["rps"] == 10.0 and p["dns"] == {"dns1": {"up": 8, "total": 8, "drained": False}, "dns2": None}
    assert snap["totals"] == {"pops": 1, "alive": 1, "rps": 10.0, "connections": 0, "sessions": 0}


def _text(renderable, width=160) -> str:
    from rich.console import Console
    c = Console(width=width, record=True, color_system=None)
    c.print(renderable)
    return c.export_text()


def test_the_screen_shows_header_every_pop_and_the_footer():
    a = sample(1.0, edge("pop-eu", health_=health(requests=0)), edge("pop-jp", city="Tokyo", health_=health()))
    b = sample(2.0, edge("pop-eu", health_=health(requests=25, connections=3)),
               edge("pop-jp", city="Tokyo", alive=False), views={"dns1": view({"eu": ["up"] * 8, "jp": ["down"] * 8})})
    out = _text(top.render("gtp", a, b, 1.0))
    lines = out.splitlines()
    assert lines[0].startswith("lab gtp  up -") and "1/2 PoPs answering" in lines[0] and "25.0 rps" in lines[0]
    eu = next(ln for ln in lines if ln.startswith("pop-eu")).split()
    assert eu[:3] == ["pop-eu", "Frankfurt", "alive"] and "25.0" in eu and "8/8" in eu
    jp = next(ln for ln in lines if ln.startswith("pop-jp")).split()
    assert jp[:3] == ["pop-jp", "Tokyo", "dead"] and "0/8" in jp
    assert "q quit" in lines[-1]
    assert "q quit" not in _text(top.render("gtp", a, b, 1.0, live=False))


def test_the_screen_of_a_lab_that_is_not_up_says_so():
    assert "lab gtp  not up" in _text(top.render("gtp", None, None, 1.0))


# ---------------------------------------------------------------- /healthz over loopback sockets


class _Server:
    """A loopback listener that answers each connection with `reply` (None: never answers)."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.reply is None:
                self.held.append(c)
                continue
            c.recv(4096)
            c.sendall(self.reply)
            c.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_fetch_healthz_gets_every_answer_at_once_and_names_each_failure():
    body = json.dumps(health(requests=7)).encode()
    ok = _Server(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
    err = _Server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    junk = _Server(b"HTTP/1.1 200 OK\r\n\r\nnot json")
    silent = _Server(None)
    try:
        targets = [("127.0.0.1", p) for p in (ok.port, err.port, junk.port, _closed_port(), silent.port)]
        socks = [socket.socket() for _ in targets]
        got = top.fetch_healthz(socks, targets, timeout=0.5)
        assert got[0] == health(requests=7)
        assert got[1] == "answered 'HTTP/1.1 503 Service Unavailable'"
        assert got[2] == "answer is not JSON"
        assert got[3] == "Connection refused"
        assert got[4] == "timeout"
        assert all(s.fileno() == -1 for s in socks)   # closed, every one
    finally:
        for s in (ok, err, junk, silent):
            s.close()


@pytest.mark.parametrize("raw, want", [
    (b"HTTP/1.1 200 OK\r\n\r\n[1]", "answer is not a JSON object"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10", "incomplete answer"),
    (b"SSH-2.0-x\r\n\r\n", "answered 'SSH-2.0-x'"),
    (b'HTTP/1.0 200 OK\r\n\r\n{"pid": 1}', {"pid": 1}),
])
def test_parse_healthz(raw, want):
    assert top._parse_healthz(raw) == want


def test_control_health_of_a_missing_socket_is_none(tmp_path):
    assert top.control_health(str(tmp_path / "nothing.ctl")) is None


def test_control_health_reads_one_json_line_and_refuses_a_not_ok_reply(tmp_path):
    path = str(tmp_path / "dns.ctl")
    replies = [b'{"ok": true, "addresses": []}\n', b'{"ok": false, "error": "no"}\n']
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(2)
    asked = []

    def run():
        for reply in replies:
            c, _ = srv.accept()
            asked.append(c.recv(4096))
            c.sendall(reply)
            c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert top.control_health(path) == {"ok": True, "addresses": []}
        assert top.control_health(path) is None
        t.join(5)
        assert asked == [b'{"op": "health"}\n'] * 2
    finally:
        srv.close()


# ---------------------------------------------------------------- the command line


def test_top_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["lab", "top", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "gslb lab top --once --json" in out and "q quits" in out


def test_json_without_once_is_refused(capsys, tmp_path):
    assert main(["lab", "top", "--json", "--prefix", "gslbnone", "--state-dir", str(tmp_path)]) == 1
    assert "--json needs --once" in capsys.readouterr().err


@pytest.mark.parametrize("interval", ["0", "0.05", "61", "-1"])
def test_an_interval_out_of_range_is_refused(interval, capsys, tmp_path):
    assert main(["lab", "top", "--once", "--interval", interval, "--prefix", "gslbnone",
                 "--state-dir", str(tmp_path)]) == 1
    assert "must be between 0.1 and 60 seconds" in capsys.readouterr().err


def test_top_of_a_lab_that_is_not_up_exits_1_with_the_way_to_start_it(capsys, tmp_path):
    assert main(["lab", "top", "--once", "--prefix", "gslbnone", "--state-dir", str(tmp_path / "none")]) == 1
    assert "lab 'gslbnone' is not up (`gslb lab up --prefix gslbnone`)" in capsys.readouterr().err


def test_the_live_view_without_a_terminal_points_to_once(capsys, tmp_path):
    # pytest's captured stdout is not a terminal
    assert main(["lab", "top", "--prefix", "gslbnone", "--state-dir", str(tmp_path)]) == 1
    assert "the live view needs a terminal; for a pipe or a file use --once" in capsys.readouterr().err


def test_the_collector_on_a_lab_whose_hosts_are_gone_shows_every_edge_dead(tmp_path):
    # state.json of a lab whose namespaces and processes are gone (a crash, a reboot):
    # the collector answers with rows, not an exception.
    state = {"prefix": "gtpunit", "dir": str(tmp_path), "plan": "-", "status": "up",
             "hosts": [{"name": "client-eu", "role": "client", "region": "eu", "netns": "gtpunit-client-eu",
                        "ipv4": ["198.19.3.10"], "ipv6": []},
                       {"name": "pop-eu", "role": "pop", "region": "eu", "netns": "gtpunit-pop-eu",
                        "city": "Frankfurt", "ipv4": ["198.18.3.1"], "ipv6": []},
                       {"name": "dns1", "role": "dns", "region": None, "netns": "gtpunit-dns1",
                        "ipv4": ["198.18.0.11"], "ipv6": []}],
             "processes": [{"host": "pop-eu", "name": "edge", "pid": os.getpid(), "starttime": -2,
                            "cmd": ["gslb", "edge"], "log": str(tmp_path / "edge.log")}]}
    (tmp_path / "state.json").write_text(json.dumps(state))
    collector = top.Collector("gtpunit", str(tmp_path), timeout=0.2)
    if os.geteuid() != 0:
        with pytest.raises(NotRootError, match="needs root"):
            collector.sample()
        return
    s = collector.sample()
    (e,) = s.edges
    assert (e.host, e.pop, e.city, e.pid, e.alive, e.health) == ("pop-eu", "eu", "Frankfurt", os.getpid(), False, None)
    assert "gtpunit-client-eu" in e.error
    assert s.views == {"dns1": None}
    (r,) = top.pop_rows(None, s)
    assert r.state == DEAD and r.dns == (("dns1", None),)
