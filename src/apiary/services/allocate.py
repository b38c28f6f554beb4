"""ClusterIP and NodePort allocation, deterministic given what is already taken.

Kubernetes (pkg/registry/core/service/ipallocator) never hands out the network address or the broadcast
address (the first and the last address) of an IPv4 service CIDR; the API server gives the first usable one
(10.96.0.1 in the default range) to the ``kubernetes`` service. apiary has no API-server service, so its
allocation starts at the first usable address. Kubernetes picks at random; apiary takes the lowest free
address (and the lowest free node port), so the same inputs give the same result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .models import NODEPORT_MAX, NODEPORT_MIN, Service

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"


class AllocationError(ValueError):
    """A requested address or port cannot be had, or the range is exhausted."""


def service_network(cidr: str = DEFAULT_SERVICE_CIDR) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise AllocationError(f"service CIDR {cidr!r}: {e}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise AllocationError(f"service CIDR {cidr}: apiary's datapath is IPv4-only for now")
    if net.prefixlen > 30:
        raise AllocationError(f"service CIDR {cidr}: too small (at most /30: the first and last are reserved)")
    return net


def allocate_cluster_ip(taken: Iterable[str], *, requested: str | None = None,
                        cidr: str = DEFAULT_SERVICE_CIDR, cursor: list[int] | None = None) -> str:
    """``requested`` if it is inside ``cidr``, not reserved and free; else the lowest free address.

    ``cursor`` (one int, kept by the caller across a batch of allocations with nothing freed meanwhile): the
    last address allocated, below which everything is taken, so the search starts there (a batch stays
    linear)."""
    net = service_network(cidr)
    if requested:  # a set of taken addresses is looked up, not walked: a batch of requests stays linear
        addr = ipaddress.IPv4Address(requested)
        if addr not in net:
            raise AllocationError(f"clusterIP {requested} is outside the service CIDR {net}")
        if addr in (net.network_address, net.broadcast_address):
            raise AllocationError(f"clusterIP {requested} is reserved: the first and last addresses of {net} "
                                  "are never allocated")
        strs = taken if isinstance(taken, set | frozenset) else {str(ipaddress.IPv4Address(ip)) for ip in taken}
        if str(addr) in strs or requested in strs:
            raise AllocationError(f"clusterIP {requested} is already allocated")
        return requested
    used = {ipaddress.IPv4Address(ip) for ip in taken} if cursor is None or not cursor else None
    first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
    if used is None:  # a batch: the caller's taken set holds strings
        strs = taken if isinstance(taken, set | frozenset) else set(taken)
        assert cursor
        for n in range(max(first, cursor[0] + 1), last + 1):
            text = str(ipaddress.IPv4Address(n))
            if text not in strs:
                cursor[0] = n
                return text
        raise AllocationError(f"the service CIDR {net} is full: {last - first + 1} addresses allocated")
    for n in range(first, last + 1):
        addr = ipaddress.IPv4Address(n)
        if addr not in used:
            if cursor is not None:
                cursor[:] = [n]
            return str(addr)
    raise AllocationError(f"the service CIDR {net} is full: {last - first + 1} addresses allocated")


def allocate_node_port(taken: Iterable[int], *, requested: int | None = None,
                       low: int = NODEPORT_MIN, high: int = NODEPORT_MAX) -> int:
    """``requested`` if it is in ``low..high`` and free; else the lowest free port."""
    used = set(taken)
    if requested is not None:
        if not low <= requested <= high:
            raise AllocationError(f"nodePort {requested} is outside the NodePort range {low}-{high}")
        if requested in used:
            raise AllocationError(f"nodePort {requested} is already allocated")
        return requested
    for port in range(low, high + 1):
        if port not in used:
            return port
    raise AllocationError(f"the NodePort range {low}-{high} is full")


def allocate_service(svc: Service, taken_ips: Iterable[str], taken_node_ports: Iterable[int], *,
                     cidr: str = DEFAULT_SERVICE_CIDR, cursor: list[int] | None = None) -> Service:
    """A copy of ``svc`` with its clusterIP (unless headless) and every NodePort port's nodePort set: the
    requested ones checked first, then the missing ones allocated. Nothing is taken if any fails; the
    error names the field (``spec.clusterIP: ...``, ``spec.ports[1].nodePort: ...``)."""
    out = svc.model_copy(deep=True)
    spec = out.spec
    if not spec.headless:
        try:
            spec.cluster_ip = allocate_cluster_ip(taken_ips, requested=spec.cluster_ip or None, cidr=cidr,
                                                  cursor=cursor if not spec.cluster_ip else None)
        except AllocationError as e:
            raise AllocationError(f"spec.clusterIP: {e}") from None
        spec.cluster_ips = [spec.cluster_ip]
    if spec.type == "NodePort":
        used = set(taken_node_ports)
        ports = spec.ports or []
        for i, p in enumerate(ports):  # requested first, so a later request is not taken by an allocation
            if p.node_port is not None:
                try:
                    used.add(allocate_node_port(used, requested=p.node_port))
                except AllocationError as e:
                    raise AllocationError(f"spec.ports[{i}].nodePort: {e}") from None
        for i, p in enumerate(ports):
            if p.node_port is None:
                try:
                    p.node_port = allocate_node_port(used)
                except AllocationError as e:
                    raise AllocationError(f"spec.ports[{i}].nodePort: {e}") from None
                used.add(p.node_port)
    return out
