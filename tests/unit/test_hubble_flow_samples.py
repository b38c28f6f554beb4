"""Hubble flows against the real Hubble samples: keys, value types, JSON, the compact printer."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
from hubble_flow_helpers import (
    ANSI,
    SAMPLES,
    T0,
    FakeDirectory,
    builder,
    default_deny_drop,
    explicit_deny_drop,
    icmp_echo,
    load_samples,
    msg,
    sample_keys,
    sample_kind,
    syn_ack_reply,
    syn_egress,
    udp_flow,
)

from apiary.observe.clock import KtimeClock, parse_rfc3339_ns
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder, lost_events_response
from apiary.observe.hubble.printers import compact
from apiary.observe.hubble.raw import MSG_DROP, MSG_POLICY_VERDICT, VERDICT_DROPPED

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
