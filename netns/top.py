"""`gslb lab top`: every PoP's edge, its connections, request rate and DNS health, live.

Owns three parts, kept apart:

- the core, without I/O or a clock: `Sample`s in, `Row`s out. `pop_rows(prev, cur)`
  turns two samples into one row per PoP: the request rate from the difference of the
  edge's `requests` counter between the two (so a rate needs two samples; a restarted
  edge, whose counter starts again at 0, has none for one interval), dead and
  unreachable edges, and each name server's view of the PoP's addresses.
  Tested with dicts and times (tests/test_lab_top.py).
- the collector (`Collector.sample()`): reads the lab's state.json (hosts and recorded
  pids: a restart's new pid is seen at the next sample), fetches every edge's
  `/healthz` (`HEALTH_PORT`) over sockets created inside a client host of the lab, and
  asks every name server's control socket (a unix socket in the state directory) for
  its health view. setns(2) changes only the calling thread, so one short-lived thread
  enters the client namespace just to create the sockets; they stay in that namespace,
  and the main thread never sends from the root namespace (docs/lab.md, rules).
- the screen (rich): `render()` for one frame, `live()` for the loop (q quits, so does
  Ctrl-C).

Must not import dns/ or edge/: the lab starts them only through their command line.
The control socket's protocol (dns/control.py) is one JSON line each way:
`{"op": "health"}` -> `{"ok": true, "drained": [...], "addresses": [{"pop", "address",
"state", ...}, ...]}`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from netns.errors import LabError, NotRootError
from netns.guard import require_socket_in
from netns.topology import CLONE_NEWNET, NETNS_RUN_DIR

MAX_HEALTH_REPLY = 64 * 1024      # bytes of a /healthz answer read (it is well under 1 KiB)
MAX_CONTROL_REPLY = 4 << 20       # bytes of a control socket reply (one line of JSON per address)
MIN_INTERVAL, MAX_INTERVAL = 0.1, 60.0

# Edge states shown in the "edge" column.
ALIVE, NO_ANSWER, DEAD, NONE = "alive", "no answer", "dead", "none"


# ---------------------------------------------------------------- the core (no I/O)


@dataclass(frozen=True)
class EdgeSample:
    """One PoP's edge at one moment: its recorded process, and its /healthz if it answered."""

    host: str                                  # "pop-eu"
    pop: str                                   # "eu"
    city: str | None
    pid: int | None                            # the lab's recorded pid; None: the lab runs no edge there
    alive: bool                                # that process runs (pid and start time match)
    health: Mapping[str, Any] | None = None    # its /healthz JSON; None: no answer
    error: str | None = None                   # why there is no answer


@dataclass(frozen=True)
class Sample:
    t: float                                   # monotonic seconds (rates)
    wall: float                                # epoch seconds (the header's clock)
    edges: tuple[EdgeSample, ...]
    views: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    #        name server host -> its control socket's health reply; None: no reply
    started: float | None = None               # epoch start of the lab's oldest process (uptime)


@dataclass(frozen=True)
class DnsView:
    """What one name server thinks of one PoP's addresses."""

    up: int
    total: int
    drained: bool = False

    @property
    def label(self) -> str:
        if self.drained:
            return f"drained {self.up}/{self.total}"
        return f"{self.up}/{self.total} up"

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "total": self.total, "drained": self.drained}


@dataclass(frozen=True)
class Row:
    host: str
    pop: str
    city: str | None
    pid: int | None
    state: str                                 # ALIVE | NO_ANSWER | DEAD | NONE
    connections: int | None                    # open client connections (/healthz)
    sessions: int | None                       # agent sessions
    rps: float | None                          # requests per second since the previous sample
    requests: int | None                       # the edge's request counter (since it started)
    dns: tuple[tuple[str, DnsView | None], ...]   # (name server, its view; None: no view)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pop": self.pop, "city": self.city, "pid": self.pid, "state": self.state,
                "connections": self.connections, "sessions": self.sessions,
                "rps": None if self.rps is None else round(self.rps, 2), "requests": self.requests,
                "dns": {name: (v.to_json() if v is not None else None) for name, v in self.dns},
                "error": self.error}


def _int(health: Mapping[str, Any] | None, key: str) -> int | None:
    v = health.get(key) if health is not None else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def request_rate(prev: EdgeSample | None, cur: EdgeSample, dt: float) -> float | None:
    """Requests per second between two samples of one edge; None when there is no honest rate:
    no earlier sample, no answer in either, no counter, another process (a restart: the pid
    in /healthz changed), or a counter that went back."""
    if prev is None or dt <= 0 or prev.health is None or cur.health is None:
        return None
    if prev.health.get("pid") != cur.health.get("pid"):
        return None
    a, b = _int(prev.health, "requests"), _int(cur.health, "requests")
    if a is None or b is None or b < a:
        return None
    return (b - a) / dt


