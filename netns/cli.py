"""`gslb lab up|down|status|exec|logs|kill|restart|top`: the command line of the lab.

Parses arguments, turns typed errors into one clear line and an exit status,
and prints tables. The work is in `netns.lab`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from plumbing.toml import EXIT_CONFIG, ConfigError
from netns.errors import LabError

EPILOG = """\
examples:
  sudo gslb lab up                                  # build the lab (examples/lab.toml), print what is where
  sudo gslb lab exec client-jp -- dig demo.app.lab.test
  sudo gslb lab exec client-lon -- dig AAAA demo.app.lab.test
  sudo gslb lab exec client-jnb -- curl -s http://198.18.3.1/healthz      # pop-eu's edge: its health JSON
  sudo gslb lab exec agent -- gslb agent http 8080 --name demo             # no further flags needed
  sudo gslb lab exec client-jp -- curl --cacert /run/gslb-lab/gslb/ca/ca.pem https://demo.app.lab.test/
  sudo gslb lab status --json                       # the contract with tests and tools
  sudo gslb lab logs dns1
  sudo gslb lab kill pop-eu && sudo gslb lab restart pop-eu   # a failover drill
  sudo gslb lab top                                 # live: every PoP's connections, rps, DNS health (q quits)
  sudo gslb lab down                                # remove all of it (idempotent)
  GSLB_LAB_PREFIX=mine sudo -E gslb lab up          # a second lab beside the first

