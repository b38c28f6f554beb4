"""The flow builder: a datapath ``FlowMsg`` -> a Hubble ``GetFlowsResponse`` dict (``hubble observe -o json``).

How each field is filled, and apiary's ``extensions.apiary.decided_by``, is described in docs/flows.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from apiary.observe.clock import KtimeClock, parse_rfc3339_ns
from apiary.observe.hubble.enums import (
    AUDIT,
    CT_TRACE_REASON,
    DIRECTION_EGRESS,
    DIRECTION_INGRESS,
    DIRECTION_UNKNOWN,
    DROP_POLICY_DENIED,
    DROP_POLICY_DENY,
    DROPPED,
    FORWARDED,
    LOST_EVENT_SOURCE,
    POLICY_DROP_CODES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    REDIRECTED,
    RESERVED_IDENTITIES,
    TCP_FLAG_BITS,
    TRACE_OBSERVATION_POINT,
    TRACE_REASON,
    TRAFFIC_DIRECTION,
    VERDICT,
    drop_reason_desc,
    enum_json,
    fmt_identity,
    icmpv4_type_code,
    icmpv6_type_code,
    observation_point,
    tcp_flags_summary,
)
from apiary.observe.hubble.l7 import (
    MSG_ACCESS_LOG,
    DnsExchange,
    ExchangeSource,
    HttpExchange,
    dns_json,
    dns_summary,
    http_json,
    summary,
)
from apiary.observe.hubble.raw import CT_REPLY, MSG_DROP, MSG_POLICY_VERDICT, MSG_TRACE, FlowMsg
from apiary.observe.hubble.services import ServiceLookup
from apiary.policy.types import RuleRef

_ts_sec = -1
_ts_base = ""


def protojson_timestamp(ns: int) -> str:
    """Unix ns -> RFC 3339 UTC the way protojson writes a Timestamp (0, 3, 6 or 9 fractional digits)."""
    global _ts_sec, _ts_base
    sec, frac = divmod(ns, 1_000_000_000)
    if sec != _ts_sec:  # flows come in bursts within one second: format the date part once
        _ts_base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_sec = sec
    base = _ts_base
    if frac == 0:
        return base + "Z"
    if frac % 1_000_000 == 0:
        return f"{base}.{frac // 1_000_000:03d}Z"
    if frac % 1_000 == 0:
        return f"{base}.{frac // 1_000:06d}Z"
    return f"{base}.{frac:09d}Z"



# --- endpoint directory --------------------------------------------------------------------------


@dataclass(slots=True)
class EndpointInfo:
    """A local endpoint as flows show it."""

    ep_id: int
    name: str  # pod_name
    namespace: str
    labels: list[str] = field(default_factory=list)  # ``k8s:key=value`` form
    identity: int = 0
    ipv4: str = ""


@runtime_checkable
class EndpointDirectory(Protocol):
    """What :class:`FlowBuilder` asks the agent. All look-ups must be cheap and must not block.

    Optional extra methods (looked up with ``getattr``): ``selecting_policies(ep_id: int, egress: bool) ->
    list[str]`` — the policies (``namespace/name`` or ``name``) whose rules select the endpoint in that
    direction; used to explain default-deny drops. ``names_of(ip: str) -> list[str]`` — the DNS names
    learned for an address (flow ``source_names``/``destination_names``, without the trailing dot).
    """

    def endpoint(self, ep_id: int) -> EndpointInfo | None: ...

    def endpoint_by_ip(self, ip: str) -> EndpointInfo | None: ...

    def identity_labels(self, identity: int) -> list[str]: ...

    def rule(self, rule_id: int) -> RuleRef | None: ...

    def ifname(self, ifindex: int) -> str | None: ...


class WallClock(Protocol):
    def wall_ns(self, ktime: int) -> int: ...


def policy_json(rule: RuleRef) -> dict[str, Any]:
    """flow.Policy for a RuleRef (``revision`` is uint64 -> string; zero values omitted)."""
    labels = list(rule.labels)
    if not labels:
        labels = [f"k8s:io.cilium.k8s.policy.derived-from={rule.kind}", f"k8s:io.cilium.k8s.policy.name={rule.policy}"]
        if rule.namespace:
            labels.append(f"k8s:io.cilium.k8s.policy.namespace={rule.namespace}")
    d: dict[str, Any] = {}
    if rule.policy:
        d["name"] = rule.policy
    if rule.namespace:
        d["namespace"] = rule.namespace
    d["labels"] = labels
    if rule.revision:
        d["revision"] = str(rule.revision)
    if rule.kind:
        d["kind"] = rule.kind
    return d


def rule_text(rule: RuleRef) -> str:
    """``CiliumNetworkPolicy test-namespace/block-backend-access ingressDeny[0]``."""
    name = f"{rule.namespace}/{rule.policy}" if rule.namespace else rule.policy
    return " ".join(p for p in (rule.kind, name, rule.section) if p)


def _l4_target(proto: int, dport: int, sport: int) -> str:
    """What the policy was asked about: ``5678/TCP``, ``ICMPv4 type 8``, ``proto 47``."""
    if proto == PROTO_TCP:
        return f"{dport}/TCP"
    if proto == PROTO_UDP:
        return f"{dport}/UDP"
    if proto == PROTO_SCTP:
        return f"{dport}/SCTP"
    if proto == PROTO_ICMP:
        return f"ICMPv4 type {sport}"
    if proto == PROTO_ICMPV6:
        return f"ICMPv6 type {sport}"
    return f"proto {proto}"


_PORT_PROTOCOLS = {PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_SCTP: "SCTP"}


def _add_services(flow: dict[str, Any], lookup: ServiceLookup | None, src: str, sport: int, dst: str, dport: int,
                  proto: str) -> None:
    """``source_service`` / ``destination_service``: Hubble asks its service getter about each end's IP:port
    (docs/flows.md, "Services"); a look-up that fails leaves both out, never breaking the flow."""
    if lookup is None:
        return
    try:
        src_svc = lookup.service_of(src, sport, proto) if src else None
        dst_svc = lookup.service_of(dst, dport, proto) if dst else None
    except Exception:  # a look-up must never break flow decoding
        return
    if src_svc:
        flow["source_service"] = _service_json(src_svc)
    if dst_svc:
        flow["destination_service"] = _service_json(dst_svc)


def _service_json(found: tuple[str, str]) -> dict[str, str]:
    """flow.Service ``{name, namespace}`` (empty strings omitted, as protojson does)."""
    ns, name = found
    d: dict[str, str] = {}
    if name:
        d["name"] = name
    if ns:
        d["namespace"] = ns
    return d


# --- flow builder --------------------------------------------------------------------------------


def flow_time_ns(resp: dict[str, Any]) -> int:
    """A ``GetFlowsResponse``'s time in Unix ns (0 when it has none)."""
    try:
        return parse_rfc3339_ns(resp.get("time") or (resp.get("flow") or {}).get("time") or "")
    except ValueError:
        return 0


