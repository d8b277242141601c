"""Faults and bad input: what the system survives, measured (docs/bench.md, "Faults").

    python -m bench.faults [--only dns|tunnel|slowloris|kill] [--quick]

Parts (each bounded in count and time; every process started here is stopped by pid):

``dns``        malformed DNS packets (random bytes and mutated valid queries, seeded) from several
               sender processes at a bounded rate, UDP and a TCP share, at a real ``gslb dns`` on
               127.0.0.1; then: the server is alive, its log has no traceback or internal error,
               and a valid query gets the right answer (2 jp addresses for a Tokyo subnet). RSS of
               the server and its workers before and after (/proc/PID/status VmRSS, VmHWM).
``tunnel``     malformed yamux and control frames (`TUNNEL_CASES`, docs/protocol.md 2 and 3), each on
               a fresh raw TLS connection to a real ``gslb edge``'s agent ingress on 127.0.0.1; each
               must get its documented outcome (go-away protocol error and close, the stream reset,
               an error reply) within a bounded time, while a real ``gslb agent`` serves HTTPS
               requests through the same edge with zero failures.
``slowloris``  connections that send one HTTP header byte a second after the TLS handshake, and
               TCP connections that never send a ClientHello, at a real ``gslb edge``: each must be
               closed at the edge's header / handshake timeout; meanwhile a normal client's latency
               (p50/p99) and failures, and the edge's RSS (peak, after).
``kill``       the lab (``gslb lab up --prefix gfl``, always ``gslb lab down`` in a ``finally``):
               SIGKILL one process of each kind (edge, agent, DNS server, an etcd member, unbound)
               while a bounded request loop runs inside a lab client host; requests lost beyond
               those in flight on the killed process, and the time to recovery.

The loopback parts send only to 127.0.0.1; the lab part sends only from inside lab hosts
(``gslb lab exec``). Results: a table on stdout, ``bench/results/faults-<timestamp>.json``.
The pure parts (case table, packet generators, figures) are unit-tested in tests/test_bench_faults.py;
tests/integration/test_faults.py runs smaller counts of the loopback parts with assertions.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import random
import re
import resource
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
PARTS = ("dns", "tunnel", "slowloris", "kill")
ZONE = "lab.test"
TOKEN = "faults-token-" + "5e1b" * 6
BAD_LOG = re.compile(r"Traceback|internal_error|Exception in callback|Task exception was never retrieved"
                     r"|level=critical|Fatal")


def gslb_argv() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "gslb")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "gslb.cli"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free for TCP and UDP both (gslb dns binds the two)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free for both TCP and UDP")


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `want` (at most the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard if hard != resource.RLIM_INFINITY else want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of one process, KiB (0 when it is gone)."""
    out = {"rss": 0, "hwm": 0}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1])
    except OSError:
        pass
    return out


def tree_mem_kib(pid: int) -> dict:
    """{pid: {rss, hwm}} for a process and its descendants (the DNS server and its workers)."""
    from bench.procs import tree_pids
    return {p: proc_mem_kib(p) for p in tree_pids(pid)}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of values; None for none."""
    vals = sorted(values)
    if not vals:
        return None
    import math
    k = max(0, min(len(vals) - 1, math.ceil(q / 100.0 * len(vals)) - 1))
    return vals[k]


def bad_log_lines(text: str) -> list[str]:
    """Lines of a server log that show a crash or an internal error."""
    return [line for line in text.splitlines() if BAD_LOG.search(line)]


def first_traceback(text: str, lines: int = 25) -> str:
    """The first traceback of a log, with what follows it (for the report)."""
    all_lines = text.splitlines()
    for i, line in enumerate(all_lines):
        if BAD_LOG.search(line):
            return "\n".join(all_lines[max(0, i - 2):i + lines])
    return ""


# ================================================================= DNS: malformed packets


def dns_seeds() -> list[bytes]:
    """Valid queries the mutations start from (the shapes tests/test_dns_fuzz.py uses, and more)."""
    from dns.wire import AAAA, ANY, ecs_option, make_query
    return [
        make_query("demo.app.lab.test"),
        make_query("demo.app.lab.test", AAAA, options=ecs_option("198.19.5.0/24")),
        make_query("www.lab.test", ANY, edns=True, do=True),
        make_query("lab.test", options=ecs_option("fd7a:5e1b:c00:500::/56") + b"\x00\x0a\x00\x08" + b"c" * 8),
        make_query("connect.lab.test", rd=True, edns=True),
        make_query("jp.connect.lab.test", 6),
        make_query("nope.example", 1),
    ]


def malformed_packet(rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    """One bad packet: random bytes (1/3), or a valid query mutated (flipped bytes, cut, grown,
    header counts rewritten, a label length or a compression pointer planted)."""
    r = rng.random()
    if r < 1 / 3:
        return rng.randbytes(rng.choice((0, 1, 11, 12, 13, rng.randrange(0, 600))))
    data = bytearray(rng.choice(seeds))
    how = rng.randrange(6)
    if how == 0:                                    # flip a few bytes anywhere
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == 1:                                  # cut short
        data = data[:rng.randrange(0, len(data))]
    elif how == 2:                                  # trailing garbage
        data += rng.randbytes(rng.randrange(1, 300))
    elif how == 3:                                  # counts (qd/an/ns/ar) rewritten
        struct.pack_into("!HHHH", data, 4, *(rng.choice((0, 1, 2, 255, 65535)) for _ in range(4)))
    elif how == 4:                                  # a label length or a pointer planted in the name
        pos = rng.randrange(12, max(13, len(data) - 4))
        data[pos] = rng.choice((0x3F, 0x40, 0x80, 0xC0, 0xFF, 63))
        if data[pos] >= 0xC0 and pos + 1 < len(data):
            data[pos + 1] = rng.choice((0, 12, pos & 0xFF, 0xFF))
    else:                                           # flags/opcode/rcode bits, QR set, OPT mangled
        struct.pack_into("!H", data, 2, rng.randrange(65536))
        if len(data) > 30:
            data[-rng.randrange(1, 12)] = rng.randrange(256)
    return bytes(data)


def _dns_sender(port: int, count: int, seed: int, rate: float, out: "Any") -> None:
    """One UDP sender process: `count` packets at about `rate` per second; counts what came back."""
    rng = random.Random(seed)
    seeds = dns_seeds()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    addr = ("127.0.0.1", port)
    sent = answered = send_errors = 0
    t0 = time.monotonic()
    batch = 64

    def drain() -> int:
        n = 0
        while True:
            try:
                sock.recv(65535)
                n += 1
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:
                continue

    while sent < count:
        for _ in range(min(batch, count - sent)):
            pkt = malformed_packet(rng, seeds)
            sent += 1
            try:
                sock.sendto(pkt, addr)
            except OSError:
                send_errors += 1
        answered += drain()
        # pace: `sent` packets should take sent/rate seconds
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        got = drain()
        answered += got
        if not got:
            time.sleep(0.05)
    sock.close()
    out.put({"sent": sent, "udp_answered": answered, "tcp_sent": 0, "tcp_answered": 0,
             "send_errors": send_errors, "seconds": time.monotonic() - t0})


def _dns_tcp_sender(port: int, count: int, seed: int, out: "Any") -> None:
    """`count` malformed messages over TCP, one connection each (length-prefixed, RFC 1035 4.2.2)."""
    rng = random.Random(seed)
    seeds = dns_seeds()
    t0 = time.monotonic()
    answered = 0
    for _ in range(count):
        answered += _dns_tcp_one(port, malformed_packet(rng, seeds))
    out.put({"sent": count, "udp_answered": 0, "tcp_sent": count, "tcp_answered": answered, "send_errors": 0,
             "seconds": time.monotonic() - t0})


def _dns_tcp_one(port: int, pkt: bytes, wait: float = 0.05) -> int:
    """1 when the server answered (or closed: a drop over TCP ends the connection) within `wait` s."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(struct.pack("!H", len(pkt)) + pkt)
            s.settimeout(wait)
            try:
                return 1 if s.recv(2) else 0
            except (socket.timeout, OSError):
                return 0
    except OSError:
        return 0


