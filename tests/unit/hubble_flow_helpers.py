"""Shared by the test_hubble_flow_* files: a fake endpoint directory, a FlowBuilder on a fixed clock, flow
messages, and the real Hubble samples of the conformance set."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from apiary.observe.clock import KtimeClock, parse_rfc3339_ns
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder
from apiary.observe.hubble.raw import (
    CT_NEW,
    CT_REPLY,
    MSG_DROP,
    MSG_TRACE,
    TCP_ACK,
    TCP_SYN,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
    FlowMsg,
)
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
