from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from apiary.observe.clock import KtimeClock, parse_rfc3339_ns
from apiary.observe.hubble.builder import (
    EndpointDirectory,
    EndpointInfo,
    FlowBuilder,
    lost_events_response,
    protojson_timestamp,
)
from apiary.observe.hubble.enums import (
    DROP_REASONS,
    TCP_NS,
    TRACE_OBSERVATION_POINT,
    drop_reason_desc,
    drop_reason_text,
    fmt_identity,
    icmpv4_type_code,
    icmpv6_type_code,
    observation_point,
    tcp_flags_summary,
)
from apiary.observe.hubble.printers import compact, dict_format, format_time, table
from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_NEW,
    CT_REPLY,
    CT_UNKNOWN,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VERDICT_AUDIT,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
    FlowMsg,
)
from apiary.observe.hubble.ring import FlowRing
from apiary.policy.types import RuleRef
from apiary.testing.flows import StaticDirectory

CONFORMANCE = Path(os.environ.get("APIARY_CONFORMANCE", "/work/shared/conformance"))
SAMPLES = CONFORMANCE / "events" / "hubble"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

FRONTEND_IP, BACKEND_IP, WORLD_IP, HOST_IP = "10.200.0.10", "10.200.0.11", "192.0.2.7", "10.200.0.1"
NS = "test-namespace"
T0 = "2024-01-04T13:23:47.852000000Z"


class FakeDirectory(StaticDirectory):
    def __init__(self, selecting: dict[tuple[int, bool], list[str]] | None = None) -> None:
        super().__init__(
            eps={
                11: EndpointInfo(
                    11, "frontend", NS, ["k8s:io.kubernetes.pod.namespace=" + NS, "k8s:app=frontend"], 256,
                    FRONTEND_IP,
                ),
                12: EndpointInfo(
                    12, "backend", NS, ["k8s:app=backend", "k8s:io.kubernetes.pod.namespace=" + NS], 257, BACKEND_IP
                ),
            },
            labels={16777217: ["cidr:192.0.2.0/24", "reserved:world"]},
            rules={
                3: RuleRef("block-backend-access", NS, "CiliumNetworkPolicy", "ingressDeny[0]", 4),
                5: RuleRef("allow-frontend", NS, "CiliumNetworkPolicy", "ingress[0]", 4, ("k8s:custom=yes",)),
                6: RuleRef("deny-world", "", "CiliumClusterwideNetworkPolicy", "egressDeny[1]", 9),
            },
            ifnames={21: "lxcfront", 22: "lxcback"},
        )
        self.selecting = selecting


class SelectingDirectory(FakeDirectory):
    def selecting_policies(self, ep_id: int, egress: bool) -> list[str]:
        return (self.selecting or {}).get((ep_id, egress), [])


def builder(directory: Any = None) -> FlowBuilder:
    clock = KtimeClock(offset_ns=parse_rfc3339_ns(T0) - 1_000)
    return FlowBuilder("apiary-node", directory or FakeDirectory(), clock)