def dns_answer_ok(port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """A Tokyo subnet's query for demo.app.lab.test A gets 2 addresses of pop-jp (198.18.5.0/24), AA,
    same ID (what examples/dns.toml serves); (ok, what was seen)."""
    import dnslib
    from dns.wire import ecs_option, make_query
    q = make_query("demo.app.lab.test", options=ecs_option("198.19.5.0/24"), qid=0x5A5A)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError as exc:
            return False, f"no answer: {exc}"
    try:
        m = dnslib.DNSRecord.parse(data)
    except Exception as exc:  # noqa: BLE001 - an unparsable answer is a failed check
        return False, f"unparsable answer: {exc}"
    addrs = sorted(str(r.rdata) for r in m.rr if r.rtype == 1)
    ok = (m.header.id == 0x5A5A and m.header.rcode == 0 and m.header.aa == 1 and len(addrs) == 2
          and all(a.startswith("198.18.5.") for a in addrs))
    return ok, f"rcode={m.header.rcode} aa={m.header.aa} A={','.join(addrs)}"


class DnsServer:
    """`gslb dns --config examples/dns.toml --listen 127.0.0.1:PORT`, logs to a file."""

    def __init__(self, tmp: str, workers: int = 1) -> None:
        from bench.procs import Procs, wait_dns
        self.procs = Procs(tmp)
        self.port = free_port(kind=socket.SOCK_DGRAM)
        argv = [*gslb_argv(), "dns", "--config", os.path.join(REPO, "examples", "dns.toml"),
                "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers),
                "--control", os.path.join(tmp, f"dns-{self.port}.sock")]
        self.proc = self.procs.start(f"dns-{self.port}", argv, env=_env(), cwd=REPO)
        wait_dns("127.0.0.1", self.port, "lab.test", self.proc, timeout=30)

    def log_text(self) -> str:
        with open(self.proc.log_path, errors="replace") as fh:
            return fh.read()

    def stop(self) -> int | None:
        return self.procs.stop(self.proc)


def dns_fuzz(n: int, tmp: str, *, senders: int = 4, rate: float = 20000.0, workers: int = 2,
             tcp_every: int = 1000, log: Callable[[str], None] = print) -> dict:
    """Send `n` malformed packets at a fresh `gslb dns`, check it afterwards; the figures."""
    import multiprocessing as mp
    srv = DnsServer(tmp, workers=workers)
    try:
        before = tree_mem_kib(srv.proc.pid)
        ok0, seen0 = dns_answer_ok(srv.port)
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        n_tcp = n // tcp_every if tcp_every else 0
        n_udp = n - n_tcp
        per = [n_udp // senders + (1 if i < n_udp % senders else 0) for i in range(senders)]
        ps = [ctx.Process(target=_dns_sender, args=(srv.port, c, 1000 + i, rate / senders, q))
              for i, c in enumerate(per)]
        if n_tcp:
            ps.append(ctx.Process(target=_dns_tcp_sender, args=(srv.port, n_tcp, 999, q)))
        t0 = time.monotonic()
        for p in ps:
            p.start()
        results = []
        deadline = time.monotonic() + n / rate * 3 + 60
        for _ in ps:
            results.append(q.get(timeout=max(1.0, deadline - time.monotonic())))
        for p in ps:
            p.join(10)
        seconds = time.monotonic() - t0
        alive = srv.proc.alive()
        ok1, seen1 = dns_answer_ok(srv.port)
        after = tree_mem_kib(srv.proc.pid)
        text = srv.log_text()
    finally:
        code = srv.stop()
    bad = bad_log_lines(text)
    sent = sum(r["sent"] for r in results)
    out = {
        "packets": sent, "seconds": round(seconds, 2), "rate_pps": round(sent / seconds) if seconds else None,
        "senders": senders, "workers": workers,
        "udp_answered": sum(r["udp_answered"] for r in results),
        "tcp_sent": sum(r["tcp_sent"] for r in results), "tcp_answered": sum(r["tcp_answered"] for r in results),
        "send_errors": sum(r["send_errors"] for r in results),
        "alive_after": alive, "exit_code_on_stop": code,
        "answer_before_ok": ok0, "answer_after_ok": ok1, "answer_after": seen1,
        "bad_log_lines": len(bad), "bad_log_sample": bad[:5],
        "rss_before_kib": {str(k): v for k, v in before.items()},
        "rss_after_kib": {str(k): v for k, v in after.items()},
        "crashes": 0 if alive else 1,
    }
    log(f"dns: {sent} malformed packets in {seconds:.1f} s: alive={alive} answer after ok={ok1} ({seen1}) "
        f"bad log lines={len(bad)}")
    return out


# ================================================================= tunnel garbage

DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 0x1, 0x2, 0x4, 0x8
INITIAL_WINDOW = 262144


def frame(typ: int, flags: int, sid: int, length: int, payload: bytes = b"", version: int = 0) -> bytes:
    """A yamux frame (docs/protocol.md 2.1): header, then the payload (data frames only)."""
    return struct.pack(">BBHII", version, typ, flags, sid, length) + payload


def data(sid: int, payload: bytes, flags: int = 0) -> bytes:
    return frame(DATA, flags, sid, len(payload), payload)


def msg(obj: object) -> bytes:
    """A control message (3.1): 4-byte length, JSON."""
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


OPEN1 = frame(WINDOW_UPDATE, SYN, 1, 0)
AUTH = msg({"type": "auth", "id": 1, "authtoken": TOKEN, "agent_version": "bench.faults"})
AUTHED = OPEN1 + data(1, AUTH)    # the control stream, authenticated


def ctl(*messages: bytes) -> bytes:
    return b"".join(data(1, m) for m in messages)


@dataclass(frozen=True)
class TunnelCase:
    """One malformed input on a fresh session and what docs/protocol.md says it gets.

    expect: "goaway:1" (go-away, protocol error, then the edge closes), "closed" (the edge closes
    the session; a go-away before it is allowed), "rst:N" (stream N reset, session alive: a ping
    is answered), "alive" (no go-away, a ping is answered), "error:CODE" (an error reply on the control stream, session alive),
    "error:CODE+closed" (the reply, then the edge closes).
    """
    name: str
    send: bytes
    expect: str
    why: str
    close_after_send: bool = False     # we close right after sending (truncated input)
    wait: float = 5.0                  # seconds the outcome may take


def _window_overflow() -> bytes:
    return AUTHED + frame(WINDOW_UPDATE, 0, 1, 0xFFFFFFFF)


TUNNEL_CASES: tuple[TunnelCase, ...] = (
    TunnelCase("bad_version", frame(WINDOW_UPDATE, SYN, 1, 0, version=1), "goaway:1", "2.7 version not 0"),
    TunnelCase("unknown_type", frame(4, SYN, 1, 0), "goaway:1", "2.7 unknown type"),
    TunnelCase("type_255", frame(255, 0, 0, 0), "goaway:1", "2.7 unknown type"),
    TunnelCase("unknown_flag_bits", frame(WINDOW_UPDATE, SYN | 0x10, 1, 0), "goaway:1", "2.7 unknown flag bits"),
    TunnelCase("data_on_stream_0", data(0, b"hello"), "goaway:1", "2.7 data on stream 0"),
    TunnelCase("window_update_on_stream_0", frame(WINDOW_UPDATE, 0, 0, 1000), "goaway:1",
               "2.7 window update on stream 0"),
    TunnelCase("ping_on_a_stream", frame(PING, SYN, 1, 7), "goaway:1", "2.7 ping on another stream"),
    TunnelCase("goaway_on_a_stream", frame(GO_AWAY, 0, 3, 0), "goaway:1", "2.7 go-away on another stream"),
    TunnelCase("ping_without_flags", frame(PING, 0, 0, 7), "goaway:1", "2.5/2.7 ping without SYN or ACK"),
    TunnelCase("ping_syn_and_ack", frame(PING, SYN | ACK, 0, 7), "goaway:1", "2.5/2.7 ping with both"),
    TunnelCase("ping_with_fin", frame(PING, SYN | FIN, 0, 7), "goaway:1", "2.5/2.7 ping with other flags"),
    TunnelCase("goaway_with_flags", frame(GO_AWAY, SYN, 0, 0), "goaway:1", "2.7 go-away with flags"),
    TunnelCase("goaway_unknown_code", AUTHED + frame(GO_AWAY, 0, 0, 77), "alive",
               "2.6: go-away means no new streams, whatever its code; open streams (control) go on"),
    TunnelCase("syn_with_even_id", frame(WINDOW_UPDATE, SYN, 2, 0), "goaway:1", "2.2/2.7 SYN with the edge's parity"),
    TunnelCase("syn_id_reused", AUTHED + frame(WINDOW_UPDATE, SYN, 1, 0), "goaway:1",
               "2.2/2.7 SYN on the id of a live stream (the control stream)"),
    TunnelCase("syn_id_going_down", AUTHED + frame(WINDOW_UPDATE, SYN, 7, 0) + frame(WINDOW_UPDATE, SYN, 5, 0),
               "rst:5", "2.2: SYNs in any order are new streams; the edge resets any the agent opens after "
               "the control stream"),
    TunnelCase("data_never_opened_odd", data(5, b"x"), "goaway:1", "2.7 frame without SYN on an agent id never opened"),
    TunnelCase("data_never_opened_even", AUTHED + data(2, b"x"), "goaway:1",
               "2.7 frame on an edge id the edge never opened"),
    TunnelCase("window_update_never_opened", AUTHED + frame(WINDOW_UPDATE, 0, 9, 100), "goaway:1",
               "2.7 window update for a stream never opened"),
    TunnelCase("window_overflow_one_update", _window_overflow(), "goaway:1", "2.4/2.7 window beyond 2^32-1"),
    TunnelCase("window_overflow_two_updates", AUTHED + frame(WINDOW_UPDATE, 0, 1, 0x80000000)
               + frame(WINDOW_UPDATE, 0, 1, 0x80000000), "goaway:1", "2.4/2.7 window beyond 2^32-1 in sum"),
    TunnelCase("syn_window_overflow", frame(WINDOW_UPDATE, SYN, 1, 0xFFFFFFFF), "goaway:1",
               "2.4: SYN delta makes 256 KiB + delta > 2^32-1"),
    TunnelCase("data_beyond_window", OPEN1 + data(1, b"\0" * (INITIAL_WINDOW + 1)), "goaway:1",
               "2.4/2.7 data exceeding the window"),
    TunnelCase("huge_length_field", OPEN1 + frame(DATA, 0, 1, 0xFFFFFFFF), "goaway:1",
               "2.4/2.7 a length no window allows (detected from the header alone)"),
    TunnelCase("data_after_fin", OPEN1 + data(1, b"", FIN) + data(1, b"x"), "goaway:1", "2.7 data after FIN"),
    TunnelCase("truncated_header_then_close", b"\x00\x01\x00", "closed",
               "a header cut short: the edge sees EOF and drops the session", close_after_send=True),
    TunnelCase("truncated_payload_then_close", OPEN1 + frame(DATA, 0, 1, 100, b"x" * 10), "closed",
               "a payload cut short", close_after_send=True),
    TunnelCase("truncated_header_then_silence", b"\x00\x01\x00\x01", "closed",
               "3.5: no auth within 10 s: the edge closes", wait=16.0),
    TunnelCase("nothing_after_handshake", b"", "closed", "3.5: no auth within 10 s", wait=16.0),
    TunnelCase("second_stream_from_agent", AUTHED + frame(WINDOW_UPDATE, SYN, 3, 0), "rst:3",
               "2.2: the edge resets any further stream the agent opens"),
    TunnelCase("data_on_reset_stream_ignored", AUTHED + frame(WINDOW_UPDATE, SYN, 3, 0) + data(3, b"late"),
               "rst:3", "2.3: frames for a reset stream are ignored, the session lives"),
    TunnelCase("highest_odd_id", AUTHED + frame(WINDOW_UPDATE, SYN, 0xFFFFFFFF, 0), "rst:4294967295",
               "2.2: a valid but extra agent stream: RST"),
    TunnelCase("control_not_json", OPEN1 + data(1, msg(b"not json at all")), "closed", "3.1 framing error"),
    TunnelCase("control_length_zero", OPEN1 + data(1, b"\0\0\0\0"), "closed", "3.1 length 0"),
    TunnelCase("control_too_long", OPEN1 + data(1, struct.pack(">I", 65537) + b"{" * 100), "closed",
               "3.1 length above 65536 (checked on the prefix)"),
    TunnelCase("control_length_max", OPEN1 + data(1, b"\xff\xff\xff\xff"), "closed", "3.1 length 2^32-1"),
    TunnelCase("control_invalid_utf8", OPEN1 + data(1, msg(b'{"type":"\xff\xfe"}')), "closed", "3.1 invalid UTF-8"),
    TunnelCase("control_not_an_object", OPEN1 + data(1, msg(b"[1,2,3]")), "closed", "3.1 JSON not an object"),
    TunnelCase("control_nested_deep", OPEN1 + data(1, msg(b"[" * 30000 + b"]" * 30000)), "closed",
               "3.1 JSON not an object (deep nesting must not crash the parser)"),
    TunnelCase("bind_before_auth", OPEN1 + ctl(msg({"type": "bind", "id": 1, "kind": "http", "name": "x"})),
               "error:not_authenticated", "3.3 request before auth"),
    TunnelCase("heartbeat_before_auth", OPEN1 + ctl(msg({"type": "heartbeat", "id": 1})),
               "error:not_authenticated", "3.3 request before auth"),
    TunnelCase("bad_authtoken", OPEN1 + ctl(msg({"type": "auth", "id": 1, "authtoken": "wrong"})),
               "error:auth_failed+closed", "3.3 bad token: error, then the edge closes"),
    TunnelCase("unknown_message_type", AUTHED + ctl(msg({"type": "frobnicate", "id": 2})), "error:bad_request",
               "3.1 unknown type after auth"),
    TunnelCase("second_auth", AUTHED + ctl(msg({"type": "auth", "id": 2, "authtoken": TOKEN})), "error:bad_request",
               "3.3 a second auth"),
    TunnelCase("message_without_id", AUTHED + ctl(msg({"type": "heartbeat"})), "error:bad_request",
               "3.1 missing id"),
    TunnelCase("message_id_negative", AUTHED + ctl(msg({"type": "heartbeat", "id": -5})), "error:bad_request",
               "3.1 id out of range"),
    TunnelCase("bind_unknown_kind", AUTHED + ctl(msg({"type": "bind", "id": 2, "kind": "udp", "name": "x"})),
               "error:bad_request", "3.2 kind"),
    TunnelCase("bind_unknown_option", AUTHED + ctl(msg({"type": "bind", "id": 2, "kind": "http", "name": "x",
                                                           "options": {"frob": 1}})),
               "error:bad_request", "3.2 unknown bind option"),
    TunnelCase("bind_bad_name", AUTHED + ctl(msg({"type": "bind", "id": 2, "kind": "http", "name": "a.b/../c"})),
               "error:bad_request", "3.2 name is a DNS label"),
    TunnelCase("unbind_unknown", AUTHED + ctl(msg({"type": "unbind", "id": 2, "binding_id": "nope"})),
               "error:unknown_binding", "3.4 unbind of a binding not held"),
)


@dataclass
class Seen:
    goaway: int | None = None
    rst: set[int] = field(default_factory=set)
    messages: list[dict] = field(default_factory=list)
    closed: bool = False
    pong: bool = False
    error: str | None = None
    seconds: float = 0.0


class _Reader:
    """Frames from the edge, parsed as they arrive (2.1), control messages on stream 1 (3.1)."""

    def __init__(self) -> None:
        self.buf = b""
        self.ctl = b""
        self.seen = Seen()

    def feed(self, data: bytes, ping_value: int | None) -> None:
        self.buf += data
        while len(self.buf) >= 12:
            ver, typ, flags, sid, length = struct.unpack(">BBHII", self.buf[:12])
            if typ == DATA:
                if len(self.buf) < 12 + length:
                    return
                payload, self.buf = self.buf[12:12 + length], self.buf[12 + length:]
                if sid == 1:
                    self.ctl += payload
                    while len(self.ctl) >= 4:
                        (n,) = struct.unpack(">I", self.ctl[:4])
                        if len(self.ctl) < 4 + n:
                            break
                        try:
                            self.seen.messages.append(json.loads(self.ctl[4:4 + n]))
                        except ValueError:
                            self.seen.messages.append({"type": "unparsable"})
                        self.ctl = self.ctl[4 + n:]
            else:
                self.buf = self.buf[12:]
            if flags & RST and typ in (DATA, WINDOW_UPDATE):
                self.seen.rst.add(sid)
            if typ == GO_AWAY:
                self.seen.goaway = length
            if typ == PING and flags & ACK and ping_value is not None and length == ping_value:
                self.seen.pong = True


def _done(expect: str, seen: Seen) -> bool:
    """Is the outcome decided (so the case can stop waiting)?"""
    if seen.closed:
        return True
    kind, _, arg = expect.partition(":")
    if kind == "rst":
        return int(arg) in seen.rst and seen.pong
    if kind == "error" and not arg.endswith("+closed"):
        return any(m.get("type") == "error" for m in seen.messages) and seen.pong
    if kind == "alive":
        return seen.pong
    return False


def judge(expect: str, seen: Seen) -> tuple[bool, str]:
    """Did the session get the documented outcome? (ok, what happened)"""
    errors = [m.get("code") for m in seen.messages if m.get("type") == "error"]
    got = (f"goaway={seen.goaway} rst={sorted(seen.rst)} errors={errors} closed={seen.closed} "
           f"pong={seen.pong}" + (f" io={seen.error}" if seen.error else ""))
    kind, _, arg = expect.partition(":")
    if kind == "goaway":
        return seen.goaway == int(arg) and seen.closed, got
    if kind == "closed":
        return seen.closed and seen.goaway in (None, 0, 1), got
    if kind == "rst":
        return int(arg) in seen.rst and seen.pong and not seen.closed and seen.goaway is None, got
    if kind == "alive":
        return seen.pong and not seen.closed and seen.goaway is None, got
    if kind == "error":
        code, _, closed = arg.partition("+")
        if closed:
            return code in errors and seen.closed, got
        return errors == [code] and seen.pong and not seen.closed and seen.goaway is None, got
    return False, got


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def run_tunnel_case(case: TunnelCase, port: int, ca: str, host: str = "127.0.0.1") -> dict:
    """One case on a fresh TLS connection to the agent ingress (SNI connect.<zone>)."""
    t0 = time.monotonic()
    reader = _Reader()
    seen = reader.seen
    ping_value = 0x5EED0000 + (hash(case.name) & 0xFFFF)
    try:
        raw = socket.create_connection((host, port), timeout=5)
        s = client_context(ca).wrap_socket(raw, server_hostname=f"connect.{ZONE}")
    except OSError as exc:
        seen.error = f"connect: {exc}"
        ok, got = judge(case.expect, seen)
        return {"case": case.name, "expect": case.expect, "ok": False, "got": got, "seconds": 0.0, "why": case.why}
    try:
        if case.send:
            s.sendall(case.send)
        if case.close_after_send:
            # The edge must drop the session on EOF; it must still be able to serve afterwards
            # (checked by the caller's traffic and health). Nothing more to read here.
            s.close()
            seen.closed = True
            seen.seconds = time.monotonic() - t0
            ok, got = judge(case.expect, seen)
            return {"case": case.name, "expect": case.expect, "ok": ok, "got": got,
                    "seconds": round(seen.seconds, 3), "why": case.why}
        kind = case.expect.partition(":")[0]
        if kind in ("rst", "error", "alive") and not case.expect.endswith("+closed"):
            s.sendall(frame(PING, SYN, 0, ping_value))   # is the session still alive afterwards?
        deadline = t0 + case.wait
        while time.monotonic() < deadline and not _done(case.expect, seen):
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except (ssl.SSLError, OSError) as exc:
                seen.closed = True
                seen.error = type(exc).__name__
                break
            if not chunk:
                seen.closed = True
                break
            reader.feed(chunk, ping_value)
    finally:
        try:
            s.close()
        except OSError:
            pass
    seen.seconds = time.monotonic() - t0
    ok, got = judge(case.expect, seen)
    return {"case": case.name, "expect": case.expect, "ok": ok, "got": got, "seconds": round(seen.seconds, 3),
            "why": case.why}


def run_tunnel_cases(port: int, ca: str, cases: Sequence[TunnelCase] = TUNNEL_CASES, parallel: int = 8) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda c: run_tunnel_case(c, port, ca), cases))


