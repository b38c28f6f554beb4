"""Python side of bpf/include/datapath_abi.h: encoders for map keys/values, the flow decoder.

Byte order is explicit: addresses and the policy port are big-endian (network order) exactly where
the C side keeps them so; everything else is host (little-endian) order.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from apiary.observe.hubble.raw import FlowMsg
from apiary.policy.types import PolicyEntry, PolicyKey

EP_ENFORCE_INGRESS, EP_ENFORCE_EGRESS, EP_AUDIT = 1, 2, 4
DP_COUNTERS, DP_LOST_SLOTS = 512, 8
POLICY_FIXED_BITS = 64  # ep_id + direction + pad + identity

EP_INFO = struct.Struct("<HHI4sHxx")  # ep_id, flags, identity, ipv4 (network order), policy_slot
POLICY_KEY = struct.Struct("<IHBxIB2sx")  # prefixlen, ep_id, direction, identity, proto, dport (BE)
POLICY_VALUE = struct.Struct("<BBBxI")  # deny, audit, match_type, rule_id
IPCACHE_KEY = struct.Struct("<I4s")  # prefixlen, addr (network order)
IPCACHE_VALUE = struct.Struct("<IHxx")  # identity, ep_id
CT_KEY = struct.Struct("<4s4sHHBBxxI")  # saddr, daddr, sport(BE raw), dport(BE raw), proto, direction, ifindex
CT_VALUE = struct.Struct("<QQIBBBBQQ")  # expires, last_report, rule_id, flags_orig, flags_reply, closing, audit,
# packets, bytes
FLOW_MSG = struct.Struct("<BBBBBBBBQ4s4sHHIIIIHxxI4x")  # padded to 8 like the C struct
DP_COUNTER = struct.Struct("<QQ")

# {C struct: (size, {member: offset})} for the BTF comparison test
LAYOUTS: dict[str, tuple[int, dict[str, int]]] = {
    "ep_info": (EP_INFO.size, {"ep_id": 0, "flags": 2, "identity": 4, "ipv4": 8, "policy_slot": 12}),
    "policy_key": (
        POLICY_KEY.size,
        {"prefixlen": 0, "ep_id": 4, "direction": 6, "identity": 8, "proto": 12, "dport": 13},
    ),
    "policy_value": (POLICY_VALUE.size, {"deny": 0, "audit": 1, "match_type": 2, "rule_id": 4}),
    "ipcache_key": (IPCACHE_KEY.size, {"prefixlen": 0, "addr": 4}),
    "ipcache_value": (IPCACHE_VALUE.size, {"identity": 0, "ep_id": 4}),
    "ct_key": (
        CT_KEY.size,
        {"saddr": 0, "daddr": 4, "sport": 8, "dport": 10, "proto": 12, "direction": 13, "pad": 14, "ifindex": 16},
    ),
    "ct_value": (
        CT_VALUE.size,
        {
            "expires": 0,
            "last_report": 8,
            "rule_id": 16,
            "flags_orig": 20,
            "flags_reply": 21,
            "closing": 22,
            "audit": 23,
            "packets": 24,
            "bytes": 32,
        },
    ),
    "flow_msg": (
        FLOW_MSG.size,
        {
            "kind": 0,
            "sub_type": 1,
            "verdict": 2,
            "ct_state": 3,
            "proto": 4,
            "tcp_flags": 5,
            "egress": 6,
            "match_type": 7,
            "ktime": 8,
            "saddr": 16,
            "daddr": 20,
            "sport": 24,
            "dport": 26,
            "src_identity": 28,
            "dst_identity": 32,
            "rule_id": 36,
            "ifindex": 40,
            "ep_id": 44,
            "length": 48,
        },
    ),
    "dp_counter": (DP_COUNTER.size, {"packets": 0, "bytes": 8}),
}


def ep_info(ep_id: int, flags: int, identity: int, ipv4: str, policy_slot: int) -> bytes:
    return EP_INFO.pack(ep_id, flags, identity, socket.inet_aton(ipv4), policy_slot)


def policy_key(k: PolicyKey, slot: int) -> bytes:
    """The LPM key of a compiled entry, stored under the endpoint's policy slot (not its id)."""
    if k.proto == 0:
        prefixlen = POLICY_FIXED_BITS
    else:
        prefixlen = POLICY_FIXED_BITS + 8 + k.port_prefix
    port = k.port if k.proto else 0
    return POLICY_KEY.pack(prefixlen, slot, k.direction, k.identity, k.proto, port.to_bytes(2, "big"))


def policy_key_decode(raw: bytes) -> tuple[int, int, int, int, int, int]:
    """(slot, direction, identity, proto, port, port_prefix)"""
    prefixlen, ep_id, direction, identity, proto, port = POLICY_KEY.unpack(raw)
    port_prefix = max(0, prefixlen - POLICY_FIXED_BITS - 8)
    return ep_id, direction, identity, proto, int.from_bytes(port, "big"), port_prefix


def policy_key_rebase(raw: bytes, slot: int) -> bytes:
    """The same key under another policy slot."""
    return raw[:4] + slot.to_bytes(2, "little") + raw[6:]


def match_type(k: PolicyKey) -> int:
    """Cilium's policy_match_type of an entry: L3-only 1, L3-L4 2, L4-only 3, all 4."""
    if k.identity:
        return 2 if k.proto else 1
    return 3 if k.proto else 4


def policy_value(e: PolicyEntry, k: PolicyKey) -> bytes:
    return POLICY_VALUE.pack(int(e.deny), int(e.audit), match_type(k), e.rule_id)


def ct_key_ifindex(raw: bytes) -> int:
    """The interface (host-side veth) of a conntrack key."""
    return int(CT_KEY.unpack(raw[: CT_KEY.size])[6])


def ipcache_key(prefix: str) -> bytes:
    net = ipaddress.IPv4Network(prefix, strict=False)
    return IPCACHE_KEY.pack(net.prefixlen, net.network_address.packed)


def ipcache_value(identity: int, ep_id: int = 0) -> bytes:
    return IPCACHE_VALUE.pack(identity, ep_id)


def decode_flow(buf: memoryview | bytes) -> FlowMsg:
    (
        kind,
        sub,
        verdict,
        ct_state,
        proto,
        flags,
        egress,
        match,
        ktime,
        saddr,
        daddr,
        sport,
        dport,
        sid,
        did,
        rule_id,
        ifindex,
        ep_id,
        length,
    ) = FLOW_MSG.unpack_from(buf)
    return FlowMsg(
        ktime=ktime,
        kind=kind,
        sub_type=sub,
        ep_id=ep_id,
        ifindex=ifindex,
        egress=bool(egress),
        verdict=verdict,
        src_ip=socket.inet_ntoa(saddr),
        dst_ip=socket.inet_ntoa(daddr),
        proto=proto,
        sport=sport,
        dport=dport,
        tcp_flags=flags,
        src_identity=sid,
        dst_identity=did,
        ct_state=ct_state,
        rule_id=rule_id,
        match_type=match,
        length=length,
    )
