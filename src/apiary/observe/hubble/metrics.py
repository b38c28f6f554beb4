"""Hubble's flow metrics (FORMATS.md §5.1) for apiary's flows, on a caller-provided registry.

Names, label names and label values are Hubble's (``pkg/hubble/metrics/{flow,drop,policy}``):

* ``hubble_flows_processed_total{protocol,type,subtype,verdict}`` — every flow; ``type`` is ``Trace``,
  ``Drop``, ``PolicyVerdict``, ``Capture``, ``L7`` or ``Unknown``; ``subtype`` the trace point name
  (``to-endpoint`` ...) for traces, ``DNS``/``HTTP``/``Kafka`` for L7, the type number for unknown types,
  else empty; ``verdict`` the enum name; ``protocol`` as Hubble's ``FlowProtocol`` (``TCP``, ``UDP``,
  ``ICMPv4`` ..., ``Unknown L4``, ``Unknown L7``, ``Unknown flow``).
* ``hubble_drop_total{reason,protocol}`` — flows with verdict DROPPED; ``reason`` is the
  ``drop_reason_desc`` enum name (``POLICY_DENIED``, ``POLICY_DENY`` ...).
* ``hubble_policy_verdicts_total{direction,match,action}`` — policy-verdict events whose source is not the
  host (identity 1): ``direction`` ``ingress``/``egress``, ``match`` the lower-cased match type
  (``l3-l4``, ``l4-only``, ``none`` ...), ``action`` the lower-cased verdict (``forwarded``, ``dropped``,
  ``audit``, ``redirected``).
* ``hubble_lost_events_total{source}`` — ``perf_event_ring_buffer``, ``observer_events_queue`` or
  ``hubble_ring_buffer``.

No context labels (``sourceContext`` ...) are added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from apiary.observe.hubble.enums import (
    LOST_EVENT_SOURCE,
    MSG_ACCESS_LOG,
    MSG_CAPTURE,
    POLICY_MATCH_TYPES,
    TRACE_POINT_NAMES,
)
from apiary.observe.hubble.raw import MSG_DROP, MSG_POLICY_VERDICT, MSG_TRACE

_L4_PROTOCOLS = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP")


def flow_protocol(flow: Mapping[str, Any]) -> str:
    """Hubble's ``v1.FlowProtocol``."""
    t = int((flow.get("event_type") or {}).get("type", 0))
    if t == MSG_ACCESS_LOG:
        l7 = flow.get("l7")
        if isinstance(l7, dict):
            for key, name in (("dns", "DNS"), ("http", "HTTP"), ("kafka", "Kafka")):
                if key in l7:
                    return name
        return "Unknown L7"
    if t in (MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_CAPTURE):
        l4 = flow.get("l4")
        if isinstance(l4, dict):
            for name in _L4_PROTOCOLS:
                if name in l4:
                    return name
        return "Unknown L4"
    return "Unknown flow"


def flow_type_labels(flow: Mapping[str, Any]) -> tuple[str, str]:
    """(type, subtype) labels of ``hubble_flows_processed_total``."""
    et = flow.get("event_type") or {}
    t, sub = int(et.get("type", 0)), int(et.get("sub_type", 0))
    if t == MSG_ACCESS_LOG:
        l7 = flow.get("l7")
        l7 = l7 if isinstance(l7, dict) else {}
        subtype = next((n for k, n in (("dns", "DNS"), ("http", "HTTP"), ("kafka", "Kafka")) if k in l7), "")
        return "L7", subtype
    if t == MSG_DROP:
        return "Drop", ""
    if t == MSG_CAPTURE:
        return "Capture", ""
    if t == MSG_TRACE:
        return "Trace", TRACE_POINT_NAMES.get(sub & 0xFF, "")
    if t == MSG_POLICY_VERDICT:
        return "PolicyVerdict", ""
    return "Unknown", str(t)


class FlowMetrics:
    """Counters on ``registry`` (never the global one); feed every response to :meth:`observe`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.flows_processed = Counter(
            "flows_processed_total",
            "Total number of flows processed",
            ["protocol", "type", "subtype", "verdict"],
            namespace="hubble",
            registry=registry,
        )
        self.drops = Counter(
            "drop_total", "Number of drops", ["reason", "protocol"], namespace="hubble", registry=registry
        )
        self.policy_verdicts = Counter(
            "policy_verdicts_total",
            "Total number of Cilium network policy verdicts",
            ["direction", "match", "action"],
            namespace="hubble",
            registry=registry,
        )
        self.lost_events = Counter(
            "lost_events_total", "Number of lost events", ["source"], namespace="hubble", registry=registry
        )

    def lost(self, source: str | int, count: int) -> None:
        """Count ``count`` lost events from a LostEventSource (name or number)."""
        name = LOST_EVENT_SOURCE.get(source, str(source)) if isinstance(source, int) else source
        if count > 0:
            self.lost_events.labels(source=name.lower()).inc(count)

    def observe(self, resp: Mapping[str, Any]) -> None:
        """Account one ``GetFlowsResponse`` dict (a flow or a ``lost_events`` notice)."""
        le = resp.get("lost_events")
        if isinstance(le, dict):
            self.lost(str(le.get("source", "UNKNOWN_LOST_EVENT_SOURCE")), int(le.get("num_events_lost", 0)))
            return
        flow = resp.get("flow")
        if not isinstance(flow, dict):
            return
        protocol = flow_protocol(flow)
        verdict = str(flow.get("verdict", "VERDICT_UNKNOWN"))
        typ, subtype = flow_type_labels(flow)
        self.flows_processed.labels(protocol=protocol, type=typ, subtype=subtype, verdict=verdict).inc()
        if verdict == "DROPPED":
            reason = str(flow.get("drop_reason_desc", "DROP_REASON_UNKNOWN"))
            self.drops.labels(reason=reason, protocol=protocol).inc()
        if typ == "PolicyVerdict" and int((flow.get("source") or {}).get("identity", 0)) != 1:
            direction = str(flow.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN")).lower()
            match = POLICY_MATCH_TYPES.get(int(flow.get("policy_match_type", 0)), "unknown").lower()
            self.policy_verdicts.labels(direction=direction, match=match, action=verdict.lower()).inc()