# ================================================================= a real edge + agent on loopback


class _Upstream:
    """A small HTTP/1.1 upstream in a thread (keep-alive): GET / -> 200 "ok <path>"."""

    def __init__(self) -> None:
        import http.server

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = f"ok {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


class LoopbackEdge:
    """`gslb edge` (pop t on 127.0.0.1) + `gslb agent http` (endpoint `demo`) + an upstream.

    Timeouts and limits of [edge.timeouts]/[edge.limits] can be set (`timeouts={"header": 2}`).
    """

    def __init__(self, tmp: str, *, timeouts: Mapping[str, float] | None = None,
                 limits: Mapping[str, int] | None = None, agent: bool = True,
                 open_files: int | None = None) -> None:
        from bench.procs import Procs, wait_tcp
        from edge.certs import CertAuthority
        self.tmp = tmp
        self.procs = Procs(tmp)
        ca_dir = os.path.join(tmp, "edge-ca")
        self.ca = str(CertAuthority.create(ca_dir).cert_path)
        token = os.path.join(tmp, "authtokens")
        with open(token, "w") as fh:
            fh.write(TOKEN + "\n")
        os.chmod(token, 0o600)
        self.port = free_port()
        self.health_port = free_port()
        t = "\n".join(f"{k} = {v}" for k, v in (timeouts or {}).items())
        lim = "\n".join(f"{k} = {v}" for k, v in (limits or {}).items())
        cfg = os.path.join(tmp, "edge.toml")
        with open(cfg, "w") as fh:
            fh.write(f"""zone = "{ZONE}"
[edge]
ca_dir = "{ca_dir}"
cert_dir = "{os.path.join(tmp, 'edge-certs')}"
authtokens_file = "{token}"
http_port = 0
[edge.timeouts]
{t}
[edge.limits]
{lim}
[pops.t]
listen = ["127.0.0.1"]
https_port = {self.port}
health_listen = "127.0.0.1:{self.health_port}"
""")
        # One process: the limits and counters these faults check are a process's (max_connections,
        # open files, /healthz); `--workers N` has its own tests (tests/test_edge_workers.py).
        argv = [*gslb_argv(), "edge", "--config", cfg, "--pop", "t", "--workers", "1"]
        if open_files:
            # soft and hard open-file limit of the edge (the edge raises soft to hard itself)
            argv = [sys.executable, "-c", "import os, resource, sys; n = int(sys.argv[1]); "
                    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])",
                    str(open_files), *argv]
        self.edge = self.procs.start("edge", argv, env=_env(), cwd=REPO)
        wait_tcp("127.0.0.1", self.health_port, self.edge, timeout=30)
        self.upstream = _Upstream()
        self.agent = None
        if agent:
            self.agent = self.procs.start("agent", [
                *gslb_argv(), "agent", "http", str(self.upstream.port), "--name", "demo",
                "--server", f"127.0.0.1:{self.port}", "--zone", ZONE, "--ca", self.ca,
                "--authtoken-file", token], env=_env(), cwd=REPO)
            self.wait_log(self.agent, "forwarding https://demo.app.lab.test", 30)

    @staticmethod
    def wait_log(proc: "Any", needle: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(proc.log_path, errors="replace") as fh:
                if needle in fh.read():
                    return
            if not proc.alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name}: no {needle!r} after {timeout} s:\n{proc.log_tail()}")

    def health(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as r:
            return json.loads(r.read())

    def log_text(self, proc: "Any" = None) -> str:
        with open((proc or self.edge).log_path, errors="replace") as fh:
            return fh.read()

    def client_argv(self, count: int, duration: float, interval: float, out: str) -> list[str]:
        return [sys.executable, "-m", "bench.faults", "client", "--host", "demo.app.lab.test", "--addr", "127.0.0.1",
                "--port", str(self.port), "--ca", self.ca, "--count", str(count), "--duration", str(duration),
                "--interval", str(interval), "--out", out]

    def close(self) -> None:
        self.procs.stop_all()
        self.upstream.close()


# ================================================================= the request loop (client mode)


def https_get(host: str, port: int, ctx: ssl.SSLContext, addr: str | None, timeout: float, path: str = "/") -> str:
    """One GET on a new TLS connection; '' on 200, else what went wrong. `addr` None: resolve `host`
    (the system resolver: in a lab host that is the lab's unbound)."""
    try:
        target = addr or socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        return f"resolve: {type(exc).__name__}"
    try:
        with socket.create_connection((target, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.settimeout(timeout)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                buf = b""
                while len(buf) < 65536:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}"
    status = buf.split(b"\r\n", 1)[0]
    return "" if re.match(rb"HTTP/1\.[01] 200 ", status) else f"status {status[:40]!r}"


def dns_get(name: str, timeout: float) -> str:
    """One A lookup through the system resolver ('' when it gave an address)."""
    try:
        socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
        return ""
    except OSError as exc:
        return f"resolve: {exc}"[:80]


def request_loop(do_one: Callable[[int], str], count: int, duration: float, interval: float) -> list[dict]:
    """At most `count` requests, one every `interval` s, for at most `duration` s; samples t0/t1/err."""
    out = []
    end = time.time() + duration
    nxt = time.time()
    for i in range(count):
        now = time.time()
        if now >= end:
            break
        if nxt > now:
            time.sleep(nxt - now)
        nxt += interval
        t0 = time.time()
        err = do_one(i)
        out.append({"i": i, "t0": round(t0, 4), "t1": round(time.time(), 4), "err": err})
    return out


def latency_summary(samples: Sequence[Mapping]) -> dict:
    ms = [(s["t1"] - s["t0"]) * 1000 for s in samples if not s["err"]]
    return {"requests": len(samples), "failed": sum(1 for s in samples if s["err"]),
            "p50_ms": _r(statistics.median(ms)) if ms else None, "p99_ms": _r(percentile(ms, 99)),
            "max_ms": _r(max(ms)) if ms else None,
            "errors": sorted({s["err"] for s in samples if s["err"]})[:5]}


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def client_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults client",
                                description="A bounded request loop (the kill part runs it in lab client hosts); "
                                            "prints or writes JSON: samples {i, t0, t1, err} and a summary.",
                                epilog="examples:\n  python -m bench.faults client --host demo.app.lab.test "
                                       "--addr 127.0.0.1 --port 8443 --ca ca.pem --count 100\n"
                                       "  python -m bench.faults client --mode dns --host app.lab.test --duration 5\n",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("https", "dns"), default="https")
    p.add_argument("--host", required=True, help="https: the endpoint name (SNI, Host); dns: a suffix")
    p.add_argument("--addr", default=None, help="connect here instead of resolving --host")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--ca", default=None)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--out", default="-")
    a = p.parse_args(list(argv))
    if a.mode == "https":
        ctx = client_context(a.ca)
        samples = request_loop(lambda i: https_get(a.host, a.port, ctx, a.addr, a.timeout), a.count, a.duration,
                               a.interval)
    else:
        tag = f"{os.getpid():x}{int(time.time()) % 100000:x}"
        # a name per request: the resolver's cache never answers it, the name servers must
        samples = request_loop(lambda i: dns_get(f"f{tag}-{i}.{a.host}", a.timeout), a.count, a.duration,
                               a.interval)
    text = json.dumps({"samples": samples, **latency_summary(samples)})
    if a.out == "-":
        print(text, flush=True)
    else:
        with open(a.out, "w") as fh:
            fh.write(text)
    return 0