class FlowBuilder:
    """Turns decoded datapath messages into Hubble ``GetFlowsResponse`` dicts (see the module docstring)."""

    def __init__(
        self,
        node_name: str,
        directory: EndpointDirectory,
        clock: WallClock | None = None,
        services: ServiceLookup | None = None,
    ) -> None:
        self.node_name = node_name
        self.directory = directory
        self.clock: WallClock = clock if clock is not None else KtimeClock()
        # source_service / destination_service; None: the fields stay absent. May be set at any time.
        self.services: ServiceLookup | None = services

    # -- pieces

    def _endpoint(self, ip: str, identity: int) -> dict[str, Any]:
        ep = self.directory.endpoint_by_ip(ip) if ip else None
        d: dict[str, Any] = {}
        if ep is not None:
            ident = identity or ep.identity
            if ep.ep_id:
                d["ID"] = ep.ep_id
            if ident:
                d["identity"] = ident
            if ep.namespace:
                d["namespace"] = ep.namespace
            if ep.labels:
                d["labels"] = sorted(ep.labels)
            if ep.name:
                d["pod_name"] = ep.name
            return d
        if identity:
            d["identity"] = identity
            labels = list(self.directory.identity_labels(identity))
            if not labels and identity in RESERVED_IDENTITIES:
                labels = [f"reserved:{RESERVED_IDENTITIES[identity]}"]
            if labels:
                d["labels"] = sorted(labels)
        return d

    @staticmethod
    def _l4(msg: FlowMsg) -> dict[str, Any] | None:
        p = msg.proto
        if p in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            ports: dict[str, Any] = {}
            if msg.sport:
                ports["source_port"] = msg.sport
            if msg.dport:
                ports["destination_port"] = msg.dport
            if p == PROTO_TCP:
                ports["flags"] = {n: True for n, bit in TCP_FLAG_BITS.items() if msg.tcp_flags & bit}
                return {"TCP": ports}
            return {"UDP": ports} if p == PROTO_UDP else {"SCTP": ports}
        if p in (PROTO_ICMP, PROTO_ICMPV6):
            icmp: dict[str, Any] = {}
            if msg.sport:
                icmp["type"] = msg.sport
            if msg.dport:
                icmp["code"] = msg.dport
            return {"ICMPv4": icmp} if p == PROTO_ICMP else {"ICMPv6": icmp}
        return None

    @staticmethod
    def summary(msg: FlowMsg, ipv6: bool = False) -> str:
        p = msg.proto
        if p == PROTO_TCP:
            return tcp_flags_summary(msg.tcp_flags)
        if p == PROTO_UDP:
            return "UDP"
        if p == PROTO_SCTP:
            return "SCTP"
        if p == PROTO_ICMP:
            return "ICMPv4 " + icmpv4_type_code(msg.sport, msg.dport)
        if p == PROTO_ICMPV6:
            return "ICMPv6 " + icmpv6_type_code(msg.sport, msg.dport)
        return "IPv6" if ipv6 else "IPv4"

    def _selecting_policies(self, ep_id: int, egress: bool) -> list[str]:
        fn = getattr(self.directory, "selecting_policies", None)
        if fn is None:
            return []
        try:
            return [str(p) for p in fn(ep_id, egress) or ()]
        except Exception:  # an explanation must never break flow decoding
            return []

    def _default_deny_text(self, msg: FlowMsg, remote_identity: int) -> str:
        direction = "egress" if msg.egress else "ingress"
        ep = self.directory.endpoint(msg.ep_id)
        who = (f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name) if ep is not None else f"endpoint {msg.ep_id}"
        target = f"{fmt_identity(remote_identity)}->{_l4_target(msg.proto, msg.dport, msg.sport)}"
        policies = self._selecting_policies(msg.ep_id, msg.egress)
        if policies:
            word = "policy" if len(policies) == 1 else "policies"
            return (
                f"default deny: {direction} of {who} is selected by {word} {', '.join(policies)} "
                f"and no rule allows {target}"
            )
        return f"default deny: {direction} of {who} is enforced and no rule allows {target}"

    # -- the record

    def defer(self, msg: FlowMsg) -> dict[str, Any] | DeferredFlow:
        """:meth:`build`, or, for a forwarded trace (most flows: a connection's packets), what builds it on first
        read. The directory and the service table are kept as they are now: the agent replaces them whole on
        every change (never edits them), so the flow reads as if it had been built now."""
        if msg.kind == MSG_TRACE and msg.verdict != AUDIT:
            return DeferredFlow(self, msg, self.clock.wall_ns(msg.ktime))
        return self.build(msg)

    def add_names(self, flow: dict[str, Any], src_ip: str, dst_ip: str) -> None:
        """``source_names``/``destination_names``: the toFQDNs names the DNS proxy learned for each address."""
        names_of = getattr(self.directory, "names_of", None)
        if names_of is not None:
            for side, addr in (("source_names", src_ip), ("destination_names", dst_ip)):
                if addr and (names := names_of(addr)):
                    flow[side] = names

    def build(self, msg: FlowMsg, wall_ns: int | None = None) -> dict[str, Any]:
        """One ``GetFlowsResponse`` dict for a datapath message."""
        ts = protojson_timestamp(self.clock.wall_ns(msg.ktime) if wall_ns is None else wall_ns)
        kind = msg.kind
        if kind == MSG_DROP:
            verdict = DROPPED
        elif kind == MSG_POLICY_VERDICT:
            verdict = msg.verdict or FORWARDED
        else:
            verdict = AUDIT if msg.verdict == AUDIT else FORWARDED

        drop_code = 0
        if kind == MSG_DROP:
            drop_code = msg.sub_type
        elif kind == MSG_POLICY_VERDICT and verdict == DROPPED:
            drop_code = msg.sub_type or (DROP_POLICY_DENY if msg.rule_id else DROP_POLICY_DENIED)

        ipv6 = ":" in msg.src_ip or ":" in msg.dst_ip
        src = self._endpoint(msg.src_ip, msg.src_identity)
        dst = self._endpoint(msg.dst_ip, msg.dst_identity)

        # reply / direction / trace reason (FORMATS 1.5)
        is_reply: bool | None = None
        direction = DIRECTION_UNKNOWN
        trace_reason = 0
        if kind == MSG_TRACE:
            trace_reason = CT_TRACE_REASON.get(msg.ct_state, 0)
            if trace_reason:
                is_reply = msg.ct_state == CT_REPLY
                direction = DIRECTION_EGRESS if msg.egress != is_reply else DIRECTION_INGRESS
        elif kind == MSG_DROP:
            direction = DIRECTION_EGRESS if msg.egress else DIRECTION_INGRESS
        elif kind == MSG_POLICY_VERDICT:
            direction = DIRECTION_EGRESS if msg.egress else DIRECTION_INGRESS
            if verdict != DROPPED:
                is_reply = False

        flow: dict[str, Any] = {"time": ts, "verdict": enum_json(verdict, VERDICT)}
        if drop_code:
            flow["drop_reason"] = drop_code
        ip: dict[str, Any] = {}
        if msg.src_ip:
            ip["source"] = msg.src_ip
        if msg.dst_ip:
            ip["destination"] = msg.dst_ip
        ip["ipVersion"] = "IPv6" if ipv6 else "IPv4"
        flow["IP"] = ip
        l4 = self._l4(msg)
        if l4 is not None:
            flow["l4"] = l4
        flow["source"] = src
        flow["destination"] = dst
        flow["Type"] = "L3_L4"
        if self.node_name:
            flow["node_name"] = self.node_name
        self.add_names(flow, msg.src_ip, msg.dst_ip)
        if is_reply:
            flow["reply"] = True
        event_type: dict[str, Any] = {"type": kind}
        sub = drop_code if kind == MSG_DROP else (msg.sub_type if kind == MSG_TRACE else 0)
        if sub:
            event_type["sub_type"] = sub
        flow["event_type"] = event_type
        if msg.proto in _PORT_PROTOCOLS:
            _add_services(flow, self.services, msg.src_ip, msg.sport, msg.dst_ip, msg.dport, _PORT_PROTOCOLS[msg.proto])
        if direction:
            flow["traffic_direction"] = TRAFFIC_DIRECTION[direction]
        if kind == MSG_POLICY_VERDICT and msg.match_type:
            flow["policy_match_type"] = msg.match_type
        if kind == MSG_TRACE:
            flow["trace_observation_point"] = enum_json(observation_point(msg.sub_type), TRACE_OBSERVATION_POINT)
            if trace_reason:
                flow["trace_reason"] = TRACE_REASON[trace_reason]
        if drop_code:
            flow["drop_reason_desc"] = drop_reason_desc(drop_code)
        if is_reply is not None:
            flow["is_reply"] = is_reply
        if msg.ifindex and kind in (MSG_DROP, MSG_TRACE):
            iface: dict[str, Any] = {"index": msg.ifindex}
            name = self.directory.ifname(msg.ifindex)
            if name:
                iface["name"] = name
            flow["interface"] = iface
        flow["Summary"] = self.summary(msg, ipv6)

        # attribution: *_allowed_by / *_denied_by and apiary's decided_by
        rule = self.directory.rule(msg.rule_id) if msg.rule_id else None
        side = "egress" if msg.egress else "ingress"
        by_key = ""
        if rule is not None and kind in (MSG_POLICY_VERDICT, MSG_DROP):
            if verdict in (FORWARDED, REDIRECTED):
                by_key = f"{side}_allowed_by"
            elif verdict in (DROPPED, AUDIT):
                by_key = f"{side}_denied_by"
        policy_decided = verdict == AUDIT or (
            verdict == DROPPED and (drop_code in POLICY_DROP_CODES or kind == MSG_POLICY_VERDICT)
        )
        if policy_decided:
            if rule is not None:
                decided = rule_text(rule)
            elif msg.rule_id:
                decided = f"rule #{msg.rule_id} (no longer in the policy repository)"
            elif drop_code == DROP_POLICY_DENY:
                decided = "explicit deny (rule not identified)"
            else:
                remote = dst if msg.egress else src
                decided = self._default_deny_text(msg, int(remote.get("identity", 0)))
            flow["extensions"] = {"apiary": {"decided_by": decided}}
        if by_key and rule is not None:
            flow[by_key] = [policy_json(rule)]

        return {"flow": flow, "node_name": self.node_name, "time": ts}


