"""Hubble flows: datapath ``FlowMsg`` -> ``GetFlowsResponse`` dicts, Hubble's text printers, the flow ring.

JSON shape (what ``hubble observe -o json`` prints, FORMATS.md §1.1-1.5)
--------------------------------------------------------------------------
:meth:`FlowBuilder.build` returns the observer wrapper ``{"flow": {...}, "node_name": ..., "time": ...}``
encoded the way protojson encodes it with ``UseProtoNames``: keys are the .proto field names verbatim
(``IP``, ``l4``, ``Type``, ``Summary``, ``ID``, ``TCP``, ``ICMPv4``, ``ipVersion`` ...), keys appear in
the .proto declaration order, enums are printed as their names (an enum number without a name prints as
a number, e.g. drop reason 206), scalars equal to their zero value are omitted, ``uint64`` values are JSON
strings (``Policy.revision``, ``LostEvent.num_events_lost``), wrapper types (``is_reply``, lost-event
``cpu``) are printed whenever set, even when false/0, and timestamps are RFC 3339 UTC with 0, 3, 6 or 9
fractional digits.

How a :class:`~apiary.observe.hubble.raw.FlowMsg` fills a flow (mirrors Cilium's L3/L4 parser):

* ``Type`` is always ``L3_L4``; ``verdict`` is ``DROPPED`` for drop events, the message's verdict for
  policy-verdict events (``FORWARDED``/``DROPPED``/``AUDIT``/``REDIRECTED``) and ``FORWARDED`` for traces
  (unless the datapath marked the trace ``AUDIT``).
* ``drop_reason`` / ``drop_reason_desc`` / ``event_type.sub_type`` of a drop are ``msg.sub_type`` (Cilium's
  drop code: 133 ``POLICY_DENIED`` for default deny, 181 ``POLICY_DENY`` for an explicit deny rule). For a
  denied policy verdict ``msg.sub_type`` carries the drop code (when 0: 181 if ``rule_id`` names a rule,
  else 133) and ``event_type`` stays ``{"type": 5}`` as in Cilium.
* ``trace_observation_point`` is the datapath point with 0 rewritten to ``TO_ENDPOINT`` (101);
  ``event_type.sub_type`` of a trace keeps the datapath number (so ``to-endpoint`` prints ``{"type": 4}``).
* ``trace_reason`` / ``is_reply`` / ``traffic_direction`` follow FORMATS §1.5. ``msg.egress`` ("the
  endpoint whose program saw the packet is sending it") is exactly Cilium's "the emitting endpoint is the
  packet's source", so: drops -> ``EGRESS`` if ``msg.egress`` else ``INGRESS``; traces with a known CT
  state -> ``EGRESS`` iff ``msg.egress`` XOR reply; policy verdicts -> the direction flag; ``is_reply`` is
  absent for drops, denied policy verdicts and traces with an unknown CT state.
* ``source`` / ``destination`` are resolved through :class:`EndpointDirectory`: a local endpoint gives
  ``{ID, identity, namespace, labels, pod_name}``, any other peer ``{identity, labels}`` from the
  identity's label set (``reserved:<name>`` for reserved identities when the directory has none).
* ``interface`` (``{index, name}``) is set for drops and traces whose ``ifindex`` is non-zero;
  ``policy_match_type`` (a plain number, as in the samples) only for policy verdicts.
* ``*_allowed_by`` / ``*_denied_by`` hold the ``Policy{name, namespace, labels, revision, kind}`` of the
  rule ``msg.rule_id`` names (direction from ``msg.egress``): ``*_allowed_by`` for FORWARDED/REDIRECTED,
  ``*_denied_by`` for DROPPED/AUDIT, on policy-verdict and drop events only (never on traces). Hubble
  fills them only on policy verdicts; apiary also fills them on drops so an explicit-deny drop names its
  policy. When the ``RuleRef`` has no labels, Cilium's policy
  labels (``k8s:io.cilium.k8s.policy.derived-from=…``, ``…name=…``, ``…namespace=…``) are synthesised.

apiary extension: ``extensions.apiary.decided_by``
--------------------------------------------------
Every policy DROPPED flow (drop codes 133/181 or a denied policy verdict) and every AUDIT flow carries
``{"extensions": {"apiary": {"decided_by": "<text>"}}}`` (Hubble's Flow reserves field 150000
``extensions`` for such additions; ``Summary`` stays Hubble-exact). The text is one of:

* ``CiliumNetworkPolicy test-namespace/block-backend-access ingressDeny[0]`` — the rule ``rule_id``
  names (``<kind> [<namespace>/]<name> <section>``);
* ``default deny: ingress of test-namespace/backend is selected by policy test-namespace/allow-x and no
  rule allows (ID:256)->5678/TCP`` — ``rule_id`` 0: the direction's default deny. The policy names come
  from the directory's optional ``selecting_policies(ep_id, egress)``; without it (or when it returns
  nothing, e.g. enforcement mode ``always``) the text says ``... is enforced and no rule allows ...``;
* ``rule #<n> (no longer in the policy repository)`` / ``explicit deny (rule not identified)`` when the
  attribution cannot be resolved.

:func:`compact` appends `` [<decided_by>]`` to the Hubble line of such DROPPED/AUDIT flows; :func:`table`
and :func:`dict_format` stay Hubble-exact.

Note for strict protojson readers: Hubble's ``extensions`` is a ``google.protobuf.Any``; apiary writes a
plain object there (no ``@type``), so a protojson decoder must discard or tolerate that field.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from apiary.observe.clock import KtimeClock, parse_rfc3339_ns
from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_NEW,
    CT_RELATED,
    CT_REPLY,
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
    FlowMsg,
)
from apiary.policy.types import RuleRef

# --- enums (flow.proto) --------------------------------------------------------------------------

VERDICT: dict[int, str] = {
    0: "VERDICT_UNKNOWN",
    1: "FORWARDED",
    2: "DROPPED",
    3: "ERROR",
    4: "AUDIT",
    5: "REDIRECTED",
    6: "TRACED",
    7: "TRANSLATED",
}
FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED = 1, 2, 3, 4, 5, 6, 7

FLOW_TYPE: dict[int, str] = {0: "UNKNOWN_TYPE", 1: "L3_L4", 2: "L7", 3: "SOCK"}

TRAFFIC_DIRECTION: dict[int, str] = {0: "TRAFFIC_DIRECTION_UNKNOWN", 1: "INGRESS", 2: "EGRESS"}
DIRECTION_UNKNOWN, DIRECTION_INGRESS, DIRECTION_EGRESS = 0, 1, 2

TRACE_OBSERVATION_POINT: dict[int, str] = {
    0: "UNKNOWN_POINT",
    1: "TO_PROXY",
    2: "TO_HOST",
    3: "TO_STACK",
    4: "TO_OVERLAY",
    101: "TO_ENDPOINT",
    5: "FROM_ENDPOINT",
    6: "FROM_PROXY",
    7: "FROM_HOST",
    8: "FROM_STACK",
    9: "FROM_OVERLAY",
    10: "FROM_NETWORK",
    11: "TO_NETWORK",
    12: "FROM_CRYPTO",
    13: "TO_CRYPTO",
}
TO_ENDPOINT = 101

# datapath observation point (event_type.sub_type of a trace) -> monitor name (compact TYPE column)
TRACE_POINT_NAMES: dict[int, str] = {
    0: "to-endpoint",
    1: "to-proxy",
    2: "to-host",
    3: "to-stack",
    4: "to-overlay",
    5: "from-endpoint",
    6: "from-proxy",
    7: "from-host",
    8: "from-stack",
    9: "from-overlay",
    10: "from-network",
    11: "to-network",
    12: "from-crypto",
    13: "to-crypto",
}

TRACE_REASON: dict[int, str] = {
    0: "TRACE_REASON_UNKNOWN",
    1: "NEW",
    2: "ESTABLISHED",
    3: "REPLY",
    4: "RELATED",
    5: "REOPENED",
    6: "SRV6_ENCAP",
    7: "SRV6_DECAP",
    8: "ENCRYPT_OVERLAY",
}
# conntrack state of a FlowMsg -> TraceReason number
_CT_TRACE_REASON = {CT_NEW: 1, CT_ESTABLISHED: 2, CT_REPLY: 3, CT_RELATED: 4}

IP_VERSION: dict[int, str] = {0: "IP_NOT_USED", 1: "IPv4", 2: "IPv6"}
AUTH_TYPE: dict[int, str] = {0: "DISABLED", 1: "SPIRE", 2: "TEST_ALWAYS_FAIL"}

LOST_EVENT_SOURCE: dict[int, str] = {
    0: "UNKNOWN_LOST_EVENT_SOURCE",
    1: "PERF_EVENT_RING_BUFFER",
    2: "OBSERVER_EVENTS_QUEUE",
    3: "HUBBLE_RING_BUFFER",
}

# Cilium monitor message types (event_type.type) and their CLI names (``--type``)
MESSAGE_TYPE_NAMES: dict[str, int] = {
    "drop": 1,
    "debug": 2,
    "capture": 3,
    "trace": 4,
    "policy-verdict": 5,
    "recorder": 6,
    "trace-sock": 7,
    "l7": 129,
    "agent": 130,
}
MSG_CAPTURE, MSG_TRACE_SOCK, MSG_ACCESS_LOG = 3, 7, 129

# policy_match_type -> monitor name (compact ``policy-verdict:<name> <DIR>``; lower-cased in metrics)
POLICY_MATCH_TYPES: dict[int, str] = {
    0: "none",
    1: "L3-Only",
    2: "L3-L4",
    3: "L4-Only",
    4: "all",
    5: "L3-Proto",
    6: "Proto-Only",
}

# drop code -> (drop_reason_desc enum name or None when the proto has none, monitor text)  [FORMATS 1.4]
DROP_REASONS: dict[int, tuple[str | None, str]] = {
    0: ("DROP_REASON_UNKNOWN", "Success"),
    130: ("INVALID_SOURCE_MAC", "Invalid source mac"),
    131: ("INVALID_DESTINATION_MAC", "Invalid destination mac"),
    132: ("INVALID_SOURCE_IP", "Invalid source ip"),
    133: ("POLICY_DENIED", "Policy denied"),
    134: ("INVALID_PACKET_DROPPED", "Invalid packet"),
    135: ("CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    136: ("CT_MISSING_TCP_ACK_FLAG", "Fragmentation needed"),
    137: ("CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    138: ("CT_CANNOT_CREATE_ENTRY_FROM_PACKET", "CT: Can't create entry from packet"),
    139: ("UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    140: ("MISSED_TAIL_CALL", "Missed tail call"),
    141: ("ERROR_WRITING_TO_PACKET", "Error writing to packet"),
    142: ("UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    143: ("UNKNOWN_ICMPV4_CODE", "Unknown ICMPv4 code"),
    144: ("UNKNOWN_ICMPV4_TYPE", "Unknown ICMPv4 type"),
    145: ("UNKNOWN_ICMPV6_CODE", "Unknown ICMPv6 code"),
    146: ("UNKNOWN_ICMPV6_TYPE", "Unknown ICMPv6 type"),
    147: ("ERROR_RETRIEVING_TUNNEL_KEY", "Error retrieving tunnel key"),
    148: ("ERROR_RETRIEVING_TUNNEL_OPTIONS", "Error retrieving tunnel options"),
    149: ("INVALID_GENEVE_OPTION", "Invalid Geneve option"),
    150: ("UNKNOWN_L3_TARGET_ADDRESS", "Unknown L3 target address"),
    151: ("STALE_OR_UNROUTABLE_IP", "Stale or unroutable IP"),
    152: ("NO_MATCHING_LOCAL_CONTAINER_FOUND", "No matching local container found"),
    153: ("ERROR_WHILE_CORRECTING_L3_CHECKSUM", "Error while correcting L3 checksum"),
    154: ("ERROR_WHILE_CORRECTING_L4_CHECKSUM", "Error while correcting L4 checksum"),
    155: ("CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    156: ("INVALID_IPV6_EXTENSION_HEADER", "Invalid IPv6 extension header"),
    157: ("IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
    158: ("SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
    160: ("NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
    161: ("FAILED_TO_INSERT_INTO_PROXYMAP", "NAT 46/64 not enabled"),
    162: ("REACHED_EDT_RATE_LIMITING_DROP_HORIZON", "Reached EDT rate-limiting drop horizon"),
    163: ("UNKNOWN_CONNECTION_TRACKING_STATE", "Unknown connection tracking state"),
    164: ("LOCAL_HOST_IS_UNREACHABLE", "Local host is unreachable"),
    165: (
        "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
        "No configuration available to perform policy decision",
    ),
    166: ("UNSUPPORTED_L2_PROTOCOL", "Unsupported L2 protocol"),
    167: ("NO_MAPPING_FOR_NAT_MASQUERADE", "No mapping for NAT masquerade"),
    168: ("UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", "Unsupported protocol for NAT masquerade"),
    169: ("FIB_LOOKUP_FAILED", "FIB lookup failed"),
    170: ("ENCAPSULATION_TRAFFIC_IS_PROHIBITED", "Encapsulation traffic is prohibited"),
    171: ("INVALID_IDENTITY", "Invalid identity"),
    172: ("UNKNOWN_SENDER", "Unknown sender"),
    173: ("NAT_NOT_NEEDED", "NAT not needed"),
    174: ("IS_A_CLUSTERIP", "Is a ClusterIP"),
    175: ("FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", "First logical datagram fragment not found"),
    176: ("FORBIDDEN_ICMPV6_MESSAGE", "Forbidden ICMPv6 message"),
    177: ("DENIED_BY_LB_SRC_RANGE_CHECK", "Denied by LB src range check"),
    178: ("SOCKET_LOOKUP_FAILED", "Socket lookup failed"),
    179: ("SOCKET_ASSIGN_FAILED", "Socket assign failed"),
    180: ("PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "Proxy redirection not supported for protocol"),
    181: ("POLICY_DENY", "Policy denied by denylist"),
    182: ("VLAN_FILTERED", "VLAN traffic disallowed by VLAN filter"),
    183: ("INVALID_VNI", "Incorrect VNI from VTEP"),
    184: ("INVALID_TC_BUFFER", "Failed to update or lookup TC buffer"),
    185: ("NO_SID", "No SID was found for the IP address"),
    186: ("MISSING_SRV6_STATE", "SRv6 state was removed during tail call"),
    187: ("NAT46", "L3 translation from IPv4 to IPv6 failed (NAT46)"),
    188: ("NAT64", "L3 translation from IPv6 to IPv4 failed (NAT64)"),
    189: ("AUTH_REQUIRED", "Authentication required"),
    190: ("CT_NO_MAP_FOUND", "No conntrack map found"),
    191: ("SNAT_NO_MAP_FOUND", "No nat map found"),
    192: ("INVALID_CLUSTER_ID", "Invalid ClusterID"),
    193: ("UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", "Unsupported packet protocol for DSR encapsulation"),
    194: ("NO_EGRESS_GATEWAY", "No egress gateway found"),
    195: ("UNENCRYPTED_TRAFFIC", "Traffic is unencrypted"),
    196: ("TTL_EXCEEDED", "TTL exceeded"),
    197: ("NO_NODE_ID", "No node ID found"),
    198: ("DROP_RATE_LIMITED", "Rate limited"),
    199: ("IGMP_HANDLED", "IGMP handled"),
    200: ("IGMP_SUBSCRIBED", "IGMP subscribed"),
    201: ("MULTICAST_HANDLED", "Multicast handled"),
    202: ("DROP_HOST_NOT_READY", "Host datapath not ready"),
    203: ("DROP_EP_NOT_READY", "Endpoint policy program not available"),
    204: ("DROP_NO_EGRESS_IP", "No Egress IP configured"),
    205: ("DROP_PUNT_PROXY", "Punt to proxy"),
    206: (None, "No device"),
    207: ("DROP_FRAG_NOT_FOUND_WORLD", "First logical datagram fragment not found from world"),
}
DROP_POLICY_DENIED, DROP_POLICY_DENY = 133, 181
POLICY_DROP_CODES = frozenset({DROP_POLICY_DENIED, DROP_POLICY_DENY})
DROP_REASON_VALUE: dict[str, int] = {name: code for code, (name, _) in DROP_REASONS.items() if name}

# Cilium reserved identities (numeric identity -> name; ``(name)`` in compact output)
RESERVED_IDENTITIES: dict[int, str] = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
}

# gopacket ICMPv4TypeCode / ICMPv6TypeCode names: type -> (name, {code: name} or None)
ICMPV4_TYPES: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: (
        "DestinationUnreachable",
        {
            0: "Net",
            1: "Host",
            2: "Protocol",
            3: "Port",
            4: "FragmentationNeeded",
            5: "SourceRoutingFailed",
            6: "NetUnknown",
            7: "HostUnknown",
            8: "SourceIsolated",
            9: "NetAdminProhibited",
            10: "HostAdminProhibited",
            11: "NetTOS",
            12: "HostTOS",
            13: "CommAdminProhibited",
            14: "HostPrecedence",
            15: "PrecedenceCutoff",
        },
    ),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}
ICMPV6_TYPES: dict[int, tuple[str, dict[int, str] | None]] = {
    1: (
        "DestinationUnreachable",
        {
            0: "NoRouteToDst",
            1: "AdminProhibited",
            2: "BeyondScopeOfSrc",
            3: "AddressUnreachable",
            4: "PortUnreachable",
            5: "SrcAddressFailedPolicy",
            6: "RejectRouteToDst",
        },
    ),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: ("ParameterProblem", {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"}),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132
TCP_NS = 0x100  # NS is the low bit of TCP header byte 12, carried above the byte-13 flags

# TCPFlags message fields in .proto order (JSON) and the order Hubble's Summary lists them in
_TCP_FLAG_BITS = {
    "FIN": TCP_FIN,
    "SYN": TCP_SYN,
    "RST": TCP_RST,
    "PSH": TCP_PSH,
    "ACK": TCP_ACK,
    "URG": TCP_URG,
    "ECE": TCP_ECE,
    "CWR": TCP_CWR,
    "NS": TCP_NS,
}
SUMMARY_TCP_FLAG_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")


def enum_json(value: int, names: Mapping[int, str]) -> str | int:
    """protojson: an enum prints as its name, a number without a name prints as the number."""
    return names.get(value, value)


def observation_point(datapath_point: int) -> int:
    """Datapath observation point -> TraceObservationPoint number (the datapath's 0 is ``TO_ENDPOINT``)."""
    return TO_ENDPOINT if datapath_point == 0 else datapath_point


def drop_reason_desc(code: int) -> str | int:
    """``drop_reason_desc`` JSON value of a drop code (enum name, or the number when the proto has no name)."""
    name = DROP_REASONS.get(code, (None, ""))[0]
    return name if name else code


def drop_reason_text(code: int) -> str:
    """Cilium's monitor text for a drop code (compact TYPE column); the number for unknown codes."""
    entry = DROP_REASONS.get(code)
    return entry[1] if entry else str(code)


def trace_point_name(datapath_point: int) -> str:
    """``to-endpoint`` ... for a datapath observation point; the number for unknown points."""
    return TRACE_POINT_NAMES.get(datapath_point, str(datapath_point))


def policy_match_name(match_type: int) -> str:
    return POLICY_MATCH_TYPES.get(match_type, "unknown")


def _icmp_type_code(table: Mapping[int, tuple[str, dict[int, str] | None]], t: int, c: int) -> str:
    info = table.get(t)
    if info is None:
        return f"{t}({c})"
    name, codes = info
    if codes is None:
        return name if c == 0 else f"{name}(Code: {c})"
    code_name = codes.get(c)
    return f"{name}({code_name})" if code_name is not None else f"{name}(Code: {c})"


def icmpv4_type_code(t: int, c: int) -> str:
    """gopacket's ICMPv4TypeCode string: ``EchoRequest``, ``DestinationUnreachable(Port)``, ``42(0)``."""
    return _icmp_type_code(ICMPV4_TYPES, t, c)


def icmpv6_type_code(t: int, c: int) -> str:
    return _icmp_type_code(ICMPV6_TYPES, t, c)


def tcp_flags_summary(flags: int) -> str:
    """``TCP Flags: SYN, ACK`` — flags in Hubble's fixed order SYN, ACK, RST, FIN, PSH, URG, ECE, CWR, NS."""
    return "TCP Flags: " + ", ".join(n for n in SUMMARY_TCP_FLAG_ORDER if flags & _TCP_FLAG_BITS[n])


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


def reserved_identity_name(identity: int) -> str | None:
    return RESERVED_IDENTITIES.get(identity)


def fmt_identity(identity: int) -> str:
    """Hubble's identity column: ``(ID:256)`` or ``(host)``/``(world)``/``(unknown)`` for reserved ones."""
    name = RESERVED_IDENTITIES.get(identity)
    return f"({name})" if name is not None else f"(ID:{identity})"


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

    Optional extra method (looked up with ``getattr``): ``selecting_policies(ep_id: int, egress: bool) ->
    list[str]`` — the policies (``namespace/name`` or ``name``) whose rules select the endpoint in that
    direction; used to explain default-deny drops.
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


# --- flow builder --------------------------------------------------------------------------------


class FlowBuilder:
    """Turns decoded datapath messages into Hubble ``GetFlowsResponse`` dicts (see the module docstring)."""

    def __init__(self, node_name: str, directory: EndpointDirectory, clock: WallClock | None = None) -> None:
        self.node_name = node_name
        self.directory = directory
        self.clock: WallClock = clock if clock is not None else KtimeClock()

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
                ports["flags"] = {n: True for n, bit in _TCP_FLAG_BITS.items() if msg.tcp_flags & bit}
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

    def build(self, msg: FlowMsg) -> dict[str, Any]:
        """One ``GetFlowsResponse`` dict for a datapath message."""
        ts = protojson_timestamp(self.clock.wall_ns(msg.ktime))
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
            trace_reason = _CT_TRACE_REASON.get(msg.ct_state, 0)
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
        if is_reply:
            flow["reply"] = True
        event_type: dict[str, Any] = {"type": kind}
        sub = drop_code if kind == MSG_DROP else (msg.sub_type if kind == MSG_TRACE else 0)
        if sub:
            event_type["sub_type"] = sub
        flow["event_type"] = event_type
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


# --- flow ring -----------------------------------------------------------------------------------


class FlowRing:
    """Bounded ring of responses with a monotonically increasing sequence number.

    The n-th appended item (from 0) has sequence ``n``. A follower keeps a cursor (the next sequence it
    wants, start with :attr:`next_seq`) and calls :meth:`since`; its new cursor is
    ``cursor + lost + len(items)``. Thread-safe.
    """

    def __init__(self, capacity: int = 4095) -> None:
        if capacity < 1:
            raise ValueError(f"flow ring capacity must be >= 1, got {capacity}")
        self._cap = capacity
        self._buf: list[Any] = [None] * capacity
        self._next = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def next_seq(self) -> int:
        """Sequence number the next appended item gets (= number of items ever appended)."""
        return self._next

    @property
    def oldest_seq(self) -> int:
        """Sequence number of the oldest item still held."""
        return max(0, self._next - self._cap)

    @property
    def overwritten(self) -> int:
        """How many items were pushed out of the ring since it was created."""
        return self.oldest_seq

    def __len__(self) -> int:
        return min(self._next, self._cap)

    def append(self, item: Any) -> int:
        """Add an item (overwriting the oldest when full); returns its sequence number."""
        with self._lock:
            seq = self._next
            self._buf[seq % self._cap] = item
            self._next = seq + 1
            return seq

    def _range(self, start: int, end: int) -> list[Any]:
        return [self._buf[s % self._cap] for s in range(start, end)]

    def last(self, n: int) -> list[Any]:
        """The newest ``n`` items, oldest first."""
        with self._lock:
            end = self._next
            start = max(end - max(n, 0), max(0, end - self._cap))
            return self._range(start, end)

    def first(self, n: int) -> list[Any]:
        """The oldest ``n`` items still held, oldest first."""
        with self._lock:
            start = max(0, self._next - self._cap)
            return self._range(start, min(self._next, start + max(n, 0)))

    def since(self, seq: int) -> tuple[list[Any], int]:
        """Items with sequence >= ``seq`` and how many of those were overwritten before this call."""
        with self._lock:
            end = self._next
            seq = max(seq, 0)
            if seq >= end:
                return [], 0
            oldest = max(0, end - self._cap)
            lost = max(0, oldest - seq)
            return self._range(max(seq, oldest), end), lost


# --- text printers (hubble observe -o compact|table|dict) ---------------------------------------

_ANSI = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

TIME_FORMATS = (
    "StampMilli",
    "YearMonthDay",
    "YearMonthDayHour",
    "YearMonthDayHourMinute",
    "RFC3339",
    "RFC3339Milli",
    "RFC3339Micro",
    "RFC3339Nano",
    "RFC1123Z",
)


def _paint(text: str, colour: str, color: bool) -> str:
    return f"\x1b[{_ANSI[colour]}m{text}\x1b[0m" if color else text


def format_time(ns: int | None, time_format: str = "StampMilli") -> str:
    """Format Unix ns (UTC) with one of Hubble's ``--time-format`` layouts; ``N/A`` when ``ns`` is None."""
    if time_format not in TIME_FORMATS:
        raise ValueError(f"--time-format: unknown layout {time_format!r} (known: {', '.join(TIME_FORMATS)})")
    if ns is None:
        return "N/A"
    sec, frac = divmod(ns, 1_000_000_000)
    t = datetime.fromtimestamp(sec, UTC)
    hms = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    ymd = f"{t.year:04d}-{t.month:02d}-{t.day:02d}"
    if time_format == "StampMilli":
        return f"{_MONTHS[t.month - 1]} {t.day:>2} {hms}.{frac // 1_000_000:03d}"
    if time_format == "YearMonthDay":
        return ymd
    if time_format == "YearMonthDayHour":
        return f"{ymd}T{t.hour:02d}Z"
    if time_format == "YearMonthDayHourMinute":
        return f"{ymd}T{t.hour:02d}:{t.minute:02d}Z"
    if time_format == "RFC3339":
        return f"{ymd}T{hms}Z"
    if time_format == "RFC3339Milli":
        return f"{ymd}T{hms}.{frac // 1_000_000:03d}Z"
    if time_format == "RFC3339Micro":
        return f"{ymd}T{hms}.{frac // 1_000:06d}Z"
    if time_format == "RFC3339Nano":
        digits = f"{frac:09d}".rstrip("0")
        return f"{ymd}T{hms}{'.' + digits if digits else ''}Z"
    # RFC1123Z
    return f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} {hms} +0000"


