from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder, lost_events_response
from apiary.observe.hubble.metrics import FlowMetrics, flow_protocol, flow_type_labels
from apiary.observe.hubble.raw import (
    CT_NEW,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    TCP_SYN,
    VERDICT_AUDIT,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
    FlowMsg,
)
from apiary.testing.flows import StaticDirectory

EPS = {
    11: EndpointInfo(11, "frontend", "ns", ["k8s:app=frontend"], 256, "10.200.0.10"),
    12: EndpointInfo(12, "backend", "ns", ["k8s:app=backend"], 257, "10.200.0.11"),
}


B = FlowBuilder("node", StaticDirectory(EPS), KtimeClock(offset_ns=0))


def flow(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        ktime=0,
        kind=MSG_TRACE,
        sub_type=0,
        ep_id=12,
        ifindex=0,
        egress=False,
        verdict=VERDICT_FORWARDED,
        src_ip="10.200.0.10",
        dst_ip="10.200.0.11",
        proto=6,
        sport=40000,
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


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_flows_processed_labels() -> None:
    reg = CollectorRegistry()
    m = FlowMetrics(reg)
    m.observe(flow())
    m.observe(flow())
    m.observe(flow(proto=17, tcp_flags=0))
    m.observe(flow(kind=MSG_DROP, sub_type=133, verdict=VERDICT_DROPPED))
    m.observe(flow(kind=MSG_POLICY_VERDICT, match_type=2))
    m.observe(flow(proto=1, sport=8, dport=0, tcp_flags=0, sub_type=5))
    n = "hubble_flows_processed_total"
    assert value(reg, n, protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED") == 2
    assert value(reg, n, protocol="UDP", type="Trace", subtype="to-endpoint", verdict="FORWARDED") == 1
    assert value(reg, n, protocol="TCP", type="Drop", subtype="", verdict="DROPPED") == 1
    assert value(reg, n, protocol="TCP", type="PolicyVerdict", subtype="", verdict="FORWARDED") == 1
    assert value(reg, n, protocol="ICMPv4", type="Trace", subtype="from-endpoint", verdict="FORWARDED") == 1


def test_drop_total_uses_enum_names() -> None:
    reg = CollectorRegistry()
    m = FlowMetrics(reg)
    m.observe(flow(kind=MSG_DROP, sub_type=133, verdict=VERDICT_DROPPED))
    m.observe(flow(kind=MSG_DROP, sub_type=181, verdict=VERDICT_DROPPED))
    m.observe(flow(kind=MSG_DROP, sub_type=181, verdict=VERDICT_DROPPED, proto=17, tcp_flags=0))
    m.observe(flow(kind=MSG_POLICY_VERDICT, verdict=VERDICT_DROPPED))  # a denied policy verdict is a drop too
    m.observe(flow())
    assert value(reg, "hubble_drop_total", reason="POLICY_DENIED", protocol="TCP") == 2
    assert value(reg, "hubble_drop_total", reason="POLICY_DENY", protocol="TCP") == 1
    assert value(reg, "hubble_drop_total", reason="POLICY_DENY", protocol="UDP") == 1
    text = generate_latest(reg).decode()
    assert "Policy denied" not in text and 'reason="POLICY_DENIED"' in text


def test_policy_verdicts_total() -> None:
    reg = CollectorRegistry()
    m = FlowMetrics(reg)
    m.observe(flow(kind=MSG_POLICY_VERDICT, match_type=2))
    m.observe(flow(kind=MSG_POLICY_VERDICT, match_type=3, egress=True, ep_id=11))
    m.observe(flow(kind=MSG_POLICY_VERDICT, verdict=VERDICT_DROPPED))
    m.observe(flow(kind=MSG_POLICY_VERDICT, verdict=VERDICT_AUDIT, match_type=1))
    m.observe(flow(kind=MSG_POLICY_VERDICT, src_ip="10.200.0.1", src_identity=1))  # from the host: not counted
    m.observe(flow())  # not a policy verdict
    n = "hubble_policy_verdicts_total"
    assert value(reg, n, direction="ingress", match="l3-l4", action="forwarded") == 1
    assert value(reg, n, direction="egress", match="l4-only", action="forwarded") == 1
    assert value(reg, n, direction="ingress", match="none", action="dropped") == 1
    assert value(reg, n, direction="ingress", match="l3-only", action="audit") == 1
    assert value(reg, n, direction="ingress", match="none", action="forwarded") is None


def test_lost_events_total() -> None:
    reg = CollectorRegistry()
    m = FlowMetrics(reg)
    m.observe(lost_events_response("HUBBLE_RING_BUFFER", 5, "node", time_ns=0))
    m.observe(lost_events_response(1, 2, "node", time_ns=0))
    m.lost("HUBBLE_RING_BUFFER", 1)
    assert value(reg, "hubble_lost_events_total", source="hubble_ring_buffer") == 6
    assert value(reg, "hubble_lost_events_total", source="perf_event_ring_buffer") == 2
    assert value(reg, "hubble_flows_processed_total", protocol="TCP", type="Trace", subtype="", verdict="") is None


def test_uses_only_the_given_registry() -> None:
    before = {m.name for m in REGISTRY.collect()}
    FlowMetrics(CollectorRegistry())
    FlowMetrics(CollectorRegistry())  # a second instance on another registry does not clash
    after = {m.name for m in REGISTRY.collect()}
    assert before == after
    text = generate_latest(_registry_with_one_flow()).decode()
    for name in ("hubble_flows_processed_total", "hubble_drop_total", "hubble_policy_verdicts_total"):
        assert f"# TYPE {name.removesuffix('_total')} counter" in text or f"# TYPE {name} counter" in text


def _registry_with_one_flow() -> CollectorRegistry:
    reg = CollectorRegistry()
    m = FlowMetrics(reg)
    m.observe(flow(kind=MSG_POLICY_VERDICT, verdict=VERDICT_DROPPED))
    return reg


def test_label_helpers() -> None:
    assert flow_protocol({"event_type": {"type": 129}, "l7": {"http": {}}}) == "HTTP"
    assert flow_protocol({"event_type": {"type": 129}}) == "Unknown L7"
    assert flow_protocol({"event_type": {"type": 4}}) == "Unknown L4"
    assert flow_protocol({"event_type": {"type": 130}}) == "Unknown flow"
    assert flow_type_labels({"event_type": {"type": 129}, "l7": {"dns": {}}}) == ("L7", "DNS")
    assert flow_type_labels({"event_type": {"type": 9}}) == ("Unknown", "9")
    assert flow_type_labels({"event_type": {"type": 4, "sub_type": 3}}) == ("Trace", "to-stack")


def test_tcp_flags_and_port_distribution() -> None:
    from apiary.observe.hubble.raw import CT_REPLY, TCP_ACK, TCP_FIN, TCP_RST

    reg = CollectorRegistry()
    m = FlowMetrics(reg)
    m.observe(flow())  # SYN to 5678
    m.observe(flow(tcp_flags=TCP_SYN | TCP_ACK, sport=5678, dport=40000, ct_state=CT_REPLY))
    m.observe(flow(tcp_flags=TCP_FIN | TCP_ACK))
    m.observe(flow(tcp_flags=TCP_RST, kind=MSG_DROP, sub_type=133, verdict=VERDICT_DROPPED))  # dropped: neither
    m.observe(flow(proto=17, tcp_flags=0, dport=53))
    assert value(reg, "hubble_tcp_flags_total", flag="SYN", family="IPv4") == 1
    assert value(reg, "hubble_tcp_flags_total", flag="SYN-ACK", family="IPv4") == 1
    assert value(reg, "hubble_tcp_flags_total", flag="FIN", family="IPv4") == 1
    assert value(reg, "hubble_tcp_flags_total", flag="RST", family="IPv4") is None
    assert value(reg, "hubble_port_distribution_total", protocol="TCP", port="5678") == 2  # not the reply
    assert value(reg, "hubble_port_distribution_total", protocol="UDP", port="53") == 1
    assert value(reg, "hubble_port_distribution_total", protocol="TCP", port="40000") is None


def test_hubble_metrics_list_enables_handlers_and_context_labels() -> None:
    from apiary.observe.hubble.metrics import parse_hubble_metrics

    reg = CollectorRegistry()
    spec = parse_hubble_metrics(["drop:sourceContext=pod;destinationContext=app|namespace flow:labelsContext="
                                 "source_namespace,traffic_direction"])
    m = FlowMetrics(reg, spec)
    m.observe(flow(kind=MSG_DROP, sub_type=133, verdict=VERDICT_DROPPED))
    drop = dict(source="ns/frontend", destination="backend", reason="POLICY_DENIED", protocol="TCP")
    assert value(reg, "hubble_drop_total", **drop) == 1
    n = "hubble_flows_processed_total"
    assert value(reg, n, source_namespace="ns", traffic_direction="ingress", protocol="TCP", type="Drop", subtype="",
                 verdict="DROPPED") == 1
    text = generate_latest(reg).decode()
    assert "hubble_tcp_flags_total" not in text and "hubble_policy_verdicts_total" not in text  # not listed
    assert "hubble_lost_events_total" in text  # always on
    none = CollectorRegistry()
    FlowMetrics(none, parse_hubble_metrics([""])).observe(flow())
    assert "hubble_flows_processed_total" not in generate_latest(none).decode()


def test_hubble_metrics_list_errors_name_the_item() -> None:
    import pytest

    from apiary.observe.hubble.metrics import parse_hubble_metrics

    for items, says in (
        (["flows"], "'flows': unknown metric"),
        (["kafka"], "not served by apiary yet"),
        (["httpV2:exemplars=true"], "option 'exemplars' is not served"),
        (["dns:query"], "option 'query' is not served"),
        (["dns:ignoreAAAA=maybe"], "option 'ignoreAAAA' is a flag"),
        (["http httpV2"], "http and httpV2 serve the same metric names"),
        (["drop:sourceContext=ip"], "sourceContext=ip is not served (its label values are not bounded here)"),
        (["drop:sourceContext=pods"], "sourceContext: unknown context 'pods'"),
        (["drop:query"], "option 'query' needs a value"),
        (["drop:exemplars=true"], "unknown option 'exemplars'"),
        (["drop drop"], "drop is listed twice"),
        (["flow:labelsContext=source_ip"], "labelsContext: unknown label 'source_ip'"),
        (["flow:labelsContext=source_pod;sourceContext=pod"], "cannot be combined"),
    ):
        with pytest.raises(ValueError) as e:
            parse_hubble_metrics(items)
        assert says in str(e.value) and "--hubble-metrics" in str(e.value), str(e.value)
