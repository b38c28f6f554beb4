"""A test host of our own: a network namespace on a veth with addresses in 198.19.N.0/24 (RFC 2544's
benchmarking range, routed only to this veth), reachable from endpoints through the host. Servers started in
it with :meth:`HostNs.spawn` are killed, and the namespace, veth and route removed, when the context ends
(also on failure)."""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class HostNs:
    netns: str
    net: str  # "198.19.N": the host's addresses are net.H
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def spawn(self, argv: list[str], ready_line: bool = True) -> subprocess.Popen[str]:
        """Run ``argv`` inside the namespace; with ``ready_line``, wait for its first stdout line "ready"."""
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if ready_line else subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        if ready_line:
            assert p.stdout and "ready" in p.stdout.readline(), p.stderr.read() if p.stderr else ""
        return p

    def python(self, module: str, *args: str) -> subprocess.Popen[str]:
        return self.spawn([sys.executable, "-m", module, *args])


@contextlib.contextmanager
def host_netns(hosts: Iterable[int]) -> Iterator[HostNs]:
    """A namespace with the addresses 198.19.N.H (H in ``hosts``), a route back to 10.0.0.0/8 (endpoints)."""
    tag = uuid.uuid4().hex[:6]
    n = random.randint(1, 254)
    ns, h_if, t_if = f"apiary-th-{tag}", f"th{tag}h", f"th{tag}t"
    net = f"198.19.{n}"
    th = HostNs(ns, net)

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/32", "dev", h_if)
        sh("ip", "link", "set", h_if, "up")
        sh("ip", "route", "add", f"{net}.0/24", "dev", h_if)
        got = subprocess.run(["ip", "route", "get", f"{net}.2"], capture_output=True, text=True).stdout
        if f"dev {h_if}" not in got:
            raise RuntimeError(f"{net}.0/24 does not route to the test host ({got.strip()}): refusing to send")
        cmds = [["ip", "link", "set", "lo", "up"], ["ip", "link", "set", t_if, "up"]]
        cmds += [["ip", "addr", "add", f"{net}.{h}/24", "dev", t_if] for h in hosts]
        cmds.append(["ip", "route", "add", "10.0.0.0/8", "via", f"{net}.1", "dev", t_if, "onlink"])
        for cmd in cmds:
            sh("ip", "netns", "exec", ns, *cmd)
        yield th
    finally:
        for p in th.procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "route", "del", f"{net}.0/24", "dev", h_if], capture_output=True)
        subprocess.run(["ip", "link", "del", h_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
