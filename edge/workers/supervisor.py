"""The supervisor of `gslb edge --workers N` (docs/workers.md).

Binds every listener (each worker its own SO_REUSEPORT :443 and :80 sockets; the TCP endpoint
ports and the health listener once), drops root (--user), forks the workers, then serves the
one MemoryRegistry (edge/workers/ipc.py), relays SIGTERM/SIGINT, and replaces a worker killed
by a signal (its agent sessions are gone: their names are freed at once and the agents
reconnect, as after an edge restart). A worker that exits with a status, or deaths past the
respawn budget (plumbing/procs.py), stop the whole edge with status 1. SIGHUP is logged and
ignored: the edge has no reload; restart it.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

from edge.workers import WorkerSlot
from plumbing.kvlog import log
from plumbing.listen import listen_socket
from plumbing.procs import RespawnBudget, close_inherited, die_with_parent, fork_worker_process


def bind_slots(cfg: Any, n: int) -> list[WorkerSlot]:
    """Every socket of every worker, bound now (as root, before any drop)."""
    slots = [WorkerSlot(i, n) for i in range(n)]
    done: list[socket.socket] = []
    try:
        for slot in slots:
            for addr in cfg.listen:
                slot.https.append(listen_socket(addr, cfg.https_port, reuse_port=True))
                if cfg.http_port:
                    slot.http.append(listen_socket(addr, cfg.http_port, reuse_port=True))
            done += slot.https + slot.http
        tcp: dict[int, list[socket.socket]] = {}
        if cfg.tcp_ports:
            for port in range(cfg.tcp_ports[0], cfg.tcp_ports[1] + 1):
                tcp[port] = [listen_socket(addr, port) for addr in cfg.listen]
                done += tcp[port]
        health = listen_socket(*cfg.health_listen) if cfg.health_listen else None
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(n)]
        for pair in pairs:
            for s in pair:
                s.setblocking(False)   # MSG_DONTWAIT alone still waits for a full queue here
        for slot in slots:
            slot.tcp = tcp
            slot.handover_in = pairs[slot.index][0]
            slot.handover_out = [p[1] for p in pairs]
        slots[0].health = health
        # /metrics and /healthz (worker 0, which has the health listener) ask every other worker
        # for its counters at each scrape (edge/metrics.py, plumbing/workerstats.py).
        for slot in slots[1:]:
            ask, answer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            slots[0].stats_ask[slot.index] = ask
            slot.stats_serve = answer
            done += [ask, answer]
    except BaseException:
        for s in done:
            s.close()
        raise
    return slots


def _all_sockets(slots: list[WorkerSlot]) -> list[socket.socket]:
    seen: dict[int, socket.socket] = {}
    for slot in slots:
        for s in [*slot.https, *slot.http, *(x for v in slot.tcp.values() for x in v), *slot.handover_out,
                  *slot.stats_ask.values(),
                  *(x for x in (slot.health, slot.handover_in, slot.registry, slot.stats_serve) if x is not None)]:
            seen.setdefault(id(s), s)
    return list(seen.values())


def _fork(slot: WorkerSlot, slots: list[WorkerSlot], serve: Callable[[WorkerSlot], int],
          from_loop: bool, extra_close: list[socket.socket]) -> int:
    # (plumbing.procs: the relayed signals stay blocked across the fork.) The edge reloads
    # nothing: a SIGHUP to the group kills no worker.
    pid = fork_worker_process(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    if pid:
        return pid
    die_with_parent()
    code = 1
    try:
        keep = slot.fds()
        # Not this worker's: closed now, and detached so no finalizer closes a reused number later.
        for s in [*_all_sockets(slots), *extra_close]:
            if s.fileno() >= 0 and s.fileno() not in keep:
                os.close(s.detach())
        if from_loop:
            close_inherited(keep)
        code = serve(slot)
    except BaseException as exc:  # noqa: BLE001 - a worker reports and exits, never returns into the parent
        print(f"gslb edge: worker {slot.index}: {exc}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


def run(slots: list[WorkerSlot], serve: Callable[[WorkerSlot], int], budget: RespawnBudget | None = None) -> int:
    """Fork a worker per slot (`serve(slot)` in each), supervise until SIGTERM/SIGINT; exit status."""
    budget = budget or RespawnBudget()
    n = len(slots)
    mine: dict[int, socket.socket] = {}
    pid_of: dict[int, int] = {}
    for slot in slots:
        sup, wk = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        slot.registry = wk
        pid = _fork(slot, slots, serve, False, [sup, *mine.values()])
        wk.close()
        slot.registry = None
        mine[slot.index] = sup
        pid_of[pid] = slot.index
    print(f"gslb edge: workers={n} supervisor={os.getpid()} "
          + " ".join(f"worker{i}={p}" for p, i in sorted(pid_of.items(), key=lambda x: x[1])),
          file=sys.stderr, flush=True)
    log("workers_started", workers=n, pids=",".join(str(p) for p in pid_of))
    state = {"status": 0, "stopping": False}

    async def main() -> None:
        from edge.workers.ipc import RegistryService

        loop = asyncio.get_running_loop()
        service = RegistryService()
        links: dict[int, Any] = {}
        for i, sup in mine.items():
            links[i] = await service.serve(sup, label=str(i))
        done = asyncio.Event()

        def send(signum: int) -> None:
            for pid in list(pid_of):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

        def respawn(dead: int, index: int, code: int) -> bool:
            if code >= 0 or not budget.take(time.monotonic()):
                return False
            slot = slots[index]
            sup, wk = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            slot.registry = wk
            new = _fork(slot, slots, serve, True, [sup])
            wk.close()
            slot.registry = None
            pid_of[new] = index
            loop.create_task(service.serve(sup, label=str(index)))
            log("worker_respawned", level="error", worker=index, pid=dead, code=code, new=new)
            return True

        def reap() -> None:
            while pid_of:
                try:
                    pid, st = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid_of.clear()
                    break
                if pid == 0:
                    break
                index = pid_of.pop(pid, None)
                if index is None or state["stopping"]:
                    continue
                code = os.waitstatus_to_exitcode(st)
                if respawn(pid, index, code):
                    continue
                log("worker_exited", level="error", worker=index, pid=pid, code=code,
                    respawns=budget.limit, window_s=budget.window)
                state["status"], state["stopping"] = 1, True
                send(signal.SIGTERM)
            if not pid_of:
                done.set()

        def on_signal(signum: int) -> None:
            if signum == signal.SIGHUP:
                log("sighup_ignored", detail="the edge has no reload: restart it to apply a new configuration")
                return
            state["stopping"] = True
            send(signal.SIGTERM)

        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, on_signal, s)
        while not done.is_set():
            # uvloop keeps SIGCHLD for itself: poll (cheap, and bounded by `done`).
            reap()
            try:
                await asyncio.wait_for(done.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    log("stopped", workers=n)
    return int(state["status"])
