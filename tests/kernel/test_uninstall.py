"""`apiary uninstall` after `kill -9` of a real agent with endpoints, a policy, a service and a NodePort device:
nothing of that instance is left (pins, netns, veths, cgroups, routes, TC filters, state dir, sockets: the API's
and the gRPC APIs'). After a SIGTERM (`--force`) with a service, the LB's kept pins and route go too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apiary.loader.fs import cgroup2_root
from apiary.sensors.l7proxy.leftovers import proxy_cgroup, route_present
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.net import Net

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (loads BPF programs)")

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: NodePort, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
"""


def _routes(cidr: str) -> str:
    return subprocess.run(["ip", "route", "show", "type", "unreachable", cidr], capture_output=True,
                          text=True).stdout.strip()


def _uninstall(a: AgentProcess, dev: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return a.cli("uninstall", "--state-dir", str(a.dir / "state"), "--pin-root", a.pin_root, "--instance",
                 a.instance, "--pod-cidr", a.pod_cidr, "--service-cidr", a.service_cidr, "--devices", dev, *extra,
                 timeout=300)


def test_uninstall_after_kill_9_leaves_nothing() -> None:
    a = AgentProcess()
    dev = f"apu{a.tag[:8]}h"  # a node device of the test's own (a veth pair, both ends on the host)
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", f"apu{a.tag[:8]}t"], check=True)
    hub = a.dir / "hub.sock"  # Hubble's socket where --hubble-socket-path says; Tetragon's at its default
    a.extra = ("--devices", dev, "--hubble-socket-path", str(hub))
    net = Net(a)
    cg_base = Path(cgroup2_root() or "/sys/fs/cgroup") / "apiary" / a.instance
    try:
        a.start()
        web = net.endpoint("web", "shop", app="web")
        net.endpoint("client", "shop", app="client")
        net.apply_ok(POLICY)
        r = a.cli("apply", "-f", "-", input=textwrap.dedent(SERVICE))
        assert r.returncode == 0, r.stderr
        # what the agent made, seen from outside
        netns = sorted(n for n in os.listdir("/run/netns") if n.startswith(f"apiary-{a.instance}-"))
        assert len(netns) == 2 and os.path.basename(web["netns"]) in netns
        assert cg_base.is_dir() and len([d for d in cg_base.iterdir() if d.is_dir()]) == 2
        assert _routes(a.pod_cidr) and _routes(a.service_cidr)
        assert "handle 0xa1b" in subprocess.run(["tc", "filter", "show", "dev", dev, "ingress"],
                                                capture_output=True, text=True).stdout
        assert any(Path(a.pin_root).rglob("*"))
        proxy_cg = proxy_cgroup(cgroup2_root() or "/sys/fs/cgroup", a.instance)
        has_proxy = shutil.which("haproxy") is not None
        if has_proxy:  # the agent's L7 proxy: HAProxy in its cgroup, the ip rule for redirected packets
            assert proxy_cg.is_dir() and (proxy_cg / "cgroup.procs").read_text().split()
            assert route_present(a.instance)
            # from_netdev on the device, after the NodePort filter: outside clients' proxied connections
            assert "handle 0xa1c" in subprocess.run(["tc", "filter", "show", "dev", dev, "ingress"],
                                                    capture_output=True, text=True).stdout

        # while the agent runs: refused, with the reason, and nothing removed
        r = _uninstall(a, dev)
        assert r.returncode == 1 and f"pid {a.proc.pid if a.proc else 0}" in r.stderr, r.stderr
        assert "nothing was removed" in r.stderr and Path(a.pin_root).is_dir() and (a.dir / "state").is_dir()

        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)  # nothing is cleaned up
        a.proc.wait(timeout=60)
        assert Path(a.pin_root).is_dir() and len(os.listdir("/run/netns")) >= 2
        tetragon = a.dir / "tetragon.sock"
        assert hub.is_socket() and tetragon.is_socket()  # the killed agent's gRPC sockets

        r = _uninstall(a, dev, "--hubble-socket-path", str(hub))
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        for ns in netns:
            assert f"removed: netns {ns}" in out
        assert f"removed: pins {a.pin_root}" in out and f"removed: state dir {a.dir / 'state'}" in out
        assert f"removed: route unreachable {a.pod_cidr}" in out
        assert f"removed: route unreachable {a.service_cidr}" in out
        assert f"removed: tc filter {dev} ingress" in out and f"removed: tc qdisc clsact {dev}" in out
        # and nothing is left
        assert not Path(a.pin_root).exists()
        assert not [n for n in os.listdir("/run/netns") if n.startswith(f"apiary-{a.instance}-")]
        assert not cg_base.exists()
        if has_proxy:
            assert "removed: L7 proxy (HAProxy processes and cgroup" in out and "removed: L7 proxy ip rule" in out
            assert "removed: DNS proxy socket holder pid" in out  # the killed agent's, by its verified PID
            assert f"removed: tc filter {dev} ingress (handle 0xa1c)" in out
            assert not proxy_cg.exists() and not route_present(a.instance)
        assert not _routes(a.pod_cidr) and not _routes(a.service_cidr)
        assert not (a.dir / "state").exists() and not Path(a.socket).exists()
        assert f"removed: gRPC socket {hub}" in out and f"removed: gRPC socket {tetragon}" in out
        assert not hub.exists() and not tetragon.exists()
        assert "clsact" not in subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True,
                                              text=True).stdout
        links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
        assert not [lk for lk in links if lk.get("ifalias", "").startswith(f"apiary:{a.instance}:")]
        # a second run finds nothing
        r = _uninstall(a, dev, "--hubble-socket-path", str(hub))
        assert r.returncode == 0 and "nothing to remove" in r.stdout, r.stdout + r.stderr
    finally:
        net.close()
        a.cleanup()
        subprocess.run(["ip", "link", "del", dev], capture_output=True)


def test_uninstall_force_stops_a_running_agent() -> None:
    with AgentProcess() as a:
        # a service: the SIGTERM leaves the LB's hooks, pins and route for a next agent; uninstall removes them
        r = a.cli("apply", "-f", "-", input=textwrap.dedent(SERVICE))
        assert r.returncode == 0, r.stderr
        assert _routes(a.service_cidr) and (Path(a.pin_root) / "lb" / "links").is_dir()
        r = a.cli("uninstall", "--state-dir", str(a.dir / "state"), "--pin-root", a.pin_root, "--instance",
                  a.instance, "--pod-cidr", a.pod_cidr, "--service-cidr", a.service_cidr, "--force", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert a.proc is not None and a.proc.wait(timeout=60) is not None
        assert "stopped: agent pid" in r.stdout and "removed: state dir" in r.stdout
        assert not Path(a.pin_root).exists() and not (a.dir / "state").exists()
        assert f"removed: route unreachable {a.service_cidr}" in r.stdout and not _routes(a.service_cidr)


def test_uninstall_bad_options_change_nothing(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "apiary", "uninstall", "--state-dir", str(tmp_path),
         "--pod-cidr", "10.1.2.300/24"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--pod-cidr" in r.stderr and tmp_path.is_dir()