def msg(**kw: Any) -> FlowMsg:
    base: dict[str, Any] = dict(
        ktime=1_000,
        kind=MSG_TRACE,
        sub_type=5,
        ep_id=11,
        ifindex=21,
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
    return FlowMsg(**base)


def syn_egress() -> FlowMsg:
    return msg()


def syn_ack_reply() -> FlowMsg:
    # the backend's SYN-ACK delivered to the frontend (to-endpoint at the frontend)
    return msg(
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


def default_deny_drop() -> FlowMsg:
    return msg(kind=MSG_DROP, sub_type=133, ep_id=12, ifindex=22, egress=False, verdict=VERDICT_DROPPED)


def explicit_deny_drop() -> FlowMsg:
    return msg(kind=MSG_DROP, sub_type=181, ep_id=12, ifindex=22, egress=False, verdict=VERDICT_DROPPED, rule_id=3)


def icmp_echo() -> FlowMsg:
    return msg(proto=1, sport=8, dport=0, tcp_flags=0)


def udp_flow() -> FlowMsg:
    return msg(proto=17, sport=40000, dport=53, tcp_flags=0)


def load_samples() -> list[dict[str, Any]]:
    if not SAMPLES.is_dir():
        pytest.skip(f"conformance samples not found at {SAMPLES}")
    out = []
    for p in sorted(SAMPLES.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def sample_kind(flow: dict[str, Any]) -> tuple[Any, str]:
    l4 = next(iter(flow.get("l4") or {"none": 0}))
    return (flow.get("event_type") or {}).get("type"), l4


def sample_keys() -> dict[tuple[Any, str], set[str]]:
    keys: dict[tuple[Any, str], set[str]] = {}
    for r in load_samples():
        f = r["flow"]
        keys.setdefault(sample_kind(f), set()).update(f)
    return keys


# --- enum tables ---------------------------------------------------------------------------------


def test_drop_reason_table_matches_formats_every_row() -> None:
    doc = CONFORMANCE / "FORMATS.md"
    if not doc.is_file():
        pytest.skip("FORMATS.md not found")
    text = doc.read_text()
    section = text[text.index("### 1.4") : text.index("### 1.5")]
    rows = re.findall(r"^\| (\d+) \| `([^`]+)` \| (.+?) \|", section, re.M)
    assert len(rows) > 70
    seen = set()
    for code_s, enum, mon in rows:
        code = int(code_s)
        seen.add(code)
        name, text_ = DROP_REASONS[code]
        assert text_ == mon.strip(), code
        if enum.startswith("—"):
            assert name is None and drop_reason_desc(code) == code
        else:
            assert name == enum and drop_reason_desc(code) == enum
    assert seen == set(DROP_REASONS)
    assert drop_reason_text(136) == "Fragmentation needed" and drop_reason_desc(136) == "CT_MISSING_TCP_ACK_FLAG"
    assert drop_reason_text(161) == "NAT 46/64 not enabled"
    assert drop_reason_text(250) == "250"


def test_observation_point_rewrite() -> None:
    assert observation_point(0) == 101 and TRACE_OBSERVATION_POINT[101] == "TO_ENDPOINT"
    assert TRACE_OBSERVATION_POINT[observation_point(3)] == "TO_STACK"
    assert TRACE_OBSERVATION_POINT[observation_point(5)] == "FROM_ENDPOINT"


def test_directory_protocol_is_structural() -> None:
    assert isinstance(FakeDirectory(), EndpointDirectory)


# --- flows ---------------------------------------------------------------------------------------


def test_forwarded_syn_egress_trace() -> None:
    r = builder().build(syn_egress())
    assert set(r) == {"flow", "node_name", "time"}
    assert r["node_name"] == "apiary-node" and r["time"] == "2024-01-04T13:23:47.852Z"
    f = r["flow"]
    assert f["time"] == r["time"]
    assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4"
    assert f["IP"] == {"source": FRONTEND_IP, "destination": BACKEND_IP, "ipVersion": "IPv4"}
    assert f["l4"] == {"TCP": {"source_port": 42818, "destination_port": 5678, "flags": {"SYN": True}}}
    assert f["source"] == {
        "ID": 11,
        "identity": 256,
        "namespace": NS,
        "labels": ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=" + NS],
        "pod_name": "frontend",
    }
    assert f["destination"]["pod_name"] == "backend" and f["destination"]["identity"] == 257
    assert f["event_type"] == {"type": 4, "sub_type": 5}
    assert f["trace_observation_point"] == "FROM_ENDPOINT"
    assert f["trace_reason"] == "NEW"
    assert f["traffic_direction"] == "EGRESS"
    assert f["is_reply"] is False and "reply" not in f
    assert f["interface"] == {"index": 21, "name": "lxcfront"}
    assert f["Summary"] == "TCP Flags: SYN"
    assert "drop_reason" not in f and "drop_reason_desc" not in f and "extensions" not in f
    line = compact(r)
    assert line == (
        "Jan  4 13:23:47.852: test-namespace/frontend:42818 (ID:256) -> test-namespace/backend:5678 (ID:257) "
        "from-endpoint FORWARDED (TCP Flags: SYN)"
    )


def test_trace_at_to_endpoint_has_no_sub_type() -> None:
    f = builder().build(msg(sub_type=0, egress=False, ep_id=12, ifindex=22))["flow"]
    assert f["event_type"] == {"type": 4}
    assert f["trace_observation_point"] == "TO_ENDPOINT"
    assert f["traffic_direction"] == "INGRESS"  # the backend receives a new connection


def test_reply_trace_swaps_ends() -> None:
    r = builder().build(syn_ack_reply())
    f = r["flow"]
    assert f["is_reply"] is True and f["reply"] is True
    assert f["trace_reason"] == "REPLY"
    assert f["traffic_direction"] == "EGRESS"  # the frontend's egress connection
    assert f["Summary"] == "TCP Flags: SYN, ACK"
    assert compact(r) == (
        "Jan  4 13:23:47.852: test-namespace/frontend:42818 (ID:256) <- test-namespace/backend:5678 (ID:257) "
        "to-endpoint FORWARDED (TCP Flags: SYN, ACK)"
    )


def test_established_and_unknown_ct_state() -> None:
    f = builder().build(msg(ct_state=CT_ESTABLISHED, tcp_flags=TCP_ACK | TCP_PSH))["flow"]
    assert f["trace_reason"] == "ESTABLISHED" and f["is_reply"] is False and f["Summary"] == "TCP Flags: ACK, PSH"
    f = builder().build(msg(ct_state=CT_UNKNOWN))["flow"]
    assert "is_reply" not in f and "traffic_direction" not in f and "trace_reason" not in f
    assert "<>" in compact({"flow": f})


def test_default_deny_drop() -> None:
    r = builder().build(default_deny_drop())
    f = r["flow"]
    assert f["verdict"] == "DROPPED"
    assert f["drop_reason"] == 133 and f["drop_reason_desc"] == "POLICY_DENIED"
    assert f["event_type"] == {"type": 1, "sub_type": 133}
    assert f["traffic_direction"] == "INGRESS"
    assert "is_reply" not in f and "reply" not in f and "trace_observation_point" not in f
    assert "ingress_denied_by" not in f and "egress_denied_by" not in f
    why = f["extensions"]["apiary"]["decided_by"]
    assert why == "default deny: ingress of test-namespace/backend is enforced and no rule allows (ID:256)->5678/TCP"
    line = compact(r)
    assert " <> " in line and " Policy denied DROPPED (TCP Flags: SYN) [default deny: " in line


def test_default_deny_names_selecting_policies() -> None:
    d = SelectingDirectory({(12, False): ["test-namespace/allow-monitoring"]})
    f = builder(d).build(default_deny_drop())["flow"]
    assert f["extensions"]["apiary"]["decided_by"] == (
        "default deny: ingress of test-namespace/backend is selected by policy test-namespace/allow-monitoring "
        "and no rule allows (ID:256)->5678/TCP"
    )
    d = SelectingDirectory({(11, True): ["a", "b"]})
    f = builder(d).build(msg(kind=MSG_DROP, sub_type=133, verdict=VERDICT_DROPPED, dst_ip=WORLD_IP, dst_identity=2))[
        "flow"
    ]
    assert f["traffic_direction"] == "EGRESS"
    assert f["extensions"]["apiary"]["decided_by"] == (
        "default deny: egress of test-namespace/frontend is selected by policies a, b "
        "and no rule allows (world)->5678/TCP"
    )


def test_explicit_deny_drop() -> None:
    r = builder().build(explicit_deny_drop())
    f = r["flow"]
    assert f["drop_reason"] == 181 and f["drop_reason_desc"] == "POLICY_DENY"
    assert f["ingress_denied_by"] == [
        {
            "name": "block-backend-access",
            "namespace": NS,
            "labels": [
                "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                "k8s:io.cilium.k8s.policy.name=block-backend-access",
                "k8s:io.cilium.k8s.policy.namespace=" + NS,
            ],
            "revision": "4",
            "kind": "CiliumNetworkPolicy",
        }
    ]
    assert "egress_denied_by" not in f
    why = "CiliumNetworkPolicy test-namespace/block-backend-access ingressDeny[0]"
    assert f["extensions"] == {"apiary": {"decided_by": why}}
    assert compact(r) == (
        "Jan  4 13:23:47.852: test-namespace/frontend:42818 (ID:256) <> test-namespace/backend:5678 (ID:257) "
        f"Policy denied by denylist DROPPED (TCP Flags: SYN) [{why}]"
    )
    assert compact(r, print_policy_names=True).endswith(
        f"DROPPED BY block-backend-access (CiliumNetworkPolicy) (TCP Flags: SYN) [{why}]"
    )


def test_clusterwide_deny_and_unknown_rule() -> None:
    m = msg(kind=MSG_DROP, sub_type=181, verdict=VERDICT_DROPPED, dst_ip=WORLD_IP, dst_identity=2, rule_id=6)
    f = builder().build(m)["flow"]
    assert f["egress_denied_by"][0]["kind"] == "CiliumClusterwideNetworkPolicy"
    assert "namespace" not in f["egress_denied_by"][0] and f["egress_denied_by"][0]["revision"] == "9"
    assert f["extensions"]["apiary"]["decided_by"] == "CiliumClusterwideNetworkPolicy deny-world egressDeny[1]"
    f = builder().build(replace(m, rule_id=99))["flow"]
    assert f["extensions"]["apiary"]["decided_by"] == "rule #99 (no longer in the policy repository)"
    assert "egress_denied_by" not in f
    f = builder().build(replace(m, rule_id=0))["flow"]
    assert f["extensions"]["apiary"]["decided_by"] == "explicit deny (rule not identified)"


def test_non_policy_drop_has_no_extension() -> None:
    f = builder().build(msg(kind=MSG_DROP, sub_type=134, verdict=VERDICT_DROPPED))["flow"]
    assert f["drop_reason_desc"] == "INVALID_PACKET_DROPPED" and "extensions" not in f
    assert " Invalid packet DROPPED " in compact({"flow": f})
    f = builder().build(msg(kind=MSG_DROP, sub_type=206, verdict=VERDICT_DROPPED))["flow"]
    assert f["drop_reason_desc"] == 206  # no enum name: protojson prints the number
    assert " No device DROPPED " in compact({"flow": f})


def test_icmp_echo_request_and_names() -> None:
    r = builder().build(icmp_echo())
    f = r["flow"]
    assert f["l4"] == {"ICMPv4": {"type": 8}}
    assert f["Summary"] == "ICMPv4 EchoRequest"
    assert compact(r) == (
        "Jan  4 13:23:47.852: test-namespace/frontend (ID:256) -> test-namespace/backend (ID:257) "
        "from-endpoint FORWARDED (ICMPv4 EchoRequest)"
    )
    reply = builder().build(msg(proto=1, sport=0, dport=0, tcp_flags=0, ct_state=CT_REPLY))["flow"]
    assert reply["l4"] == {"ICMPv4": {}} and reply["Summary"] == "ICMPv4 EchoReply"
    assert icmpv4_type_code(3, 3) == "DestinationUnreachable(Port)"
    assert icmpv4_type_code(3, 99) == "DestinationUnreachable(Code: 99)"
    assert icmpv4_type_code(8, 1) == "EchoRequest(Code: 1)"
    assert icmpv4_type_code(42, 1) == "42(1)"
    assert icmpv4_type_code(11, 0) == "TimeExceeded(TTLExceeded)"
    assert icmpv6_type_code(128, 0) == "EchoRequest"
    f6 = builder().build(msg(proto=58, sport=128, dport=0, tcp_flags=0, src_ip="fd00::1", dst_ip="fd00::2"))["flow"]
    assert f6["IP"]["ipVersion"] == "IPv6" and f6["l4"] == {"ICMPv6": {"type": 128}}
    assert f6["Summary"] == "ICMPv6 EchoRequest"


def test_udp_flow() -> None:
    r = builder().build(udp_flow())
    f = r["flow"]
    assert f["l4"] == {"UDP": {"source_port": 40000, "destination_port": 53}}
    assert f["Summary"] == "UDP"
    assert "test-namespace/frontend:40000 (ID:256) -> test-namespace/backend:53 (ID:257)" in compact(r)


def test_world_and_host_peers() -> None:
    r = builder().build(msg(dst_ip=WORLD_IP, dst_identity=2, dport=80))
    assert r["flow"]["destination"] == {"identity": 2, "labels": ["reserved:world"]}
    assert "-> 192.0.2.7:80 (world) " in compact(r)
    r = builder().build(msg(dst_ip=WORLD_IP, dst_identity=16777217, dport=80))
    assert r["flow"]["destination"] == {"identity": 16777217, "labels": ["cidr:192.0.2.0/24", "reserved:world"]}
    assert "-> 192.0.2.7:80 (ID:16777217) " in compact(r)
    r = builder().build(
        msg(sub_type=0, ep_id=12, ifindex=22, egress=False, src_ip=HOST_IP, src_identity=1, sport=33000)
    )
    assert r["flow"]["source"] == {"identity": 1, "labels": ["reserved:host"]}
    assert compact(r).startswith("Jan  4 13:23:47.852: 10.200.0.1:33000 (host) -> test-namespace/backend:5678 (ID:257)")
    unknown = builder().build(msg(dst_ip="203.0.113.9", dst_identity=0))["flow"]
    assert unknown["destination"] == {}
    assert fmt_identity(0) == "(unknown)" and fmt_identity(6) == "(remote-node)" and fmt_identity(300) == "(ID:300)"


def test_policy_verdict_flows() -> None:
    allowed = builder().build(msg(kind=MSG_POLICY_VERDICT, sub_type=0, ep_id=12, egress=False, match_type=2, rule_id=5))
    f = allowed["flow"]
    assert f["event_type"] == {"type": 5} and f["policy_match_type"] == 2
    assert f["traffic_direction"] == "INGRESS" and f["is_reply"] is False
    assert "trace_observation_point" not in f and "interface" not in f
    assert f["ingress_allowed_by"][0]["labels"] == ["k8s:custom=yes"] and "extensions" not in f
    line = compact(allowed)
    assert " policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)" in line
    assert "ALLOWED BY allow-frontend (CiliumNetworkPolicy)" in compact(allowed, print_policy_names=True)

    denied = builder().build(
        msg(kind=MSG_POLICY_VERDICT, sub_type=0, ep_id=12, egress=False, verdict=VERDICT_DROPPED, rule_id=3)
    )
    f = denied["flow"]
    assert f["verdict"] == "DROPPED" and f["drop_reason_desc"] == "POLICY_DENY" and f["drop_reason"] == 181
    assert f["event_type"] == {"type": 5} and "is_reply" not in f and "policy_match_type" not in f
    assert " policy-verdict:none INGRESS DENIED (TCP Flags: SYN) [CiliumNetworkPolicy " in compact(denied)

    audit = builder().build(msg(kind=MSG_POLICY_VERDICT, sub_type=0, ep_id=12, egress=False, verdict=VERDICT_AUDIT))
    f = audit["flow"]
    assert f["verdict"] == "AUDIT" and f["is_reply"] is False
    assert f["extensions"]["apiary"]["decided_by"].startswith("default deny: ingress of test-namespace/backend")
    line = compact(audit)
    assert " AUDITED (TCP Flags: SYN) [default deny: " in line


def test_forwarded_flows_never_get_decided_by_suffix() -> None:
    f = builder().build(syn_egress())["flow"]
    f["extensions"] = {"apiary": {"decided_by": "x"}}
    assert not compact({"flow": f}).endswith("[x]")


def test_summary_tcp_flag_order() -> None:
    every = TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG | TCP_ECE | TCP_CWR | TCP_NS
    assert tcp_flags_summary(every) == "TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR, NS"
    assert tcp_flags_summary(TCP_FIN | TCP_ACK) == "TCP Flags: ACK, FIN"
    f = builder().build(msg(tcp_flags=every))["flow"]
    assert list(f["l4"]["TCP"]["flags"]) == ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"]


# --- conformance with the real samples -----------------------------------------------------------

OURS_TRACE_EXTRA = {"trace_reason"}  # flow.proto field 36, newer than the 2021 captures
# drop samples are field-masked, so add the fields Cilium's parser fills on drops (FORMATS 1.2/1.5)
DROP_FIELDS = {"time", "verdict", "drop_reason", "ethernet", "IP", "l4", "source", "destination", "Type", "node_name"}
DROP_FIELDS |= {"event_type", "traffic_direction", "drop_reason_desc", "interface", "Summary"}
DROP_FIELDS |= {"egress_denied_by", "ingress_denied_by"}


def _our_flows() -> dict[str, dict[str, Any]]:
    b = builder()
    return {
        "trace-tcp": b.build(syn_egress())["flow"],
        "trace-tcp-reply": b.build(syn_ack_reply())["flow"],
        "trace-icmp": b.build(icmp_echo())["flow"],
        "trace-udp": b.build(udp_flow())["flow"],
        "pv-tcp": b.build(msg(kind=MSG_POLICY_VERDICT, sub_type=0, egress=True, match_type=3))["flow"],
        "pv-udp": b.build(msg(kind=MSG_POLICY_VERDICT, sub_type=0, proto=17, tcp_flags=0, match_type=2))["flow"],
        "drop-default": b.build(default_deny_drop())["flow"],
        "drop-explicit": b.build(explicit_deny_drop())["flow"],
    }


def test_keys_subset_of_real_hubble() -> None:
    keys = sample_keys()
    drop_keys = set(DROP_FIELDS)
    for v in keys.values():
        if "drop_reason_desc" in v:
            drop_keys |= v
    for name, f in _our_flows().items():
        ours = set(f) - {"extensions"}
        if name.startswith("drop"):
            assert ours <= drop_keys, (name, ours - drop_keys)
            continue
        real = keys[sample_kind(f)]
        extra = OURS_TRACE_EXTRA if name.startswith("trace") else set()
        assert ours <= real | extra, (name, ours - real - extra)


def _same_types(ours: Any, real: Any, path: str) -> None:
    assert type(ours) is type(real), (path, ours, real)
    if isinstance(ours, dict):
        for k in set(ours) & set(real):
            _same_types(ours[k], real[k], f"{path}.{k}")
    elif isinstance(ours, list) and ours and real:
        _same_types(ours[0], real[0], path + "[]")


def test_value_types_match_real_hubble() -> None:
    by_kind: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for r in load_samples():
        by_kind.setdefault(sample_kind(r["flow"]), []).append(r)
    drops = [r for r in load_samples() if "drop_reason_desc" in r["flow"]]
    for name, f in _our_flows().items():
        candidates = drops if name.startswith("drop") else by_kind[sample_kind(f)]
        real = candidates[0]
        _same_types({"flow": f, "node_name": "n", "time": "t"}, real, name)


def test_json_round_trip_and_uint64_strings() -> None:
    for f in _our_flows().values():
        text = json.dumps({"flow": f})
        assert json.loads(text) == {"flow": f}
    f = builder().build(explicit_deny_drop())["flow"]
    assert isinstance(f["ingress_denied_by"][0]["revision"], str)
    le = lost_events_response("HUBBLE_RING_BUFFER", 12, "apiary-node", time_ns=parse_rfc3339_ns(T0))
    assert le == {
        "lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "12", "cpu": 0},
        "node_name": "apiary-node",
        "time": "2024-01-04T13:23:47.852Z",
    }
    assert json.loads(json.dumps(le)) == le


def test_compact_on_real_samples() -> None:
    first = {}
    for r in load_samples():
        first.setdefault(sample_kind(r["flow"]), r)
    icmp = json.loads((SAMPLES / "hubble-otel-basic-sample-400-icmpv4-flows.jsonl").read_text().splitlines()[0])
    assert compact(icmp) == (
        "Nov 10 10:41:26.095: 10.244.0.148 (host) -> 10.244.0.160 (health) to-endpoint FORWARDED (ICMPv4 EchoRequest)"
    )
    reply = json.loads((SAMPLES / "hubble-otel-basic-sample-400-icmpv4-flows.jsonl").read_text().splitlines()[1])
    assert compact(reply) == (
        "Nov 10 10:41:26.095: 10.244.0.148 (host) <- 10.244.0.160 (health) to-stack FORWARDED (ICMPv4 EchoReply)"
    )
    for r in first.values():
        line = compact(r)
        assert re.match(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: ", line), line


def test_compact_matches_documented_drop_line() -> None:
    doc = (SAMPLES / "docs-hubble-cli-compact-sample.txt") if SAMPLES.is_dir() else None
    if doc is None or not doc.is_file():
        pytest.skip("compact sample not found")
    expected = doc.read_text().splitlines()[3]
    d = FakeDirectory()
    d.eps = {
        1: EndpointInfo(1, "xwing", "default", ["k8s:class=xwing"], 300, "10.0.0.1"),
        2: EndpointInfo(2, "deathstar-c74d84667-cx5kp", "default", ["k8s:class=deathstar"], 301, "10.0.0.2"),
    }
    clock = KtimeClock(offset_ns=parse_rfc3339_ns("2020-05-04T13:23:47.852Z"))
    m = msg(ktime=0, kind=MSG_DROP, sub_type=133, ep_id=2, egress=False, verdict=VERDICT_DROPPED)
    m = replace(m, src_ip="10.0.0.1", dst_ip="10.0.0.2", dport=80, src_identity=300, dst_identity=301)
    line = compact(FlowBuilder("n", d, clock).build(m))
    line = line[: line.index(" [default deny")]
    # the documented line comes from an older printer without the identity columns
    assert re.sub(r" \(ID:\d+\)", "", line) == expected


def test_color_compact() -> None:
    line = compact(builder().build(explicit_deny_drop()), color=True)
    assert "\x1b[36mtest-namespace/frontend:\x1b[33m42818\x1b[0m\x1b[0m" in line
    assert "\x1b[35m(ID:256)\x1b[0m" in line and "\x1b[31mDROPPED\x1b[0m" in line
    assert ANSI.sub("", line) == compact(builder().build(explicit_deny_drop()))


# --- time ----------------------------------------------------------------------------------------


def test_protojson_timestamp_digits() -> None:
    base = parse_rfc3339_ns("2021-11-10T10:41:26Z")
    assert protojson_timestamp(base) == "2021-11-10T10:41:26Z"
    assert protojson_timestamp(base + 95_000_000) == "2021-11-10T10:41:26.095Z"
    assert protojson_timestamp(base + 95_357_000) == "2021-11-10T10:41:26.095357Z"
    assert protojson_timestamp(base + 95_336_300) == "2021-11-10T10:41:26.095336300Z"


def test_time_formats() -> None:
    ns = parse_rfc3339_ns("2024-01-04T03:05:09.123456789Z")
    assert format_time(ns) == "Jan  4 03:05:09.123"
    assert format_time(ns, "RFC3339") == "2024-01-04T03:05:09Z"
    assert format_time(ns, "RFC3339Milli") == "2024-01-04T03:05:09.123Z"
    assert format_time(ns, "RFC3339Micro") == "2024-01-04T03:05:09.123456Z"
    assert format_time(ns, "RFC3339Nano") == "2024-01-04T03:05:09.123456789Z"
    assert format_time(ns - 123_456_789, "RFC3339Nano") == "2024-01-04T03:05:09Z"
    assert format_time(ns, "YearMonthDay") == "2024-01-04"
    assert format_time(ns, "YearMonthDayHour") == "2024-01-04T03Z"
    assert format_time(ns, "YearMonthDayHourMinute") == "2024-01-04T03:05Z"
    assert format_time(ns, "RFC1123Z") == "Thu, 04 Jan 2024 03:05:09 +0000"
    assert format_time(None) == "N/A"
    with pytest.raises(ValueError, match="time-format"):
        format_time(ns, "Kitchen")
    r = builder().build(syn_egress())
    assert compact(r, time_format="RFC3339Milli").startswith("2024-01-04T13:23:47.852Z: ")
    assert compact(r, print_node_name=True).startswith("Jan  4 13:23:47.852 [apiary-node]: ")


# --- table / dict / lost events ------------------------------------------------------------------


def test_table_format() -> None:
    b = builder()
    rs = [b.build(syn_egress()), b.build(explicit_deny_drop())]
    lines = table(rs).splitlines()
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 3
    col = lines[0].index("SOURCE")
    assert col == len("Jan  4 13:23:47.852") + 3
    assert all(line[col:].startswith("test-namespace/frontend:42818") for line in lines[1:])
    assert lines[2].endswith("Policy denied by denylist   DROPPED     TCP Flags: SYN")
    assert "[" not in lines[2]  # no apiary suffix in the table
    assert table([]) == ""
    assert table(rs, print_node_name=True).splitlines()[0].split()[1] == "NODE"


def test_dict_format() -> None:
    b = builder()
    out = dict_format([b.build(syn_egress()), b.build(default_deny_drop())])
    blocks = out.split("\n------------\n")
    assert len(blocks) == 2
    assert blocks[0].splitlines() == [
        "  TIMESTAMP: Jan  4 13:23:47.852",
        "     SOURCE: test-namespace/frontend:42818",
        "DESTINATION: test-namespace/backend:5678",
        "       TYPE: from-endpoint",
        "    VERDICT: FORWARDED",
        "    SUMMARY: TCP Flags: SYN",
    ]
    assert "       TYPE: Policy denied" in blocks[1]


def test_lost_events_printing() -> None:
    le = lost_events_response("hubble_ring_buffer", 7, "apiary-node", time_ns=parse_rfc3339_ns(T0))
    assert compact(le) == "Jan  4 13:23:47.852 EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 7"
    no_time = {"lost_events": le["lost_events"]}
    assert compact(no_time) == "EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 7"
    assert table([le]).splitlines()[1].split() == ["HUBBLE_RING_BUFFER", "EVENTS", "LOST", "CPU(0)", "-", "7"]
    assert "       TYPE: EVENTS LOST" in dict_format([le])
    assert lost_events_response(1, 3, "n", cpu=2, time_ns=0)["lost_events"] == {
        "source": "PERF_EVENT_RING_BUFFER",
        "num_events_lost": "3",
        "cpu": 2,
    }
    with pytest.raises(ValueError):
        lost_events_response("nowhere", 1, "n")


# --- ring ----------------------------------------------------------------------------------------


def test_ring_basics() -> None:
    ring = FlowRing()
    assert ring.capacity == 4095 and len(ring) == 0 and ring.last(5) == [] and ring.since(0) == ([], 0)
    ring = FlowRing(4)
    for i in range(3):
        assert ring.append(i) == i
    assert ring.last(2) == [1, 2] and ring.last(10) == [0, 1, 2] and ring.first(2) == [0, 1]
    assert ring.since(1) == ([1, 2], 0)
    for i in range(3, 10):
        ring.append(i)
    assert len(ring) == 4 and ring.next_seq == 10 and ring.oldest_seq == 6 and ring.overwritten == 6
    assert ring.last(10) == [6, 7, 8, 9] and ring.first(1) == [6]


def test_ring_lost_counting_for_a_lagging_reader() -> None:
    ring = FlowRing(4)
    cursor = ring.next_seq
    for i in range(3):
        ring.append(i)
    items, lost = ring.since(cursor)
    assert (items, lost) == ([0, 1, 2], 0)
    cursor += lost + len(items)
    for i in range(3, 10):  # 7 new items, only 4 fit
        ring.append(i)
    items, lost = ring.since(cursor)
    assert (items, lost) == ([6, 7, 8, 9], 3)
    cursor += lost + len(items)
    assert ring.since(cursor) == ([], 0)
    assert ring.since(cursor + 5) == ([], 0)
    with pytest.raises(ValueError):
        FlowRing(0)


def test_dict_format_single_response_streaming() -> None:
    b = builder()
    one, two = b.build(syn_egress()), b.build(default_deny_drop())
    streamed = dict_format(one) + "\n" + dict_format(two, leading_separator=True)
    assert streamed == dict_format([one, two])
    assert dict_format([]) == "" and dict_format([], leading_separator=True) == ""


def test_traces_never_carry_policy_lists() -> None:
    # the datapath keeps the deciding rule in conntrack and repeats it on traces; Hubble never shows
    # *_allowed_by / *_denied_by on traces, so neither does apiary
    f = builder().build(msg(rule_id=5))["flow"]
    assert not {"ingress_allowed_by", "egress_allowed_by", "extensions"} & set(f)
    audit = builder().build(msg(verdict=VERDICT_AUDIT, rule_id=3, ct_state=CT_ESTABLISHED))
    f = audit["flow"]
    assert f["verdict"] == "AUDIT" and "ingress_denied_by" not in f and "egress_denied_by" not in f
    assert (
        f["extensions"]["apiary"]["decided_by"]
        == "CiliumNetworkPolicy test-namespace/block-backend-access ingressDeny[0]"
    )
    assert compact(audit).endswith(
        " AUDIT (TCP Flags: SYN) [CiliumNetworkPolicy test-namespace/block-backend-access ingressDeny[0]]"
    )
