"""Endpoints: a network namespace joined to the host by a veth pair, an IPv4 from the pod CIDR,
routes, and a cgroup v2 of its own. Netlink through pyroute2; nothing here knows about BPF.

Kernel object names carry the agent instance: netns `apiary-<instance>-<hash>`, host veth `lxc<hash>`
(its ifalias `apiary:<instance>:<namespace>/<name>`), cgroup `<cgroup root>/apiary/<instance>/...`.
Creation and deletion are journalled (an intent record in the agent's state store, written before the
first kernel object and removed once the state file holds the result), so an agent killed half-way
undoes an interrupted create, or finishes an interrupted delete, when it starts again; what else
carries this instance's names but is not in the state file is removed at start-up too.

Addressing: the first address of the pod CIDR is the router. It sits (as a /32) on every host-side
veth, so the pod's default route points at it and the host answers ARP for it; each endpoint gets a
/32 with a host route to its veth. The whole pod CIDR is routed `unreachable` on the host so nothing
addressed to it ever leaves the machine.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyroute2.config
from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_type

from apiary.sensors.network.validate import (
    HostRoute,
    ValidationError,
    check_endpoint_name,
    check_labels,
    check_namespace,
    check_pod_cidr,
    check_pod_cidr_syntax,
    check_ports,
)
from apiary.store import Store

# pyroute2 forks helper children for netns work and stops them with SIGTERM. A child inherits the
# agent's asyncio signal wake-up fd, so its Python SIGTERM handler would tell the *agent's* event loop
# that the agent got SIGTERM. Children get the default SIGTERM action instead.
pyroute2.config.disable_mp_signal = True

# test-only: the path of a file that `create` writes once the kernel objects exist and before the state
# file records them, then waits there (so a test can kill the agent at the worst moment)
PAUSE_ENV = "APIARY_TEST_PAUSE_ENDPOINT_CREATE"


class EndpointError(Exception):
    pass


def host_addresses_and_routes() -> tuple[list[tuple[str, str]], list[HostRoute]]:
    """The host's IPv4 addresses (address, device) and its main routing table."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
        addrs = [(a.get_attr("IFA_ADDRESS"), names.get(a["index"], "")) for a in ipr.get_addr(family=2)]
        routes = [
            HostRoute(
                f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}",
                str(rt_type.get(r["type"], r["type"])),
                names.get(r.get_attr("RTA_OIF"), ""),
            )
            for r in ipr.get_routes(family=2, table=254)
        ]
    return addrs, routes


def _test_pause() -> None:
    marker = os.environ.get(PAUSE_ENV)
    if not marker:
        return
    Path(marker).write_text(str(os.getpid()))
    for _ in range(6000):  # until the test kills the agent (at most 10 minutes)
        time.sleep(0.1)


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
    # container ports: name -> (port, "TCP"|"UDP"|"SCTP"), for named targetPorts and named ports in policies
    ports: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Endpoint:
        """From the state file (JSON: ports as ``{"http": [8080, "TCP"]}``; older files have no ports)."""
        ports = {name: (int(port), str(proto)) for name, (port, proto) in (d.get("ports") or {}).items()}
        return cls(**{**d, "ports": ports})

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


STATE_KEY = "endpoints.json"  # the endpoints, in the agent's state store
JOURNAL_KEY = "endpoints.journal"  # the intent record of a creation or deletion under way