# ================================================================= slowloris and idle TLS


async def _slow_header(host: str, port: int, ctx: ssl.SSLContext, sni: str, byte_every: float,
                       max_seconds: float, result: dict) -> None:
    t0 = time.monotonic()  # before connect(), as in _idle_tcp: the edge's timer cannot start earlier
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni), 30)
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        result["connect_failed"] += 1
        result["connect_errors"].add(type(exc).__name__)
        return
    result["connected"] += 1
    head = f"GET / HTTP/1.1\r\nHost: {sni}\r\nX-Slow: ".encode() + b"a" * 100000
    answer = b""
    i = 0

    async def read_all() -> None:
        nonlocal answer
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                return
            answer += chunk

    rd = asyncio.ensure_future(read_all())
    try:
        while time.monotonic() - t0 < max_seconds and not rd.done():
            try:
                writer.write(head[i:i + 1])
                await writer.drain()
            except (OSError, ssl.SSLError):
                break
            i += 1
            await asyncio.wait([rd], timeout=byte_every)
        if not rd.done():
            await asyncio.wait([rd], timeout=1)
    finally:
        if rd.done():
            result["closed_after_s"].append(time.monotonic() - t0)
            status = answer.split(b"\r\n", 1)[0]
            result["statuses"][status.decode(errors="replace")[:40]] = result["statuses"].get(
                status.decode(errors="replace")[:40], 0) + 1
        else:
            rd.cancel()
            result["never_closed"] += 1
        writer.transport.abort()


