"""Frontends and their backends, and the Cilium-shaped map entries they become (FORMATS.md 9.1, 9.6).

A service with a selector takes its backends from the endpoints of its namespace whose labels match (the
EndpointSlice controller's job in Kubernetes); one without a selector from the EndpointSlices labelled
``kubernetes.io/service-name: <name>``. A named targetPort is resolved per endpoint through its container
ports; an endpoint without that port name is not a backend for that port (as Kubernetes does).

Backend states (Cilium's mapping of EndpointSlice conditions): ready → active; terminating and serving →
terminating (used for new connections only when no backend is active); terminating and not serving →
terminating-not-serving (never used for new connections); otherwise → maintenance.
``publishNotReadyAddresses`` makes every endpoint active.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from enum import IntEnum

from . import maglev
from .models import LB_ALGORITHM_ANNOTATION, EndpointSlice, Service, ServicePort


class BackendState(IntEnum):
    """Cilium's backend states (lb.h values); TERMINATING_NOT_SERVING is written as TERMINATING."""

    ACTIVE = 0
    TERMINATING = 1
    QUARANTINED = 2
    MAINTENANCE = 3
    TERMINATING_NOT_SERVING = 4

    @property
    def wire(self) -> int:
        return int(BackendState.TERMINATING) if self is BackendState.TERMINATING_NOT_SERVING else int(self)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class EndpointInfo:
    """What backend resolution needs of an apiary endpoint."""

    namespace: str
    labels: Mapping[str, str]
    ipv4: str
    ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # name -> (port, protocol)
    ready: bool = True
    terminating: bool = False
    name: str = ""


@dataclass(frozen=True)
class Backend:
    address: str
    port: int
    protocol: str
    state: BackendState

    @functools.cached_property  # frozen: computed once (keys are looked up on every service change)
    def key(self) -> tuple[str, int, str]:
        return (self.address, self.port, self.protocol)


