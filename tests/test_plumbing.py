"""The shared plumbing: HOST:PORT, the IP normaliser, listening sockets, the key=value line."""
from __future__ import annotations

import ipaddress
import logging
import shlex
import socket

import pytest

from plumbing.addr import join_host_port, normalise_ip, split_host_port
from plumbing.kvlog import KvFormatter, kv, line
from plumbing.listen import listen_socket


@pytest.mark.parametrize("text, default, expect", [
    ("127.0.0.1:53", None, ("127.0.0.1", 53)),
    ("[::1]:5300", None, ("::1", 5300)),
    (" edge.example:443 ", None, ("edge.example", 443)),
    (":53", None, ("", 53)),
    ("edge.example", 443, ("edge.example", 443)),
    ("[::1]", 443, ("::1", 443)),
    ("::1", 443, ("::1", 443)),
    ("h:0", None, ("h", 0)),
])
def test_split_host_port_accepts(text, default, expect):
    assert split_host_port(text, default) == expect


@pytest.mark.parametrize("text, default, why", [
    ("127.0.0.1", None, "expected ADDR:PORT"),
    ("::1:53", None, r"written \[ADDR\]:PORT"),
    ("[::1:53", None, r"written \[ADDR\]:PORT"),
    ("[::1]x53", None, "expected"),
    ("h:99999", None, "invalid port"),
    ("h:-1", 443, "invalid port"),
    ("h:", 443, "invalid port"),
])
def test_split_host_port_rejects_with_the_reason(text, default, why):
    with pytest.raises(ValueError, match=why):
        split_host_port(text, default)


def test_join_host_port_brackets_ipv6_only():
    assert join_host_port("::1", 53) == "[::1]:53"
    assert join_host_port("127.0.0.1", 53) == "127.0.0.1:53"
    assert split_host_port(join_host_port("2001:db8::1", 8443)) == ("2001:db8::1", 8443)


def test_normalise_ip_unmaps_ipv4_mapped_and_drops_a_zone_index():
    assert normalise_ip("::ffff:198.19.5.10") == ipaddress.IPv4Address("198.19.5.10")
    assert normalise_ip(ipaddress.IPv6Address("::ffff:10.0.0.1")) == ipaddress.IPv4Address("10.0.0.1")
    assert normalise_ip("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert normalise_ip("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert normalise_ip(" 198.19.5.10 ") == ipaddress.IPv4Address("198.19.5.10")
    with pytest.raises(ValueError):
        normalise_ip("198.19.5")


def test_kv_quotes_so_shlex_splits_it_back_and_leaves_none_out():
    text = kv("health_change", pop="eu", error='tcp: "refused"\nnow', empty="", gone=None, n=3)
    assert text.startswith("event=health_change pop=eu ")
    assert "gone" not in text
    assert shlex.split(text) == ["event=health_change", "pop=eu", 'error=tcp: "refused"\\nnow', "empty=", "n=3"]


def test_line_has_ts_level_event_pid_first():
    fields = shlex.split(line("listening", address="127.0.0.1:53"))
    assert [f.split("=", 1)[0] for f in fields] == ["ts", "level", "event", "pid", "address"]
    assert fields[1] == "level=info" and fields[2] == "event=listening"


def test_kv_formatter_gives_logging_records_the_same_head():
    rec = logging.LogRecord("gslb.edge", logging.WARNING, __file__, 1, kv("accept_error", error="EMFILE"), None, None)
    out = KvFormatter().format(rec)
    head, rest = out.split(" logger=gslb.edge ")
    assert head.startswith("ts=") and head.endswith("Z level=warning")
    assert rest == "event=accept_error error=EMFILE"


def test_listen_socket_tcp_and_udp_share_a_port_and_ipv6_is_v6only():
    tcp = listen_socket("127.0.0.1", 0)
    try:
        port = tcp.getsockname()[1]
        udp = listen_socket("127.0.0.1", port, socket.SOCK_DGRAM, rcvbuf=1 << 20)
        udp.close()
        assert tcp.getblocking() is False
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            listen_socket("127.0.0.1", port)    # no SO_REUSEPORT: the second bind fails, said where
    finally:
        tcp.close()
    v6 = listen_socket("::1", 0)
    try:
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        v6.close()


def test_listen_socket_reuse_port_lets_two_workers_bind_the_same_port():
    a = listen_socket("127.0.0.1", 0, socket.SOCK_DGRAM, reuse_port=True)
    try:
        b = listen_socket("127.0.0.1", a.getsockname()[1], socket.SOCK_DGRAM, reuse_port=True)
        b.close()
    finally:
        a.close()


def _imports(package: str) -> dict[str, set[str]]:
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent / package
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(root.parent))] = names
    return out


def test_plumbing_is_a_leaf_and_edge_imports_no_other_component():
    project = {"dns", "edge", "geo", "gslb", "netns", "bench"}
    assert {f: n & project for f, n in _imports("plumbing").items() if n & project} == {}
    assert {f: n & {"dns", "gslb", "netns", "bench"} for f, n in _imports("edge").items()
            if n & {"dns", "gslb", "netns", "bench"}} == {}