class _Snapshot:
    """A flow built on first read (the event bus's ``Deferred``), from the builder's directory and service table
    as they were when its event was read: the agent replaces them whole on every change (never edits them), so
    the flow reads as if it had been built then. Subclasses build the dict with a builder of then."""

    __slots__ = ("builder", "directory", "services", "built")

    def __init__(self, builder: FlowBuilder) -> None:
        self.builder, self.directory, self.services = builder, builder.directory, builder.services
        self.built: dict[str, Any] | None = None

    def materialize(self) -> dict[str, Any]:
        if self.built is None:
            b = self.builder  # the same node and clock; the directory and services of then
            self.built = self._build(FlowBuilder(b.node_name, self.directory, b.clock, self.services))
        return self.built

    def _build(self, then: FlowBuilder) -> dict[str, Any]:
        raise NotImplementedError


class DeferredFlow(_Snapshot):
    """A flow of :meth:`FlowBuilder.defer`: the message, built on first read. Building the dict was most of the
    agent's work per packet reported, and most flows are never read."""

    __slots__ = ("msg", "wall_ns")

    def __init__(self, builder: FlowBuilder, msg: FlowMsg, wall_ns: int) -> None:
        super().__init__(builder)
        self.msg, self.wall_ns = msg, wall_ns

    def _build(self, then: FlowBuilder) -> dict[str, Any]:
        return then.build(self.msg, self.wall_ns)


