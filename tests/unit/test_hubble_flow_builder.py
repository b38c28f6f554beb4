"""Hubble flows from datapath messages: the enum tables, and the flows FlowBuilder builds."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hubble_flow_helpers import (
    BACKEND_IP,
    CONFORMANCE,
    FRONTEND_IP,
    HOST_IP,
    NS,
    WORLD_IP,
    FakeDirectory,
    SelectingDirectory,
    builder,
    default_deny_drop,
    explicit_deny_drop,
    icmp_echo,
    msg,
    syn_ack_reply,
    syn_egress,
    udp_flow,
)

from apiary.observe.hubble.builder import EndpointDirectory
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
from apiary.observe.hubble.printers import compact
from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_REPLY,
    CT_UNKNOWN,
    MSG_DROP,
    MSG_POLICY_VERDICT,
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
)

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
