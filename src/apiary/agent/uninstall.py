"""`apiary uninstall`: remove every trace one agent instance leaves on the node, and say what was removed.

What an agent creates (read from the code that creates it):
- pins under --pin-root: maps, programs and links of every sensor (removing a link's pin detaches it, a
  map's pin drops its reference), the XDP prefilter's links on its devices among them (``prefilter/links``);
- per endpoint: a network namespace ``/run/netns/apiary-INSTANCE-HASH`` (its veth pair goes with it), a host
  veth ``lxcHASH`` with the alias ``apiary:INSTANCE:…``, a cgroup ``CGROUP2/apiary/INSTANCE/…``;
- host routes: ``unreachable --pod-cidr`` and, while services exist, ``unreachable --service-cidr`` (the
  endpoints' copies go with their namespaces);
- on every --devices device: the NodePort cls_bpf filters (handle 0xa1b, ingress and egress), the L7 proxy's
  from_netdev filter (handle 0xa1c, ingress) and the clsact qdisc they need;
- the L7 proxy: HAProxy's processes in the cgroup ``CGROUP2/apiary-l7proxy-INSTANCE``, the ip rule on its
  fwmark and the route table it points to (numbers derived from the instance);
- the DNS proxy's socket holder (``sleep infinity`` in that same cgroup, kept across agent restarts): ended
  by the PID recorded in --state-dir once verified ours (start time, cgroup, socket inodes), and with the
  cgroup in any case;
- --state-dir, the API socket with its lock file, and the gRPC APIs' unix sockets (hubble.sock, tetragon.sock
  or the agent's --hubble-socket-path / --tetragon-server-address), which a killed agent leaves behind.
Nothing is matched by a pattern wider than the instance's own names, so other instances stay intact.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from apiary.loader.fs import cgroup2_root
from apiary.sensors.dnsproxy import holder
from apiary.sensors.l7proxy.leftovers import proxy_cgroup, route_present, unroute
from apiary.sensors.lb.sensor import TC_HANDLE, TC_PRIORITY
from apiary.sensors.network.sensor import DEV_TC_HANDLE, DEV_TC_PRIORITY

from . import statedir


class AgentRunning(Exception):
    """An agent holds the state directory: uninstall refuses unless told to stop it."""


@dataclass
class Plan:
    """What one agent instance owns: the same options the agent was started with."""

    state_dir: str
    pin_root: str
    instance: str
    pod_cidr: str
    service_cidr: str
    socket_path: str
    devices: tuple[str, ...] = ()
    grpc_sockets: tuple[str, ...] = ()  # Hubble's and Tetragon's unix sockets (grpc_common's addresses)


@dataclass
class Report:
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def step(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except (OSError, NetlinkError, subprocess.SubprocessError) as e:
            self.failed.append(f"{what}: {e}")
        else:
            self.removed.append(what)


def running_agent(state_dir: str) -> int | None:
    """The pid of the agent holding the state directory's lock, or None when none does."""
    if not Path(state_dir).is_dir():
        return None
    try:
        fd = statedir.lock(state_dir, create=False)
    except statedir.StateDirBusy:
        try:
            return int((Path(state_dir) / statedir.LOCK_FILE).read_text().strip() or "0") or -1
        except (OSError, ValueError):
            return -1
    os.close(fd)
    return None