def l7_response(builder: FlowBuilder, x: HttpExchange, response: bool) -> dict[str, Any]:
    """The ``GetFlowsResponse`` of one side of a proxied HTTP exchange (see :mod:`.l7`)."""
    return _l7_flow(builder, x, "TCP", x.ingress, response, "http", http_json(x, response), summary(x, response),
                    x.client_identity, x.server_identity)


def l7_http_responses(builder: FlowBuilder, x: HttpExchange) -> tuple[dict[str, Any], ...]:
    """The REQUEST flow of a proxied HTTP exchange and, when it was let through, its RESPONSE flow: the dicts
    :func:`l7_response` gives for each side."""
    return tuple(f.materialize() for f in l7_http_deferred(builder, x))


class L7HttpFlow(_Snapshot):
    """One flow of :func:`l7_http_responses`, built on first read: a proxy at full speed logs thousands of
    requests a second that nobody may read, and building the exchange and its two dicts was most of the agent's
    work per request."""

    __slots__ = ("source", "response")

    def __init__(self, builder: FlowBuilder, source: ExchangeSource, response: bool) -> None:
        super().__init__(builder)
        self.source, self.response = source, response

    def _build(self, then: FlowBuilder) -> dict[str, Any]:
        return l7_response(then, self.source.exchange(), self.response)