async def _idle_tcp(host: str, port: int, max_seconds: float, result: dict) -> None:
    # Timed from before connect(): the edge's timer cannot start earlier, so a close
    # seen before its timeout is the edge's fault, never this busy loop's late clock.
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (OSError, asyncio.TimeoutError) as exc:
        result["connect_failed"] += 1
        result["connect_errors"].add(type(exc).__name__)
        return
    result["connected"] += 1
    try:
        got = await asyncio.wait_for(reader.read(1), max_seconds)
        result["closed_after_s"].append(time.monotonic() - t0)
        if got:
            result["sent_bytes"] += 1
    except asyncio.TimeoutError:
        result["never_closed"] += 1
    except OSError:
        result["closed_after_s"].append(time.monotonic() - t0)
    finally:
        writer.transport.abort()


def _new_result() -> dict:
    return {"connected": 0, "connect_failed": 0, "connect_errors": set(), "closed_after_s": [], "never_closed": 0,
            "statuses": {}, "sent_bytes": 0}


def _summarize_attack(r: dict) -> dict:
    c = sorted(r["closed_after_s"])
    return {"connected": r["connected"], "connect_failed": r["connect_failed"],
            "connect_errors": sorted(r["connect_errors"]), "closed": len(c), "never_closed": r["never_closed"],
            "closed_after_s_min": _r(c[0], 2) if c else None, "closed_after_s_median": _r(statistics.median(c), 2) if c else None,
            "closed_after_s_max": _r(c[-1], 2) if c else None, "statuses": r["statuses"]}


