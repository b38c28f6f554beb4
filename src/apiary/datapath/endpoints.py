"""Endpoints: a network namespace joined to the host by a veth pair, an IPv4 from the pod CIDR,
routes, and a cgroup v2 of its own. Netlink through pyroute2; nothing here knows about BPF.

Addressing: the first address of the pod CIDR is the router. It sits (as a /32) on every host-side
veth, so the pod's default route points at it and the host answers ARP for it; each endpoint gets a
/32 with a host route to its veth. The whole pod CIDR is routed `unreachable` on the host so nothing
addressed to it ever leaves the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyroute2.config
from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

# pyroute2 forks helper children for netns work and stops them with SIGTERM. A child inherits the
# agent's asyncio signal wake-up fd, so its Python SIGTERM handler would tell the *agent's* event loop
# that the agent got SIGTERM. Children get the default SIGTERM action instead.
pyroute2.config.disable_mp_signal = True

NAME_RE = r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$"


class EndpointError(Exception):
    pass


@dataclass
class Endpoint:
    ep_id: int
    name: str
    namespace: str
    labels: dict[str, str]
    ipv4: str
    netns: str  # name under /run/netns
    host_if: str
    host_ifindex: int
    cgroup: str  # cgroup v2 directory
    state: str = "ready"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(value)


class EndpointManager:
    def __init__(self, pod_cidr: str, instance: str, cgroup_root: str, state_path: str | None) -> None:
        self.cidr = ipaddress.IPv4Network(pod_cidr)
        if self.cidr.num_addresses < 4:
            raise EndpointError(f"pod CIDR {pod_cidr} is too small")
        self.router = str(self.cidr.network_address + 1)
        self.instance = instance  # short tag that makes kernel object names unique per agent
        self.cgroup_parent = Path(cgroup_root) / "apiary" / instance
        self.state_path = Path(state_path) if state_path else None
        self.endpoints: dict[str, Endpoint] = {}
        self._load()

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        if self.state_path and self.state_path.exists():
            for d in json.loads(self.state_path.read_text()):
                ep = Endpoint(**d)
                self.endpoints[ep.key] = ep

    def _save(self) -> None:
        if not self.state_path:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps([e.to_dict() for e in self.endpoints.values()], indent=1))
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ host set-up
    def setup_host(self) -> None:
        _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        with IPRoute() as ipr:
            try:
                ipr.route("add", dst=str(self.cidr), type="unreachable")
            except NetlinkError as e:
                if e.code != 17:  # EEXIST
                    raise EndpointError(f"route the pod CIDR {self.cidr} locally: {e}") from e
        self.cgroup_parent.mkdir(parents=True, exist_ok=True)

    def teardown_host(self) -> None:
        """Remove host-level objects once no endpoint is left."""
        if self.endpoints:
            return
        with IPRoute() as ipr, contextlib.suppress(NetlinkError):
            ipr.route("del", dst=str(self.cidr), type="unreachable")
        with contextlib.suppress(OSError):
            self.cgroup_parent.rmdir()

    # ------------------------------------------------------------------ endpoints
    def _names(self, namespace: str, name: str) -> tuple[str, str]:
        h = hashlib.sha1(f"{self.instance}/{namespace}/{name}".encode()).hexdigest()[:10]
        return f"apiary-{self.instance}-{h}"[:60], f"lxc{h}"

    def _next_ip(self) -> str:
        used = {e.ipv4 for e in self.endpoints.values()}
        for host in self.cidr.hosts():
            ip = str(host)
            if ip != self.router and ip not in used:
                return ip
        raise EndpointError(f"pod CIDR {self.cidr} is exhausted ({len(used)} endpoints)")

    def _next_id(self) -> int:
        used = {e.ep_id for e in self.endpoints.values()}
        for i in range(1, 65536):
            if i not in used:
                return i
        raise EndpointError("no free endpoint id")

    def create(self, name: str, namespace: str, labels: dict[str, str]) -> Endpoint:
        for what, val in (("name", name), ("namespace", namespace)):
            if not re.match(NAME_RE, val):
                raise EndpointError(f"{what} {val!r}: must be a DNS label (lower-case letters, digits, '-', '.')")
        key = f"{namespace}/{name}"
        if key in self.endpoints:
            raise EndpointError(f"endpoint {key} already exists")
        ns_name, host_if = self._names(namespace, name)
        ip = self._next_ip()
        ep = Endpoint(
            self._next_id(),
            name,
            namespace,
            dict(labels),
            ip,
            ns_name,
            host_if,
            0,
            str(self.cgroup_parent / f"{namespace}_{name}"),
        )
        if os.path.exists(ep.netns_path):  # left by an agent that died mid-way: ours by name, not in use
            self._unplumb(ep)
        try:
            self._plumb(ep)
        except Exception as e:
            self._unplumb(ep)
            raise EndpointError(f"create endpoint {key}: {e}") from e
        self.endpoints[key] = ep
        self._save()
        return ep

    def _plumb(self, ep: Endpoint) -> None:
        step = f"create netns {ep.netns}"
        try:
            netns.create(ep.netns)
            with IPRoute() as ipr:
                step = f"create veth {ep.host_if}"
                ipr.link("add", ifname=ep.host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ep.netns})
                idx = ipr.link_lookup(ifname=ep.host_if)[0]
                ep.host_ifindex = idx
                _sysctl(f"/proc/sys/net/ipv6/conf/{ep.host_if}/disable_ipv6", "1")
                _sysctl(f"/proc/sys/net/ipv4/conf/{ep.host_if}/rp_filter", "0")
                ipr.link("set", index=idx, state="up")
                step = f"add router address {self.router} to {ep.host_if}"
                ipr.addr("add", index=idx, address=self.router, prefixlen=32)
                step = f"route {ep.ipv4}/32 to {ep.host_if}"
                ipr.route("add", dst=f"{ep.ipv4}/32", oif=idx, scope="link")
            step = "configure eth0 inside the netns"
            with NetNS(ep.netns) as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                eth = ns.link_lookup(ifname="eth0")[0]
                ns.link("set", index=lo, state="up")
                ns.link("set", index=eth, state="up")
                ns.addr("add", index=eth, address=ep.ipv4, prefixlen=32)
                ns.route("add", dst=f"{self.router}/32", oif=eth, scope="link")
                ns.route("add", dst="0.0.0.0/0", gateway=self.router, oif=eth)
        except (OSError, NetlinkError) as e:
            raise EndpointError(f"{step}: {e}") from e
        # no IPv6 inside: the datapath is IPv4 only, and router solicitations would be noise
        subprocess.run(
            ["ip", "netns", "exec", ep.netns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
            capture_output=True,
            check=False,
        )
        os.makedirs(ep.cgroup, exist_ok=True)

    def _unplumb(self, ep: Endpoint) -> None:
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=ep.host_if):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=idx)
        if os.path.exists(ep.netns_path):  # processes still inside keep it alive until they exit
            with contextlib.suppress(OSError):
                netns.remove(ep.netns)
        if os.path.isdir(ep.cgroup):
            self._kill_cgroup(ep.cgroup)
            with contextlib.suppress(OSError):
                os.rmdir(ep.cgroup)

    @staticmethod
    def _kill_cgroup(path: str) -> None:
        """End the processes the endpoint ran (its cgroup's members: started through apiary)."""
        kill = Path(path) / "cgroup.kill"
        if kill.exists():
            _sysctl(str(kill), "1")
            for _ in range(100):
                if not (Path(path) / "cgroup.procs").read_text().strip():
                    break
                time.sleep(0.01)

    def delete(self, key: str) -> Endpoint:
        ep = self.endpoints.get(key)
        if ep is None:
            raise EndpointError(f"no endpoint {key}")
        self._unplumb(ep)
        del self.endpoints[key]
        self._save()
        return ep

    def get(self, ref: str) -> Endpoint:
        """`ns/name`, or a bare name when it is unique."""
        if ref in self.endpoints:
            return self.endpoints[ref]
        hits = [e for e in self.endpoints.values() if e.name == ref]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise EndpointError(f"no endpoint {ref}")
        raise EndpointError(f"endpoint name {ref} is ambiguous: use namespace/name ({', '.join(e.key for e in hits)})")

    def verify(self) -> list[str]:
        """After a restart: which recorded endpoints lost their kernel objects."""
        problems = []
        with IPRoute() as ipr:
            for ep in self.endpoints.values():
                idx = ipr.link_lookup(ifname=ep.host_if)
                if not idx or not os.path.exists(ep.netns_path):
                    ep.state = "lost"
                    problems.append(ep.key)
                else:
                    ep.host_ifindex = idx[0]
                    ep.state = "ready"
        return problems

    def remove_all(self) -> None:
        for key in list(self.endpoints):
            self.delete(key)
        self.teardown_host()
        shutil.rmtree(self.cgroup_parent, ignore_errors=True)
        with contextlib.suppress(OSError):  # the shared parent, once no agent instance uses it
            self.cgroup_parent.parent.rmdir()