def l7_http_deferred(builder: FlowBuilder, source: ExchangeSource) -> tuple[L7HttpFlow, ...]:
    """:func:`l7_http_responses`, each flow built when first read."""
    req = L7HttpFlow(builder, source, False)
    if not source.allowed:
        return (req,)
    return req, L7HttpFlow(builder, source, True)


def dns_response(builder: FlowBuilder, x: DnsExchange, response: bool, client_identity: int,
                 server_identity: int) -> dict[str, Any]:
    """The ``GetFlowsResponse`` of a query (or its answer) through the DNS proxy (see :mod:`.l7`)."""
    return _l7_flow(builder, x, x.transport, False, response, "dns", dns_json(x, response),
                    dns_summary(x, response), client_identity, server_identity)


class L7DnsFlow(_Snapshot):
    """One flow of a query through the DNS proxy (:func:`l7_dns_deferred`), built on first read: the proxy
    answers thousands of queries a second that nobody may read. The two ends' identities are the ones of when
    the query was seen."""

    __slots__ = ("x", "client_identity", "server_identity", "response")

    def __init__(self, builder: FlowBuilder, x: DnsExchange, client_identity: int, server_identity: int,
                 response: bool) -> None:
        super().__init__(builder)
        self.x, self.response = x, response
        self.client_identity, self.server_identity = client_identity, server_identity

    def _build(self, then: FlowBuilder) -> dict[str, Any]:
        return dns_response(then, self.x, self.response, self.client_identity, self.server_identity)