def slowloris(tmp: str, *, slow: int, idle: int, header_timeout: float, handshake_timeout: float,
              byte_every: float = 1.0, ramp_s: float = 5.0, client_interval: float = 0.05,
              limits: Mapping[str, int] | None = None, rounds: int = 1,
              log: Callable[[str], None] = print) -> dict:
    """`slow` header-byte-a-second TLS connections and `idle` silent TCP connections at a fresh edge,
    `rounds` times one after the other (the edge's RSS after each round shows whether memory is reused
    or grows), a normal client alongside (a process of its own); the figures."""
    raise_nofile(2 * (slow + idle) + 512)
    # The header timeout alone is what this measures: min_header_rate (docs/configuration.md) would
    # close a byte-a-second head after rate_grace already, so it is off here unless `limits` sets it.
    net = LoopbackEdge(tmp, timeouts={"header": header_timeout, "handshake": handshake_timeout},
                       limits={"min_header_rate": 0, **(limits or {})})
    try:
        ctx = client_context(net.ca)
        base = proc_mem_kib(net.edge.pid)
        attack_s = max(header_timeout, handshake_timeout) + ramp_s + 5
        duration = (attack_s + 3) * rounds + 4
        out_path = os.path.join(tmp, "slowloris-client.json")
        client = subprocess.Popen(net.client_argv(int(duration / client_interval) + 10, duration, client_interval,
                                                  out_path), cwd=REPO, env=_env())
        peak = {"rss": base["rss"]}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], proc_mem_kib(net.edge.pid)["rss"])
                stop.wait(0.25)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rs, ri = _new_result(), _new_result()

        async def attack() -> None:
            tasks = []
            n = max(slow, idle, 1)
            for i in range(n):
                if i < slow:
                    tasks.append(asyncio.ensure_future(_slow_header("127.0.0.1", net.port, ctx, "demo.app.lab.test",
                                                                    byte_every, attack_s, rs)))
                if i < idle:
                    tasks.append(asyncio.ensure_future(_idle_tcp("127.0.0.1", net.port, attack_s, ri)))
                await asyncio.sleep(ramp_s / n)
            await asyncio.wait(tasks, timeout=attack_s + 40)

        t0 = time.monotonic()
        rss_rounds = []
        for _ in range(rounds):
            asyncio.run(attack())
            time.sleep(1.0)
            rss_rounds.append(proc_mem_kib(net.edge.pid)["rss"])
        attack_wall = time.monotonic() - t0
        client.wait(duration + 60)
        stop.set()
        sampler.join(2)
        time.sleep(1.0)
        after = proc_mem_kib(net.edge.pid)
        health = net.health()
        with open(out_path) as fh:
            cl = json.load(fh)
        bad = bad_log_lines(net.log_text())
        alive = net.edge.alive()
    finally:
        net.close()
    out = {
        "slow_header": _summarize_attack(rs), "idle_tls": _summarize_attack(ri),
        "header_timeout_s": header_timeout, "handshake_timeout_s": handshake_timeout,
        "attack_wall_s": round(attack_wall, 1),
        "client": {k: v for k, v in cl.items() if k != "samples"},
        "edge_rss_kib": {"before": base["rss"], "peak": peak["rss"], "after": after["rss"], "hwm": after["hwm"],
                         "after_each_round": rss_rounds},
        "edge_connections_after": health.get("connections"), "edge_refused_limit": health.get("refused_limit"),
        "edge_alive": alive, "bad_log_lines": len(bad), "bad_log_sample": bad[:5],
    }
    log(f"slowloris: {slow} slow-header + {idle} idle TLS: slow closed {out['slow_header']['closed']} "
        f"(median {out['slow_header']['closed_after_s_median']} s), idle closed {out['idle_tls']['closed']} "
        f"(median {out['idle_tls']['closed_after_s_median']} s); client {cl['requests']} req, "
        f"{cl['failed']} failed, p99 {cl['p99_ms']} ms; edge RSS {base['rss']} -> peak {peak['rss']} -> "
        f"{after['rss']} KiB (after each round: {rss_rounds})")
    return out


# ================================================================= tunnel part with traffic alongside


def tunnel_garbage(tmp: str, *, cases: Sequence[TunnelCase] = TUNNEL_CASES, rounds: int = 1,
                   log: Callable[[str], None] = print) -> dict:
    net = LoopbackEdge(tmp)
    try:
        est = max(c.wait for c in cases) * rounds + 10
        out_path = os.path.join(tmp, "tunnel-client.json")
        client = subprocess.Popen(net.client_argv(int(est / 0.05) + 10, est, 0.05, out_path), cwd=REPO, env=_env())
        results: list[dict] = []
        t0 = time.monotonic()
        for _ in range(rounds):
            results += run_tunnel_cases(net.port, net.ca, cases)
        wall = time.monotonic() - t0
        client.wait(est + 60)
        with open(out_path) as fh:
            cl = json.load(fh)
        health = net.health()
        bad = bad_log_lines(net.log_text())
        trace = first_traceback(net.log_text())
        alive = net.edge.alive()
        agent_alive = net.agent.alive() if net.agent else None
        agent_log = net.log_text(net.agent) if net.agent else ""
    finally:
        net.close()
    failed = [r for r in results if not r["ok"]]
    out = {"cases": len(results), "distinct_cases": len(cases), "ok": len(results) - len(failed),
           "failed": failed, "results": results, "wall_s": round(wall, 1),
           "slowest_s": max((r["seconds"] for r in results), default=None),
           "client": {k: v for k, v in cl.items() if k != "samples"},
           "edge_alive": alive, "agent_alive": agent_alive,
           "agent_reconnects": agent_log.count("forwarding https://") - 1,
           "edge_sessions_after": health.get("sessions"),
           "bad_log_lines": len(bad), "bad_log_sample": bad[:5], "first_traceback": trace}
    if trace:
        log("tunnel: edge log:\n" + trace)
    log(f"tunnel: {out['ok']}/{len(results)} cases as documented in {wall:.1f} s; other agent: "
        f"{cl['requests']} requests, {cl['failed']} failed; edge alive={alive}")
    for f in failed:
        log(f"tunnel:   FAILED {f['case']}: expected {f['expect']}, got {f['got']}")
    return out


# ================================================================= kill -9 in the lab

LAB_PREFIX = "gfl"
LAB_STATE = f"/run/gslb-lab/{LAB_PREFIX}"
LAB_NAME = "faults"
LAB_HOST = f"{LAB_NAME}.app.{ZONE}"
UP_PORT = 19190


def lab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    sub, *rest = args
    argv = [*gslb_argv(), "lab", sub, "--prefix", LAB_PREFIX, "--state-dir", LAB_STATE, *rest]
    env = _env()
    env.pop("GSLB_LAB_PREFIX", None)
    env.pop("GSLB_LAB_STATE_DIR", None)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def lab_ok(*args: str, timeout: float = 60) -> str:
    r = lab(*args, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"gslb lab {' '.join(args)}: exit {r.returncode}: {(r.stderr or r.stdout)[-400:]}")
    return r.stdout


def exec_argv(host: str, *cmd: str) -> list[str]:
    return [*gslb_argv(), "lab", "exec", "--prefix", LAB_PREFIX, "--state-dir", LAB_STATE, host, "--", *cmd]


def loss_figures(samples: Sequence[Mapping], t_kill: float, stable: int = 5) -> dict:
    """Requests lost to a kill at t_kill: failed ones split into in flight at the kill (started before it)
    and started after it; recovery: seconds from the kill to the first success of the last run of
    `stable` successes (0 when nothing failed after the kill)."""
    failed = [s for s in samples if s["err"]]
    in_flight = [s for s in failed if s["t0"] <= t_kill <= s["t1"] or (s["t0"] <= t_kill and s["t1"] >= t_kill)]
    after = [s for s in failed if s["t0"] > t_kill]
    before = [s for s in failed if s["t1"] < t_kill]
    recovery = 0.0
    if after:
        last_fail = max(s["t1"] for s in after)
        ok_after = [s for s in samples if not s["err"] and s["t0"] >= last_fail]
        recovery = _r(ok_after[0]["t1"] - t_kill, 2) if ok_after else None
    return {"requests": len(samples), "failed": len(failed), "failed_before_kill": len(before),
            "in_flight_at_kill": len(in_flight), "lost_beyond_in_flight": len(after), "recovery_s": recovery,
            "errors": sorted({s["err"] for s in failed})[:5]}