def _time_ns(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_rfc3339_ns(value)
    except ValueError:
        return None


def _flow_of(resp: Mapping[str, Any]) -> dict[str, Any]:
    f = resp.get("flow")
    return f if isinstance(f, dict) else {}


def _ports(f: Mapping[str, Any]) -> tuple[str, str]:
    l4 = f.get("l4") or {}
    for key in ("TCP", "UDP", "SCTP"):
        body = l4.get(key)
        if isinstance(body, dict):
            return str(body.get("source_port", 0)), str(body.get("destination_port", 0))
    return "", ""


def _join_path(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def _hostname(ip: str, port: str, ns: str, pod: str, svc: str, names: list[str], translate: bool, color: bool) -> str:
    host = ip
    if translate:
        if pod:
            host = _join_path(ns, pod)
        elif svc:
            host = _join_path(ns, svc)
        elif names:
            host = ",".join(names)
    if port and port != "0":
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{_paint(port, 'yellow', color)}"
    return host


def host_names(f: Mapping[str, Any], color: bool = False, ip_translation: bool = True) -> tuple[str, str]:
    """Hubble's SOURCE/DESTINATION: ``namespace/pod[:port]``, service, DNS names or the IP."""
    ip = f.get("IP")
    if not isinstance(ip, dict):
        eth = f.get("ethernet")
        if isinstance(eth, dict):
            return _paint(eth.get("source", ""), "cyan", color), _paint(eth.get("destination", ""), "cyan", color)
        return "", ""
    src_ep, dst_ep = f.get("source") or {}, f.get("destination") or {}
    src_ns, src_pod = src_ep.get("namespace", ""), src_ep.get("pod_name", "")
    dst_ns, dst_pod = dst_ep.get("namespace", ""), dst_ep.get("pod_name", "")
    src_svc = dst_svc = ""
    if isinstance(f.get("source_service"), dict):
        src_ns, src_svc = f["source_service"].get("namespace", ""), f["source_service"].get("name", "")
    if isinstance(f.get("destination_service"), dict):
        dst_ns, dst_svc = f["destination_service"].get("namespace", ""), f["destination_service"].get("name", "")
    sport, dport = _ports(f)
    src = _hostname(
        ip.get("source", ""), sport, src_ns, src_pod, src_svc, list(f.get("source_names") or ()), ip_translation, color
    )
    dst = _hostname(
        ip.get("destination", ""),
        dport,
        dst_ns,
        dst_pod,
        dst_svc,
        list(f.get("destination_names") or ()),
        ip_translation,
        color,
    )
    return _paint(src, "cyan", color), _paint(dst, "cyan", color)


def _event_type(f: Mapping[str, Any]) -> tuple[int, int]:
    et = f.get("event_type") or {}
    return int(et.get("type", 0)), int(et.get("sub_type", 0))


def flow_type(f: Mapping[str, Any]) -> str:
    """Hubble's TYPE column (``to-endpoint``, ``Policy denied``, ``policy-verdict:L3-L4 INGRESS`` ...)."""
    l7 = f.get("l7")
    if isinstance(l7, dict):
        proto, kind = "l7", str(l7.get("type", "UNKNOWN_L7_TYPE")).lower()
        if "http" in l7:
            proto = "http"
        elif "dns" in l7:
            proto = "dns"
            kind += " " + str((l7.get("dns") or {}).get("observation_source", ""))
        elif "kafka" in l7:
            proto = "kafka"
        return f"{proto}-{kind}"
    t, sub = _event_type(f)
    if t == MSG_TRACE:
        return trace_point_name(sub & 0xFF)
    if t == MSG_DROP:
        return drop_reason_text(sub & 0xFF)
    if t == MSG_POLICY_VERDICT:
        match = policy_match_name(int(f.get("policy_match_type", 0)))
        return f"policy-verdict:{match} {f.get('traffic_direction', 'TRAFFIC_DIRECTION_UNKNOWN')}"
    if t == MSG_CAPTURE:
        return str(f.get("debug_capture_point", "DBG_CAPTURE_POINT_UNKNOWN"))
    if t == MSG_TRACE_SOCK:
        point = str(f.get("sock_xlate_point", "SOCK_XLATE_POINT_UNKNOWN"))
        return {
            "SOCK_XLATE_POINT_POST_DIRECTION_FWD": "post-xlate-fwd",
            "SOCK_XLATE_POINT_POST_DIRECTION_REV": "post-xlate-rev",
            "SOCK_XLATE_POINT_PRE_DIRECTION_FWD": "pre-xlate-fwd",
            "SOCK_XLATE_POINT_PRE_DIRECTION_REV": "pre-xlate-rev",
        }.get(point, point)
    return "UNKNOWN"


def _policy_names(f: Mapping[str, Any], denied: bool) -> str:
    keys = ("egress_denied_by", "ingress_denied_by") if denied else ("egress_allowed_by", "ingress_allowed_by")
    items = [p for k in keys for p in (f.get(k) or ()) if isinstance(p, dict)]
    if not items:
        return ""
    return " BY " + ", ".join(f"{p.get('name', '')} ({p.get('kind', '')})" for p in items)


def verdict_text(f: Mapping[str, Any], color: bool = False, print_policy_names: bool = False) -> str:
    """Hubble's VERDICT column (ALLOWED/DENIED/AUDITED for policy-verdict events)."""
    verdict = f.get("verdict", "VERDICT_UNKNOWN")
    pv = _event_type(f)[0] == MSG_POLICY_VERDICT
    msg = str(verdict)
    colour = ""
    if verdict in ("FORWARDED", "REDIRECTED"):
        msg, colour = ("ALLOWED" if pv else msg), "green"
    elif verdict in ("DROPPED", "ERROR"):
        msg, colour = ("DENIED" if pv else msg), "red"
    elif verdict == "AUDIT":
        msg, colour = ("AUDITED" if pv else msg), "yellow"
    elif verdict in ("TRACED", "TRANSLATED"):
        colour = "yellow"
    out = _paint(msg, colour, color) if colour else msg
    if print_policy_names:
        out += _policy_names(f, verdict in ("DROPPED", "ERROR", "AUDIT"))
    return out


def summary_text(f: Mapping[str, Any], color: bool = False) -> str:
    """Hubble's SUMMARY: ``Summary`` with the IP trace id prefix and the auth suffix."""
    out = ""
    trace_id = (f.get("ip_trace_id") or {}).get("trace_id")
    if trace_id and int(trace_id) > 0:
        out = f"IP Trace ID: {int(trace_id)}; "
    out += str(f.get("Summary", ""))
    auth = f.get("auth_type", "DISABLED")
    if auth not in ("DISABLED", 0):
        out += "; " + _paint(str(auth), "red" if auth == "TEST_ALWAYS_FAIL" else "green", color)
    return out


def decided_by(f: Mapping[str, Any]) -> str | None:
    """apiary's ``extensions.apiary.decided_by`` of a flow, if any."""
    ext = f.get("extensions")
    if isinstance(ext, dict) and isinstance(ext.get("apiary"), dict):
        v = ext["apiary"].get("decided_by")
        return str(v) if v else None
    return None


def _lost_parts(resp: Mapping[str, Any]) -> tuple[str, int, int, dict[str, Any]]:
    le = resp.get("lost_events") or {}
    return (
        str(le.get("source", "UNKNOWN_LOST_EVENT_SOURCE")),
        int(le.get("cpu", 0)),
        int(le.get("num_events_lost", 0)),
        le,
    )


def compact(
    resp: Mapping[str, Any],
    color: bool = False,
    print_policy_names: bool = False,
    time_format: str = "StampMilli",
    print_node_name: bool = False,
    ip_translation: bool = True,
) -> str:
    """One ``hubble observe -o compact`` line (no trailing newline) for a response dict.

    apiary addition: DROPPED/AUDIT flows with ``extensions.apiary.decided_by`` end with `` [<decided_by>]``.
    """
    if "lost_events" in resp:
        source, cpu, n, le = _lost_parts(resp)
        line = f"EVENTS LOST: {source} CPU({cpu}) {n}"
        first, last = _time_ns(le.get("first")), _time_ns(le.get("last"))
        if first is not None and last is not None:
            line += f" (first: {format_time(first, time_format)}, last: {format_time(last, time_format)})"
        t = _time_ns(resp.get("time"))
        return f"{format_time(t, time_format)} {line}" if t is not None else line
    f = _flow_of(resp)
    src, dst = host_names(f, color, ip_translation)
    src_id = _paint(fmt_identity(int((f.get("source") or {}).get("identity", 0))), "magenta", color)
    dst_id = _paint(fmt_identity(int((f.get("destination") or {}).get("identity", 0))), "magenta", color)
    node = f" [{f.get('node_name', '')}]" if print_node_name else ""
    arrow = "->"
    is_reply = f.get("is_reply")
    if is_reply is None:
        arrow = "<>"
    elif is_reply:
        src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
    ts = format_time(_time_ns(f.get("time")), time_format)
    line = (
        f"{ts}{node}: {src} {src_id} {arrow} {dst} {dst_id} {flow_type(f)} "
        f"{verdict_text(f, color, print_policy_names)} ({summary_text(f, color)})"
    )
    why = decided_by(f)
    if why and f.get("verdict") in ("DROPPED", "AUDIT"):
        line += f" [{why}]"
    return line


def _row(resp: Mapping[str, Any], print_node_name: bool, time_format: str) -> list[str]:
    if "lost_events" in resp:
        source, cpu, n, _ = _lost_parts(resp)
        cells = [""] + ([""] if print_node_name else []) + [source, "", "EVENTS LOST", "", f"CPU({cpu}) - {n}"]
        return cells
    f = _flow_of(resp)
    src, dst = host_names(f)
    cells = [format_time(_time_ns(f.get("time")), time_format)]
    if print_node_name:
        cells.append(str(f.get("node_name", "")))
    return cells + [src, dst, flow_type(f), verdict_text(f), summary_text(f)]


def table(resps: Iterable[Mapping[str, Any]], print_node_name: bool = False, time_format: str = "StampMilli") -> str:
    """``hubble observe -o table``: header once, columns aligned like Go's tabwriter (padding 3)."""
    rows = [_row(r, print_node_name, time_format) for r in resps]
    if not rows:
        return ""
    header = (
        ["TIMESTAMP"] + (["NODE"] if print_node_name else []) + ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    )
    rows.insert(0, header)
    ncols = len(header)
    widths = [max(2, max(len(r[i]) for r in rows) + 3) for i in range(ncols - 1)]
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + r[-1] for r in rows)


def dict_format(
    resps: Iterable[Mapping[str, Any]] | Mapping[str, Any],
    print_node_name: bool = False,
    time_format: str = "StampMilli",
    leading_separator: bool = False,
) -> str:
    """``hubble observe -o dict``: right-aligned keys, flows separated by a line of 12 dashes.

    Accepts one response or several. A caller streaming one response per call passes
    ``leading_separator=True`` for every response but the first to get Hubble's separator line.
    """
    if isinstance(resps, Mapping):
        resps = [resps]
    blocks: list[str] = []
    for r in resps:
        if "lost_events" in r:
            source, cpu, n, _ = _lost_parts(r)
            lines = ["  TIMESTAMP: "]
            if print_node_name:
                lines.append("       NODE: ")
            lines += [
                f"     SOURCE: {source}",
                "       TYPE: EVENTS LOST",
                "    VERDICT: ",
                f"    SUMMARY: CPU({cpu}) - {n}",
            ]
        else:
            f = _flow_of(r)
            src, dst = host_names(f)
            lines = [f"  TIMESTAMP: {format_time(_time_ns(f.get('time')), time_format)}"]
            if print_node_name:
                lines.append(f"       NODE: {f.get('node_name', '')}")
            lines += [
                f"     SOURCE: {src}",
                f"DESTINATION: {dst}",
                f"       TYPE: {flow_type(f)}",
                f"    VERDICT: {verdict_text(f)}",
                f"    SUMMARY: {summary_text(f)}",
            ]
        blocks.append("\n".join(lines))
    out = "\n------------\n".join(blocks)
    return f"------------\n{out}" if leading_separator and blocks else out
