"""Namespaces, the bridge, veth links, addresses and sysctls, with pyroute2.

Owns the kernel objects of one lab (one prefix): namespaces `<prefix>-<host>`,
the bridge `br0` inside `<prefix>-bridge`, one veth per host (`v<N>` on the
bridge side, `eth0` in the host), and the hosts' addresses. It never touches
the root namespace: every IPRoute is opened with `netns=` (a bare IPRoute()
would act on root) and `flags=0` (the default O_CREAT would silently create a
namespace on a typo), and veths are created from the bridge namespace with the
peer placed straight into the host (docs/lab.md).

It knows nothing about processes (`netns.procs`) or configs (`netns.render`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from netns.errors import LabError
from netns.plan import Host, LabPlan
from plumbing.kvlog import kv

log = logging.getLogger("gslb.lab")

NETNS_RUN_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
BRIDGE_IF = "br0"
HOST_IF = "eth0"

# Written in every lab namespace before its veth arrives, so the interface
# inherits them (an interface created or moved in
# later takes the `default` values): no DAD (addresses usable at once, daemons can
# bind them), no router advertisements, no forwarding.
HOST_SYSCTLS = {
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_ra": "0",
    "net/ipv6/conf/default/accept_ra": "0",
    "net/ipv4/ip_forward": "0",
    "net/ipv6/conf/all/forwarding": "0",
}
# The bridge namespace: bridged frames must not go through that namespace's
# (empty) iptables (br_netfilter is built in and defaults to 1).
BRIDGE_SYSCTLS = {
    "net/bridge/bridge-nf-call-iptables": "0",
    "net/bridge/bridge-nf-call-ip6tables": "0",
    "net/bridge/bridge-nf-call-arptables": "0",
}


def ns_name(prefix: str, host: str) -> str:
    return f"{prefix}-{host}"


def veth_name(index: int) -> str:
    # Interface names are at most 15 characters (NetlinkError 34 beyond):
    # name by index, never by host name.
    return f"v{index}"


@dataclass(frozen=True)
class BuildTimes:
    namespaces: float
    sysctls: float
    links: float
    addresses: float


def lab_namespaces(prefix: str) -> list[str]:
    """Namespaces of this lab only: names starting with `<prefix>-` (prefixes have no '-')."""
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(n for n in pnetns.listnetns() if n.startswith(prefix + "-"))


@contextmanager
def netns_dir_lock(timeout: float = 30.0) -> Iterator[None]:
    """Serialise creating namespaces with removing them and unmounting /run/netns, across labs.

    /run/netns is shared by every lab on the machine: without this, one lab's
    "empty? then umount" could detach the directory just as another lab creates
    its first namespaces there, and two labs creating their first namespaces at
    once could stack two bind mounts. The lock is a flock on /run itself, so it
    leaves no file behind.
    """
    fd = os.open(NETNS_RUN_DIR.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another lab held the namespace lock on {NETNS_RUN_DIR.parent} for "
                                   f"{timeout:.0f} s; retry when it has finished") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the last fd releases the flock


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def write_sysctls(plan_ns: dict[str, dict[str, str]]) -> None:
    """Write sysctls inside namespaces, from one short-lived thread.

    setns() changes only the calling thread (setns(2); Python 3.11 has no
    os.setns), so a throwaway thread hops from namespace to namespace and the
    main thread never leaves the root namespace.
    """
    errors: list[str] = []

    def run() -> None:
        try:
            hop()
        except Exception as exc:  # reported to the caller, not lost in the thread
            errors.append(f"{type(exc).__name__}: {exc}")

    def hop() -> None:
        libc = _libc()
        for ns, values in plan_ns.items():
            fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    errors.append(f"setns {ns}: {os.strerror(err)}")
                    return
            finally:
                os.close(fd)
            for key, value in values.items():
                try:
                    with open(f"/proc/sys/{key}", "w") as f:
                        f.write(value)
                except OSError as exc:
                    if not key.startswith("net/bridge/"):
                        errors.append(f"{ns}: sysctl {key.replace('/', '.')}={value}: {exc.strerror}")

    t = threading.Thread(target=run, name="lab-sysctl", daemon=True)
    t.start()
    t.join(timeout=30)
    if t.is_alive():
        raise LabError("writing namespace sysctls did not finish within 30 s")
    if errors:
        raise LabError("; ".join(errors))


def build(plan: LabPlan, prefix: str) -> BuildTimes:
    """Create every namespace, link and address of the plan. Raises on the first failure;
    the caller tears down (`remove_namespaces`)."""
    t0 = time.monotonic()
    bridge_host = plan.by_role("bridge")[0]
    others = [h for h in plan.hosts if h.role != "bridge"]
    with netns_dir_lock():
        for h in plan.hosts:
            pnetns.create(ns_name(prefix, h.name))
    t1 = time.monotonic()
    values = {ns_name(prefix, h.name): dict(HOST_SYSCTLS) for h in plan.hosts}
    values[ns_name(prefix, bridge_host.name)].update(BRIDGE_SYSCTLS)
    write_sysctls(values)
    t2 = time.monotonic()

    v4len = int(plan.ipv4_prefix.split("/")[1])
    v6len = int(plan.ipv6_prefix.split("/")[1])
    bridge_ns = ns_name(prefix, bridge_host.name)
    with IPRoute(netns=bridge_ns, flags=0) as core:
        # Snooping off: no MLD state to reason about on a lab segment.
        core.link("add", ifname=BRIDGE_IF, kind="bridge", br_mcast_snooping=0)
        br = core.link_lookup(ifname=BRIDGE_IF)[0]
        for i, h in enumerate(others):
            core.link("add", ifname=veth_name(i), kind="veth",
                      peer={"ifname": HOST_IF, "net_ns_fd": ns_name(prefix, h.name)})
            idx = core.link_lookup(ifname=veth_name(i))[0]
            core.link("set", index=idx, master=br, state="up")
        _address_host(core, bridge_host, BRIDGE_IF, v4len, v6len)
    t3 = time.monotonic()
    for h in others:
        with IPRoute(netns=ns_name(prefix, h.name), flags=0) as ipr:
            _address_host(ipr, h, HOST_IF, v4len, v6len)
    t4 = time.monotonic()
    return BuildTimes(namespaces=t1 - t0, sysctls=t2 - t1, links=t3 - t2, addresses=t4 - t3)


def _address_host(ipr: IPRoute, host: Host, ifname: str, v4len: int, v6len: int) -> None:
    lo = ipr.link_lookup(ifname="lo")[0]
    ipr.link("set", index=lo, state="up")
    idx = ipr.link_lookup(ifname=ifname)[0]
    # One segment, on-link prefixes (/15, /48): every host reaches every other
    # without a route, and there is no default route, so a packet to a
    # non-lab address fails at once instead of leaving the lab.
    for a in host.ipv4:
        ipr.addr("add", index=idx, address=a, prefixlen=v4len)
    for a in host.ipv6:
        ipr.addr("add", index=idx, address=a, prefixlen=v6len, family=10, flags=IFA_F_NODAD)
    ipr.link("set", index=idx, state="up")


def write_resolv_conf(prefix: str, host: str, nameservers: list[str]) -> Path:
    """/etc/netns/<ns>/resolv.conf: `ip netns exec` binds it over /etc/resolv.conf (ip-netns(8))."""
    d = ETC_NETNS_DIR / ns_name(prefix, host)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "resolv.conf"
    lines = [f"nameserver {ns}" for ns in nameservers]
    path.write_text("# written by gslb lab; removed by `gslb lab down`\n" + "\n".join(lines)
                    + "\noptions timeout:1 attempts:2\n")
    return path


def remove_etc_netns(prefix: str) -> list[str]:
    """Remove /etc/netns/<prefix>-*/ (ip netns del leaves them) and /etc/netns if empty."""
    removed = []
    if not ETC_NETNS_DIR.is_dir():
        return removed
    for d in sorted(ETC_NETNS_DIR.iterdir()):
        if not d.name.startswith(prefix + "-") or not d.is_dir():
            continue
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
        removed.append(str(d))
    try:
        ETC_NETNS_DIR.rmdir()   # only succeeds when empty: another lab may be using it
    except OSError:
        pass
    return removed


def remove_namespaces(prefix: str) -> list[str]:
    """Delete this lab's namespaces (kill their processes first: a process keeps a namespace alive)."""
    removed = []
    with netns_dir_lock():
        for name in lab_namespaces(prefix):
            pnetns.remove(name)
            removed.append(name)
        _umount_run_netns_if_empty()
    return removed


