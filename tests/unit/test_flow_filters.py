from __future__ import annotations

from typing import Any

import pytest

from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder, lost_events_response
from apiary.observe.hubble.filter_values import compile_label_selector, parse_event_type, parse_label
from apiary.observe.hubble.filters import FlowFilter
from apiary.observe.hubble.raw import (
    CT_NEW,
    CT_REPLY,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    TCP_ACK,
    TCP_SYN,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
    FlowMsg,
)
from apiary.testing.flows import StaticDirectory

FRONTEND_IP, BACKEND_IP, DNS_IP, WORLD_IP = "10.200.0.10", "10.200.0.11", "10.200.1.5", "192.0.2.7"


EPS = {
    11: EndpointInfo(11, "frontend-1", "test-namespace", ["k8s:app=frontend", "k8s:tier=web"], 256, FRONTEND_IP),
    12: EndpointInfo(12, "backend-1", "test-namespace", ["k8s:app=backend"], 257, BACKEND_IP),
    13: EndpointInfo(13, "coredns-x", "kube-system", ["k8s:k8s-app=kube-dns"], 300, DNS_IP),
}


B = FlowBuilder("node", StaticDirectory(EPS), KtimeClock(offset_ns=1_700_000_000_000_000_000))


def flow(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        ktime=0,
        kind=MSG_TRACE,
        sub_type=5,
        ep_id=11,
        ifindex=0,
        egress=True,
        verdict=VERDICT_FORWARDED,
        src_ip=FRONTEND_IP,
        dst_ip=BACKEND_IP,
        proto=6,
        sport=42818,
        dport=5678,
        tcp_flags=TCP_SYN,
        src_identity=256,
        dst_identity=257,
        ct_state=CT_NEW,
        rule_id=0,
        match_type=0,
        length=60,
    )
    base.update(kw)
    return B.build(FlowMsg(**base))


FWD = flow()  # frontend -> backend:5678, trace from-endpoint, egress
REPLY = flow(
    sub_type=0,
    egress=False,
    src_ip=BACKEND_IP,
    dst_ip=FRONTEND_IP,
    sport=5678,
    dport=42818,
    tcp_flags=TCP_SYN | TCP_ACK,
    src_identity=257,
    dst_identity=256,
    ct_state=CT_REPLY,
)
DROP = flow(kind=MSG_DROP, sub_type=133, ep_id=12, egress=False, verdict=VERDICT_DROPPED)
DENY = flow(kind=MSG_DROP, sub_type=181, ep_id=12, egress=False, verdict=VERDICT_DROPPED)
DNS = flow(dst_ip=DNS_IP, dst_identity=300, proto=17, sport=40000, dport=53, tcp_flags=0)
PING = flow(dst_ip=WORLD_IP, dst_identity=2, proto=1, sport=8, dport=0, tcp_flags=0)
PV = flow(kind=MSG_POLICY_VERDICT, sub_type=0, ep_id=12, egress=False, match_type=2)
ALL = [FWD, REPLY, DROP, DENY, DNS, PING, PV]


def pick(f: FlowFilter) -> list[dict[str, Any]]:
    return [r for r in ALL if f.matches(r)]


def ff(*pairs: tuple[str, str]) -> FlowFilter:
    return FlowFilter.from_args(list(pairs))


# --- raw filters (FORMATS 1.7 examples) ----------------------------------------------------------