def dns_view(reply: Mapping[str, Any] | None, pop: str) -> DnsView | None:
    """One name server's view of `pop`'s addresses; None when it gave no (usable) reply."""
    if reply is None:
        return None
    addresses = reply.get("addresses")
    if not isinstance(addresses, list):
        return None
    mine = [a for a in addresses if isinstance(a, dict) and a.get("pop") == pop]
    drained = pop in (reply.get("drained") or ())
    return DnsView(up=sum(1 for a in mine if a.get("state") == "up"), total=len(mine), drained=drained)


def edge_state(e: EdgeSample) -> str:
    if e.pid is None:
        return NONE
    if not e.alive:
        return DEAD
    return ALIVE if e.health is not None else NO_ANSWER


def pop_rows(prev: Sample | None, cur: Sample) -> list[Row]:
    """One row per PoP of `cur`, in its order; rates against `prev` (None: the first sample)."""
    before = {e.host: e for e in prev.edges} if prev is not None else {}
    dt = cur.t - prev.t if prev is not None else 0.0
    rows = []
    for e in cur.edges:
        state = edge_state(e)
        # A dead edge's last words are not its state: show nothing from /healthz then.
        health = e.health if state == ALIVE else None
        rows.append(Row(
            host=e.host, pop=e.pop, city=e.city, pid=e.pid, state=state,
            connections=_int(health, "connections"), sessions=_int(health, "sessions"),
            rps=request_rate(before.get(e.host), e, dt) if health is not None else None,
            requests=_int(health, "requests"),
            dns=tuple((name, dns_view(reply, e.pop)) for name, reply in cur.views.items()),
            error=None if state in (ALIVE, NONE) else (e.error or ("process gone" if state == DEAD else None)),
        ))
    return rows


@dataclass(frozen=True)
class Totals:
    pops: int
    alive: int                 # edges alive and answering
    rps: float | None          # sum over the edges that have a rate
    connections: int
    sessions: int

    def to_json(self) -> dict[str, Any]:
        return {"pops": self.pops, "alive": self.alive, "rps": None if self.rps is None else round(self.rps, 2),
                "connections": self.connections, "sessions": self.sessions}


def totals(rows: list[Row]) -> Totals:
    rates = [r.rps for r in rows if r.rps is not None]
    return Totals(pops=len(rows), alive=sum(1 for r in rows if r.state == ALIVE),
                  rps=sum(rates) if rates else None,
                  connections=sum(r.connections or 0 for r in rows), sessions=sum(r.sessions or 0 for r in rows))


def uptime_label(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def snapshot_json(prefix: str, prev: Sample | None, cur: Sample, interval: float) -> dict[str, Any]:
    """What `gslb lab top --once --json` prints (keys are stable; docs/lab.md)."""
    rows = pop_rows(prev, cur)
    return {
        "prefix": prefix,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cur.wall)),
        "uptime_s": None if cur.started is None else round(cur.wall - cur.started, 1),
        "interval_s": round(cur.t - prev.t, 3) if prev is not None else None,
        "every_s": interval,
        "pops": [r.to_json() for r in rows],
        "totals": totals(rows).to_json(),
        "dns": {name: reply is not None for name, reply in cur.views.items()},
    }


# ---------------------------------------------------------------- the collector (I/O)