@dataclass(frozen=True)
class Frontend:
    """One VIP:port/proto of a service with its backends, active first then by address and port."""

    service: str  # namespace/name
    port_name: str
    address: str  # "0.0.0.0" for a NodePort frontend (every host address, as Cilium's wildcard)
    port: int
    protocol: str
    type: str  # ClusterIP | NodePort | ExternalIP
    backends: tuple[Backend, ...]
    affinity_timeout: int = 0  # seconds; 0 = no ClientIP affinity
    local_scope: bool = False  # trafficPolicy Local (one node: every backend is local)
    algorithm: str = ""  # "" = the agent's default, else the lb-algorithm annotation

    @functools.cached_property
    def key(self) -> tuple[str, int, str]:
        return (self.address, self.port, self.protocol)

    def __hash__(self) -> int:
        """Computed once (frontends key the agent's memo of map entries, looked up on every change)."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", h)
        return int(h)

    def slots(self) -> tuple[Backend, ...]:
        """The backends new connections go to: the active ones; if there are none, the serving terminating."""
        got = self.__dict__.get("_slots")
        if got is None:
            active = tuple(b for b in self.backends if b.state is BackendState.ACTIVE)
            got = active or tuple(b for b in self.backends if b.state is BackendState.TERMINATING)
            object.__setattr__(self, "_slots", got)
        return tuple(got)


def _state(ready: bool | None, serving: bool | None, terminating: bool | None) -> BackendState:
    if ready or (ready is None and not terminating):  # Kubernetes: an unknown ready condition means ready
        return BackendState.ACTIVE
    if terminating:
        serving = ready if serving is None else serving
        return BackendState.TERMINATING if serving else BackendState.TERMINATING_NOT_SERVING
    return BackendState.MAINTENANCE


def _order(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    uniq = {b.key: b for b in backends}
    return tuple(sorted(uniq.values(), key=lambda b: (b.state, int(ipaddress.IPv4Address(b.address)), b.port)))


def _selector_backends(svc: Service, sp: ServicePort, endpoints: Iterable[EndpointInfo]) -> list[Backend]:
    sel = svc.spec.selector or {}
    out = []
    for ep in endpoints:
        if ep.namespace != svc.namespace or any(ep.labels.get(k) != v for k, v in sel.items()):
            continue
        target = sp.target
        if isinstance(target, str):
            named = ep.ports.get(target)
            if named is None or named[1] != sp.protocol:
                continue
            port = named[0]
        else:
            port = target
        state = (BackendState.ACTIVE if svc.spec.publish_not_ready_addresses
                 else _state(ep.ready and not ep.terminating, ep.ready, ep.terminating))
        out.append(Backend(ep.ipv4, port, sp.protocol, state))
    return out


def _slice_backends(svc: Service, sp: ServicePort, slices: Iterable[EndpointSlice]) -> list[Backend]:
    out = []
    for eps in slices:
        if eps.namespace != svc.namespace or eps.service_name != svc.name or eps.address_type != "IPv4":
            continue
        # Kubernetes matches a slice port to a service port by name (and protocol)
        match = [p for p in eps.ports or [] if (p.name or "") == (sp.name or "") and p.protocol == sp.protocol]
        if not match or match[0].port is None:
            continue
        for ep in eps.endpoints:
            c = ep.conditions
            state = (BackendState.ACTIVE if svc.spec.publish_not_ready_addresses
                     else _state(c.ready, c.serving, c.terminating))
            out += [Backend(a, match[0].port, sp.protocol, state) for a in ep.addresses]
    return out


def frontends(svc: Service, endpoints: Iterable[EndpointInfo] = (),
              slices: Iterable[EndpointSlice] = ()) -> list[Frontend]:
    """Every frontend of an allocated service (clusterIP and nodePorts set): ClusterIP, then NodePort, then
    ExternalIP, each in port order. A headless service has none."""
    spec = svc.spec
    if spec.headless or not spec.cluster_ip:
        return []
    endpoints, slices = list(endpoints), list(slices)
    out: list[Frontend] = []
    algorithm = svc.annotations.get(LB_ALGORITHM_ANNOTATION, "").lower()  # checked when loaded
    ident = f"{svc.namespace}/{svc.name}"
    per_port = []
    for sp in spec.ports or []:
        found = _selector_backends(svc, sp, endpoints) if spec.selector else _slice_backends(svc, sp, slices)
        per_port.append((sp, _order(found)))

    def add(kind: str, address: str, port: int, sp: ServicePort, bes: tuple[Backend, ...], local: bool) -> None:
        out.append(Frontend(ident, sp.name or "", address, port, sp.protocol, kind, bes, spec.affinity_timeout,
                            local, algorithm))

    for sp, bes in per_port:
        add("ClusterIP", spec.cluster_ip, sp.port, sp, bes, spec.internal_traffic_policy == "Local")
    if spec.type == "NodePort":
        for sp, bes in per_port:
            if sp.node_port is None:
                raise ValueError(f"{ident} port {sp.port}: nodePort not allocated")
            add("NodePort", "0.0.0.0", sp.node_port, sp, bes, spec.external_traffic_policy == "Local")
    for ip in spec.external_ips or []:
        for sp, bes in per_port:
            add("ExternalIP", ip, sp.port, sp, bes, spec.external_traffic_policy == "Local")
    return out


# --- map entries ------------------------------------------------------------------------------------

ALGORITHMS = {"random": 1, "maglev": 2}
LB_ALGORITHM_SHIFT = 24
FLAG_EXTERNAL_IP, FLAG_NODEPORT, FLAG_EXT_LOCAL_SCOPE, FLAG_AFFINITY, FLAG_ROUTABLE = 1, 2, 4, 16, 64


@dataclass(frozen=True)
class ServiceEntry:
    """One entry of the service map: slot 0 is the master (count, rev-NAT id, flags, algorithm|timeout),
    slots 1..count hold backend ids."""

    address: str
    port: int
    protocol: str
    slot: int
    backend_id: int  # the master's holds (algorithm << 24) | affinity timeout
    count: int
    rev_nat_id: int
    flags: int


@dataclass
class LBTable:
    services: list[ServiceEntry]
    backends: dict[int, Backend]  # backend id -> backend (state as written)
    rev_nat: dict[int, tuple[str, int]]  # rev-NAT id -> (VIP, port)
    frontend_ids: dict[tuple[str, int, str], int]  # frontend key -> rev-NAT id (the service ID)
    groups: list[tuple[ServiceEntry, ...]] = field(default_factory=list)  # ``services``, frontend by frontend


def _free_ids(taken: Iterable[int]) -> Iterator[int]:
    """The ids from 1 up that are not in ``taken``, lowest first (one pass, however many are drawn)."""
    used, n = set(taken), 0
    while True:
        n += 1
        if n not in used:
            yield n


def lb_table(fronts: Iterable[Frontend], *, default_algorithm: str = "random",
             backend_ids: Mapping[tuple[str, int, str], int] | None = None,
             rev_nat_ids: Mapping[tuple[str, int, str], int] | None = None,
             memo: MutableMapping[Hashable, tuple[ServiceEntry, ...]] | None = None) -> LBTable:
    """The map contents for ``fronts``. Ids already given (``backend_ids``/``rev_nat_ids``, e.g. those in the
    maps now) are kept; new ones take the lowest free id from 1, in frontend order, so the result is
    deterministic and an update rewrites only what changed. ``memo`` (kept by the caller between calls)
    holds each frontend's entries, so an unchanged frontend costs a lookup, not a rebuild."""
    fronts = list(fronts)
    bids = dict(backend_ids or {})
    rids = dict(rev_nat_ids or {})
    free_rid, free_bid = _free_ids(rids.values()), _free_ids(bids.values())
    for fe in fronts:
        if fe.key not in rids:
            rids[fe.key] = next(free_rid)
        for be in fe.backends:
            if be.key not in bids:
                bids[be.key] = next(free_bid)
    table = LBTable([], {}, {}, {})
    for fe in fronts:
        rid = rids[fe.key]
        table.frontend_ids[fe.key] = rid
        table.rev_nat[rid] = (fe.address, fe.port)
        slot_ids = tuple(bids[be.key] for be in fe.slots())
        mkey = (fe, rid, slot_ids, default_algorithm)
        entries = memo.get(mkey) if memo is not None else None
        if entries is None:
            entries = _entries(fe, rid, slot_ids, default_algorithm)
            if memo is not None:
                memo[mkey] = entries
        table.services += entries
        table.groups.append(entries)
        for be in fe.backends:
            table.backends[bids[be.key]] = be
    return table