def l7_dns_deferred(builder: FlowBuilder, x: DnsExchange, client_identity: int,
                    server_identity: int) -> tuple[L7DnsFlow, ...]:
    """The REQUEST flow of a query through the DNS proxy and, when it was let through, its RESPONSE flow (the
    dicts :func:`dns_response` gives), each built when first read."""
    req = L7DnsFlow(builder, x, client_identity, server_identity, False)
    if not x.allowed:
        return (req,)
    return req, L7DnsFlow(builder, x, client_identity, server_identity, True)


def _l7_flow(builder: FlowBuilder, x: HttpExchange | DnsExchange, transport: str, ingress: bool, response: bool,
             kind: str, body: dict[str, Any], text: str, client_identity: int,
             server_identity: int) -> dict[str, Any]:
    ts = protojson_timestamp(x.time_ns + (x.latency_ns if response else 0))
    client = builder._endpoint(x.client, client_identity)
    server = builder._endpoint(x.server, server_identity)
    src, dst = (server, client) if response else (client, server)
    sip, dip = (x.server, x.client) if response else (x.client, x.server)
    sport, dport = (x.server_port, x.client_port) if response else (x.client_port, x.server_port)
    verdict = FORWARDED if x.allowed else DROPPED
    flow: dict[str, Any] = {"time": ts, "verdict": enum_json(verdict, VERDICT)}
    flow["IP"] = {"source": sip, "destination": dip, "ipVersion": "IPv4"}
    flow["l4"] = {transport: {"source_port": sport, "destination_port": dport}}
    flow["source"] = src
    flow["destination"] = dst
    flow["Type"] = "L7"
    if builder.node_name:
        flow["node_name"] = builder.node_name
    builder.add_names(flow, sip, dip)  # as Hubble's L7 parser adds them
    if response:
        flow["reply"] = True
    l7: dict[str, Any] = {"type": "RESPONSE" if response else "REQUEST"}
    if response and x.latency_ns:
        l7["latency_ns"] = str(x.latency_ns)
    l7[kind] = body
    flow["l7"] = l7
    flow["event_type"] = {"type": MSG_ACCESS_LOG}
    _add_services(flow, builder.services, sip, sport, dip, dport, transport)  # as L3/L4 flows (a VIP's backend)
    flow["traffic_direction"] = TRAFFIC_DIRECTION[DIRECTION_INGRESS if ingress else DIRECTION_EGRESS]
    flow["is_reply"] = response
    flow["Summary"] = text
    if x.decided_by:
        flow["extensions"] = {"apiary": {"decided_by": x.decided_by}}
    return {"flow": flow, "node_name": builder.node_name, "time": ts}


def lost_events_response(
    source: str | int,
    count: int,
    node: str,
    cpu: int = 0,
    time_ns: int | None = None,
    first_ns: int | None = None,
    last_ns: int | None = None,
) -> dict[str, Any]:
    """A ``GetFlowsResponse`` with ``lost_events`` (LostEvent: ``source`` enum, ``num_events_lost`` uint64
    as a string, ``cpu`` an Int32Value printed even when 0; optional ``first``/``last`` timestamps)."""
    if isinstance(source, int):
        src: str | int = enum_json(source, LOST_EVENT_SOURCE)
    else:
        src = source.upper()
        if src not in LOST_EVENT_SOURCE.values():
            raise ValueError(f"unknown lost event source {source!r}")
    body: dict[str, Any] = {"source": src}
    if count:
        body["num_events_lost"] = str(count)
    body["cpu"] = cpu
    if first_ns is not None:
        body["first"] = protojson_timestamp(first_ns)
    if last_ns is not None:
        body["last"] = protojson_timestamp(last_ns)
    if time_ns is None:
        time_ns = time.time_ns()
    return {"lost_events": body, "node_name": node, "time": protojson_timestamp(time_ns)}