def sockets_in(ns: str, families: list[int], timeout: float = 5.0) -> list[socket.socket]:
    """TCP sockets created inside namespace `ns`, one per family given.

    A short-lived thread enters `ns` (setns(2) changes only the calling thread) and creates
    them; a socket stays in the namespace it was created in, so the caller uses them from
    any thread. Raises LabError when the namespace is gone."""
    out: list[socket.socket] = []
    errors: list[str] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errors.append(f"setns {ns}: {os.strerror(ctypes.get_errno())}")
                    return
            finally:
                os.close(fd)
            for family in families:
                out.append(socket.socket(family, socket.SOCK_STREAM))
        except OSError as exc:
            errors.append(f"{ns}: {exc.strerror or exc}")

    t = threading.Thread(target=run, name="lab-top-sockets", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive() or errors:
        for s in out:
            s.close()
        raise LabError(errors[0] if errors else f"creating sockets in {ns} did not finish within {timeout:.0f} s")
    return out


def _parse_healthz(buf: bytes) -> dict[str, Any] | str:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return "incomplete answer"
    status = head.split(b"\r\n", 1)[0]
    parts = status.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"200":
        return f"answered {status[:40].decode('latin-1')!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return "answer is not JSON"
    return data if isinstance(data, dict) else "answer is not a JSON object"


def fetch_healthz(socks: list[socket.socket], targets: list[tuple[str, int]],
                  timeout: float) -> list[dict[str, Any] | str]:
    """GET /healthz over each socket (already created, unconnected) to its target, all at
    once, within `timeout` seconds in total. Each result is the JSON object, or a short
    reason why not ("Connection refused", "timeout", ...). Closes the sockets."""
    results: list[dict[str, Any] | str | None] = [None] * len(socks)
    bufs = [bytearray() for _ in socks]
    sel = selectors.DefaultSelector()
    try:
        for i, (s, (addr, port)) in enumerate(zip(socks, targets)):
            s.setblocking(False)
            rc = s.connect_ex((addr, port))
            if rc not in (0, errno.EINPROGRESS):
                results[i] = os.strerror(rc)
                continue
            sel.register(s, selectors.EVENT_WRITE, i)
        deadline = time.monotonic() + timeout
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, events in sel.select(left):
                s, i = key.fileobj, key.data
                assert isinstance(s, socket.socket)
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        results[i] = os.strerror(err)
                        sel.unregister(s)
                        continue
                    addr = targets[i][0]
                    host = f"[{addr}]" if ":" in addr else addr
                    try:
                        # Tiny: it fits a fresh socket's send buffer in one call.
                        s.send(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    except OSError as exc:
                        results[i] = exc.strerror or str(exc)
                        sel.unregister(s)
                        continue
                    sel.modify(s, selectors.EVENT_READ, i)
                    continue
                try:
                    chunk = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    results[i] = exc.strerror or str(exc)
                    sel.unregister(s)
                    continue
                bufs[i] += chunk
                if not chunk or len(bufs[i]) > MAX_HEALTH_REPLY:
                    results[i] = _parse_healthz(bytes(bufs[i])) if chunk == b"" else "answer too large"
                    sel.unregister(s)
        for key in list(sel.get_map().values()):
            results[key.data] = "timeout"
    finally:
        sel.close()
        for s in socks:
            s.close()
    return [r if r is not None else "no answer" for r in results]


def control_health(path: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """A name server's health view from its control socket (one JSON line each way); None when
    it does not answer (not running, stopped) or answers something else."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b'{"op": "health"}\n')
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < MAX_CONTROL_REPLY:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
    except (OSError, ValueError):
        return None
    return reply if isinstance(reply, dict) and reply.get("ok") else None


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class Collector:
    """Samples one lab. Each `sample()` re-reads state.json (a restart's new pid counts at once)."""

    def __init__(self, prefix: str, state_dir: str | None = None, timeout: float = 1.0) -> None:
        from netns import lab

        self.prefix = prefix
        self.paths = lab.lab_paths(prefix, state_dir)
        self.timeout = timeout
        self._boot = _boot_time()
        self._tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> Sample | None:
        """One sample; None when the lab is not up (no state)."""
        from netns import lab, procs

        state = lab.read_state(self.paths)
        if state is None:
            return None
        _require_root()
        pops = [h for h in state.hosts if h.get("role") == "pop"]
        edge_of = {p.host: p for p in state.processes if p.name == "edge"}
        client = next((h for h in state.hosts if h.get("role") == "client"), None)
        probes = [(h["ipv4"][0], lab.HEALTH_PORT) for h in pops if h.get("ipv4")]
        answers: list[dict[str, Any] | str]
        # The sample's time is when the probes go out: the answers come within milliseconds
        # (a silent edge has no counter to rate anyway), and the cadence stays even.
        t, wall = time.monotonic(), time.time()
        try:
            if client is None:
                raise LabError("the lab has no client host to probe from")
            socks = sockets_in(client["netns"], [socket.AF_INET] * len(probes))
            try:
                for s in socks:
                    require_socket_in(s, client["netns"])   # never a root-namespace socket
            except LabError:
                for s in socks:
                    s.close()
                raise
            answers = fetch_healthz(socks, probes, self.timeout)
        except LabError as exc:
            answers = [str(exc)] * len(probes)
        edges = []
        j = 0
        for h in pops:
            p = edge_of.get(h["name"])
            answer: dict[str, Any] | str = "no address"
            if h.get("ipv4"):
                answer, j = answers[j], j + 1
            edges.append(EdgeSample(
                host=h["name"], pop=h.get("region") or h["name"], city=h.get("city"),
                pid=p.pid if p else None, alive=procs.alive(p) if p else False,
                health=answer if isinstance(answer, dict) else None,
                error=answer if isinstance(answer, str) else None))
        views = {h["name"]: control_health(str(self.paths.dns_control(h["name"])), min(self.timeout, 0.5))
                 for h in state.hosts if h.get("role") == "dns"}
        started = None
        if self._boot is not None and state.processes:
            ticks = [p.starttime for p in state.processes if p.starttime >= 0]
            if ticks:
                started = self._boot + min(ticks) / self._tick
        return Sample(t=t, wall=wall, edges=tuple(edges), views=views, started=started)


# ---------------------------------------------------------------- the screen (rich)


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


def _view_cell(v: DnsView | None) -> str:
    if v is None:
        return "[dim]?[/dim]"
    if v.drained:
        return f"[blue]{v.label}[/blue]"
    if v.total and v.up == v.total:
        return f"[green]{v.label}[/green]"
    if v.up == 0:
        return f"[red]{v.label}[/red]"
    return f"[yellow]{v.label}[/yellow]"


_STATE_STYLE = {ALIVE: "green", NO_ANSWER: "yellow", DEAD: "bold red", NONE: "dim"}


def render(prefix: str, prev: Sample | None, cur: Sample | None, interval: float, live: bool = True) -> Any:
    """One frame: header (lab, uptime, time, totals), the PoP table, footer (keys)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    footer = Text.from_markup(f"[dim]every {interval:g} s   q quit   Ctrl-C quit[/dim]") if live else None
    if cur is None:
        parts: list[Any] = [Text.from_markup(f"[bold]lab {prefix}[/bold]  [red]not up[/red] "
                                             f"(`gslb lab up --prefix {prefix}` starts it)")]
        return Group(*parts, *([footer] if footer else []))
    rows = pop_rows(prev, cur)
    tot = totals(rows)
    clock = time.strftime("%H:%M:%S", time.gmtime(cur.wall))
    up = uptime_label(None if cur.started is None else cur.wall - cur.started)
    alive_style = "green" if tot.alive == tot.pops else "red"
    header = Text.from_markup(
        f"[bold]lab {prefix}[/bold]  up {up}  {clock} UTC   "
        f"[{alive_style}]{tot.alive}/{tot.pops} PoPs answering[/{alive_style}]   "
        f"{_rate(tot.rps)} rps   {tot.connections} connections   {tot.sessions} sessions")
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for col, just in (("PoP", "left"), ("city", "left"), ("edge", "left"), ("pid", "right"), ("conns", "right"),
                      ("sessions", "right"), ("rps", "right"), ("requests", "right")):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    names = [name for name, _ in rows[0].dns] if rows else list(cur.views)
    for name in names:
        table.add_column(name, no_wrap=True)
    for r in rows:
        style = _STATE_STYLE[r.state]
        table.add_row(r.host, r.city or "-", f"[{style}]{r.state}[/{style}]", _num(r.pid), _num(r.connections),
                      _num(r.sessions), _rate(r.rps), _num(r.requests), *(_view_cell(v) for _, v in r.dns))
    parts = [header, table]
    return Group(*parts, *([footer] if footer else []))


def check_interval(interval: float) -> float:
    if not (MIN_INTERVAL <= interval <= MAX_INTERVAL):
        raise LabError(f"--interval {interval:g}: must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} seconds")
    return interval


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("`gslb lab top` creates its probe sockets inside a lab host and needs root: "
                           "run `sudo gslb lab top`")


def once(collector: Collector, interval: float) -> tuple[Sample | None, Sample | None]:
    """Two samples `interval` apart (a rate needs two): (first, second); (None, None) when not up."""
    first = collector.sample()
    if first is None:
        return None, None
    time.sleep(max(0.0, first.t + interval - time.monotonic()))
    return first, collector.sample()


def live(collector: Collector, interval: float, console: Any, first: Sample | None = None) -> None:
    """The live screen until q or Ctrl-C (KeyboardInterrupt is the caller's to catch),
    starting from `first` when the caller has sampled already."""
    import select
    import sys
    import termios
    import tty

    from rich.live import Live

    stdin = sys.stdin
    tty_fd = stdin.fileno() if stdin is not None and stdin.isatty() else None
    saved = termios.tcgetattr(tty_fd) if tty_fd is not None else None
    try:
        if tty_fd is not None:
            tty.setcbreak(tty_fd)   # keys one at a time, no echo; Ctrl-C still raises KeyboardInterrupt
        cur = first if first is not None else collector.sample()
        with Live(render(collector.prefix, None, cur, interval), console=console, screen=True,
                  auto_refresh=False, transient=False) as screen:
            while True:
                due = (cur.t if cur is not None else time.monotonic()) + interval
                while (left := due - time.monotonic()) > 0:
                    if tty_fd is None:
                        time.sleep(left)
                        break
                    ready, _, _ = select.select([tty_fd], [], [], left)
                    if ready:
                        key = os.read(tty_fd, 1)
                        if key in (b"q", b"Q") or key == b"":
                            return
                prev, cur = cur, collector.sample()
                screen.update(render(collector.prefix, prev, cur, interval), refresh=True)
    finally:
        if saved is not None:
            termios.tcsetattr(tty_fd, termios.TCSADRAIN, saved)
