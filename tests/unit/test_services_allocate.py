"""ClusterIP and NodePort allocation."""

from __future__ import annotations

import pytest

from apiary.services.allocate import (
    AllocationError,
    allocate_cluster_ip,
    allocate_node_port,
    allocate_service,
    service_network,
)
from apiary.services.models import Service, load_services


def test_cluster_ip_lowest_free_skips_network_address() -> None:
    assert allocate_cluster_ip([]) == "10.96.0.1"
    assert allocate_cluster_ip(["10.96.0.1", "10.96.0.2", "10.96.0.4"]) == "10.96.0.3"
    assert allocate_cluster_ip(["10.96.0.1"]) == allocate_cluster_ip(["10.96.0.1"])  # deterministic


def test_cluster_ip_requested() -> None:
    assert allocate_cluster_ip(["10.96.0.1"], requested="10.96.7.7") == "10.96.7.7"
    with pytest.raises(AllocationError, match=r"clusterIP 10\.97\.0\.1 is outside the service CIDR 10\.96\.0\.0/16"):
        allocate_cluster_ip([], requested="10.97.0.1")
    with pytest.raises(AllocationError, match="is already allocated"):
        allocate_cluster_ip(["10.96.0.9"], requested="10.96.0.9")
    for reserved in ("10.96.0.0", "10.96.255.255"):
        with pytest.raises(AllocationError, match="reserved"):
            allocate_cluster_ip([], requested=reserved)


def test_cluster_ip_small_cidr_full() -> None:
    # /29: .0 and .7 reserved, .1-.6 allocatable
    taken: list[str] = []
    for _ in range(6):
        taken.append(allocate_cluster_ip(taken, cidr="10.100.0.0/29"))
    assert taken == [f"10.100.0.{i}" for i in range(1, 7)]
    with pytest.raises(AllocationError, match=r"service CIDR 10\.100\.0\.0/29 is full: 6 addresses allocated"):
        allocate_cluster_ip(taken, cidr="10.100.0.0/29")


@pytest.mark.parametrize(("cidr", "why"), [("10.96.0.1/16", "host bits"), ("fd00::/108", "IPv4-only"),
                                           ("10.96.0.0/31", "too small"), ("nope", "does not appear")])
def test_bad_service_cidr(cidr: str, why: str) -> None:
    with pytest.raises(AllocationError, match=why):
        service_network(cidr)


def test_node_port() -> None:
    assert allocate_node_port([]) == 30000
    assert allocate_node_port([30000, 30001, 30003]) == 30002
    assert allocate_node_port([30000], requested=32767) == 32767
    with pytest.raises(AllocationError, match="nodePort 30000 is already allocated"):
        allocate_node_port([30000], requested=30000)
    with pytest.raises(AllocationError, match="nodePort 8080 is outside the NodePort range 30000-32767"):
        allocate_node_port([], requested=8080)
    with pytest.raises(AllocationError, match="the NodePort range 30000-32767 is full"):
        allocate_node_port(range(30000, 32768))


def _svc(spec: str) -> Service:
    (svc,), _ = load_services(f"apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n{spec}")
    return svc


def test_allocate_service() -> None:
    svc = _svc("  type: NodePort\n  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30000},"
               " {name: c, port: 82}]\n")
    done = allocate_service(svc, ["10.96.0.1"], [30001])
    assert done.spec.cluster_ip == "10.96.0.2" and done.spec.cluster_ips == ["10.96.0.2"]
    assert [p.node_port for p in done.spec.ports or []] == [30002, 30000, 30003]
    assert svc.spec.cluster_ip is None and svc.spec.ports is not None and svc.spec.ports[0].node_port is None
    headless = allocate_service(_svc("  clusterIP: None\n  selector: {a: b}\n"), [], [])
    assert headless.spec.cluster_ip == "None"


def test_allocate_service_refusals_name_the_field() -> None:
    with pytest.raises(AllocationError, match=r"^spec\.clusterIP: clusterIP 10\.0\.0\.1 is outside the service CIDR"):
        allocate_service(_svc("  clusterIP: 10.0.0.1\n  ports: [{port: 80}]\n"), [], [])
    with pytest.raises(AllocationError, match=r"^spec\.ports\[1\]\.nodePort: nodePort 30005 is already allocated"):
        allocate_service(_svc("  type: NodePort\n  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30005}]"
                              "\n"), [], [30005])