@dataclass(frozen=True)
class KillKind:
    kind: str
    host: str             # lab host whose processes are killed ("agent": the agent we started)
    client: str           # lab client host running the loop
    mode: str             # "https" or "dns"
    restart: bool         # restart right after the kill (the part acts as the supervisor)
    why: str
    seconds: float | None = None   # loop length when it must outlast a DNS TTL (else the part's)


def kill_kinds(agent_pop: str) -> list[KillKind]:
    """What is killed, from where the loop runs; `agent_pop` is the PoP the agent is bound at."""
    watcher = next(p for p in ("jp", "eu", "in", "au", "ap", "us") if p != agent_pop)
    return [
        KillKind("edge", f"pop-{agent_pop}", f"client-{watcher}", "https", True,
                 "the agent's PoP: its session dies, the agent re-binds at another PoP; the client enters at "
                 f"its own PoP (pop-{watcher}), which reaches the agent over a peer link"),
        KillKind("edge-entry", f"pop-{watcher}", f"client-{watcher}", "https", False,
                 f"the client's own PoP (pop-{watcher}), not restarted: clients move only when the name servers "
                 "withdraw it (health fall 3 x 1 s) and the resolver's cached answer (TTL <= 30 s) runs out",
                 seconds=42.0),
        KillKind("agent", "agent", f"client-{watcher}", "https", True,
                 "the agent process: restarted at once (as systemd Restart=always would); it binds again"),
        KillKind("dns", "dns1", "client-jp", "dns", False,
                 "one of the two name servers (the lab runs one DNS process a server): unbound must ask dns2"),
        KillKind("etcd", "registry-eu", f"client-{watcher}", "https", False,
                 "one etcd member of three: quorum stays"),
        KillKind("unbound", "resolver", "client-jp", "dns", True,
                 "the lab's only resolver: every lookup fails until it is back (restarted at once)"),
    ]


