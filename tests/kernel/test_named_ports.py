"""Named ports in CiliumNetworkPolicy, enforced in the kernel between real endpoints that declare container
ports (`apiary endpoint create --port NAME=PORT/PROTO`): ingress resolves a name against the receiving
endpoint's own ports, egress against the peer's; an endpoint created later is resolved when it appears."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from apiary.testing.net import Net, running_net

NS = "test-namespace"


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with running_net() as n:
        ports = {"client": (), "web": ("http=8080/TCP", "admin=9090"), "api": ("http=9090/TCP", "dns=5353/UDP")}
        n.eps = {name: n.endpoint(name, NS, ports=p, app=name) for name, p in ports.items()}
        for name in ("web", "api"):
            n.serve(f"{NS}/{name}", "serve-tcp", "8080", "9090")
        yield n


@pytest.fixture(autouse=True)
def no_policies_after(net: Net) -> Iterator[None]:
    yield
    net.delete_policies()


def tcp(net: Net, src: str, dst: str, port: int) -> bool:
    return net.probe(f"{NS}/{src}", "tcp", net.eps[dst]["ipv4"], str(port), "1")


def test_endpoint_ports_are_shown(net: Net) -> None:
    rows = {r["name"]: r for r in json.loads(net.cli_ok("endpoint", "list", "-o", "json"))}
    assert rows["web"]["ports"] == {"admin": [9090, "TCP"], "http": [8080, "TCP"]}
    assert rows["client"]["ports"] == {}
    assert json.loads(net.cli_ok("endpoint", "get", f"{NS}/api", "-o", "json"))["ports"] == {"dns": [5353, "UDP"],
                                                                             "http": [9090, "TCP"]}
    assert "http=8080/TCP" in net.cli_ok("endpoint", "list")


def test_ingress_named_port_admits_that_port_only(net: Net) -> None:
    assert tcp(net, "client", "web", 9090)  # no policy yet
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-http, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: http, protocol: TCP}]}]
    """)
    assert tcp(net, "client", "web", 8080)  # web's http
    assert not tcp(net, "client", "web", 9090)
    drops = [f for f in net.flows("--to-pod", f"{NS}/web", "--verdict", "DROPPED", "--protocol", "tcp")
             if f["l4"]["TCP"]["destination_port"] == 9090]
    assert drops and drops[-1]["drop_reason_desc"] == "POLICY_DENIED"
    explained = json.loads(net.cli_ok("policy", "explain", "--from", f"{NS}/client", "--to", f"{NS}/web",
                                      "--port", "8080/TCP", "-o", "json"))
    assert explained["verdict"] == "ALLOWED" and explained["ingress"]["rule"]["policy"] == "web-http"


def test_egress_named_port_resolves_on_the_peer(net: Net) -> None:
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-to-api-http, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          egress:
          - toEndpoints: [{matchLabels: {app: api}}]
            toPorts: [{ports: [{port: http, protocol: TCP}]}]
    """)
    assert tcp(net, "client", "api", 9090)  # api's http is 9090
    assert not tcp(net, "client", "api", 8080)  # 8080 is web's http, not api's
    assert not tcp(net, "client", "web", 8080)  # web is not selected
    drops = [f for f in net.flows("--from-pod", f"{NS}/client", "--verdict", "DROPPED", "--protocol", "tcp")
             if f["l4"]["TCP"]["destination_port"] == 8080]
    assert drops and drops[-1]["traffic_direction"] == "EGRESS"


def test_endpoint_created_later_is_resolved(net: Net) -> None:
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-to-metrics, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          egress:
          - toEndpoints: [{matchLabels: {app: late}}]
            toPorts: [{ports: [{port: metrics, protocol: TCP}]}]
    """)
    net.eps["late"] = net.endpoint("late", NS, ports=("metrics=7070",), app="late")
    try:
        net.serve(f"{NS}/late", "serve-tcp", "7070", "7071")
        assert tcp(net, "client", "late", 7070)
        assert not tcp(net, "client", "late", 7071)
    finally:
        net.cli_ok("endpoint", "delete", f"{NS}/late")