class EndpointManager:
    def __init__(self, pod_cidr: str, instance: str, cgroup_root: str, store: Store | None) -> None:
        try:
            self.cidr = check_pod_cidr_syntax(pod_cidr, "pod CIDR")
        except ValidationError as e:
            raise EndpointError(str(e)) from None
        self.router = str(self.cidr.network_address + 1)
        self.instance = instance  # short tag that makes kernel object names unique per agent
        self.cgroup_parent = Path(cgroup_root) / "apiary" / instance
        self.store = store  # the agent's state store: STATE_KEY and JOURNAL_KEY (None: nothing persisted)
        self.endpoints: dict[str, Endpoint] = {}
        self._load()

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        raw = self.store.get(STATE_KEY) if self.store is not None else None
        if raw is not None:
            for d in json.loads(raw):
                ep = Endpoint.from_dict(d)
                self.endpoints[ep.key] = ep

    def _save(self) -> None:
        if self.store is not None:
            self.store.put(STATE_KEY, json.dumps([e.to_dict() for e in self.endpoints.values()], indent=1).encode())

    def _journal(self, op: str, ep: Endpoint) -> None:
        """Record what is about to change in the kernel, before changing it."""
        if self.store is not None:
            self.store.put(JOURNAL_KEY, json.dumps({"op": op, "endpoint": ep.to_dict()}).encode())

    def _journal_done(self) -> None:
        if self.store is not None:
            self.store.delete(JOURNAL_KEY)

    def recover(self) -> list[str]:
        """At start-up: finish or undo what an agent killed half-way left, then remove whatever carries
        this instance's names but is not in the state file. Returns what was done, for the log."""
        notes = []
        raw = self.store.get(JOURNAL_KEY) if self.store is not None else None
        if raw is not None:
            try:
                rec = json.loads(raw)
                op, ep = rec["op"], Endpoint.from_dict(rec["endpoint"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                notes.append(f"endpoint journal unreadable ({e}); removing unknown objects instead")
            else:
                known = self.endpoints.get(ep.key)
                if op == "create" and known is not None and known.netns == ep.netns:
                    pass  # the state file has it: the create had finished
                elif op == "create":
                    self._unplumb(ep)
                    notes.append(f"undid the interrupted creation of endpoint {ep.key}")
                else:
                    self._unplumb(ep)
                    if self.endpoints.pop(ep.key, None) is not None:
                        self._save()
                    notes.append(f"finished the interrupted deletion of endpoint {ep.key}")
            self._journal_done()
        removed = self._remove_unknown()
        if removed:
            notes.append(f"removed objects of this instance unknown to its state: {', '.join(removed)}")
        return notes

    def drop_refused_labels(self) -> list[str]:
        """Endpoints stored by an older agent may carry labels that are refused now (a forged namespace):
        those labels are dropped, so the endpoint gets the identity of the namespace it is really in."""
        notes = []
        for ep in self.endpoints.values():
            for key, value in list(ep.labels.items()):
                try:
                    check_labels({key: value})
                except ValidationError as e:
                    del ep.labels[key]
                    notes.append(f"endpoint {ep.key}: dropped label {e}")
        if notes:
            self._save()
        return notes

    def _remove_unknown(self) -> list[str]:
        prefix, alias = f"apiary-{self.instance}-", f"apiary:{self.instance}:"
        removed = []
        known_ns = {e.netns for e in self.endpoints.values()}
        for name in sorted(netns.listnetns()):
            if name.startswith(prefix) and name not in known_ns:
                self._remove_objects(name, f"lxc{name[len(prefix):]}", None)
                removed.append(f"netns {name}")
        known_if = {e.host_if for e in self.endpoints.values()}
        with IPRoute() as ipr:
            for link in ipr.get_links():
                ifname = link.get_attr("IFLA_IFNAME")
                if (link.get_attr("IFLA_IFALIAS") or "").startswith(alias) and ifname not in known_if:
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=link["index"])
                        removed.append(f"veth {ifname}")
        known_cg = {e.cgroup for e in self.endpoints.values()}
        for d in sorted(self.cgroup_parent.iterdir()) if self.cgroup_parent.is_dir() else []:
            if d.is_dir() and str(d) not in known_cg:
                self._remove_objects(None, None, str(d))
                removed.append(f"cgroup {d}")
        return removed

    # ------------------------------------------------------------------ host set-up
    def check_host(self) -> None:
        """Refuse a pod CIDR that holds a host address or overlaps a route apiary did not install."""
        addrs, routes = host_addresses_and_routes()
        try:
            check_pod_cidr(str(self.cidr), addrs, routes, field="pod CIDR")
        except ValidationError as e:
            raise EndpointError(str(e)) from None

    def setup_host(self) -> None:
        _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        for ep in self.endpoints.values():  # veths an older agent made: host clients of an L7 ingress need it
            _sysctl(f"/proc/sys/net/ipv4/conf/{ep.host_if}/accept_local", "1")
        with IPRoute() as ipr:
            try:
                ipr.route("add", dst=str(self.cidr), type="unreachable")
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise EndpointError(f"route the pod CIDR {self.cidr} locally: {e}") from e
        self.cgroup_parent.mkdir(parents=True, exist_ok=True)

    def teardown_host(self) -> None:
        """Remove host-level objects once no endpoint is left."""
        if self.endpoints:
            return
        with IPRoute() as ipr, contextlib.suppress(NetlinkError):
            ipr.route("del", dst=str(self.cidr), type="unreachable")
        for d in (self.cgroup_parent, self.cgroup_parent.parent):  # the shared parent once no instance uses it
            with contextlib.suppress(OSError):
                d.rmdir()

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

    def create(self, name: str, namespace: str, labels: dict[str, str],
               ports: dict[str, tuple[int, str]] | None = None) -> Endpoint:
        """ValidationError (naming the field) for a bad name, namespace, label or port; EndpointError otherwise."""
        name, namespace = check_endpoint_name(name), check_namespace(namespace)
        labels = check_labels(labels)
        ports = check_ports(ports or {})
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
            ports=ports,
        )
        self._journal("create", ep)
        try:
            self._unplumb(ep)  # anything left under these names is ours (the hash includes the instance)
            self._plumb(ep)
        except Exception as e:
            self._unplumb(ep)
            self._journal_done()
            raise EndpointError(f"create endpoint {key}: {e}") from e
        _test_pause()
        self.endpoints[key] = ep
        self._save()
        self._journal_done()
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
                ipr.link("set", index=idx, ifalias=f"apiary:{self.instance}:{ep.key}")
                _sysctl(f"/proc/sys/net/ipv6/conf/{ep.host_if}/disable_ipv6", "1")
                _sysctl(f"/proc/sys/net/ipv4/conf/{ep.host_if}/rp_filter", "0")
                # a host process's packet to an L7 ingress is looped back into this veth's ingress (to the
                # proxy) with a host address as its source: not a martian here
                _sysctl(f"/proc/sys/net/ipv4/conf/{ep.host_if}/accept_local", "1")
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
        self._remove_objects(ep.netns, ep.host_if, ep.cgroup)

    def _remove_objects(self, ns_name: str | None, host_if: str | None, cgroup: str | None) -> None:
        """Veth (its routes and router address go with it), netns, cgroup; each only if it exists."""
        if host_if:
            with IPRoute() as ipr:
                for idx in ipr.link_lookup(ifname=host_if):
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=idx)
        if ns_name and os.path.exists(f"/run/netns/{ns_name}"):  # processes inside keep it alive until they exit
            with contextlib.suppress(OSError):
                netns.remove(ns_name)
        if cgroup and os.path.isdir(cgroup):
            self._kill_cgroup(cgroup)
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)

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
        self._journal("delete", ep)
        self._unplumb(ep)
        del self.endpoints[key]
        self._save()
        self._journal_done()
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
        shutil.rmtree(self.cgroup_parent, ignore_errors=True)
        self.teardown_host()