def kill_lab(tmp: str, *, seconds: float = 12.0, kill_at: float = 4.0, interval: float = 0.05,
             kinds: Sequence[str] | None = None, quick_kinds: bool = False,
             log: Callable[[str], None] = print) -> dict:
    out: dict = {"prefix": LAB_PREFIX, "rows": [], "errors": []}
    procs: list[subprocess.Popen] = []
    lab("down", timeout=120)
    t = time.monotonic()
    lab_ok("up", timeout=180)
    out["lab_up_s"] = round(time.monotonic() - t, 2)
    try:
        status = json.loads(lab_ok("status", "--json", timeout=30))
        ca = status["state"]["ca"]
        token = status["state"]["authtoken_file"]
        upstream = subprocess.Popen(exec_argv("agent", sys.executable, "-m", "http.server", str(UP_PORT),
                                              "--bind", "127.0.0.1"), cwd=REPO, env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(upstream)

        def start_agent() -> subprocess.Popen:
            log_path = os.path.join(tmp, f"agent-{len(procs)}.log")
            fh = open(log_path, "ab")
            p = subprocess.Popen(exec_argv("agent", *gslb_argv(), "agent", "http", str(UP_PORT), "--name", LAB_NAME),
                                 cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            fh.close()
            p.log_path = log_path  # type: ignore[attr-defined]
            procs.append(p)
            return p

        def wait_forwarding(p: subprocess.Popen, timeout: float = 30) -> float | None:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                with open(p.log_path, errors="replace") as fh:  # type: ignore[attr-defined]
                    if "forwarding https://" in fh.read():
                        return time.monotonic() - t0
                if p.poll() is not None:
                    return None
                time.sleep(0.1)
            return None

        agent = start_agent()
        if wait_forwarding(agent) is None:
            raise RuntimeError("the lab agent never bound")
        agent_pop = _binding_pop(status)
        out["agent_pop"] = agent_pop
        log(f"kill: lab up in {out['lab_up_s']} s; agent bound at pop-{agent_pop}")
        for kk in kill_kinds(agent_pop or "us"):
            if kinds and kk.kind not in kinds:
                continue
            row = {"kind": kk.kind, "host": kk.host, "client": kk.client, "mode": kk.mode, "why": kk.why}
            try:
                # warm: the client's name is in unbound's cache and the route is up
                _lab_client(kk, ca, 3, 1.0, 0.2, tmp)
                res_path = os.path.join(tmp, f"kill-{kk.kind}.json")
                loop_s = max(seconds, kk.seconds or 0) if not quick_kinds else seconds + (10 if kk.seconds else 0)
                row["loop_s"] = loop_s
                cl = subprocess.Popen(exec_argv(kk.client, *_client_cmd(kk, ca, loop_s, interval, res_path)),
                                      cwd=REPO, env=_env(), start_new_session=True)
                procs.append(cl)
                time.sleep(kill_at)
                if kk.kind == "agent":
                    t_kill = time.time()
                    os.kill(agent.pid, signal.SIGKILL)
                    agent.wait(5)
                    agent = start_agent()
                    back = wait_forwarding(agent)
                    row["restart_s"] = _r(back, 2)
                else:
                    t_kill = max(k["time"] for k in json.loads(lab_ok("kill", "--json", kk.host, timeout=20)))
                    if kk.restart:
                        t_r = time.time()
                        lab_ok("restart", kk.host, timeout=60)
                        row["restart_s"] = _r(time.time() - t_r, 2)
                cl.wait(loop_s + 60)
                with open(res_path) as fh:
                    samples = json.load(fh)["samples"]
                row.update(loss_figures(samples, t_kill))
                if not kk.restart:
                    lab_ok("restart", kk.host, timeout=60)
                if kk.kind == "edge":
                    # give the agent a settled binding again for the next kind
                    time.sleep(1.0)
                log(f"kill: {kk.kind} ({kk.host}) from {kk.client}: {row['requests']} requests, "
                    f"{row['failed']} failed ({row['in_flight_at_kill']} in flight, "
                    f"{row['lost_beyond_in_flight']} after the kill), recovery {row['recovery_s']} s")
            except Exception as exc:  # noqa: BLE001 - one kind failing must not stop the others
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                out["errors"].append(f"{kk.kind}: {row['error']}")
                log(f"kill: {kk.kind}: ERROR {row['error']}")
            out["rows"].append(row)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        t = time.monotonic()
        r = lab("down", timeout=180)
        out["lab_down_s"] = round(time.monotonic() - t, 2)
        if r.returncode != 0:
            out["errors"].append(f"lab down: {r.stderr[-200:]}")
    return out


def dns_worker_kill(tmp: str, *, queries: int = 200, interval: float = 0.02, kill_after: int = 50,
                    log: Callable[[str], None] = print) -> dict:
    """`gslb dns --workers 2` on 127.0.0.1: SIGKILL one worker while a query loop runs (a new source
    port per query, so the kernel's SO_REUSEPORT hash spreads them over both workers); the loss."""
    from bench.procs import tree_pids
    from dns.wire import make_query
    srv = DnsServer(tmp, workers=2)
    try:
        workers = [p for p in tree_pids(srv.proc.pid) if p != srv.proc.pid]
        samples: list[dict] = []
        t_kill = 0.0
        for i in range(queries):
            if i == kill_after:
                t_kill = time.time()
                os.kill(workers[0], signal.SIGKILL)
            t0 = time.time()
            err = ""
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(make_query("demo.app.lab.test", qid=i & 0xFFFF), ("127.0.0.1", srv.port))
                    if s.recv(2048)[:2] != struct.pack("!H", i & 0xFFFF):
                        err = "wrong id"
                except OSError as exc:
                    err = type(exc).__name__
            samples.append({"t0": t0, "t1": time.time(), "err": err})
            time.sleep(interval)
        alive = srv.proc.alive()
        after = [p for p in tree_pids(srv.proc.pid) if p != srv.proc.pid] if alive else []
        text = srv.log_text()
    finally:
        srv.stop()
    row = {"kind": "dns-worker", "host": "loopback, --workers 2", "client": "loopback", "mode": "dns-direct",
           "why": "one of two worker processes of one gslb dns", "server_alive_after": alive,
           "workers_after": len(after), "respawned": text.count("event=worker_respawned"),
           **loss_figures(samples, t_kill)}
    log(f"kill: dns-worker (loopback): {row['requests']} queries, {row['failed']} failed "
        f"({row['lost_beyond_in_flight']} after the kill); server alive after: {alive}, workers {len(after)}")
    return row


def _client_cmd(kk: KillKind, ca: str, seconds: float, interval: float, out: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.faults", "client", "--mode", kk.mode, "--count", str(int(seconds / interval) + 5),
           "--duration", str(seconds), "--interval", str(interval), "--timeout", "5", "--out", out]
    if kk.mode == "https":
        return cmd + ["--host", LAB_HOST, "--ca", ca]
    return cmd + ["--host", f"app.{ZONE}"]


def _lab_client(kk: KillKind, ca: str, count: int, seconds: float, interval: float, tmp: str) -> dict:
    path = os.path.join(tmp, f"warm-{kk.kind}.json")
    subprocess.run(exec_argv(kk.client, *_client_cmd(kk, ca, seconds, interval, path)), cwd=REPO, env=_env(),
                   timeout=60, capture_output=True)
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _binding_pop(status: Mapping) -> str | None:
    eps = ",".join(status["state"]["registry"])
    for _ in range(30):
        r = subprocess.run(exec_argv("agent", "etcdctl", f"--endpoints={eps}", "--command-timeout=2s", "get",
                                     "--consistency=s", f"/gslb/bind/http/{LAB_HOST}", "--print-value-only"),
                           capture_output=True, text=True, timeout=15, env=_env(), cwd=REPO)
        try:
            if r.returncode == 0 and r.stdout.strip():
                return json.loads(r.stdout)["pop"]
        except (ValueError, KeyError, TypeError):
            pass
        time.sleep(0.3)
    return None


# ================================================================= the runner


def _jsonable(o: object) -> object:
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(type(o).__name__)


def summary_table(res: Mapping) -> list[str]:
    lines = ["| part | figure | value |", "|---|---|---|"]
    d = res.get("dns")
    if d:
        rss_b = sum(v["rss"] for v in d["rss_before_kib"].values())
        rss_a = sum(v["rss"] for v in d["rss_after_kib"].values())
        hwm = sum(v["hwm"] for v in d["rss_after_kib"].values())
        lines += [f"| dns | malformed packets (UDP + {d['tcp_sent']} TCP) | {d['packets']:,} in {d['seconds']} s "
                  f"({d['rate_pps']:,}/s, {d['senders']} senders, {d['workers']} workers) |",
                  f"| dns | crashes / bad log lines | {d['crashes']} / {d['bad_log_lines']} |",
                  f"| dns | answered (UDP, TCP) | {d['udp_answered']:,}, {d['tcp_answered']:,} |",
                  f"| dns | correct answer right after | {'yes' if d['answer_after_ok'] else 'NO'} ({d['answer_after']}) |",
                  f"| dns | RSS server+workers before / after / peak (HWM) | {rss_b:,} / {rss_a:,} / {hwm:,} KiB |"]
    t = res.get("tunnel")
    if t:
        lines += [f"| tunnel | garbage cases as documented | {t['ok']}/{t['cases']} ({t['distinct_cases']} distinct), "
                  f"slowest {t['slowest_s']} s |",
                  f"| tunnel | other agent's requests during them | {t['client']['requests']}, "
                  f"{t['client']['failed']} failed, p99 {t['client']['p99_ms']} ms |",
                  f"| tunnel | edge alive / bad log lines / agent reconnects | {t['edge_alive']} / "
                  f"{t['bad_log_lines']} / {t['agent_reconnects']} |"]
    s = res.get("slowloris")
    if s:
        sh, it = s["slow_header"], s["idle_tls"]
        lines += [f"| slowloris | slow-header conns closed / at (median, max) | {sh['closed']}/{sh['connected']} at "
                  f"{sh['closed_after_s_median']} s, {sh['closed_after_s_max']} s (header timeout "
                  f"{s['header_timeout_s']} s); answers {sh['statuses']} |",
                  f"| slowloris | idle TLS (no ClientHello) closed / at | {it['closed']}/{it['connected']} at "
                  f"{it['closed_after_s_median']} s, {it['closed_after_s_max']} s (handshake timeout "
                  f"{s['handshake_timeout_s']} s) |",
                  f"| slowloris | normal client during the attack | {s['client']['requests']} req, "
                  f"{s['client']['failed']} failed, p50 {s['client']['p50_ms']} ms, p99 {s['client']['p99_ms']} ms |",
                  f"| slowloris | edge RSS before / peak / after (after each round) | {s['edge_rss_kib']['before']:,} / "
                  f"{s['edge_rss_kib']['peak']:,} / {s['edge_rss_kib']['after']:,} KiB "
                  f"({', '.join(f'{x:,}' for x in s['edge_rss_kib'].get('after_each_round', []))}) |"]
    k = res.get("kill")
    if k:
        for row in k["rows"]:
            if "error" in row:
                lines.append(f"| kill | {row['kind']} ({row['host']}) | error: {row['error'][:80]} |")
                continue
            lines.append(f"| kill | {row['kind']} ({row['host']}, loop in {row['client']}, {row['mode']}) | "
                         f"{row['requests']} req, {row['failed']} failed: {row['in_flight_at_kill']} in flight, "
                         f"{row['lost_beyond_in_flight']} after the kill; recovery {row['recovery_s']} s"
                         + (f"; restart {row.get('restart_s')} s" if row.get("restart_s") is not None else "")
                         + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  sudo .venv/bin/python -m bench.faults\n"
                                       "  .venv/bin/python -m bench.faults --only dns --packets 200000\n"
                                       "  .venv/bin/python -m bench.faults --only tunnel --only slowloris --quick\n"
                                       "  sudo .venv/bin/python -m bench.faults --only kill\n")
    p.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="smaller counts: 50,000 packets, 1 tunnel round (3 full), 200+200 slow/idle connections once (2,000+2,000 twice full), kill loops of 8 s (14 s full)")
    p.add_argument("--packets", type=int, default=None, help="malformed DNS packets (default 1,000,000; quick 50,000)")
    a = p.parse_args(argv)
    parts = a.only or list(PARTS)
    if "kill" in parts and os.geteuid() != 0:
        print("bench.faults: the kill part needs root (the lab); use --only for the others", file=sys.stderr)
        return 2
    res: dict = {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "quick": a.quick}
    t0 = time.monotonic()

    def log(m: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gslbfaults-") as tmp:
        for part in parts:
            d = os.path.join(tmp, part)
            os.makedirs(d)
            try:
                if part == "dns":
                    n = a.packets or (50_000 if a.quick else 1_000_000)
                    res["dns"] = dns_fuzz(n, d, log=log)
                elif part == "tunnel":
                    res["tunnel"] = tunnel_garbage(d, rounds=1 if a.quick else 3, log=log)
                elif part == "slowloris":
                    n = 200 if a.quick else 2000
                    res["slowloris"] = slowloris(d, slow=n, idle=n, header_timeout=20.0, handshake_timeout=10.0,
                                                 rounds=1 if a.quick else 2, log=log)
                elif part == "kill":
                    worker_row = dns_worker_kill(d, log=log)
                    res["kill"] = kill_lab(d, seconds=8.0 if a.quick else 14.0, kill_at=3.0 if a.quick else 4.0,
                                           quick_kinds=a.quick, log=log)
                    res["kill"]["rows"].append(worker_row)
            except Exception as exc:  # noqa: BLE001 - report the part as failed, go on with the next
                res.setdefault("errors", []).append(f"{part}: {type(exc).__name__}: {exc}")
                log(f"{part}: ERROR {type(exc).__name__}: {exc}")
    res["seconds"] = round(time.monotonic() - t0, 1)
    table = summary_table(res)
    print("\n".join(table))
    os.makedirs(RESULTS, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS, f"faults-{stamp}{'-quick' if a.quick else ''}.json")
    with open(path, "w") as fh:
        json.dump({**res, "table": table}, fh, indent=1, default=_jsonable)
    print(f"results: {path}")
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