def _entries(fe: Frontend, rid: int, slot_ids: tuple[int, ...], default_algorithm: str) -> tuple[ServiceEntry, ...]:
    """A frontend's service-map entries: its master (slot 0), then one per backend new connections go to."""
    flags = {"ExternalIP": FLAG_EXTERNAL_IP | FLAG_ROUTABLE, "NodePort": FLAG_NODEPORT | FLAG_ROUTABLE}.get(fe.type, 0)
    if fe.local_scope and fe.type != "ClusterIP":
        flags |= FLAG_EXT_LOCAL_SCOPE
    if fe.affinity_timeout:
        flags |= FLAG_AFFINITY
    algo = ALGORITHMS.get(fe.algorithm or default_algorithm, ALGORITHMS["random"])
    master = (algo << LB_ALGORITHM_SHIFT) | fe.affinity_timeout
    return (ServiceEntry(fe.address, fe.port, fe.protocol, 0, master, len(slot_ids), rid, flags),
            *(ServiceEntry(fe.address, fe.port, fe.protocol, i, bid, 0, rid, flags)
              for i, bid in enumerate(slot_ids, 1)))


def maglev_lut(fe: Frontend, lb: LBTable, m: int = maglev.DEFAULT_TABLE_SIZE,
               seed: str = maglev.DEFAULT_HASH_SEED,
               ids: Mapping[tuple[str, int, str], int] | None = None) -> list[int]:
    """The Maglev inner-map value of ``fe`` (keyed by its rev-NAT id): ``m`` backend ids, built over the
    backends new connections go to (:meth:`Frontend.slots`), named ``ip:port``; empty without one."""
    slots = fe.slots()
    if ids is None:  # backend key -> id (give it when building many tables from one LB table)
        ids = {b.key: i for i, b in lb.backends.items()}
    lut = maglev.table([f"{b.address}:{b.port}" for b in slots], m, seed=seed)
    return [ids[slots[i].key] for i in lut]
