"""The health monitor (asyncio shell): probe rounds, the control socket, publishing views.

One monitor per server, in the process that owns the workers (the only
process with `--workers 1`): it runs the checks (`dns.prober`), feeds the
results to the state machine (`dns.health`), serves the control socket
(`dns.control`: drain, undrain, health), and publishes each new
`HealthView` to whoever answers queries:

- `LocalPublisher`: the same process; the snapshot goes into the engine;
- `PipePublisher`: worker processes; one pipe per worker carries snapshot
  lines down, one shared pipe carries "pid version" acknowledgements up
  (each well under PIPE_BUF, so atomic). Workers thus agree as soon as they
  read their pipe (microseconds), and `drain` replies only once every worker
  acknowledged the new version (or says which did not, after 2 s).

It makes no decision itself: rise/fall, drains and versions are `dns.health`.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dns import prober
from dns.control import MAX_REQUEST, ControlError, parse_request
from dns.health import HealthError, HealthStates, HealthView, refused_targets, targets_from_config
from dns.log import log

MAX_CONCURRENT_PROBES = 64   # checks in flight at once (each opens up to two connections)
ACK_TIMEOUT = 2.0            # seconds a drain waits for every worker to apply it


def check_probe_targets(cfg: Any) -> None:
    """Refuse a configuration whose checks would leave the machine from the root namespace.

    Raises HealthError naming the addresses and the way out (docs/configuration.md).
    """
    h = cfg.health
    if not h.enabled:
        return
    netns = prober.named_netns()
    bad = refused_targets(targets_from_config(cfg), allow_remote=h.allow_remote,
                          in_named_netns=netns is not None)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise HealthError(
            f"{cfg.path}: health: checks would probe non-loopback addresses ({shown}) from outside "
            "a named network namespace; run inside one (ip netns exec, as the lab does) or set "
            "[health] allow_remote = true on a production name server")


class LocalPublisher:
    """`--workers 1`: the snapshot goes straight into the server's engine."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def start(self) -> None:
        pass

    def publish(self, snap: HealthView) -> None:
        self.server.apply_health(snap)

    def applied(self) -> dict[str, int]:
        return {str(os.getpid()): self.server.engine.health.version}

    def rrl_reports(self) -> dict[str, list]:
        """This process's limited RRL buckets (none: RRL is off)."""
        rrl = self.server.rrl
        return {} if rrl is None else {str(os.getpid()): rrl.limited(time.monotonic())}

    async def wait_applied(self, version: int, timeout: float) -> bool:
        return True

    def forget(self, pid: int) -> None:
        pass


