"""Flows show the service: source_service / destination_service, their printing and the --service filters."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hubble_flow_helpers import BACKEND_IP, NS, builder, icmp_echo, msg, syn_ack_reply, udp_flow

from apiary.observe.hubble.builder import FlowBuilder
from apiary.observe.hubble.enums import DROP_REASONS, drop_reason_desc
from apiary.observe.hubble.filters import FlowFilter
from apiary.observe.hubble.printers import compact, dict_format, table
from apiary.observe.hubble.raw import MSG_DROP, TCP_SYN, VERDICT_DROPPED
from apiary.observe.hubble.services import ServiceLookup, ServiceTable
from apiary.services.backends import Backend, BackendState, Frontend

VIP, VIP2, CLIENT_IP = "10.96.0.10", "10.96.0.20", "10.200.0.99"


def frontend(svc: str, vip: str, port: int, backends: list[tuple[str, int]], proto: str = "TCP",
             kind: str = "ClusterIP") -> Frontend:
    bes = tuple(Backend(ip, p, proto, BackendState.ACTIVE) for ip, p in backends)
    return Frontend(svc, "", vip, port, proto, kind, bes)


def table_for_tests(**kw: Any) -> ServiceTable:
    return ServiceTable(
        [
            frontend(f"{NS}/backend-svc", VIP, 80, [(BACKEND_IP, 5678)]),
            frontend(f"{NS}/dns", VIP2, 53, [(BACKEND_IP, 53)], proto="UDP"),
        ],
        **kw,
    )


def build(m: Any, lookup: ServiceLookup | None) -> dict[str, Any]:
    b = builder()
    b.services = lookup
    return b.build(m)["flow"]


# --- the look-up table ---------------------------------------------------------------------------


def test_table_answers_for_frontends_wildcards_and_backends() -> None:
    t = ServiceTable(
        [
            frontend("web/front", VIP, 80, [("10.200.0.5", 8080), ("10.200.0.6", 8080)]),
            frontend("web/front", "0.0.0.0", 30080, [("10.200.0.5", 8080)], kind="NodePort"),
            frontend("dns", VIP2, 53, [("10.200.0.7", 53)], proto="UDP"),
        ]
    )
    assert isinstance(t, ServiceLookup) and len(t) == 3
    assert t.service_of(VIP, 80, "TCP") == ("web", "front")
    assert t.service_of(VIP, 81, "TCP") is None
    assert t.service_of(VIP, 80, "UDP") is None  # the protocol is part of the frontend
    assert t.service_of("10.200.0.1", 30080, "TCP") == ("web", "front")  # NodePort on any host address
    assert t.service_of("10.200.0.6", 8080, "TCP") == ("web", "front")  # a backend (socket LB: after connect)
    assert t.service_of("10.200.0.6", 8081, "TCP") is None
    assert t.service_of("10.200.0.7", 53, "UDP") == ("default", "dns")  # a bare name is in "default"
    assert t.service_of("10.200.0.7", 53, "TCP") is None
    # a wildcard frontend wins over a backend listening on the same port number
    t2 = ServiceTable([frontend("a/np", "0.0.0.0", 30080, []), frontend("b/svc", VIP, 80, [("10.200.0.9", 30080)])])
    assert t2.service_of("10.200.0.9", 30080, "TCP") == ("a", "np") and len(t2) == 2
    frontends_only = ServiceTable([frontend("web/front", VIP, 80, [("10.200.0.5", 8080)])], match_backends=False)
    assert frontends_only.service_of("10.200.0.5", 8080, "TCP") is None
    assert frontends_only.service_of(VIP, 80, "TCP") == ("web", "front")


def test_shared_backend_answers_with_the_first_service_by_name() -> None:
    shared = [("10.200.0.5", 8080)]
    for order in ((1, 0), (0, 1)):
        fronts = [frontend("web/zeta", VIP, 80, shared), frontend("web/alpha", VIP2, 80, shared)]
        t = ServiceTable([fronts[i] for i in order])
        assert t.service_of("10.200.0.5", 8080, "TCP") == ("web", "alpha")
        assert t.service_of(VIP, 80, "TCP") == ("web", "zeta")  # a frontend stays its own service


def test_update_replaces_whole_and_a_bad_entry_keeps_the_old_table() -> None:
    t = table_for_tests()
    t.update([frontend("other/svc", VIP, 80, [])])
    assert t.service_of(VIP, 80, "TCP") == ("other", "svc")
    assert t.service_of(BACKEND_IP, 5678, "TCP") is None and len(t) == 1
    for bad, needle in (
        (frontend("a/b/c", VIP2, 80, []), "invalid service name 'a/b/c'"),
        (frontend("a/", VIP2, 80, []), "invalid service name 'a/'"),
        (frontend("a/x", "10.96.0.300", 80, []), "invalid service address '10.96.0.300'"),
    ):
        with pytest.raises(ValueError, match=needle):
            t.update([frontend("new/svc", VIP2, 81, []), bad])
        assert t.service_of(VIP, 80, "TCP") == ("other", "svc") and t.service_of(VIP2, 81, "TCP") is None
    t.clear()
    assert t.service_of(VIP, 80, "TCP") is None and len(t) == 0


def test_addresses_are_normalised() -> None:
    t = ServiceTable([frontend("ns/v6", "FD00:0:0::A", 443, [("fd00::00b", 8443)])])
    assert t.service_of("fd00::a", 443, "TCP") == ("ns", "v6")
    assert t.service_of("fd00::b", 8443, "TCP") == ("ns", "v6")


# --- the builder ---------------------------------------------------------------------------------


def test_without_a_lookup_the_fields_are_absent() -> None:
    f = build(msg(dst_ip=VIP, dport=80), None)
    assert "source_service" not in f and "destination_service" not in f
    assert FlowBuilder("n", builder().directory).services is None


def test_vip_destination_fills_destination_service_in_proto_order() -> None:
    f = build(msg(dst_ip=VIP, dport=80, dst_identity=0), table_for_tests())
    assert f["destination_service"] == {"name": "backend-svc", "namespace": NS}
    assert "source_service" not in f  # the client's ephemeral port is no service
    keys = list(f)
    assert keys.index("event_type") < keys.index("destination_service") < keys.index("traffic_direction")
    assert json.dumps(f)  # plain JSON


def test_backend_destination_and_reply_source() -> None:
    t = table_for_tests()
    fwd = build(msg(), t)  # frontend -> backend:5678 on the wire (socket LB translated at connect)
    assert fwd["destination_service"] == {"name": "backend-svc", "namespace": NS}
    reply = build(syn_ack_reply(), t)  # backend:5678 -> frontend
    assert reply["source_service"] == {"name": "backend-svc", "namespace": NS}
    assert "destination_service" not in reply
    keys = list(reply)
    assert keys.index("source_service") < keys.index("traffic_direction")


def test_protocol_is_part_of_the_lookup_and_icmp_has_none() -> None:
    t = table_for_tests()
    assert build(udp_flow(), t)["destination_service"] == {"name": "dns", "namespace": NS}
    assert "destination_service" not in build(msg(dport=53), t)  # TCP to a UDP backend port
    f = build(icmp_echo(), t)
    assert "source_service" not in f and "destination_service" not in f


def test_drop_to_a_service_without_backend() -> None:
    m = msg(kind=MSG_DROP, sub_type=158, verdict=VERDICT_DROPPED, dst_ip=VIP, dport=80, dst_identity=0,
            tcp_flags=TCP_SYN)
    f = build(m, table_for_tests())
    assert f["drop_reason_desc"] == "SERVICE_BACKEND_NOT_FOUND" and f["verdict"] == "DROPPED"
    assert f["destination_service"] == {"name": "backend-svc", "namespace": NS}
    assert DROP_REASONS[158] == ("SERVICE_BACKEND_NOT_FOUND", "Service backend not found")
    assert drop_reason_desc(158) == "SERVICE_BACKEND_NOT_FOUND"


class _Broken:
    def service_of(self, ip: str, port: int, protocol: str) -> tuple[str, str] | None:
        raise RuntimeError("agent state torn down")


class _NoNamespace:
    def service_of(self, ip: str, port: int, protocol: str) -> tuple[str, str] | None:
        return ("", "bare") if ip == VIP else None


def test_a_failing_lookup_never_breaks_a_flow_and_zero_values_are_omitted() -> None:
    f = build(msg(dst_ip=VIP, dport=80), _Broken())
    assert "destination_service" not in f and f["verdict"] == "FORWARDED"
    assert build(msg(dst_ip=VIP, dport=80), _NoNamespace())["destination_service"] == {"name": "bare"}


# --- printers ------------------------------------------------------------------------------------


def test_compact_shows_the_service_when_the_address_is_no_pod() -> None:
    t = table_for_tests()
    vip = {"flow": build(msg(dst_ip=VIP, dport=80, dst_identity=0), t), "node_name": "n"}
    line = compact(vip)
    assert f"{NS}/frontend:42818 (ID:256) -> {NS}/backend-svc:80 (unknown) from-endpoint FORWARDED" in line
    assert f"{NS}/backend-svc:80" in table([vip]) and f"DESTINATION: {NS}/backend-svc:80" in dict_format([vip])
    assert f"-> {VIP}:80" in compact(vip, ip_translation=False)
    # a pod name wins over the service, as in hubble's Hostname
    pod = {"flow": build(msg(), t), "node_name": "n"}
    assert f"-> {NS}/backend:5678 (ID:257)" in compact(pod)


# --- filters -------------------------------------------------------------------------------------

T = table_for_tests()
TO_VIP = {"flow": build(msg(dst_ip=VIP, dport=80, dst_identity=0), T)}
TO_BACKEND = {"flow": build(msg(), T)}
FROM_BACKEND = {"flow": build(syn_ack_reply(), T)}
DNS = {"flow": build(udp_flow(), T)}
PLAIN = {"flow": build(msg(dst_ip=CLIENT_IP, dport=9999, dst_identity=2), T)}
ALL = [TO_VIP, TO_BACKEND, FROM_BACKEND, DNS, PLAIN]


def pick(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    f = FlowFilter.from_args(list(pairs))
    return [r for r in ALL if f.matches(r)]


def test_service_filters_match() -> None:
    assert pick(("to-service", f"{NS}/backend-svc")) == [TO_VIP, TO_BACKEND]
    assert pick(("to-service", f"{NS}/back")) == [TO_VIP, TO_BACKEND]  # a name prefix, like --pod
    assert pick(("to-service", f"{NS}/")) == [TO_VIP, TO_BACKEND, DNS]
    assert pick(("from-service", f"{NS}/backend-svc")) == [FROM_BACKEND]
    assert pick(("service", f"{NS}/backend-svc")) == [TO_VIP, TO_BACKEND, FROM_BACKEND]
    assert pick(("to-service", "backend-svc")) == []  # no namespace: "default"
    assert pick(("not", ""), ("service", f"{NS}/backend-svc")) == [DNS, PLAIN]
    assert pick(("to-service", f"{NS}/dns"), ("to-service", f"{NS}/backend-svc")) == [TO_VIP, TO_BACKEND, DNS]
    assert pick(("to-service", f"{NS}/backend-svc"), ("to-port", "80")) == [TO_VIP]


def test_namespace_flags_apply_to_services() -> None:
    assert FlowFilter.from_args([("service", "web")]).raw_filters()[0] == [
        {"source_service": ["web"]},
        {"destination_service": ["web"]},
    ]
    f = FlowFilter.from_args([("namespace", NS), ("service", "backend")])
    assert f.raw_filters()[0] == [{"source_service": [f"{NS}/backend"]}, {"destination_service": [f"{NS}/backend"]}]
    assert [r for r in ALL if f.matches(r)] == [TO_VIP, TO_BACKEND, FROM_BACKEND]
    f = FlowFilter.from_args([("to-namespace", NS), ("to-service", "dns")])
    assert f.raw_filters()[0] == [{"destination_service": [f"{NS}/dns"]}]
    # a pod and a service: both get the namespace, no "<ns>/" pod filter is added
    f = FlowFilter.from_args([("from-namespace", "a"), ("from-pod", "p"), ("from-service", "s")])
    assert f.raw_filters()[0] == [{"source_pod": ["a/p"], "source_service": ["a/s"]}]
    assert FlowFilter.from_args([("from-service", "x/s")]).print_raw_filters() == (
        "allowlist:\n    - '{\"source_service\":[\"x/s\"]}'\n"
    )
    raw = FlowFilter.from_args([("to-ip", "10.0.0.1"), ("to-service", "a/b"), ("from-label", "app=x")])
    assert list(raw.raw_filters()[0][0]) == ["source_label", "destination_ip", "destination_service"]


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ([("to-service", "")], "--to-service: invalid filter, must be [namespace/][<name>], got ''"),
        ([("service", "/")], "--service: invalid filter"),
        ([("from-service", "a/b/c")], "--from-service: invalid service 'a/b/c': must be [namespace/][<name>]"),
        ([("to-service", "Default/Web")], "--to-service: invalid service 'Default/Web'"),
        ([("to-service", "web svc")], "--to-service: invalid service"),
        ([("service", "a/x"), ("to-service", "a/y")], "filters --service and --to-service cannot be combined"),
        ([("from-service", "a/x"), ("service", "a/y")], "filters --service and --from-service cannot be combined"),
        ([("namespace", "a"), ("to-service", "x")], "filters --to-service and --namespace cannot be combined"),
        ([("from-namespace", "a"), ("from-service", "b/x")], 'namespace conflict: "a" does not contain "b/x"'),
        ([("to-pod", "a/p"), ("to-service", "b/s")], 'namespace of service "b/s" conflict with pod "a"'),
        ([("from-pod", "a/p"), ("from-service", "s")], 'namespace of service "s" conflict with pod "a"'),
    ],
)
def test_bad_service_values_and_conflicts(pairs: list[tuple[str, str]], needle: str) -> None:
    with pytest.raises(ValueError) as e:
        FlowFilter.from_args(pairs)
    assert needle in str(e.value)


def test_raw_service_filters() -> None:
    f = FlowFilter.from_raw([json.dumps({"destination_service": [f"{NS}/backend-svc"]})])
    assert [r for r in ALL if f.matches(r)] == [TO_VIP, TO_BACKEND]
    f = FlowFilter.from_raw(denylist=[{"source_service": [f"{NS}/"]}])
    assert [r for r in ALL if f.matches(r)] == [TO_VIP, TO_BACKEND, DNS, PLAIN]
    with pytest.raises(ValueError, match="invalid destination service filter: invalid filter"):
        FlowFilter.from_raw([{"destination_service": [""]}])
    with pytest.raises(ValueError, match="invalid source service filter"):
        FlowFilter.from_raw([{"source_service": ["/"]}])
    # pods and services are matched on their own fields: a pod filter does not match a service name
    assert [r for r in ALL if FlowFilter.from_raw([{"destination_pod": [f"{NS}/backend-svc"]}]).matches(r)] == []
