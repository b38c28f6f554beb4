"""Backend resolution, backend states, the map entries and `cilium service list` rows."""

from __future__ import annotations

from apiary.services.backends import (
    FLAG_AFFINITY,
    FLAG_EXT_LOCAL_SCOPE,
    FLAG_NODEPORT,
    LB_ALGORITHM_SHIFT,
    Backend,
    BackendState,
    EndpointInfo,
    frontends,
    lb_table,
    maglev_lut,
)
from apiary.services.format import render, service_rows
from apiary.services.models import Service, load_services

A, T, M, TNS = (BackendState.ACTIVE, BackendState.TERMINATING, BackendState.MAINTENANCE,
                BackendState.TERMINATING_NOT_SERVING)


def _service(spec: str, namespace: str = "shop") -> Service:
    (svc,), _ = load_services(f"apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {namespace}}}\n"
                              f"spec:\n  clusterIP: 10.96.0.20\n{spec}")
    return svc


def _ep(ip: str, ns: str = "shop", app: str = "web", ports: dict[str, tuple[int, str]] | None = None,
        ready: bool = True, terminating: bool = False) -> EndpointInfo:
    return EndpointInfo(ns, {"app": app}, ip, ports or {}, ready, terminating)


def test_selector_named_target_port() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n")
    eps = [_ep("10.0.1.3", ports={"http": (8080, "TCP")}),
           _ep("10.0.1.2", ports={"http": (8081, "TCP")}),
           _ep("10.0.1.4"),  # no port named http: not a backend
           _ep("10.0.1.5", ports={"http": (8080, "UDP")}),  # named port of another protocol
           _ep("10.0.1.6", ns="other", ports={"http": (8080, "TCP")}),  # other namespace
           _ep("10.0.1.7", app="db", ports={"http": (8080, "TCP")})]  # labels do not match
    (fe,) = frontends(svc, eps)
    assert (fe.address, fe.port, fe.protocol, fe.type) == ("10.96.0.20", 80, "TCP", "ClusterIP")
    assert fe.backends == (Backend("10.0.1.2", 8081, "TCP", A), Backend("10.0.1.3", 8080, "TCP", A))


def test_numeric_target_port_and_default() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{name: a, port: 80, targetPort: 8080}, {name: b, port: 81}]\n")
    fa, fb = frontends(svc, [_ep("10.0.1.2")])
    assert fa.backends[0].port == 8080 and fb.backends[0].port == 81


def test_states_terminating_and_not_ready() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{port: 80}]\n")
    (fe,) = frontends(svc, [_ep("10.0.1.9"), _ep("10.0.1.2", terminating=True),
                            _ep("10.0.1.3", ready=False)])
    assert [(b.address, b.state) for b in fe.backends] == [("10.0.1.9", A), ("10.0.1.2", T), ("10.0.1.3", M)]
    assert [b.address for b in fe.slots()] == ["10.0.1.9"]
    # no active backend: the serving terminating one takes new connections (Cilium's fallback)
    (fe,) = frontends(svc, [_ep("10.0.1.2", terminating=True), _ep("10.0.1.3", ready=False)])
    assert [b.address for b in fe.slots()] == ["10.0.1.2"]


def test_publish_not_ready_addresses() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{port: 80}]\n  publishNotReadyAddresses: true\n")
    (fe,) = frontends(svc, [_ep("10.0.1.3", ready=False)])
    assert fe.backends[0].state is A and len(fe.slots()) == 1


def test_no_backends() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{port: 80}]\n")
    (fe,) = frontends(svc, [])
    assert fe.backends == () and fe.slots() == ()
    table = lb_table([fe])
    assert [(e.slot, e.count) for e in table.services] == [(0, 0)]


SLICES = """\
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: pg, port: 5432, targetPort: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-a
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 15432}]
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true}
- addresses: [10.1.0.2]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.1.0.3]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.1.0.4]
  conditions: {ready: false}
- addresses: [10.1.0.5]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other
  namespace: shop
  labels: {kubernetes.io/service-name: not-db}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints: [{addresses: [10.9.9.9]}]
"""