class PipePublisher:
    """Worker processes: snapshot lines down a pipe each, acknowledgements up a shared one."""

    def __init__(self, feeds: list[tuple[int, int]], ack_fd: int) -> None:
        self.feeds = dict(feeds)                    # worker pid -> write end
        self.ack_fd = ack_fd
        self.partial: dict[int, bytes] = {}         # bytes of a line being written
        self.latest: dict[int, bytes | None] = {}   # newest whole snapshot not yet started
        self.acked: dict[int, int] = {pid: 0 for pid in self.feeds}
        self.rrl: dict[int, list] = {}              # worker pid -> its last RRL report
        self._ack_buf = b""
        self._changed: asyncio.Event | None = None
        self._newest: bytes | None = None            # the last snapshot published, for a new worker
        for fd in (*self.feeds.values(), ack_fd):
            os.set_blocking(fd, False)

    def add(self, pid: int, fd: int) -> None:
        """A new (respawned) worker: its pipe, and the newest snapshot at once."""
        os.set_blocking(fd, False)
        self.feeds[pid] = fd
        self.acked[pid] = 0
        if self._newest is not None:
            self.latest[pid] = self._newest
            self._flush(pid)

    def start(self) -> None:
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.ack_fd, self._on_ack)

    def publish(self, snap: HealthView) -> None:
        line = snap.encode()
        self._newest = line
        for pid in list(self.feeds):
            # Snapshots are whole states: a worker behind needs only the newest one.
            self.latest[pid] = line
            self._flush(pid)

    def _flush(self, pid: int) -> None:
        fd = self.feeds.get(pid)
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            data = self.partial.get(pid) or self.latest.pop(pid, None)
            if not data:
                loop.remove_writer(fd)
                return
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                self.partial[pid] = data
                loop.add_writer(fd, self._flush, pid)
                return
            except OSError:  # the worker is gone; the supervisor reaps it
                self.forget(pid)
                return
            self.partial[pid] = data[n:]

    def _on_ack(self) -> None:
        try:
            data = os.read(self.ack_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.ack_fd)
            return
        self._ack_buf += data
        *lines, self._ack_buf = self._ack_buf.split(b"\n")
        for line in lines:
            if line.startswith(b"rrl "):
                self._on_rrl(line)
                continue
            try:
                pid, version = map(int, line.split())
            except ValueError:
                continue
            if pid in self.acked:
                self.acked[pid] = max(self.acked[pid], version)
        if self._changed is not None:
            self._changed.set()

    def _on_rrl(self, line: bytes) -> None:
        """'rrl PID JSON': a worker's limited RRL buckets (dns.server.DnsServer.report_rrl)."""
        try:
            _, pid_text, rows = line.split(b" ", 2)
            pid, report = int(pid_text), json.loads(rows)
        except ValueError:
            return
        if pid in self.acked and isinstance(report, list):
            self.rrl[pid] = report

    def rrl_reports(self) -> dict[str, list]:
        return {str(pid): rows for pid, rows in self.rrl.items() if pid in self.acked}

    def applied(self) -> dict[str, int]:
        return {str(pid): v for pid, v in self.acked.items()}

    async def wait_applied(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(v < version for v in self.acked.values()):
            left = deadline - time.monotonic()
            if left <= 0 or self._changed is None:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    def forget(self, pid: int) -> None:
        fd = self.feeds.pop(pid, None)
        self.acked.pop(pid, None)
        self.rrl.pop(pid, None)
        self.partial.pop(pid, None)
        self.latest.pop(pid, None)
        if fd is not None:
            try:
                asyncio.get_running_loop().remove_writer(fd)
            except RuntimeError:
                pass
            os.close(fd)


Checker = Callable[[str, Any], Awaitable[str | None]]


def bind_control_socket(path: str, required: bool, owner: tuple[int, int] | None = None) -> socket.socket | None:
    """The control socket, listening, mode 0600 (owned by `owner` (uid, gid) when given: the user
    a server drops to). A live socket of another server at `path`: ControlError when
    `required`, else logged and None; a stale one (its server died) is replaced."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    if os.path.lexists(path):
        if control_alive(path):
            msg = f"control socket {path} is in use by another running server"
            if required:
                raise ControlError(msg)
            log("control_unavailable", level="error", path=path, reason=msg,
                hint="give each server its own with --control or [health].control_socket")
            return None
        os.unlink(path)  # a stale socket of a server that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # 0600 from the start, not after a window
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        if owner is not None:
            os.chown(path, *owner)
        sock.listen(100)  # asyncio.start_unix_server's default backlog
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


class HealthMonitor:
    """Probe rounds + control socket + publishing, around one `HealthStates`."""

    def __init__(self, cfg: Any, publisher: Any, *, control_path: str | None,
                 control_required: bool = False, checker: Checker = prober.check,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self.control_path = control_path
        self.control_required = control_required
        self.checker = checker
        self.clock = clock
        h = cfg.health
        self.states = HealthStates(targets_from_config(cfg), rise=h.rise, fall=h.fall,
                                   interval=h.interval, config_drained=frozenset(h.drained),
                                   timeout_fall=h.timeout_fall)
        self._published = -1
        self._probe_task: asyncio.Task | None = None
        self._control: Any = None
        self._control_ino: int | None = None
        # Bound beforehand (bind_control_socket), by a process that drops root before start().
        self.control_sock: socket.socket | None = None
        self.rounds = 0

    @property
    def settings(self) -> Any:
        return self.cfg.health

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.publisher.start()
        self.publish()
        if self.control_path:
            await self._start_control()
        self._restart_probes()

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
            self._probe_task = None
        if self._control is not None:
            self._control.close()
            self._control = None
            try:
                if os.stat(self.control_path).st_ino == self._control_ino:
                    os.unlink(self.control_path)
            except OSError:
                pass

    def reconfigure(self, cfg: Any) -> None:
        """After a reload (already validated): new targets and thresholds, states kept."""
        h = cfg.health
        self.states.reconfigure(targets_from_config(cfg), rise=h.rise, fall=h.fall,
                                interval=h.interval, config_drained=h.drained,
                                timeout_fall=h.timeout_fall)
        self.cfg = cfg
        self._restart_probes()
        self.publish()

    def _restart_probes(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
        if self.settings.enabled:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())
            log("health_checks", state="on", targets=len(self.states.targets), check=self.settings.check,
                interval=self.settings.interval, rise=self.settings.rise, fall=self.settings.fall)

    def publish(self) -> HealthView:
        snap = self.states.snapshot(self.clock())
        if snap.version != self._published:
            self._published = snap.version
            self.publisher.publish(snap)
        return snap

    # -- probing ---------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        sem = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        while True:
            started = self.clock()
            await asyncio.gather(*(self._check_one(t.pop, t.address, sem) for t in self.states.targets))
            self.rounds += 1
            self.publish()  # "changing" also ends with time
            # A round starts every interval, or right after the previous one if it took longer.
            await asyncio.sleep(max(0.0, started + self.settings.interval - self.clock()))

    async def _check_one(self, pop: str, address: str, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                error = await self.checker(address, self.settings)
            except Exception as exc:  # noqa: BLE001 - a probe bug is a failed check, not a dead monitor
                error = f"probe error: {exc!r}"
        try:
            tr = self.states.record(pop, address, error is None, self.clock(), error or "",
                                    timed_out=isinstance(error, prober.ProbeTimeout))
        except HealthError:
            return  # the address left the configuration during this round
        if tr is not None:
            log("health_change", level="warning", pop=pop, addr=address, family=tr.family,
                state="up" if tr.up else "down",
                after=f"{tr.after} {'successes' if tr.up else 'failures'}",
                **({"error": tr.error} if tr.error else {}))
        self.publish()

    # -- control socket --------------------------------------------------------------------

    async def _start_control(self) -> None:
        path = self.control_path
        assert path is not None
        sock, self.control_sock = self.control_sock, None
        if sock is None:
            sock = bind_control_socket(path, self.control_required)
            if sock is None:
                return
        self._control = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_REQUEST)
        self._control_ino = os.stat(path).st_ino
        log("control_listening", path=path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 5.0)
                reply = await self.handle_request(line)
            except (ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc or 'timeout'}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle_request(self, line: bytes) -> dict[str, Any]:
        try:
            req = parse_request(line, self.states.pops)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        op = req["op"]
        if op in ("drain", "undrain"):
            pop = req["pop"]
            changed = self.states.set_drained(pop, op == "drain")
            snap = self.publish()
            log(op, pop=pop, changed=changed, drained=",".join(sorted(snap.drained)) or "none",
                version=snap.version)
            agreed = await self.publisher.wait_applied(snap.version, ACK_TIMEOUT)
            return {"ok": True, "pop": pop, "changed": changed, "drained": sorted(snap.drained),
                    "version": snap.version, "workers_agree": agreed,
                    "workers": self.publisher.applied()}
        if op == "rrl":
            return {"ok": True, "workers": self.publisher.rrl_reports()}
        snap = self.publish()
        if op == "snapshot":
            return {"ok": True, "snapshot": snap.encode().decode()}
        now = self.clock()
        h = self.settings
        return {
            "ok": True, "version": snap.version, "enabled": h.enabled, "check": h.check,
            "interval": h.interval, "rise": h.rise, "fall": h.fall,
            "timeout_fall": self.states.timeout_fall, "rounds": self.rounds,
            "drained": sorted(snap.drained), "changing": sorted(snap.changing),
            "workers": self.publisher.applied(),
            "addresses": [{
                "pop": s.pop, "address": s.address, "family": s.family,
                "state": "drained" if s.pop in snap.drained else ("up" if s.up else "down"),
                "up": s.up, "successes": s.successes, "failures": s.failures, "checks": s.checks,
                "transitions": s.transitions,
                "changed_ago": None if s.changed_at is None else round(now - s.changed_at, 3),
                "checked_ago": None if s.checked_at is None else round(now - s.checked_at, 3),
                "last_error": s.last_error or None,
            } for s in self.states.states()],
        }


def control_alive(path: str) -> bool:
    """Is a server listening on this unix socket?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True