def test_raw_filter_examples_from_formats() -> None:
    f = ff(("verdict", "DROPPED"), ("verdict", "ERROR"))
    assert f.raw_filters() == ([{"verdict": ["DROPPED", "ERROR"]}], [])
    f = ff(("--not", ""), ("--namespace", "kube-system"))
    assert f.raw_filters() == ([], [{"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]}])
    assert f.print_raw_filters() == (
        'denylist:\n    - \'{"source_pod":["kube-system/"]}\'\n    - \'{"destination_pod":["kube-system/"]}\'\n'
    )


def test_raw_filter_shapes() -> None:
    assert ff(("pod", "x")).raw_filters()[0] == [{"source_pod": ["x"]}, {"destination_pod": ["x"]}]
    assert ff(("from-pod", "a"), ("to-port", "80")).raw_filters()[0] == [
        {"source_pod": ["a"], "destination_port": ["80"]}
    ]
    assert ff(("namespace", "ns"), ("pod", "x")).raw_filters()[0] == [
        {"source_pod": ["ns/x"]},
        {"destination_pod": ["ns/x"]},
    ]
    assert ff(("from-namespace", "a"), ("from-namespace", "b")).raw_filters()[0] == [{"source_pod": ["a/", "b/"]}]
    assert ff(("type", "trace:to-endpoint")).raw_filters()[0] == [{"event_type": [{"type": 4, "match_sub_type": True}]}]
    assert ff(("-t", "drop")).raw_filters()[0] == [{"event_type": [{"type": 1}]}]
    assert ff(("identity", "world")).raw_filters()[0] == [{"source_identity": [2]}, {"destination_identity": [2]}]
    assert ff(("traffic-direction", "Ingress")).raw_filters()[0] == [{"traffic_direction": ["INGRESS"]}]
    assert ff().raw_filters() == ([], []) and not ff() and ff().print_raw_filters() == ""


def test_parse_event_type() -> None:
    assert parse_event_type("policy-verdict") == {"type": 5}
    assert parse_event_type("trace:from-endpoint") == {"type": 4, "match_sub_type": True, "sub_type": 5}
    assert parse_event_type("drop:181") == {"type": 1, "match_sub_type": True, "sub_type": 181}
    assert parse_event_type("4:3") == {"type": 4, "match_sub_type": True, "sub_type": 3}


# --- matching ------------------------------------------------------------------------------------


def test_empty_filter_and_lost_events_pass() -> None:
    assert pick(ff()) == ALL
    lost = lost_events_response("HUBBLE_RING_BUFFER", 3, "node", time_ns=0)
    assert ff(("verdict", "DROPPED")).matches(lost)
    assert ff(("not", ""), ("verdict", "DROPPED")).matches(lost)


def test_verdict_repeated_is_or() -> None:
    assert pick(ff(("verdict", "DROPPED"))) == [DROP, DENY]
    assert pick(ff(("verdict", "DROPPED"), ("verdict", "FORWARDED"))) == ALL


def test_different_flags_are_and() -> None:
    assert pick(ff(("verdict", "DROPPED"), ("drop-reason-desc", "POLICY_DENY"))) == [DENY]
    assert pick(ff(("protocol", "tcp"), ("to-port", "5678"))) == [FWD, DROP, DENY, PV]


def test_pod_filters() -> None:
    assert pick(ff(("from-pod", "test-namespace/frontend"))) == [FWD, DROP, DENY, DNS, PING, PV]
    assert pick(ff(("to-pod", "test-namespace/back"))) == [FWD, DROP, DENY, PV]
    # no namespace: "default" is assumed, so nothing in test-namespace matches
    assert pick(ff(("from-pod", "frontend"))) == []
    # --pod: source OR destination
    assert pick(ff(("pod", "kube-system/coredns"))) == [DNS]
    assert pick(ff(("pod", "test-namespace/backend-1"))) == [FWD, REPLY, DROP, DENY, PV]
    assert pick(ff(("from-pod", "test-namespace/backend"), ("from-pod", "test-namespace/frontend"))) == ALL


def test_namespace_filters() -> None:
    assert pick(ff(("to-namespace", "kube-system"))) == [DNS]
    assert pick(ff(("from-namespace", "kube-system"))) == []
    assert pick(ff(("namespace", "kube-system"))) == [DNS]
    assert pick(ff(("-n", "test-namespace"))) == ALL
    assert pick(ff(("not", ""), ("namespace", "kube-system"))) == [FWD, REPLY, DROP, DENY, PING, PV]


def test_label_identity_ip_port_filters() -> None:
    assert pick(ff(("to-label", "app=backend"))) == [FWD, DROP, DENY, PV]
    assert pick(ff(("to-label", "k8s:app=backend"))) == [FWD, DROP, DENY, PV]
    assert pick(ff(("to-label", "cidr:app=backend"))) == []
    assert pick(ff(("to-label", "reserved:world"))) == [PING]
    assert pick(ff(("from-label", "app in (backend, nothing)"))) == [REPLY]
    assert pick(ff(("from-label", "k8s:app=frontend,tier=web"))) == [FWD, DROP, DENY, DNS, PING, PV]
    assert pick(ff(("label", "k8s-app"))) == [DNS]
    assert pick(ff(("from-identity", "257"))) == [REPLY]
    assert pick(ff(("identity", "world"))) == [PING]
    assert pick(ff(("to-ip", "192.0.2.0/24"))) == [PING]
    assert pick(ff(("ip", FRONTEND_IP), ("not", ""), ("to-ip", "10.200.0.0/24"))) == [DNS, PING]
    assert pick(ff(("from-port", "5678"))) == [REPLY]
    assert pick(ff(("port", "53"))) == [DNS]


def test_protocol_type_direction_reason_filters() -> None:
    assert pick(ff(("protocol", "icmp"))) == [PING]
    assert pick(ff(("protocol", "ICMPv4"))) == [PING]
    assert pick(ff(("protocol", "udp"))) == [DNS]
    assert pick(ff(("protocol", "http"))) == []
    assert pick(ff(("type", "drop"))) == [DROP, DENY]
    assert pick(ff(("type", "trace:to-endpoint"))) == [REPLY]
    assert pick(ff(("type", "trace"))) == [FWD, REPLY, DNS, PING]
    assert pick(ff(("type", "policy-verdict"))) == [PV]
    assert pick(ff(("traffic-direction", "ingress"))) == [DROP, DENY, PV]
    assert pick(ff(("traffic-direction", "egress"))) == [FWD, REPLY, DNS, PING]
    assert pick(ff(("drop-reason-desc", "policy_denied"))) == [DROP]


def test_not_negates_only_the_next_flag() -> None:
    f = ff(("not", ""), ("verdict", "DROPPED"), ("protocol", "tcp"))
    assert f.raw_filters() == ([{"protocol": ["tcp"]}], [{"verdict": ["DROPPED"]}])
    assert pick(f) == [FWD, REPLY, PV]
    # two --not filters land in the same denylist tracker: different flags AND there
    f = ff(("not", ""), ("from-pod", "test-namespace/frontend"), ("not", ""), ("to-pod", "kube-system/"))
    assert f.raw_filters()[1] == [{"source_pod": ["test-namespace/frontend"], "destination_pod": ["kube-system/"]}]
    assert pick(f) == [FWD, REPLY, DROP, DENY, PING, PV]
    # a flow passes when it matches the allowlist and no denylist entry
    f = ff(("verdict", "DROPPED"), ("not", ""), ("drop-reason-desc", "POLICY_DENY"))
    assert pick(f) == [DROP]


def test_from_raw_json() -> None:
    f = FlowFilter.from_raw(['{"verdict":["DROPPED"]}'], [{"drop_reason_desc": ["POLICY_DENY"]}])
    assert pick(f) == [DROP]
    f = FlowFilter.from_raw([{"event_type": [{"type": 4, "match_sub_type": True}]}])
    assert pick(f) == [REPLY]
    with pytest.raises(ValueError, match="allowlist"):
        FlowFilter.from_raw(["{not json"])
    with pytest.raises(ValueError, match="unsupported FlowFilter field"):
        FlowFilter.from_raw([{"sock_xlation_point": ["SOCK_XLATION_POINT_PRE_DIRECTION_FWD"]}])


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ([("verdict", "MAYBE")], "--verdict"),
        ([("port", "70000")], "--port"),
        ([("to-port", "http")], "--to-port"),
        ([("from-ip", "10.0.0.300")], "--from-ip"),
        ([("protocol", "gopher")], "--protocol"),
        ([("type", "bogus")], "--type"),
        ([("type", "trace:sideways")], "--type"),
        ([("traffic-direction", "sideways")], "--traffic-direction"),
        ([("from-label", "app in (a")], "--from-label"),
        ([("identity", "nobody")], "--identity"),
        ([("drop-reason-desc", "NOPE")], "--drop-reason-desc"),
        ([("from-pod", "")], "--from-pod"),
        ([("frobnicate", "x")], "--frobnicate"),
        ([("not", ""), ("not", ""), ("verdict", "DROPPED")], "consecutive --not"),
        ([("verdict", "DROPPED"), ("not", "")], "--not"),
        ([("port", "80"), ("to-port", "81")], "filters --port and --to-port cannot be combined"),
        ([("from-ip", "10.0.0.1"), ("from-pod", "a")], "cannot be combined"),
        ([("from-namespace", "a"), ("from-pod", "b/x")], 'namespace conflict: "a" does not contain "b/x"'),
    ],
)
def test_bad_values_name_the_flag(pairs: list[tuple[str, str]], needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        FlowFilter.from_args(pairs)


def test_label_selector_helpers() -> None:
    labels = [parse_label(x) for x in ("k8s:app=web", "reserved:host", "k8s:io.kubernetes.pod.namespace=ns")]
    assert labels[1] == ("reserved", "host", "")
    assert compile_label_selector("app")(labels)
    assert compile_label_selector("!debug")(labels)
    assert not compile_label_selector("!app")(labels)
    assert compile_label_selector("app!=db")(labels)
    assert compile_label_selector("app notin (db)")(labels)
    assert compile_label_selector("io.kubernetes.pod.namespace==ns")(labels)
    assert compile_label_selector("any:app=web, reserved:host")(labels)
    assert compile_label_selector("app in (db, web)")(labels)
    assert not compile_label_selector("app in (db)")(labels)
    assert not compile_label_selector("app!=web")(labels)
    assert not compile_label_selector("app notin (x,web)")(labels)
    assert not compile_label_selector("reserved:app")(labels)  # the source prefix must match
    assert not compile_label_selector("k8s:app=db")(labels)
    # each requirement keeps its own key and values (none sees a later one's)
    assert not compile_label_selector("app=web,io.kubernetes.pod.namespace=other")(labels)
    assert not compile_label_selector("app=other,io.kubernetes.pod.namespace=ns")(labels)
    with pytest.raises(ValueError):
        compile_label_selector("app=(x")