def test_endpoint_slices_for_service_without_selector() -> None:
    (svc,), slices = load_services(SLICES)
    (fe,) = frontends(svc, slices=slices)
    assert [(b.address, b.port, b.state) for b in fe.backends] == [
        ("10.1.0.1", 15432, A), ("10.1.0.5", 15432, A), ("10.1.0.2", 15432, T), ("10.1.0.4", 15432, M),
        ("10.1.0.3", 15432, TNS)]
    assert BackendState.TERMINATING_NOT_SERVING.wire == 1


def test_headless_and_unallocated_have_no_frontends() -> None:
    (svc,), _ = load_services("apiVersion: v1\nkind: Service\nmetadata: {name: h}\n"
                              "spec: {clusterIP: None, selector: {app: web}}\n")
    assert frontends(svc, [_ep("10.0.0.1", ns="default")]) == []
    (svc,), _ = load_services("apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {ports: [{port: 80}]}\n")
    assert frontends(svc) == []


def _nodeport() -> Service:
    return _service("  type: NodePort\n  selector: {app: web}\n  externalIPs: [192.0.2.10]\n"
                    "  externalTrafficPolicy: Local\n  sessionAffinity: ClientIP\n"
                    "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n"
                    "  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080},"
                    " {name: dns, port: 53, protocol: UDP, nodePort: 30053}]\n")


def test_nodeport_external_ip_frontends_and_map_entries() -> None:
    fes = frontends(_nodeport(), [_ep("10.0.1.2"), _ep("10.0.1.3"), _ep("10.0.1.4", terminating=True)])
    assert [(f.type, f.address, f.port, f.protocol) for f in fes] == [
        ("ClusterIP", "10.96.0.20", 80, "TCP"), ("ClusterIP", "10.96.0.20", 53, "UDP"),
        ("NodePort", "0.0.0.0", 30080, "TCP"), ("NodePort", "0.0.0.0", 30053, "UDP"),
        ("ExternalIP", "192.0.2.10", 80, "TCP"), ("ExternalIP", "192.0.2.10", 53, "UDP")]
    table = lb_table(fes, default_algorithm="maglev")
    assert set(table.frontend_ids.values()) == {1, 2, 3, 4, 5, 6}
    master = table.services[0]
    assert (master.slot, master.count, master.rev_nat_id) == (0, 2, 1)
    assert master.backend_id == (2 << LB_ALGORITHM_SHIFT) | 600 and master.flags == FLAG_AFFINITY
    slots = [e for e in table.services if e.rev_nat_id == 1 and e.slot]
    assert [e.slot for e in slots] == [1, 2]
    assert [table.backends[e.backend_id].address for e in slots] == ["10.0.1.2", "10.0.1.3"]
    np_master = next(e for e in table.services if e.port == 30080 and e.slot == 0)
    assert np_master.flags & FLAG_NODEPORT and np_master.flags & FLAG_EXT_LOCAL_SCOPE
    assert table.rev_nat[np_master.rev_nat_id] == ("0.0.0.0", 30080)
    # 3 backends x 2 ports (8080/TCP and 53/UDP), the terminating one included with its state
    assert len(table.backends) == 6
    assert sorted(b.state for b in table.backends.values()) == [A, A, A, A, T, T]


def test_ids_kept_across_updates() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{port: 80}]\n")
    first = lb_table(frontends(svc, [_ep("10.0.1.2"), _ep("10.0.1.3")]))
    ids = {b.key: i for i, b in first.backends.items()}
    second = lb_table(frontends(svc, [_ep("10.0.1.3"), _ep("10.0.1.4")]), backend_ids=ids,
                      rev_nat_ids=first.frontend_ids)
    by_addr = {b.address: i for i, b in second.backends.items()}
    assert by_addr["10.0.1.3"] == ids[("10.0.1.3", 80, "TCP")]
    assert by_addr["10.0.1.4"] not in ids.values()
    assert second.frontend_ids == first.frontend_ids