def _umount_run_netns_if_empty() -> None:
    """The first namespace creation bind-mounts /run/netns onto itself; undo it only when no
    namespace of anyone is left, because another lab may share the directory."""
    try:
        if not NETNS_RUN_DIR.is_dir() or any(NETNS_RUN_DIR.iterdir()):
            return
    except OSError:
        return
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == str(NETNS_RUN_DIR) for line in f)
    if mounted:
        libc = _libc()
        if libc.umount2(str(NETNS_RUN_DIR).encode(), 2) != 0:  # MNT_DETACH
            log.warning(kv("umount_failed", path=NETNS_RUN_DIR, errno=ctypes.get_errno()))
            return
    try:
        NETNS_RUN_DIR.rmdir()
    except OSError:
        pass


def namespace_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_RUN_DIR / name).st_ino
    except OSError:
        return None


def processes_in(prefix: str) -> dict[str, list[int]]:
    """pids inside this lab's namespaces, found by namespace inode (pyroute2's ns_pids)."""
    if not NETNS_RUN_DIR.is_dir():
        return {}
    found = pnetns.ns_pids(str(NETNS_RUN_DIR))
    me = os.getpid()
    return {ns: [p for p in pids if p != me] for ns, pids in found.items() if ns.startswith(prefix + "-")}
