"""Hubble's flow.proto enums and Cilium's monitor names: verdicts, drop reasons, trace points, identities, ICMP.

Each table maps the wire number to the name protojson prints (and, for drop reasons, Cilium's monitor text);
the helpers below turn a number into what a flow or a printer shows. docs/flows.md lists the verdicts and
drop reasons the datapath emits (tests/unit/test_docs_tables.py keeps it in step with these tables).
"""

from __future__ import annotations

from collections.abc import Mapping

from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_NEW,
    CT_RELATED,
    CT_REPLY,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
)

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
CT_TRACE_REASON = {CT_NEW: 1, CT_ESTABLISHED: 2, CT_REPLY: 3, CT_RELATED: 4}

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
TCP_FLAG_BITS = {
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
    return "TCP Flags: " + ", ".join(n for n in SUMMARY_TCP_FLAG_ORDER if flags & TCP_FLAG_BITS[n])


def reserved_identity_name(identity: int) -> str | None:
    return RESERVED_IDENTITIES.get(identity)


def fmt_identity(identity: int) -> str:
    """Hubble's identity column: ``(ID:256)`` or ``(host)``/``(world)``/``(unknown)`` for reserved ones."""
    name = RESERVED_IDENTITIES.get(identity)
    return f"({name})" if name is not None else f"(ID:{identity})"