def stop_agent(pid: int, state_dir: str, grace: float = 30.0) -> str:
    """SIGTERM the agent (it detaches what it attached), SIGKILL after ``grace`` seconds; wait for the lock."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while running_agent(state_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_agent(state_dir) is None:
        return f"agent pid {pid} stopped (SIGTERM)"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running_agent(state_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_agent(state_dir) is not None:
        raise AgentRunning(f"agent pid {pid} did not stop")
    return f"agent pid {pid} killed (SIGKILL after {grace:.0f} s)"


def _count_pins(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if not p.is_dir())


def _unreachable_route(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    with IPRoute() as ipr:  # a dump, filtered here (a get with dst= is a route lookup, which fails: unreachable)
        routes = ipr.get_routes(family=2, table=254)
    return any(r["type"] == 7 and r["dst_len"] == net.prefixlen  # RTN_UNREACHABLE
               and r.get_attr("RTA_DST") == str(net.network_address) for r in routes)


def _del_route(cidr: str) -> None:
    with IPRoute() as ipr:
        ipr.route("del", dst=str(ipaddress.ip_network(cidr, strict=False)), type="unreachable")


def _kill_cgroup(d: Path) -> None:
    kill = d / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for _ in range(250):  # the kernel frees a killed cgroup's tasks asynchronously
        try:
            d.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    d.rmdir()


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)


def _device_filters(dev: str, rep: Report) -> None:
    """apiary's filters on a device (the NodePort ones of sensors/lb, the network sensor's from_netdev: their
    handle and priority); the clsact qdisc once empty."""
    for direction in ("ingress", "egress"):
        shown = _tc("filter", "show", "dev", dev, direction).stdout  # once per direction, for both handles
        for handle_n, prio in ((TC_HANDLE, TC_PRIORITY), (DEV_TC_HANDLE, DEV_TC_PRIORITY)):
            handle = f"0x{handle_n:x}"
            if f"handle {handle}" not in shown:
                continue
            r = _tc("filter", "del", "dev", dev, direction, "pref", str(prio), "handle", handle, "bpf")
            if r.returncode == 0:
                rep.removed.append(f"tc filter {dev} {direction} (handle {handle})")
            else:
                rep.failed.append(f"tc filter {dev} {direction}: {r.stderr.strip()}")
    if "clsact" in _tc("qdisc", "show", "dev", dev).stdout and not any(
        _tc("filter", "show", "dev", dev, d).stdout.strip() for d in ("ingress", "egress")
    ):
        r = _tc("qdisc", "del", "dev", dev, "clsact")
        (rep.removed if r.returncode == 0 else rep.failed).append(
            f"tc qdisc clsact {dev}" + ("" if r.returncode == 0 else f": {r.stderr.strip()}"))


def uninstall(p: Plan) -> Report:
    """Remove what the instance left (an agent must not be running: see running_agent)."""
    rep = Report()
    prefix, alias = f"apiary-{p.instance}-", f"apiary:{p.instance}:"
    pins = Path(p.pin_root)
    if pins.exists():
        n = _count_pins(pins)
        rep.step(f"pins {pins} ({n} pinned programs, links and maps)", lambda: shutil.rmtree(pins))
    for name in sorted(netns.listnetns()):
        if name.startswith(prefix):
            rep.step(f"netns {name}", lambda n=name: netns.remove(n))  # type: ignore[misc]
    with IPRoute() as ipr:
        links = [(lk["index"], lk.get_attr("IFLA_IFNAME")) for lk in ipr.get_links()
                 if (lk.get_attr("IFLA_IFALIAS") or "").startswith(alias)]
    for index, ifname in links:  # veths whose namespace is gone already (the kernel deletes its peer lazily)
        try:
            with IPRoute() as ipr:
                ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # ENODEV: it went with its namespace meanwhile
                rep.failed.append(f"veth {ifname}: {e}")
        else:
            rep.removed.append(f"veth {ifname}")
    root = cgroup2_root()
    base = Path(root) / "apiary" / p.instance if root else None
    if base is not None and base.is_dir():
        for d in sorted(x for x in base.iterdir() if x.is_dir()):
            rep.step(f"cgroup {d}", lambda d=d: _kill_cgroup(d))  # type: ignore[misc]
        rep.step(f"cgroup {base}", base.rmdir)
        with contextlib.suppress(OSError):
            base.parent.rmdir()  # the shared parent, once no instance uses it
    proxy = proxy_cgroup(root, p.instance) if root else None
    held = holder.load(p.state_dir) if proxy is not None else None
    if proxy is not None and held is not None and holder.verified(held, proxy):
        rep.step(f"DNS proxy socket holder pid {held.pid}", lambda: holder.stop(p.state_dir, proxy))
    if proxy is not None and proxy.is_dir():
        rep.step(f"L7 proxy (HAProxy processes and cgroup {proxy})", lambda: _kill_cgroup(proxy))
    if route_present(p.instance):
        rep.step("L7 proxy ip rule and its route table", lambda: unroute(p.instance))
    for what, cidr in (("pod CIDR", p.pod_cidr), ("service CIDR", p.service_cidr)):
        if _unreachable_route(cidr):
            rep.step(f"route unreachable {cidr} ({what})", lambda c=cidr: _del_route(c))  # type: ignore[misc]
    for dev in p.devices:
        if Path(f"/sys/class/net/{dev}").exists():
            _device_filters(dev, rep)
    st = Path(p.state_dir)
    if st.exists():
        rep.step(f"state dir {st}", lambda: shutil.rmtree(st))
    for f in (Path(p.socket_path), Path(p.socket_path + ".lock")):
        if f.exists():
            rep.step(f"{'socket' if f.suffix != '.lock' else 'lock file'} {f}", f.unlink)
    for g in map(Path, p.grpc_sockets):
        if g.is_socket():  # only a socket: a file of another kind at that path is not the agent's
            rep.step(f"gRPC socket {g}", g.unlink)
    return rep
