"""Endpoint names, namespaces, labels and the pod CIDR: what Kubernetes accepts, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiary.observe.hubble.filter_values import parse_identity
from apiary.policy.load import PolicyError, load_policies
from apiary.policy.models import PortProtocol
from apiary.sensors.network.validate import (
    HostRoute,
    ValidationError,
    check_endpoint_name,
    check_labels,
    check_namespace,
    check_pod_cidr,
    check_pod_cidr_syntax,
)


@pytest.mark.parametrize("name", ["a", "web-1", "web.v2", "a" * 63, "0abc", "x.y.z"])
def test_good_endpoint_names(name: str) -> None:
    assert check_endpoint_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["web\n", "\nweb", "Web", "a..b", ".a", "a.", "-a", "a-", "a_b", "a b", "", "a" * 64, "ｗｅｂ", "web/1", 5, None],
)
def test_bad_endpoint_names(name: object) -> None:
    with pytest.raises(ValidationError) as e:
        check_endpoint_name(name)
    assert e.value.field == "name"


@pytest.mark.parametrize("ns", ["a..b", "a.b", "kube-system\n", "A", "", "a" * 64, "-x", "x-", "１"])
def test_bad_namespaces(ns: str) -> None:
    with pytest.raises(ValidationError) as e:
        check_namespace(ns)
    assert e.value.field == "namespace"


def test_good_namespaces() -> None:
    for ns in ("default", "kube-system", "a", "a" * 63, "team-1"):
        assert check_namespace(ns) == ns


def test_good_labels() -> None:
    labels = {"app": "web", "app.kubernetes.io/name": "x", "example.com/tier": "", "A_b-c.d": "V_1-2.3"}
    assert check_labels(labels) == labels


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({"": "x"}, "empty label key"),
        ({"a b": "x"}, "not a label key"),
        ({"app\n": "x"}, "not a label key"),
        ({"/app": "x"}, "prefix"),
        ({"example.com/": "x"}, "empty name"),
        ({"Bad_Prefix/app": "x"}, "prefix"),
        ({"a" * 64: "x"}, "longer than 63"),
        ({"reserved:host": ""}, "label source"),
        ({"k8s:app": "x"}, "label source"),
        ({"app": "has space"}, "not a label value"),
        ({"app": "line\n"}, "not a label value"),
        ({"app": "-x"}, "not a label value"),
        ({"app": "x" * 100_000}, "longer than 63"),
        ({"app": "ｘ"}, "not a label value"),
    ],
)
def test_bad_labels_name_the_label(labels: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError) as e:
        check_labels(labels)
    assert e.value.field.startswith("labels") and says in str(e.value)
    assert len(str(e.value)) < 600  # a 100 KB value is cut in the message


@pytest.mark.parametrize(
    "key",
    [
        "io.kubernetes.pod.namespace",
        "io.cilium.k8s.policy.cluster",
        "io.cilium.k8s.policy.serviceaccount",
        "io.cilium.k8s.namespace.labels.team",
        "io.kubernetes.pod.name",
        "IO.Kubernetes.Pod.Namespace",
    ],
)
def test_labels_the_agent_sets_are_refused(key: str) -> None:
    with pytest.raises(ValidationError) as e:
        check_labels({"app": "x", key: "kube-system"})
    assert e.value.field == f"labels.{key}" and "reserved" in e.value.reason and key in e.value.reason


def test_labels_must_be_a_string_mapping() -> None:
    for bad in (["app=x"], {"app": 1}, {1: "x"}, "app=x"):
        with pytest.raises(ValidationError, match="labels"):
            check_labels(bad)
    with pytest.raises(ValidationError, match="at most 64"):
        check_labels({f"k{i}": "v" for i in range(65)})


@pytest.mark.parametrize(
    ("cidr", "says"),
    [
        ("127.0.0.0/8", "loopback"),
        ("127.1.0.0/16", "loopback"),
        ("0.0.0.0/0", "too wide"),
        ("64.0.0.0/2", "too wide"),
        ("224.1.0.0/16", "not unicast"),
        ("0.1.0.0/16", "not unicast"),
        ("10.0.0.0/31", "too small"),
        ("10.0.0.1/24", "not an IPv4 network"),
        ("fd00::/64", "not an IPv4 network"),
        ("10.0.0.0/２４", "not an IPv4 network"),
        ("banana", "not an IPv4 network"),
    ],
)
def test_pod_cidr_syntax(cidr: str, says: str) -> None:
    with pytest.raises(ValidationError) as e:
        check_pod_cidr_syntax(cidr)
    assert e.value.field == "--pod-cidr" and says in e.value.reason


HOST_ADDRS = [("127.0.0.1", "lo"), ("192.0.2.2", "eth0"), ("10.200.0.1", "lxc0123456789")]
ROUTES = [
    HostRoute("0.0.0.0/0", "unicast", "eth0"),
    HostRoute("192.0.2.0/24", "unicast", "eth0"),
    HostRoute("172.16.0.0/12", "unicast", "eth1"),
    HostRoute("10.200.0.0/16", "unreachable", ""),
    HostRoute("10.200.0.2/32", "unicast", "lxc0123456789"),
    HostRoute("10.50.0.0/16", "blackhole", ""),
]


def test_pod_cidr_against_the_host() -> None:
    # its own unreachable route, router address and endpoint routes (a restart) are fine
    assert str(check_pod_cidr("10.200.0.0/16", HOST_ADDRS, ROUTES)) == "10.200.0.0/16"
    assert str(check_pod_cidr("10.100.0.0/16", HOST_ADDRS, ROUTES)) == "10.100.0.0/16"
    for cidr, says in [
        ("192.0.2.0/28", "192.0.2.2, an address of this host (on eth0)"),
        ("192.0.2.128/25", "route to 192.0.2.0/24 (dev eth0)"),
        ("172.20.0.0/16", "route to 172.16.0.0/12"),
        ("10.0.0.0/8", "holds 10.200.0.1"),  # another range's router: not this range's own
        ("10.200.0.0/24", "unreachable route to 10.200.0.0/16"),
        ("10.50.1.0/24", "blackhole route to 10.50.0.0/16"),
        ("127.0.0.0/8", "loopback"),
    ]:
        with pytest.raises(ValidationError) as e:
            check_pod_cidr(cidr, HOST_ADDRS, ROUTES)
        assert says in e.value.reason, (cidr, e.value.reason)


def test_fullwidth_digits_are_not_a_port() -> None:
    assert PortProtocol(port="5678").number == 5678
    for bad in ("５６７８", "²", "٣"):
        with pytest.raises(ValueError, match="unable to parse port"):
            PortProtocol(port=bad)
    doc = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "５６７８", protocol: TCP}]}]
"""
    with pytest.raises(PolicyError):
        load_policies(doc)
    with pytest.raises(ValueError):
        parse_identity("２５６")
    assert parse_identity("256") == 256


def test_stored_endpoint_with_a_forged_namespace_label_loses_it(tmp_path: Path) -> None:
    """An endpoint an older agent accepted keeps no label that is refused now (checked when loading)."""
    from apiary.sensors.network.endpoints import EndpointManager
    from apiary.store import FileStore

    state = tmp_path / "endpoints.json"
    rec = {"ep_id": 1, "name": "spoof", "namespace": "odd", "ipv4": "10.9.0.2", "netns": "n", "host_if": "lxc0",
           "host_ifindex": 0, "cgroup": str(tmp_path / "cg"),
           "labels": {"app": "x", "io.kubernetes.pod.namespace": "kube-system", "bad key": "v"}}
    state.write_text(json.dumps([rec]))
    em = EndpointManager("10.9.0.0/24", "t", str(tmp_path), FileStore(tmp_path))
    notes = em.drop_refused_labels()
    assert em.endpoints["odd/spoof"].labels == {"app": "x"}
    assert len(notes) == 2 and "io.kubernetes.pod.namespace" in notes[0] and "reserved" in notes[0]
    assert json.loads(state.read_text())[0]["labels"] == {"app": "x"}
    assert em.drop_refused_labels() == []
