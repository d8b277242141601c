"""The asyncio shell around `dns.engine.Engine`: sockets, signals, workers.

Owns listening (UDP and TCP, IPv4 and IPv6), TCP framing (RFC 1035 4.2.2,
RFC 7766: pipelined queries, idle timeout, a cap on connections), SIGHUP
reloads, SIGTERM exit, and worker processes sharing each port through
SO_REUSEPORT. It makes no DNS decision: every byte goes through
`Engine.respond`, which never raises. Health: the process that owns the
workers (or the only one) runs the `dns.monitor.HealthMonitor`; a worker
reads its snapshots from a pipe (`health_feed`) and acknowledges each.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

from dns.engine import Engine
from dns.log import log
from plumbing.addr import join_host_port
from plumbing.listen import listen_socket
from plumbing.procs import RESPAWN_LIMIT, RESPAWN_WINDOW, RespawnBudget, close_inherited, die_with_parent, fork_worker_process  # noqa: F401

# RFC 7766 6.2.3: a server may bound the messages it buffers per connection;
# a length prefix allows 65535, nothing bigger is a DNS message.
_MAX_TCP_BUFFER = 65535 + 2


class UdpReader:
    """UDP without a transport: on readability, drain the socket in a bounded batch.

    Faster than a DatagramProtocol (no per-datagram transport machinery, one
    wake-up for many queries). A reply that finds the send buffer full is
    dropped, as a congested UDP path would drop it; the client retries.
    """

    BATCH = 64  # bounded so TCP connections and signals get their turn

    def __init__(self, server: "DnsServer", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock

    def on_readable(self) -> None:
        sock = self.sock
        respond = self.server.engine.respond
        rrl = self.server.rrl   # None unless [rrl] enabled: one test per datagram when off
        recvfrom, sendto = sock.recvfrom, sock.sendto
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. an ICMP error queued for an earlier reply
            reply = respond(data, addr[0])
            if rrl is not None and reply is not None:
                # Only UDP is limited: a TCP peer's address is proven by the handshake.
                reply = rrl.filter(data, reply, addr[0], time.monotonic())
            if reply is not None:
                try:
                    sendto(reply, addr)
                except OSError:
                    self.server.stats["udp_send_errors"] += 1


class TcpProtocol(asyncio.Protocol):
    """One TCP connection: length-prefixed messages, answered in order (RFC 7766 6.2.1.1)."""

    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.transport: Any = None
        self.buf = b""
        self.peer = ""
        self.last = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        srv = self.server
        if len(srv.tcp_connections) >= srv.tcp_max_connections:
            # RFC 7766 6.2.2: a server may close connections to protect its resources.
            srv.stats["tcp_refused"] += 1
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.last = time.monotonic()
        srv.tcp_connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        buf = self.buf + data if self.buf else data
        engine = self.server.engine
        out = []
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < n + 2:
                break
            reply = engine.respond(buf[2:n + 2], self.peer, True)
            buf = buf[n + 2:]
            if reply is not None:
                out.append(len(reply).to_bytes(2, "big") + reply)
        if out:
            self.transport.write(b"".join(out))
        self.buf = buf
        if len(buf) > _MAX_TCP_BUFFER:
            self.transport.abort()

    def pause_writing(self) -> None:
        # A client that pipelines but does not read: stop reading its queries.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tcp_connections.discard(self)


# Bursts from resolvers outrun one Python thread for a moment: a larger UDP
# receive queue absorbs them instead of dropping (the kernel caps it at net.core.rmem_max).
_UDP_RCVBUF = 4 << 20


Listener = tuple[str, int, socket.socket, socket.socket]   # host, port, UDP, TCP (listening)


def bind_listeners(listen: tuple[tuple[str, int], ...], *, reuse_port: bool = False) -> list[Listener]:
    """A UDP and a TCP socket on every address of `listen` (port 0: one ephemeral port for both).

    Each family its own socket ([::]:53 beside 0.0.0.0:53), SO_REUSEPORT with workers. On
    failure every socket opened so far is closed and the OSError ("cannot listen on ...") raised."""
    out: list[Listener] = []
    try:
        for host, port in listen:
            udp = listen_socket(host, port, socket.SOCK_DGRAM, reuse_port=reuse_port, rcvbuf=_UDP_RCVBUF)
            if port == 0:
                port = udp.getsockname()[1]  # TCP on the same ephemeral port
            try:
                tcp = listen_socket(host, port, socket.SOCK_STREAM, reuse_port=reuse_port)
            except OSError:
                udp.close()
                raise
            out.append((host, port, udp, tcp))
    except BaseException:
        close_listeners(out)
        raise
    return out


def bind_worker_listeners(listen: tuple[tuple[str, int], ...], n: int) -> list[list[Listener]]:
    """One set of listeners per worker slot, all on the same ports (SO_REUSEPORT): the kernel
    spreads queries over the slots. The first set fixes ephemeral (port 0) ports for the rest."""
    slots: list[list[Listener]] = []
    try:
        first = bind_listeners(listen, reuse_port=True)
        slots.append(first)
        fixed = tuple((host, port) for host, port, _, _ in first)
        for _ in range(n - 1):
            slots.append(bind_listeners(fixed, reuse_port=True))
    except BaseException:
        for slot in slots:
            close_listeners(slot)
        raise
    return slots


def close_listeners(listeners: list[Listener]) -> None:
    for _, _, udp, tcp in listeners:
        udp.close()
        tcp.close()


def listener_fds(listeners: list[Listener]) -> set[int]:
    return {fd for _, _, udp, tcp in listeners for fd in (udp.fileno(), tcp.fileno())}


class DnsServer:
    """Listens on every address of `listen` (or on `sockets`, bound beforehand) and serves `engine`."""

    def __init__(self, engine: Engine, listen: tuple[tuple[str, int], ...], *,
                 reload: Callable[[], Engine] | None = None, reuse_port: bool = False,
                 tcp_idle_timeout: float = 10.0, tcp_max_connections: int = 512,
                 workers: int = 1) -> None:
        self.engine = engine
        self.workers = workers   # how many processes share the ports: RRL's rate is split over them
        self.rrl: Any = None
        self._set_rrl(engine)
        self.listen = listen
        self._reload = reload
        self.reuse_port = reuse_port
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_connections = tcp_max_connections
        engine.options.set_keepalive(tcp_idle_timeout)  # RFC 7828: advertise what we apply
        self.tcp_connections: set[TcpProtocol] = set()
        self.stats = {"tcp_refused": 0, "tcp_idle_closed": 0, "udp_send_errors": 0}
        self.reloads = {"ok": 0, "failed": 0}
        self.metrics_listen: tuple[str, int] | None = None  # /metrics here (a single process)
        self.stats_sock: socket.socket | None = None        # the supervisor asks for counters (a worker)
        self.monitor: Any = None                        # HealthMonitor, in a single process
        self.health_feed: tuple[int, int] | None = None  # (snapshot pipe, ack pipe), in a worker
        self._feed_buf = b""
        self._rrl_reported = b""
        # Bound before serving (bind_listeners): by the process owning the workers, before it
        # drops root (--user), so a worker, a respawned one too, never needs privileges.
        self.sockets: list[Listener] | None = None
        self.acme: Any = None          # dns.acme.AcmeTxtSource when [acme] is enabled
        self.acme_txt: dict[bytes, tuple[str, ...]] = {}
        self._udp_sockets: list[socket.socket] = []
        self._servers: list[Any] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.sockets is None:
            self.sockets = bind_listeners(self.listen, reuse_port=self.reuse_port)
        for host, port, udp, tcp in self.sockets:
            reader = UdpReader(self, udp)
            loop.add_reader(udp.fileno(), reader.on_readable)
            self._udp_sockets.append(udp)
            self._servers.append(await loop.create_server(lambda: TcpProtocol(self), sock=tcp))
            log("listening", address=join_host_port(host, port), proto="udp+tcp")

    def _set_rrl(self, engine: Engine) -> None:
        """Response rate limiting (dns/rrl.py) for `engine`'s `[rrl]`: a new table only when
        the settings change (a reload keeps the buckets); raises ValueError for bad settings."""
        settings = engine.cfg.rrl
        if not settings.enabled:
            self.rrl = None
            return
        if self.rrl is None or self._rrl_settings != settings:
            from dns.rrl import ResponseRateLimiter
            self.rrl = ResponseRateLimiter.from_settings(settings, workers=self.workers,
                                                         zone=engine.zone.origin, cookies=engine.cookies)
        self.rrl.cookies = engine.cookies   # secrets may change on reload
        self._rrl_settings = settings

    def reload(self) -> bool:
        """Swap in a freshly built engine; on any error keep the old one (and say why)."""
        if self._reload is None:
            return False
        try:
            engine = self._reload()
            self._set_rrl(engine)
        except Exception as exc:  # noqa: BLE001 - a bad reload must never stop the server
            log("reload_failed", level="error", error=str(exc), kept="previous configuration")
            self.reloads["failed"] += 1
            return False
        # The health view (a checker's state) outlives configurations.
        engine.options.set_keepalive(self.tcp_idle_timeout)
        engine.set_health(self.engine.health)
        engine.carry_counters(self.engine)
        if self.acme_txt:
            engine.set_acme(self.acme_txt)
        self.reloads["ok"] += 1
        old, self.engine = self.engine, engine
        old.close()
        log("reloaded", zone=engine.zone.origin_text, pops=len(engine.cfg.pops),
            geoip_db=engine.locator.db.path if engine.locator else "none")
        if self.monitor is not None:
            self.monitor.reconfigure(engine.cfg)
        if self.acme is not None and self.acme.settings != engine.cfg.acme:
            log("acme_settings_changed", level="warning", applied="after a restart")
        return True

    def _acme_changed(self, txt: Any) -> None:
        """The registry's DNS-01 TXT set changed (dns/acme.py): serve it."""
        self.acme_txt = dict(txt.names)
        refused = self.engine.set_acme(self.acme_txt)
        from dns.wire import name_to_text
        log("acme_txt_updated", level="debug", names=len(txt.names) - len(refused),
            not_served=",".join(name_to_text(n) for n in refused[:5]) or "none")

    def apply_health(self, snap: Any) -> None:
        """A new health view: swap it in (the engine empties its reply cache)."""
        if snap is not self.engine.health:
            self.engine.set_health(snap)

    def _on_feed(self) -> None:
        """A worker: read snapshot lines from the monitor, apply the newest, acknowledge it."""
        from dns.health import HealthError, HealthView
        read_fd, ack_fd = self.health_feed  # type: ignore[misc]
        try:
            data = os.read(read_fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:  # the monitor's process is gone (we get SIGTERM from prctl too)
            asyncio.get_running_loop().remove_reader(read_fd)
            return
        self._feed_buf += data
        *lines, self._feed_buf = self._feed_buf.split(b"\n")
        if not lines:
            return
        try:
            snap = HealthView.decode(lines[-1])
        except HealthError as exc:
            log("health_feed_error", level="error", error=str(exc))
            return
        self.apply_health(snap)
        try:
            os.write(ack_fd, f"{os.getpid()} {snap.version}\n".encode())
        except OSError:
            pass

    async def _sweep_idle(self) -> None:
        """RFC 7766 6.2.3: close connections idle longer than the timeout."""
        period = min(1.0, self.tcp_idle_timeout / 2)
        while True:
            await asyncio.sleep(period)
            if self.rrl is not None:
                self.rrl.sweep(time.monotonic())   # "stopped limiting" lines after a flood ends
                self.report_rrl()
            cutoff = time.monotonic() - self.tcp_idle_timeout
            for conn in [c for c in self.tcp_connections if c.last < cutoff]:
                self.stats["tcp_idle_closed"] += 1
                self.tcp_connections.discard(conn)
                conn.transport.close()

    def report_rrl(self) -> None:
        """A worker: tell the parent (`gslb dns explain`, op "rrl") which RRL buckets are limited,
        when that changed: one line on the ack pipe, `rrl PID JSON`, short enough (<= PIPE_BUF)
        that lines of several workers never interleave."""
        if self.health_feed is None or self.rrl is None:
            return
        import json
        rows = [{k: r[k] for k in ("netblock", "class", "qname", "qtype", "limited") if k in r}
                for r in self.rrl.limited(time.monotonic())]
        line = b""
        while True:
            line = f"rrl {os.getpid()} {json.dumps(rows, separators=(',', ':'))}\n".encode()
            if len(line) <= 4000 or not rows:
                break
            rows = rows[:len(rows) // 2]
        if line == self._rrl_reported:
            return
        try:
            os.write(self.health_feed[1], line)
            self._rrl_reported = line
        except OSError:
            pass   # the parent is gone or busy: the next sweep tries again

    def stop(self) -> None:
        self._stop.set()

    async def _start_metrics(self) -> Any:
        """The worker's side of the supervisor's scrapes, or this process's own /metrics."""
        from dns import metrics as dm
        if self.stats_sock is not None:
            dm.serve_worker_stats(self.stats_sock, self)
        if self.metrics_listen is None:
            return None
        collector = dm.DnsCollector()
        collector.monitor = self.monitor

        async def refresh() -> dict[str, Any]:
            return dm.local_snapshot(self)
        return await dm.start_listener(*self.metrics_listen, collector, refresh)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        # The handlers first: the UDP readers answer while start() still awaits its TCP
        # listeners, so a SIGHUP relayed then (the server answers: a client may reload it) must
        # not meet the SIG_IGN a worker starts with; a reload asked before start() is done
        # runs right after it.
        started = False
        pending: list[bool] = []

        def hup() -> None:
            if started:
                self.reload()
            else:
                pending.append(True)
        loop.add_signal_handler(signal.SIGHUP, hup)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        if early_hup.take():   # one that came while the process was still starting (see _EarlyHup)
            pending.append(True)
        await self.start()
        started = True
        if pending:
            self.reload()
        if self.health_feed is not None:
            os.set_blocking(self.health_feed[0], False)
            loop.add_reader(self.health_feed[0], self._on_feed)
        if self.monitor is not None:
            await self.monitor.start()
        metrics = await self._start_metrics()
        if self.engine.cfg.acme.enabled and self.acme is None:
            from dns.acme import AcmeTxtSource
            self.acme = AcmeTxtSource(self.engine.cfg.acme, self._acme_changed)
            self.acme.start()
        sweeper = asyncio.create_task(self._sweep_idle())
        await self._stop.wait()
        sweeper.cancel()
        if self.acme is not None:
            await self.acme.stop()
        if metrics is not None:
            await metrics.cleanup()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.health_feed is not None:
            loop.remove_reader(self.health_feed[0])
        for sock in self._udp_sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        for s in self._servers:
            s.close()
        for c in list(self.tcp_connections):
            c.transport.close()
        self.engine.close()
        rrl = {f"rrl_{k}": v for k, v in self.rrl.stats().items()} if self.rrl is not None else {}
        log("stopped", **self.engine.stats, **self.stats, **rrl)


def _run_loop(coro: Any) -> None:
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


class _EarlyHup:
    """A SIGHUP that comes before the event loop's handler is in place: latched, not lost.

    A process is reloadable from its first answer on, and a worker answers from whichever of
    its sockets is up first, while another worker may still be loading its database (slow
    under strace or load); a reload relayed to it then must not kill it (SIGHUP's default)
    nor vanish in a SIG_IGN: `install` latches it, and `DnsServer.serve` takes the latch once
    its own handler is in place and reloads when it is up (the configuration it loaded may
    predate the edit the reload is for)."""

    def __init__(self) -> None:
        self.seen = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.seen = True

    def install(self) -> None:
        self.seen = False
        signal.signal(signal.SIGHUP, self._handler)

    def take(self) -> bool:
        seen, self.seen = self.seen, False
        return seen


early_hup = _EarlyHup()


def run_single(server_factory: Callable[[], DnsServer]) -> int:
    """Serve in this process until SIGTERM/SIGINT. Returns the exit status."""
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
        early_hup.install()   # not latched yet (a forked worker and `gslb dns` latch it before)
    async def main() -> None:
        await server_factory().serve()
    from dns.control import ControlError
    try:
        _run_loop(main())
    except ControlError as exc:
        log("control_failed", level="error", error=str(exc))
        return 1
    except OSError as exc:
        log("listen_failed", level="error", error=str(exc))
        return 1
    return 0


# The worker plumbing both daemons share (plumbing/procs.py); the old names stay importable.
_die_with_parent = die_with_parent
_close_inherited = close_inherited


def _fork_worker(server_factory: Callable[[], DnsServer], feed: tuple[int, int],
                 close_fds: list[int], from_loop: bool = False, stats: socket.socket | None = None,
                 sockets: list[Listener] | None = None) -> int:
    """Fork one worker reading health snapshots from `feed` (snapshot pipe, ack pipe), answering
    the parent's metrics requests on `stats`, and serving on `sockets` (its slot's listeners,
    bound by the parent; None: it binds its own); in the child: close the parent's descriptors
    in `close_fds` (everything inherited but `feed`, `stats` and `sockets`, when forked
    `from_loop`), serve, _exit."""
    # Until the loop's reload handler is in place, a relayed SIGHUP is latched
    # (_EarlyHup): it must neither kill a worker that is still starting nor be lost.
    pid = fork_worker_process(early_hup.install)
    if pid:
        return pid
    _die_with_parent()
    code = 1
    try:
        if from_loop:
            _close_inherited(set(feed) | ({stats.fileno()} if stats is not None else set())
                             | (listener_fds(sockets) if sockets else set()))
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass

        def factory() -> DnsServer:
            srv = server_factory()
            srv.health_feed = feed
            srv.stats_sock = stats
            if sockets is not None:
                srv.sockets = sockets
            return srv
        code = run_single(factory)
    finally:
        sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


def run_workers(n: int, server_factory: Callable[[], DnsServer],
                monitor_factory: Callable[[Any], Any],
                reload_config: Callable[[], Any] | None = None,
                budget: RespawnBudget | None = None,
                metrics_listen: tuple[str, int] | None = None,
                slots: list[list[Listener]] | None = None) -> int:
    """Fork `n` workers, each serving its own sockets with SO_REUSEPORT.

    `slots` (bind_worker_listeners): the sockets of each worker, bound by this process before
    it forks (and before it drops root); a respawned worker takes over its predecessor's
    slot, so queries the kernel queued on it meanwhile are answered, not lost. Without
    `slots` each worker binds its own.

    The parent relays signals: SIGHUP to every worker (each reloads on its
    own), SIGTERM/SIGINT to every worker and then waits for them. A worker
    killed by a signal is replaced by a new one (`worker_respawned`); one
    that exits on its own stops the others (exit status 1), and so does
    a death past the respawn budget (RESPAWN_LIMIT in RESPAWN_WINDOW s).

    The parent also runs the one health monitor (`monitor_factory(publisher)`),
    publishing snapshots to the workers over pipes, so every worker answers
    from the same view (a respawned worker gets the newest one at once); on
    SIGHUP it reconfigures it from `reload_config()` before relaying the signal.

    With `metrics_listen`, the parent serves /metrics: the sum of every worker's counters, asked
    over a socket pair per worker at each scrape (dns/metrics.py).
    """
    budget = budget or RespawnBudget()
    children: list[int] = []
    feeds: list[tuple[int, int]] = []
    stats: dict[int, socket.socket] = {}
    ack_r, ack_w = os.pipe()
    slot_of: dict[int, int] = {}
    for i in range(n):
        feed_r, feed_w = os.pipe()
        mine, theirs = socket.socketpair()
        others = [fd for j, slot in enumerate(slots or []) if j != i for fd in listener_fds(slot)]
        pid = _fork_worker(server_factory, (feed_r, ack_w),
                           [fd for _, fd in feeds] + [s.fileno() for s in stats.values()]
                           + [feed_w, ack_r, mine.fileno()] + others, stats=theirs,
                           sockets=slots[i] if slots else None)
        os.close(feed_r)
        theirs.close()
        feeds.append((pid, feed_w))
        stats[pid] = mine
        children.append(pid)
        slot_of[pid] = i
    log("workers_started", workers=n, pids=",".join(map(str, children)))
    try:
        return _supervise(n, children, feeds, ack_r, ack_w, server_factory, budget, monitor_factory,
                          reload_config, stats, metrics_listen, slots, slot_of)
    finally:
        os.close(ack_w)   # open until here: respawned workers inherit it


def _supervise(n: int, children: list[int], feeds: list[tuple[int, int]], ack_r: int, ack_w: int,
               server_factory: Callable[[], DnsServer], budget: RespawnBudget,
               monitor_factory: Callable[[Any], Any], reload_config: Callable[[], Any] | None,
               stats: dict[int, socket.socket], metrics_listen: tuple[str, int] | None,
               slots: list[list[Listener]] | None = None, slot_of: dict[int, int] | None = None) -> int:
    """The parent's event loop, the one supervisor: the health monitor, signal relay, reaping
    (and replacing) workers, /metrics."""
    from dns import metrics as dm
    from dns.control import ControlError
    from dns.monitor import PipePublisher
    alive = set(children)
    state = {"status": 0, "stopping": False}

    def send(signum: int) -> None:
        for pid in list(alive):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        publisher = PipePublisher(feeds, ack_r)
        monitor = monitor_factory(publisher)
        done = asyncio.Event()
        collector = dm.DnsCollector()
        collector.monitor = monitor
        workers = dm.WorkerStats(collector)
        for pid, sock in stats.items():
            workers.add(pid, sock)

        def respawn(dead: int, code: int) -> bool:
            # Only a death by signal (SIGKILL, SIGSEGV, the OOM killer) is replaced: a worker
            # that exits with a status chose to (it could not listen, say) and would again.
            if code >= 0 or not budget.take(time.monotonic()):
                return False
            feed_r, feed_w = os.pipe()
            slot = (slot_of or {}).pop(dead, None)
            mine, theirs = socket.socketpair()
            new = _fork_worker(server_factory, (feed_r, ack_w), [], from_loop=True, stats=theirs,
                               sockets=slots[slot] if slots and slot is not None else None)
            os.close(feed_r)
            theirs.close()
            workers.add(new, mine)
            collector.respawns += 1
            if slot is not None and slot_of is not None:
                slot_of[new] = slot
            alive.add(new)
            publisher.add(new, feed_w)   # sends it the newest snapshot
            log("worker_respawned", level="error", worker=dead, code=code, new=new)
            return True

        def reap() -> None:
            while alive:
                try:
                    pid, st = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    alive.clear()
                    break
                if pid == 0:
                    break
                alive.discard(pid)
                publisher.forget(pid)
                workers.forget(pid)
                if state["stopping"]:
                    continue
                code = os.waitstatus_to_exitcode(st)
                if respawn(pid, code):
                    continue
                log("worker_exited", level="error", worker=pid, code=code, respawns=budget.limit,
                    window_s=budget.window)
                state["status"] = 1
                state["stopping"] = True
                send(signal.SIGTERM)
            if not alive:
                done.set()

        def on_signal(signum: int) -> None:
            if signum == signal.SIGHUP and reload_config is not None:
                try:
                    monitor.reconfigure(reload_config())
                except Exception as exc:  # noqa: BLE001 - a bad reload keeps the old view
                    log("reload_failed", level="error", error=str(exc), kept="previous health settings")
            if signum in (signal.SIGTERM, signal.SIGINT):
                state["stopping"] = True
            send(signum)

        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, on_signal, s)
        if early_hup.take():   # latched while this process forked its workers: relay it now
            on_signal(signal.SIGHUP)

        async def reaper() -> None:
            # uvloop keeps SIGCHLD for itself: poll instead (cheap, and bounded by `done`).
            while not done.is_set():
                reap()
                await asyncio.sleep(0.1)

        reaping = asyncio.create_task(reaper())
        runner = None
        try:
            await monitor.start()
        except Exception as exc:  # noqa: BLE001 - ControlError, OSError: stop the workers, exit 1
            log("control_failed" if isinstance(exc, ControlError) else "monitor_failed",
                level="error", error=str(exc))
            state["status"], state["stopping"] = 1, True
            send(signal.SIGTERM)
        if metrics_listen is not None and not state["stopping"]:
            try:
                runner = await dm.start_listener(*metrics_listen, collector, workers.collect)
            except OSError as exc:  # as a worker that cannot listen: stop, exit 1
                log("listen_failed", level="error", error=str(exc))
                state["status"], state["stopping"] = 1, True
                send(signal.SIGTERM)
        await done.wait()
        await reaping
        if runner is not None:
            await runner.cleanup()
        await monitor.stop()

    _run_loop(main())
    log("stopped", workers=n)
    return int(state["status"])
