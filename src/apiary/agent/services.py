"""The agent's services (kube-proxy replacement): Kubernetes Services and EndpointSlices as the user applied
them, their frontends and backends recomputed whenever endpoints come and go (the EndpointSlice
controller's job), written to the socket load balancer's maps.

The LB sensor loads with the first service (or at start when services are stored) and attaches to the
cgroup v2 root. The state directory keeps every applied object with its allocated clusterIP and nodePorts,
and the backend and service ids, so a restarted agent writes the same tables. The service CIDR is routed
``unreachable`` on the host and in every endpoint while the agent runs: a VIP that was not translated
fails locally and never leaves the machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apiary.loader.fs import remove_pin_tree
from apiary.observe.hubble.raw import MSG_DROP, VERDICT_DROPPED, FlowMsg
from apiary.observe.hubble.services import ServiceTable
from apiary.policy.explain import HttpRequest
from apiary.policy.models import PolicyError
from apiary.sensors.lb import abi as lb_abi
from apiary.sensors.lb.sensor import (
    LBCapacityError,
    LBDrop,
    LoadBalancer,
    PackMemo,
    Sizes,
    contents,
    maglev_value,
    netns_cookie,
)
from apiary.services.allocate import AllocationError, allocate_service, service_network
from apiary.services.backends import (
    ALGORITHMS,
    EndpointInfo,
    Frontend,
    LBTable,
    ServiceEntry,
    frontends,
    lb_table,
    maglev_lut,
)
from apiary.services.format import render, service_rows
from apiary.services.maglev import ALLOWED_TABLE_SIZES as PRIMES
from apiary.services.models import EndpointSlice, Service, load_services
from apiary.store import Store, describe

from .config import AgentConfig
from .records import RingReader
from .statedir import read_json, write_text

if TYPE_CHECKING:
    from .network import Network

STATE_FILE = "services.json"
HOST_IDENTITY, WORLD_IDENTITY = 1, 2


class ServiceError(Exception):
    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status


@dataclass
class Plan:
    services: dict[str, Service]
    slices: dict[str, EndpointSlice]
    fronts: list[Frontend]
    table: LBTable
    fronts_of: dict[str, list[Frontend]]  # service -> its frontends (kept to skip unchanged services next time)


def _ident(obj: Service | EndpointSlice) -> str:
    return f"{obj.namespace}/{obj.name}"


def _served(eps: EndpointSlice) -> str:
    """The service a slice belongs to (its kubernetes.io/service-name label)."""
    return f"{eps.namespace}/{eps.service_name}"


def _dump(obj: Service | EndpointSlice) -> dict[str, Any]:
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServicesControl:
    def __init__(self, cfg: AgentConfig, network: Network, cgroup_root: str,
                 on_load: Callable[[LoadBalancer], None], *, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.net = network
        self.cgroup_root = cgroup_root
        self.on_load = on_load
        self.pin_dir = Path(cfg.pin_root) / "lb"  # the LB's pins: services keep balancing while the agent is down
        service_network(cfg.service_cidr)  # refused at start, not at the first apply
        if cfg.lb_algorithm not in ALGORITHMS:
            raise ServiceError(f"--lb-algorithm: {cfg.lb_algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        for dev in cfg.devices:
            if not Path(f"/sys/class/net/{dev}").exists():
                raise ServiceError(f"--devices: no network device {dev!r} on this node")
        if cfg.maglev_table_size not in PRIMES:
            raise ServiceError(f"--maglev-table-size: {cfg.maglev_table_size} is not one of Cilium's primes "
                               f"({', '.join(map(str, PRIMES))})")
        self.sensor: LoadBalancer | None = None
        self.reader: RingReader | None = None
        self.services: dict[str, Service] = {}
        self.slices: dict[str, EndpointSlice] = {}
        self.backend_ids: dict[tuple[str, int, str], int] = {}
        self.rev_nat_ids: dict[tuple[str, int, str], int] = {}
        self.fronts: list[Frontend] = []
        self.fronts_of: dict[str, list[Frontend]] = {}
        # what an unchanged frontend computes to, kept between requests so that one change costs little
        # however many services there are: its service-map entries, their packed bytes, stored YAML
        self._entries_memo: dict[Hashable, tuple[ServiceEntry, ...]] = {}
        self._packed_memo = PackMemo()
        self._lut_memo: dict[tuple[tuple[str, int, int], ...], bytes] = {}  # Maglev tables by backends
        self._dumps: dict[str, tuple[Service, str]] = {}
        self.table = LBTable([], {}, {}, {})
        self.routed: set[str] = set()  # netns names with the unreachable route ("" = the host)
        self._cookies: dict[tuple[str, int], int] = {}  # (endpoint netns name, its inode) -> netns cookie
        self.drops = 0
        # flows name their service (Hubble's source_service/destination_service, --service filters)
        self.flow_services = ServiceTable()
        network.builder.services = self.flow_services

    # ------------------------------------------------------------------ lifecycle
    def _sensor(self) -> LoadBalancer:
        if self.sensor is None:
            s = LoadBalancer(Sizes(services=self.cfg.lb_map_size, backends=self.cfg.lb_map_size,
                                   rev_nat=self.cfg.lb_map_size), maglev_m=self.cfg.maglev_table_size,
                             pin_dir=self.pin_dir)
            s.load()
            try:
                s.attach(self.cgroup_root)
                s.set_host_addrs(self.net.host_ips())
                s.set_local_netns(self._endpoint_cookies())  # in full: adopted maps may hold a killed agent's
                for dev in self.cfg.devices:
                    try:
                        s.attach_device(dev)
                    except OSError:
                        raise ServiceError(f"--devices: no network device {dev!r} on this node") from None
            except BaseException:
                s.close()
                raise
            self.sensor = s
            assert s.ring is not None
            self.reader = RingReader(s.ring, s.handlers(), {"lb_drop": self.on_drop}, log_errors=False)
            self.on_load(s)
        return self.sensor

    def start(self) -> list[str]:
        stored = read_json(self.store, STATE_FILE) or {}
        if not stored.get("services") and not stored.get("slices"):
            self.sync_routes()
            remove_pin_tree(self.pin_dir)  # hooks a killed agent left with nothing to balance
            return []
        self.services = {k: Service.model_validate(v) for k, v in stored.get("services", {}).items()}
        self.slices = {k: EndpointSlice.model_validate(v) for k, v in stored.get("slices", {}).items()}
        self.backend_ids = {(a, p, t): i for a, p, t, i in stored.get("backend_ids", [])}
        self.rev_nat_ids = {(a, p, t): i for a, p, t, i in stored.get("rev_nat_ids", [])}
        self._commit(self._plan(self.services, self.slices))
        adopted = [f"adopted pinned LB maps and hooks, reconciled: {line}"
                   for line in (self.sensor.reconciled if self.sensor else [])]
        return [f"services: {len(self.services)} restored from {describe(self.store, STATE_FILE)} "
                f"({len(self.fronts)} frontends, "
                f"socket LB on {self.cgroup_root})", *adopted]

    def close(self) -> None:
        # while services exist the LB keeps its hooks, pins and the service CIDR's route (as after a kill), so a
        # planned restart does not stop balancing; the next agent adopts them. With none, everything goes.
        keep = bool(self.services) and self.sensor is not None
        if not keep:
            self._unroute_all()
        if self.sensor is not None:
            self.sensor.close(keep_pins=keep)
            self.sensor = None
            self.reader = None

    def refresh_host_addrs(self) -> None:
        """The node's addresses as they are now, for the NodePort wildcard and the ExternalIP check (an address
        added after the LB loaded is a node address too; one removed is not any more)."""
        if self.sensor is not None:
            self.sensor.set_host_addrs(self.net.host_ips())

    # Pump: the LB's event ring (refused connects)
    def fileno(self) -> int:
        return self.reader.fileno() if self.reader else -1

    def drain(self) -> int:
        return self.reader.drain() if self.reader else 0

    # ------------------------------------------------------------------ the tables
    def _endpoints(self) -> list[EndpointInfo]:
        out = []
        for ep in self.net.em.endpoints.values():
            out.append(EndpointInfo(ep.namespace, dict(ep.labels), ep.ipv4, dict(ep.ports), ready=ep.state == "ready",
                                    name=ep.name))
        return out

    def _plan(self, services: dict[str, Service], slices: dict[str, EndpointSlice],
              changed: Collection[str] | None = None) -> Plan:
        """The tables for ``services``; only the ``changed`` ones (None: all, e.g. after an endpoint change)
        have their frontends and backends recomputed."""
        eps: list[EndpointInfo] | None = None
        sl = list(slices.values())
        fronts_of: dict[str, list[Frontend]] = {}
        for ident, svc in services.items():
            kept = self.fronts_of.get(ident) if changed is not None and ident not in changed else None
            if kept is None:
                eps = self._endpoints() if eps is None else eps
                kept = frontends(svc, eps, sl)
            fronts_of[ident] = kept
        fronts = [fe for fl in fronts_of.values() for fe in fl]
        keys_f = {fe.key for fe in fronts}
        keys_b = {be.key for fe in fronts for be in fe.backends}
        if len(self._entries_memo) > 2 * len(fronts) + 64:  # forget what no frontend uses any more
            self._entries_memo.clear()
            self._packed_memo.clear()
        table = lb_table(fronts, default_algorithm=self.cfg.lb_algorithm,
                         backend_ids={k: v for k, v in self.backend_ids.items() if k in keys_b},
                         rev_nat_ids={k: v for k, v in self.rev_nat_ids.items() if k in keys_f},
                         memo=self._entries_memo)
        return Plan(services, slices, fronts, table, fronts_of)

    def _commit(self, plan: Plan) -> dict[str, int]:
        """Write a plan to the maps (all or nothing), then keep it and store it."""
        luts: dict[int, list[int] | bytes] = {}
        lut_memo: dict[tuple[tuple[str, int, int], ...], bytes] = {}
        ids: dict[tuple[str, int, str], int] | None = None
        for fe in plan.fronts:
            if (fe.algorithm or self.cfg.lb_algorithm) == "maglev" and fe.slots():
                ids = {b.key: i for i, b in plan.table.backends.items()} if ids is None else ids
                mkey = tuple((b.address, b.port, ids[b.key]) for b in fe.slots())
                lut = self._lut_memo.get(mkey)
                if lut is None:
                    lut = maglev_value(maglev_lut(fe, plan.table, self.cfg.maglev_table_size, ids=ids))
                lut_memo[mkey] = luts[plan.table.frontend_ids[fe.key]] = lut
        want = contents(plan.table, luts, self._packed_memo)
        s = self._sensor() if plan.services else self.sensor
        counts = s.write(want) if s is not None else {"written": 0, "deleted": 0}
        self.services, self.slices, self.fronts, self.table = plan.services, plan.slices, plan.fronts, plan.table
        self.fronts_of = plan.fronts_of
        self._lut_memo = lut_memo
        self.backend_ids = {be.key: i for i, be in plan.table.backends.items()}
        self.rev_nat_ids = dict(plan.table.frontend_ids)
        self._save()
        self.sync_routes()
        # a new table, not an edit: a flow read before this change and built later keeps the table of its moment
        self.flow_services = self.net.builder.services = ServiceTable(self.fronts)
        return counts

    def frontend_for(self, address: str, port: int, protocol: str) -> Frontend | None:
        """The ClusterIP or external IP frontend at exactly that address and port, if one is."""
        return next((fe for fe in self.fronts if fe.address == address and fe.port == port
                     and fe.protocol.upper() == protocol.upper()), None)

    def _external_translated(self, address: str, src: str) -> bool:
        """Whether a connection from ``src`` to an external IP is balanced: always at a node address; at
        another only on the TC path (a client on another host, arriving on a --devices device). The socket
        LB leaves it alone for this node's own sockets (Cilium's anti-MITM check)."""
        host = set(self.net.host_ips())
        if address in host:
            return True
        local = "/" in src or src in host or self.net.endpoint_by_ip(src) is not None
        return not local and bool(self.cfg.devices)

    def explain_to(self, src: str, dst: str, port: int, protocol: str, http: HttpRequest | None) -> dict[str, Any]:
        """``policy explain`` to any address: a frontend a connection from ``src`` is translated at is explained
        by its backends (:meth:`explain`); another address of the service CIDR is routed unreachable; a
        service's external IP the datapath leaves alone goes to that address itself (said so)."""
        fe = self.frontend_for(dst, port, protocol) if port else None
        if fe is not None and (fe.type != "ExternalIP" or self._external_translated(dst, src)):
            return self.explain(src, fe, protocol, http)
        res = self.net.explain(src, dst, port, protocol, http)  # a source or destination that is neither: refused
        try:
            addr = ipaddress.IPv4Address(dst)
        except ValueError:
            addr = None
        if addr is not None and addr in service_network(self.cfg.service_cidr):
            where = f"{dst}:{port}/{protocol}" if port else dst
            return {"verdict": "DENIED", "egress": None, "ingress": None, "revision": self.net.revision,
                    "text": f"DENIED: {where} is in the service CIDR {self.cfg.service_cidr} but is no service "
                            "frontend: it is routed unreachable (EHOSTUNREACH)"}
        if fe is not None:
            res["text"] += (f"\n  (note: {dst} is an external IP of service {fe.service}, but not an address of "
                            "this node: a connection from this node is not translated, it goes to that address)")
        return res

    def explain(self, src: str, fe: Frontend, protocol: str, http: HttpRequest | None) -> dict[str, Any]:
        """``policy explain`` to a service address: policy applies to the backend after translation (as in
        Cilium), so each active backend is explained; the verdict is theirs when they agree, else MIXED."""
        name = f"{fe.service}:{fe.port_name}" if fe.port_name else fe.service
        where = f"{fe.address}:{fe.port}/{fe.protocol}"
        active = list(fe.slots())  # the active backends; with none, the serving terminating ones (as the datapath)
        if not active:
            return {"verdict": "DENIED", "service": fe.service, "backends": [],
                    "text": f"DENIED: {where} is service {name}, which has no active backend: the connection is "
                            f"dropped (SERVICE_BACKEND_NOT_FOUND)", "revision": self.net.revision}
        rows = [{"backend": f"{be.address}:{be.port}", **self.net.explain(src, be.address, be.port, protocol, http)}
                for be in active]
        verdicts = {r["verdict"] for r in rows}
        verdict = verdicts.pop() if len(verdicts) == 1 else "MIXED"
        lines = [f"{verdict}: {where} is service {name}; policy applies to its backend after translation:"]
        lines += [f"  -> {r['backend']}: {r['text']}" for r in rows]
        return {"verdict": verdict, "service": fe.service, "backends": rows, "text": "\n".join(lines),
                "revision": self.net.revision}

    def _save(self) -> None:
        """services.json, with each service's JSON text kept from its last dump (one change re-encodes one
        service, not all of them)."""
        enc = json.JSONEncoder(separators=(",", ":")).encode
        services = ",".join(f"{enc(k)}:{self._dump(k, v)}" for k, v in self.services.items())
        rest = enc({
            "slices": {k: _dump(v) for k, v in self.slices.items()},
            "backend_ids": [[*k, i] for k, i in sorted(self.backend_ids.items(), key=lambda kv: kv[1])],
            "rev_nat_ids": [[*k, i] for k, i in sorted(self.rev_nat_ids.items(), key=lambda kv: kv[1])],
        })
        write_text(self.store, STATE_FILE, '{"services":{' + services + "}," + rest[1:])

    def _dump(self, ident: str, svc: Service) -> str:
        """The stored form of a service as JSON text, encoded once per version applied."""
        got = self._dumps.get(ident)
        if got is None or got[0] is not svc:
            got = self._dumps[ident] = (svc, json.dumps(_dump(svc), separators=(",", ":")))
        return got[1]

    def endpoints_changed(self) -> None:
        """Backends follow the endpoints (called after every endpoint create/delete)."""
        if self.services:
            self._commit(self._plan(self.services, self.slices))
        else:
            self.sync_routes()
        if self.sensor is not None:
            self.sensor.set_local_netns(self._endpoint_cookies())

    def _endpoint_cookies(self) -> set[int]:
        """The netns cookies of the endpoints' netns (a NodePort at a node address is theirs to reach through the
        socket path), each read once per netns (a name reused for a new netns has a new inode)."""
        cookies: set[int] = set()
        seen: dict[tuple[str, int], int] = {}
        for ep in self.net.em.endpoints.values():
            try:
                key = (ep.netns, os.stat(ep.netns_path).st_ino)
                cookie = self._cookies.get(key)
                if cookie is None:
                    cookie = netns_cookie(ep.netns)
            except OSError:
                continue  # its netns is gone (a lost endpoint)
            seen[key] = cookie
            cookies.add(cookie)
        self._cookies = seen
        return cookies

    # ------------------------------------------------------------------ routes
    def _route(self, netns: str, add: bool) -> None:
        cmd = ["ip"] + (["-n", netns] if netns else []) + ["route", "replace" if add else "del", "unreachable",
                                                            self.cfg.service_cidr]
        subprocess.run(cmd, capture_output=True, check=False)

    def sync_routes(self) -> None:
        want = {""} | {ep.netns for ep in self.net.em.endpoints.values() if ep.state == "ready"}
        for ns in sorted(want - self.routed):
            self._route(ns, True)
        for ns in sorted(self.routed - want):
            if not ns or Path(f"/run/netns/{ns}").exists():
                self._route(ns, False)
        self.routed = want

    def _unroute_all(self) -> None:
        if "" in self.routed:
            self._route("", False)
        self.routed = set()

    # ------------------------------------------------------------------ API operations (on the worker)
    def apply(self, text: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        if not isinstance(text, str) or not text.strip():
            raise ServiceError("yaml: expected the text of one or more Service/EndpointSlice documents")
        svcs, slices = load_services(text)
        services = dict(self.services)
        new_slices = dict(self.slices)
        changed = []
        replaced = {_ident(svc) for svc in svcs}
        taken_ips = {s.spec.cluster_ip for k, s in services.items()
                     if s.spec.cluster_ip and s.spec.cluster_ip != "None" and k not in replaced}  # not headless
        taken_ports = {p.node_port for k, s in services.items() if k not in replaced for p in s.spec.ports or []
                       if p.node_port}
        cursor: list[int] = []  # the batch's allocation point (everything below it is taken)
        # what a re-applied service keeps stays its own: a new service earlier in the file does not get it
        kept = [_keep_allocation(svc, services.get(_ident(svc))) for svc in svcs]
        held_ips, held_ports = _held(kept, services)
        taken_ips |= set(held_ips.values())
        taken_ports |= {p for ports in held_ports.values() for p in ports}
        for i, svc in enumerate(kept):
            ident = _ident(svc)
            old = services.pop(ident, None)
            taken_ips.discard(held_ips.get(ident, ""))
            taken_ports -= held_ports.get(ident, set())
            try:
                svc = allocate_service(svc, taken_ips, taken_ports, cidr=self.cfg.service_cidr, cursor=cursor)
            except AllocationError as e:
                where = f"document[{i}]." if len(svcs) + len(slices) > 1 else ""
                raise ServiceError(f"Service {ident}: {where}{e}") from None
            services[ident] = svc
            if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
                taken_ips.add(svc.spec.cluster_ip)
            taken_ports |= {p.node_port for p in svc.spec.ports or [] if p.node_port}
            changed.append({"kind": "Service", "name": ident, "clusterIP": svc.spec.cluster_ip,
                            "created": old is None})
        touched = {_ident(svc) for svc in svcs}
        for eps in slices:
            old_slice = new_slices.get(_ident(eps))
            new_slices[_ident(eps)] = eps
            touched |= {_served(s) for s in (eps, old_slice) if s is not None}
            changed.append({"kind": "EndpointSlice", "name": _ident(eps), "created": _ident(eps) not in self.slices})
        counts = self._commit(self._plan(services, new_slices, touched))
        return {"applied": changed, "map_writes": counts, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 2)}

    def delete(self, kind: str, ident: str) -> dict[str, Any]:
        res = self.delete_many([(kind, ident)])
        return {"deleted": res["deleted"][0], "map_writes": res["map_writes"]}

    def delete_many(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        """Delete Services and EndpointSlices in one change: all of them, or (one is unknown) none."""
        if not items:
            raise ServiceError("items: nothing to delete")
        services, slices = dict(self.services), dict(self.slices)
        touched: set[str] = set()
        for i, (kind, ident) in enumerate(items):
            where = f"items[{i}]: " if len(items) > 1 else ""
            if kind not in ("Service", "EndpointSlice"):
                raise ServiceError(f"{where}kind: {kind!r} is not Service or EndpointSlice")
            pool = services if kind == "Service" else slices
            if ident not in pool:
                seen = ident in (self.services if kind == "Service" else self.slices)
                raise ServiceError(f"{where}{kind} {ident} " + ("is named twice" if seen else "not found"),
                                   400 if seen else 404)
            gone = pool.pop(ident)
            touched.add(ident if isinstance(gone, Service) else _served(gone))
        counts = self._commit(self._plan(services, slices, touched))
        return {"deleted": [{"kind": k, "name": n} for k, n in items], "map_writes": counts}

    def _rows(self, only: str | None = None) -> list[dict[str, Any]]:
        out = []
        for fe in sorted(self.fronts, key=lambda f: self.table.frontend_ids[f.key]):
            if only and fe.service != only:
                continue
            out.append({
                "id": self.table.frontend_ids[fe.key],
                "service": fe.service,
                "port_name": fe.port_name,
                "frontend": f"{fe.address}:{fe.port}/{fe.protocol}",
                "type": fe.type,
                "algorithm": fe.algorithm or self.cfg.lb_algorithm,
                "affinity_timeout": fe.affinity_timeout,
                "backends": [{"address": b.address, "port": b.port, "protocol": b.protocol, "state": b.state.label}
                             for b in fe.backends],
            })
        return out

    def listing(self) -> dict[str, Any]:
        return {
            "services": [{"name": k, "type": s.spec.type, "clusterIP": s.spec.cluster_ip} for k, s in
                         sorted(self.services.items())],
            "slices": sorted(self.slices),
            "frontends": self._rows(),
            "table": render(service_rows(self.fronts, self.table)),
        }

    def get(self, ident: str) -> dict[str, Any]:
        svc = self.services.get(ident)
        if svc is None:
            raise ServiceError(f"Service {ident} not found", 404)
        return {"service": _dump(svc), "frontends": self._rows(ident)}

    def status(self) -> dict[str, Any]:
        s = self.sensor
        return {
            "mode": "socket LB (cgroup connect4, sendmsg4, recvmsg4, getpeername4, post_bind4 on "
                    f"{self.cgroup_root})" if s else "not loaded (loads with the first service)",
            "algorithm": self.cfg.lb_algorithm,
            "maglev_table_size": self.cfg.maglev_table_size,
            "service_cidr": self.cfg.service_cidr,
            "devices": sorted(s.devices) if s else list(self.cfg.devices),
            "services": len(self.services),
            "frontends": len(self.fronts),
            "backends": len(self.table.backends),
            "maps": s.fill() if s else {},
            "counters": s.stats() if s else {},
            "drop_flows": self.drops,
        }

    # ------------------------------------------------------------------ refused connects -> drop flows
    def on_drop(self, d: LBDrop) -> None:
        self.drops += 1
        if d.hook == "nodeport":  # a packet from outside, dropped on the device it arrived on
            src_ip, src_id, ep_id, egress, sport = d.saddr, WORLD_IDENTITY, 0, False, d.sport
            dst_id = HOST_IDENTITY
        else:  # a local socket: its endpoint (by cgroup) or the host
            pod = self.net.pod_of_cgroup(d.cgroup_id)
            ep = self.net.em.endpoints.get(f"{pod['namespace']}/{pod['name']}") if pod else None
            src_ip, src_id, ep_id = ("", HOST_IDENTITY, 0) if ep is None else (ep.ipv4, self.net.identity_of(ep),
                                                                                 ep.ep_id)
            egress, sport, dst_id = True, 0, WORLD_IDENTITY
        msg = FlowMsg(ktime=d.ktime, kind=MSG_DROP, sub_type=lb_abi.DROP_NO_SERVICE, ep_id=ep_id, ifindex=d.ifindex,
                      egress=egress, verdict=VERDICT_DROPPED, src_ip=src_ip, dst_ip=d.address, proto=d.protocol,
                      sport=sport, dport=d.port, tcp_flags=0, src_identity=src_id, dst_identity=dst_id,
                      ct_state=0, rule_id=0, match_type=0, length=0)
        self.net.on_flow(msg)


def _keep_allocation(svc: Service, old: Service | None) -> Service:
    """Re-applying a service without a clusterIP (or nodePort) keeps the one it was given, as Kubernetes
    does for an apply that leaves the field out."""
    if old is None:
        return svc
    out = svc.model_copy(deep=True)
    if not out.spec.cluster_ip and old.spec.cluster_ip and old.spec.cluster_ip != "None":
        out.spec.cluster_ip = old.spec.cluster_ip
    old_np = {(p.name or "", p.port): p.node_port for p in old.spec.ports or []}
    for p in out.spec.ports or []:
        if out.spec.type == "NodePort" and p.node_port is None:
            p.node_port = old_np.get((p.name or "", p.port))
    return out


def _held(kept: list[Service], services: dict[str, Service]) -> tuple[dict[str, str], dict[str, set[int]]]:
    """The clusterIP and nodePorts each re-applied service keeps from its current version (by service)."""
    ips: dict[str, str] = {}
    ports: dict[str, set[int]] = {}
    for svc in kept:
        ident = _ident(svc)
        old = services.get(ident)
        if old is None:
            continue
        ip = svc.spec.cluster_ip
        if ip and ip != "None" and ip == old.spec.cluster_ip:
            ips[ident] = ip
        had = {p.node_port for p in old.spec.ports or [] if p.node_port}
        ports[ident] = {p.node_port for p in svc.spec.ports or [] if p.node_port in had}
    return ips, ports


__all__ = ["LBCapacityError", "PolicyError", "ServiceError", "ServicesControl"]