Every host is a network namespace named <prefix>-<host> (prefix: --prefix,
$GSLB_LAB_PREFIX, default "gslb"). The root namespace is never changed.
See docs/lab.md.
"""

ROLE_STYLE = {"bridge": "dim", "dns": "magenta", "resolver": "cyan", "pop": "green", "client": "yellow",
              "agent": "blue", "registry": "blue"}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=None,
                   help="lab prefix for namespace names (default: $GSLB_LAB_PREFIX or 'gslb')")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="state directory (default: $GSLB_LAB_STATE_DIR or /run/gslb-lab/<prefix>)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser(
        "lab", help="the edge network in Linux network namespaces (root)",
        description="The whole edge network (name servers, PoPs, clients, resolver) as network "
                    "namespaces on this machine.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    lab.set_defaults(func=lambda args: (lab.print_help(), 2)[1])
    sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")

    up = sub.add_parser("up", help="build the lab and start its processes",
                        description="Build every host of the plan, start the name servers, resolver "
                                    "and every PoP's edge, wait until they answer, print a table.",
                        epilog="examples:\n  sudo gslb lab up\n  sudo gslb lab up --force          # restart a running lab\n"
                               "  sudo gslb lab up --plan my-lab.toml --prefix mine\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(up)
    up.add_argument("--plan", default=None, metavar="FILE", help="lab plan (default: examples/lab.toml)")
    up.add_argument("--force", action="store_true", help="restart the lab if it is already up")
    up.add_argument("--json", action="store_true", help="print the status JSON instead of the table")
    up.add_argument("-q", "--quiet", action="store_true",
                    help="no progress lines (on stderr, one a phase with the seconds since the start)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove the lab (idempotent)",
                          description="Stop the lab's processes (by pid), remove its namespaces, "
                                      "/etc/netns/<prefix>-* and its state directory.",
                          epilog="examples:\n  sudo gslb lab down\n  sudo gslb lab down --prefix gslbt\n",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(down)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="hosts, addresses and processes of the lab",
                        description="Show the lab. Exit status 0 when it is up and healthy, 1 otherwise.",
                        epilog="examples:\n  sudo gslb lab status\n  sudo gslb lab status --json | jq '.hosts[].name'\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(st)
    st.add_argument("--json", action="store_true", help="machine-readable (keys are stable)")
    st.set_defaults(func=cmd_status)

    ex = sub.add_parser("exec", help="run a command inside a lab host",
                        description="Run CMD in HOST's network namespace with HOST's resolv.conf "
                                    "(as `ip netns exec` does). Without CMD: a shell. In the agent host "
                                    "it also sets GSLB_AGENT_CONFIG (zone, lab CA, authtoken), so a bare "
                                    "`gslb agent http PORT --name NAME` connects (to its nearest PoP, "
                                    "through connect.<zone>).",
                        epilog="examples:\n  sudo gslb lab exec client-jp -- dig demo.app.lab.test\n"
                               "  sudo gslb lab exec agent -- gslb agent http 8080 --name demo\n"
                               "  sudo gslb lab exec client-yyz -- dig @198.18.0.11 demo.app.lab.test +subnet=198.19.23.0/24\n"
                               "  sudo gslb lab exec resolver\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ex)
    ex.add_argument("host", metavar="HOST", help="lab host name, e.g. client-jp (see `gslb lab status`)")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ex.set_defaults(func=cmd_exec)

    lg = sub.add_parser("logs", help="show the logs of a host's processes",
                        description="Print the last lines of the log of every process the lab started in HOST.",
                        epilog="examples:\n  sudo gslb lab logs dns1\n  sudo gslb lab logs resolver -n 200\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(lg)
    lg.add_argument("host", metavar="HOST")
    lg.add_argument("-n", "--lines", type=int, default=50, help="lines per log (default 50)")
    lg.set_defaults(func=cmd_logs)


    kl = sub.add_parser("kill", help="kill a host's processes (a failover drill)",
                        description="Send a signal (default KILL) to the processes the lab started in each HOST "
                                    "(a PoP's edge, an etcd member, a name server). They stay recorded: "
                                    "`status` shows them dead, `restart` brings them back, `down` cleans up.",
                        epilog="examples:\n  sudo gslb lab kill pop-eu\n"
                               "  sudo gslb lab kill registry-us registry-ap     # etcd loses quorum\n"
                               "  sudo gslb lab kill --signal TERM pop-jp\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(kl)
    kl.add_argument("hosts", nargs="+", metavar="HOST")
    kl.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "STOP", "CONT"],
                    help="signal to send (default KILL)")
    kl.add_argument("--json", action="store_true",
                    help="print [{host, name, pid, time}] (time: epoch seconds of the signal)")
    kl.set_defaults(func=cmd_kill)

    rs = sub.add_parser("restart", help="start a host's processes again and wait until they are ready",
                        description="(Re)start the processes the lab runs in each HOST with their recorded "
                                    "command line and log (stopping them first if alive), update the "
                                    "state, and wait until each answers (edge /healthz, etcd /health, DNS).",
                        epilog="examples:\n  sudo gslb lab restart pop-eu\n"
                               "  sudo gslb lab restart registry-us registry-ap\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(rs)
    rs.add_argument("hosts", nargs="+", metavar="HOST")
    rs.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for readiness (default 20)")
    rs.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    rs.set_defaults(func=cmd_restart)

    tp = sub.add_parser("top", help="a live view of every PoP: edge, connections, rps, DNS health",
                        description="A live terminal view of the lab, one row per PoP: its edge (alive, dead, "
                                    "or alive but not answering /healthz), pid, open connections, agent "
                                    "sessions, requests per second over the last interval and the total, and "
                                    "how many of the PoP's addresses each name server has up. Every "
                                    "interval it fetches each edge's /healthz from inside a client host and "
                                    "reads each name server's control socket. Keys: q quits (so does Ctrl-C). "
                                    "--once samples twice, INTERVAL apart (a rate needs two samples), prints "
                                    "one plain table and exits: 0 when every edge answers, 1 otherwise.",
                        epilog="examples:\n  sudo gslb lab top\n  sudo gslb lab top --interval 0.5\n"
                               "  sudo gslb lab top --once                        # one table, for scripts\n"
                               "  sudo gslb lab top --once --json | jq '.pops[] | {host, state, rps}'\n"
                               "  sudo gslb lab top --prefix mine\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(tp)
    tp.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                    help="seconds between two samples (default 1; 0.1 to 60)")
    tp.add_argument("--once", action="store_true", help="print one snapshot (plain table, no live screen) and exit")
    tp.add_argument("--json", action="store_true", help="with --once: the snapshot as JSON (keys: docs/lab.md)")
    tp.set_defaults(func=cmd_top)


def cmd_kill(args: argparse.Namespace) -> int:
    import signal

    from netns import lab

    try:
        prefix = _prefix(args)
        killed = lab.kill(prefix, args.hosts, getattr(signal, "SIG" + args.signal), args.state_dir)
    except LabError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps([{"host": k.host, "name": k.name, "pid": k.pid, "time": round(k.time, 4)}
                          for k in killed]))
        return 0
    for k in killed:
        at = time.strftime("%H:%M:%S", time.gmtime(k.time)) + f".{int(k.time % 1 * 1000):03d}"
        print(f"lab {prefix}: {k.host}: sent SIG{args.signal} to {k.name} (pid {k.pid}) at {at} UTC")
    if not killed:
        print(f"lab {prefix}: nothing alive to signal in {', '.join(args.hosts)}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from netns import top

    try:
        prefix = _prefix(args)
        interval = top.check_interval(args.interval)
        if args.json and not args.once:
            raise LabError("--json needs --once (the live screen is for people; --once --json for machines)")
        if not args.once and not sys.stdout.isatty():
            raise LabError("the live view needs a terminal; for a pipe or a file use --once (or --once --json)")
        collector = top.Collector(prefix, args.state_dir, timeout=min(1.0, max(0.2, interval * 0.8)))
        if args.once:
            first, second = top.once(collector, interval)
            if second is None:
                return _fail(f"lab {prefix!r} is not up (`gslb lab up --prefix {prefix}`)")
            snap = top.snapshot_json(prefix, first, second, interval)
            if args.json:
                print(json.dumps(snap, indent=1))
            else:
                _console().print(top.render(prefix, first, second, interval, live=False))
            return 0 if snap["totals"]["alive"] == snap["totals"]["pops"] else 1
        first = collector.sample()
        if first is None:
            return _fail(f"lab {prefix!r} is not up (`gslb lab up --prefix {prefix}`)")
        top.live(collector, interval, _console(), first)
    except LabError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    from netns import lab

    try:
        prefix = _prefix(args)
        done = lab.restart(prefix, args.hosts, args.state_dir, timeout=max(1.0, min(args.timeout, 300.0)),
                           progress=_progress(prefix, args.quiet))
    except LabError as exc:
        return _fail(str(exc))
    for r in done:
        print(f"lab {prefix}: {r.host}: {r.name} running again (pid {r.pid}), ready after {r.seconds:.2f} s")
    return 0


def _progress(prefix: str, quiet: bool):
    """Progress lines on stderr (stdout keeps the result: the table, the JSON), each with the
    seconds since the command started: `lab gslb: [  1.2 s] starting name servers ...`."""
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        if quiet:
            return
        # Flushed at once: pyroute2 forks helpers, and a fork inherits (and later flushes)
        # whatever sits unflushed in a buffer.
        print(f"lab {prefix}: [{time.monotonic() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)
    return progress


def _fail(msg: str, code: int = 1) -> int:
    print(f"gslb lab: error: {msg}", file=sys.stderr)
    return code


def _prefix(args: argparse.Namespace) -> str:
    from netns.lab import resolve_prefix
    return resolve_prefix(args.prefix)


def cmd_up(args: argparse.Namespace) -> int:
    import signal

    from netns import lab
    from netns.plan import default_plan_path, load_plan

    main_pid = os.getpid()

    def on_term(signum, frame):
        # pyroute2 forks helpers that inherit this handler and are stopped with
        # SIGTERM: they must just exit, never unwind through lab.up()'s cleanup.
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        # SIGTERM mid-build: unwind through lab.up(), which removes what it built.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        prefix = _prefix(args)
        plan = load_plan(args.plan or default_plan_path())
        console = _console()
        t0 = time.monotonic()
        result = lab.up(plan, prefix, args.state_dir, force=args.force, progress=_progress(prefix, args.quiet))
        total = time.monotonic() - t0
    except LabError as exc:
        # A bad plan file exits 2, as a bad configuration does in every command (plumbing.toml).
        return _fail(str(exc), EXIT_CONFIG if isinstance(exc, ConfigError) else 1)
    if args.json:
        print(json.dumps(result.status, indent=1))
        return 0
    if result.already_running:
        console.print(f"lab [bold]{prefix}[/bold] is already up; nothing changed "
                      f"(`gslb lab up --force` restarts it, `gslb lab down` removes it).")
        _print_table(console, result.status)
        return 0
    _print_table(console, result.status)
    t = result.status.get("timings", {})
    console.print(f"up in [bold]{total:.2f} s[/bold] (build {t.get('build', 0):.2f} s, configs "
                  f"{t.get('configs', 0):.2f} s, start {t.get('start', 0):.2f} s, first answer after "
                  f"{t.get('ready', 0):.2f} s; up to first answer {t.get('up_to_first_answer', 0):.2f} s)")
    _print_try_next(console, result.status, prefix)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from netns import lab

    try:
        prefix = _prefix(args)
        report = lab.down(prefix, args.state_dir)
    except LabError as exc:
        return _fail(str(exc))
    if report.anything:
        print(f"lab {prefix}: down in {report.seconds:.2f} s: stopped {report.killed} processes, removed "
              f"{report.namespaces} namespaces, {report.etc_dirs} /etc/netns dirs"
              + (", the state directory" if report.state_dir_removed else ""))
    else:
        print(f"lab {prefix}: nothing to remove")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from netns import lab

    try:
        prefix = _prefix(args)
        st = lab.status(prefix, args.state_dir)
    except LabError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if st["running"] else 1
    console = _console()
    if not st["hosts"]:
        msg = f"lab {prefix}: not running"
        if st.get("leftover_namespaces"):
            msg += (f" (leftover namespaces: {', '.join(st['leftover_namespaces'])}; "
                    "`gslb lab down` removes them)")
        console.print(msg)
        return 1
    _print_table(console, st)
    if not st["running"]:
        console.print(f"[red]lab {prefix} is {st['status']}[/red]: dead processes "
                      f"{', '.join(st.get('dead_processes', [])) or 'none'}; missing namespaces "
                      f"{', '.join(st.get('missing_namespaces', [])) or 'none'}. "
                      "`gslb lab logs HOST` shows why; `gslb lab restart HOST` starts a host's processes "
                      "again; `gslb lab up --force` restarts the lab.")
        return 1
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from netns import lab, topology

    try:
        prefix = _prefix(args)
    except LabError as exc:
        return _fail(str(exc))
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        cmd = [os.environ.get("SHELL") or "/bin/sh"]
    ns = topology.ns_name(prefix, args.host)
    if topology.namespace_inode(ns) is None:
        known = [n[len(prefix) + 1:] for n in topology.lab_namespaces(prefix)]
        hint = f"hosts: {', '.join(known)}" if known else f"lab {prefix!r} is not up (`gslb lab up`)"
        return _fail(f"no lab host {args.host!r} (namespace {ns}); {hint}")
    if os.geteuid() != 0:
        return _fail("entering a namespace needs root: run `sudo gslb lab exec ...`")
    state = lab.read_state(lab.lab_paths(prefix, args.state_dir))
    if state is not None:
        # Environment rather than files under /etc: nothing to clean up, and a
        # flag given on the command line still wins (flags > env > file).
        for k, v in lab.exec_env(state, args.host).items():
            os.environ.setdefault(k, v)
    # `ip netns exec` binds /etc/netns/<ns>/resolv.conf over /etc/resolv.conf and
    # remounts /sys for the namespace (ip-netns(8)); exec so signals and the
    # exit status are the command's own.
    try:
        os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])
    except OSError as exc:
        return _fail(f"cannot run ip netns exec: {exc.strerror}")
    return 1  # not reached


def cmd_logs(args: argparse.Namespace) -> int:
    from netns import lab, procs

    try:
        prefix = _prefix(args)
        paths = lab.lab_paths(prefix, args.state_dir)
        state = lab.read_state(paths)
    except LabError as exc:
        return _fail(str(exc))
    if state is None:
        return _fail(f"lab {prefix!r} is not up (no state in {paths.dir}); `gslb lab up` starts it")
    names = [h["name"] for h in state.hosts]
    if args.host not in names:
        return _fail(f"no lab host {args.host!r}; hosts: {', '.join(names)}")
    ps = [p for p in state.processes if p.host == args.host]
    if not ps:
        print(f"{args.host}: the lab runs no process there")
        return 0
    for p in ps:
        print(f"==> {p.log} ({p.name}, pid {p.pid}{'' if procs.alive(p) else ', exited'}) <==")
        print(procs.tail(p.log, max(1, min(args.lines, 100000))))
    return 0


def _console():
    from rich.console import Console
    # emoji=False: ":100:" in an IPv6 address is not an emoji. Wide enough for
    # addresses when the output is a pipe or a file.
    console = Console(highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(highlight=False, emoji=False, width=160)
    return console


def _print_table(console, st: dict) -> None:
    from rich.table import Table

    table = Table(title=f"lab {st['prefix']} ({st['status']})", title_justify="left")
    for col in ("host", "role", "region", "IPv4", "IPv6", "processes"):
        table.add_column(col, overflow="fold", no_wrap=col in ("host", "IPv4", "IPv6"))
    for h in st["hosts"]:
        def addrs(xs: list[str]) -> str:
            return xs[0] + (f" +{len(xs) - 1}" if len(xs) > 1 else "") if xs else "-"
        ps = ", ".join(f"{p['name']}:{p['pid']}" + ("" if p["alive"] else " [red](dead)[/red]")
                       for p in h["processes"]) or "-"
        style = ROLE_STYLE.get(h["role"], "")
        region = h["region"] or "-"
        if h.get("city"):
            region += f" ({h['city']})"
        table.add_row(f"[{style}]{h['name']}[/{style}]" if style else h["name"], h["role"], region,
                      addrs(h["ipv4"]), addrs(h["ipv6"]), ps)
    console.print(table)
    console.print(f"state: {st['state']['dir']}  (dns config {Path(st['state']['config'] or '-').name}, "
                  f"mmdb {Path(st['state']['mmdb'] or '-').name})")


def _print_try_next(console, st: dict, prefix: str) -> None:
    pf = "" if prefix == "gslb" and not os.environ.get("GSLB_LAB_PREFIX") else f" --prefix {prefix}"
    dns1 = next((h for h in st["hosts"] if h["role"] == "dns"), None)
    pop = next((h for h in st["hosts"] if h["role"] == "pop"), None)
    console.print("try next:")
    console.print(f"  gslb lab exec{pf} client-jp -- dig demo.app.lab.test")
    console.print(f"  gslb lab exec{pf} client-lon -- dig AAAA demo.app.lab.test")
    if dns1:
        console.print(f"  gslb lab exec{pf} client-yyz -- dig @{dns1['ipv4'][0]} demo.app.lab.test "
                      "+subnet=198.19.23.0/24")
    if pop:
        console.print(f"  gslb lab exec{pf} client-jnb -- curl -s http://{pop['ipv4'][0]}/healthz")
    ca = st["state"].get("ca")
    if ca:
        console.print("publish a local service (two terminals; the agent needs no flags in the agent host):")
        console.print(f"  gslb lab exec{pf} agent -- python3 -m http.server 8080 --bind 127.0.0.1")
        console.print(f"  gslb lab exec{pf} agent -- gslb agent http 8080 --name demo")
        console.print("then from any client (it enters through its nearest PoP):")
        console.print(f"  gslb lab exec{pf} client-jp -- curl --cacert {ca} https://demo.app.lab.test/")
        console.print(f"  gslb lab exec{pf} client-lon -- curl -6 --cacert {ca} https://demo.app.lab.test/")
        acme = any(h["role"] == "acme" for h in st["hosts"])
        console.print(f"lab CA{' + pebble root (ACME, docs/acme.md)' if acme else ''}: {ca}   "
                      f"agent authtoken: {st['state'].get('authtoken_file')} (0600)")
    console.print(f"failover drills (docs/lab.md): gslb lab kill{pf} pop-us    gslb lab restart{pf} pop-us")
    console.print(f"  gslb lab logs{pf} dns1        gslb lab status{pf} --json        gslb lab down{pf}")