def test_algorithm_annotation() -> None:
    (svc,), _ = load_services("apiVersion: v1\nkind: Service\nmetadata: {name: m, annotations: "
                              "{service.cilium.io/lb-algorithm: maglev}}\nspec: {clusterIP: 10.96.0.5, "
                              "ports: [{port: 80}]}\n")
    table = lb_table(frontends(svc), default_algorithm="random")
    assert table.services[0].backend_id >> LB_ALGORITHM_SHIFT == 2


def test_service_list_rows() -> None:
    fes = frontends(_nodeport(), [_ep("10.0.1.2"), _ep("10.0.1.4", terminating=True)])[:1]
    rows = service_rows(fes, lb_table(fes))
    assert rows == [("ID", "Frontend", "Service Type", "Backend"),
                    ("1", "10.96.0.20:80/TCP", "ClusterIP", "1 => 10.0.1.2:8080/TCP (active)"),
                    ("", "", "", "2 => 10.0.1.4:8080/TCP (terminating)")]
    text = render(rows)
    assert text.splitlines()[1].split() == ["1", "10.96.0.20:80/TCP", "ClusterIP", "1", "=>", "10.0.1.2:8080/TCP",
                                            "(active)"]


def test_service_list_names_external_ips_as_cilium() -> None:
    """The Service Type column says ExternalIPs (Cilium's SVCType), not apiary's internal ExternalIP."""
    fes = frontends(_nodeport(), [_ep("10.0.1.2")])
    types = [r[2] for r in service_rows(fes, lb_table(fes))[1:] if r[2]]
    assert types == ["ClusterIP", "ClusterIP", "NodePort", "NodePort", "ExternalIPs", "ExternalIPs"]


def test_maglev_lut_holds_backend_ids_of_usable_backends() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{port: 80}]\n")
    (fe,) = frontends(svc, [_ep("10.0.1.2"), _ep("10.0.1.3"), _ep("10.0.1.4", terminating=True)])
    lb = lb_table([fe])
    lut = maglev_lut(fe, lb, 251)
    usable = {i for i, b in lb.backends.items() if b.state is A}
    assert len(lut) == 251 and set(lut) == usable and len(usable) == 2
    (empty,) = frontends(svc, [])
    assert maglev_lut(empty, lb_table([empty]), 251) == []


def test_new_ids_take_the_lowest_free_ones() -> None:
    svc = _service("  selector: {app: web}\n  ports: [{port: 80}]\n")
    fes = frontends(svc, [_ep("10.0.1.2"), _ep("10.0.1.3"), _ep("10.0.1.4")])
    # ids 2 and 4 are taken by backends kept from before: the new ones fill 1, 3, 5 in frontend order
    table = lb_table(fes, backend_ids={("10.9.9.9", 80, "TCP"): 2, ("10.9.9.8", 80, "TCP"): 4})
    assert sorted(table.backends) == [1, 3, 5]
    assert [table.backends[i].address for i in (1, 3, 5)] == ["10.0.1.2", "10.0.1.3", "10.0.1.4"]


def test_memoised_tables_and_contents_equal_fresh_ones() -> None:
    from apiary.sensors.lb.sensor import PackMemo, contents

    svc = _nodeport()
    eps = [_ep("10.0.1.2"), _ep("10.0.1.3"), _ep("10.0.1.4", terminating=True)]
    memo: dict = {}
    packed = PackMemo()
    first = lb_table(frontends(svc, eps), memo=memo)
    ids = {b.key: i for i, b in first.backends.items()}
    assert contents(first, {}, packed) == contents(first, {})
    # the next call reuses the memo: a backend gone and one new must still give what a fresh build gives
    eps2 = [_ep("10.0.1.3"), _ep("10.0.1.5")]
    kept = lb_table(frontends(svc, eps2), backend_ids={k: v for k, v in ids.items() if k[0] == "10.0.1.3"},
                    rev_nat_ids=first.frontend_ids, memo=memo)
    fresh = lb_table(frontends(svc, eps2), backend_ids={k: v for k, v in ids.items() if k[0] == "10.0.1.3"},
                     rev_nat_ids=first.frontend_ids)
    assert kept == fresh
    assert contents(kept, {}, packed) == contents(fresh, {})
    assert packed.groups and packed.rev_nat
