"""Python side of bpf/include/datapath_abi.h: encoders for map keys/values, the flow decoder.

Byte order is explicit: addresses and the policy port are big-endian (network order) exactly where
the C side keeps them so; everything else is host (little-endian) order.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from collections.abc import Mapping
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

from apiary.observe.hubble import raw
from apiary.observe.hubble.raw import FlowMsg
from apiary.policy import types as ptypes
from apiary.policy.types import PolicyEntry, PolicyKey
from apiary.sensors.abi import packed

OBJECT, HEADER = "lxc", "datapath_abi.h"

EP_ENFORCE_INGRESS, EP_ENFORCE_EGRESS, EP_AUDIT = 1, 2, 4
EP_ANY_DENY_INGRESS, EP_ANY_DENY_EGRESS = 8, 16  # the direction's policy has denies for any identity (0)
EP_L7_INGRESS = 32  # some ingress entry redirects to the L7 proxy
DROP_PROXY_LOOKUP_FAILED, DROP_PROXY_SET_FAILED = 178, 179
# kinds of policy entries (ep_info.policy_kinds, by direction): the datapath looks up only the kinds there are.
# Low nibble: entries of remote identities; high nibble (<< PK_ANY_IDENTITY_SHIFT): entries of identity 0.
PK_PORT, PK_RANGE, PK_PROTO, PK_ANY, PK_ANY_IDENTITY_SHIFT = 1, 2, 4, 8, 4
DP_COUNTERS, DP_LOST_SLOTS = 512, 8
POLICY_FIXED_BITS = 64  # ep_id + direction + pad + identity
# policy_key.prefixlen of the entries in the hash map `policy` (part of its exact key); port ranges are
# in the LPM trie `policy_ranges` with prefix lengths in between
POLICY_PREFIX_ANY, POLICY_PREFIX_PROTO, POLICY_PREFIX_PORT = POLICY_FIXED_BITS, POLICY_FIXED_BITS + 8, 88
# Cilium's policy_match_type of an entry (policy_value.match_type, reported by policy-verdict flows)
MATCH_NONE, MATCH_L3_ONLY, MATCH_L3_L4, MATCH_L4_ONLY, MATCH_ALL = 0, 1, 2, 3, 4
_IPV4 = c_uint8 * 4  # an IPv4 address in network order (a __u32 on the C side)


class EpInfo(ctypes.Structure):
    _fields_ = [
        ("ep_id", c_uint16),
        ("flags", c_uint16),
        ("identity", c_uint32),
        ("ipv4", _IPV4),
        ("policy_slot", c_uint16),  # ep_id << 1 | generation: the policy map entries in force
        ("policy_kinds", c_uint8 * 2),  # by direction: PK_* of the entries in force
    ]


class PolicyKeyC(ctypes.Structure):
    """Key of both policy maps: prefixlen counts the significant bits after it (POLICY_FIXED_BITS, +8
    protocol, +16 port). An exact key of the hash map `policy`, an LPM key of `policy_ranges`."""

    _fields_ = [
        ("prefixlen", c_uint32),
        ("ep_id", c_uint16),
        ("direction", c_uint8),
        ("_pad1", c_uint8),
        ("identity", c_uint32),
        ("proto", c_uint8),
        ("dport", c_uint8 * 2),  # big-endian, so a prefix covers high bits
        ("_pad2", c_uint8),
    ]


class PolicyValue(ctypes.Structure):
    _fields_ = [
        ("deny", c_uint8),
        ("audit", c_uint8),
        ("match_type", c_uint8),  # MATCH_* of the entry: what a policy-verdict event reports
        ("_pad", c_uint8),
        ("rule_id", c_uint32),
        ("proxy_port", c_uint8 * 2),  # big-endian; non-zero: new connections go to the L7 proxy there
        ("_pad2", c_uint16),
    ]


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", c_uint32), ("addr", _IPV4)]


class IpcacheValue(ctypes.Structure):
    _fields_ = [("identity", c_uint32), ("ep_id", c_uint16), ("_pad", c_uint16)]


class CtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", _IPV4),
        ("daddr", _IPV4),
        ("sport", c_uint16),  # network order, as read from the packet
        ("dport", c_uint16),
        ("proto", c_uint8),
        ("direction", c_uint8),
        ("pad", c_uint16),
        ("ifindex", c_uint32),  # host-side veth: known before the endpoint lookup, which established packets skip
    ]


class CtValue(ctypes.Structure):
    _fields_ = [
        ("expires", c_uint64),  # jiffies (bpf_jiffies64): Datapath.ct_clock() is now
        ("last_report", c_uint64),  # jiffies of the last trace event
        ("rule_id", c_uint32),
        ("flags_orig", c_uint8),  # TCP flags seen in the original direction
        ("flags_reply", c_uint8),
        ("closing", c_uint8),
        ("audit", c_uint8),
        ("packets", c_uint64),
        ("bytes", c_uint64),
        ("proxy_port", c_uint8 * 2),  # big-endian: the connection is redirected to the L7 proxy
        ("from_proxy", c_uint8),  # the L7 proxy's own connection to the endpoint
        ("dirs_reported", c_uint8),  # CT_DIR_* bits: a packet of that direction was traced
        ("_pad", c_uint8 * 4),
    ]


class ProxyCfg(ctypes.Structure):
    """The agent's L7 proxy: the mark of redirected packets and the cgroup of the proxy's sockets."""

    _fields_ = [("mark", c_uint32), ("_pad", c_uint32), ("cgroup_id", c_uint64)]


class FlowMsgC(ctypes.Structure):
    _fields_ = [
        ("kind", c_uint8),
        ("sub_type", c_uint8),
        ("verdict", c_uint8),
        ("ct_state", c_uint8),
        ("proto", c_uint8),
        ("tcp_flags", c_uint8),
        ("egress", c_uint8),
        ("match_type", c_uint8),
        ("ktime", c_uint64),
        ("saddr", _IPV4),
        ("daddr", _IPV4),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("src_identity", c_uint32),
        ("dst_identity", c_uint32),
        ("rule_id", c_uint32),
        ("ifindex", c_uint32),
        ("ep_id", c_uint16),
        ("_pad", c_uint16),
        ("length", c_uint32),
    ]


class DpCounter(ctypes.Structure):
    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "ep_info": EpInfo,
    "policy_key": PolicyKeyC,
    "policy_value": PolicyValue,
    "ipcache_key": IpcacheKey,
    "ipcache_value": IpcacheValue,
    "ct_key": CtKey,
    "ct_value": CtValue,
    "proxy_cfg": ProxyCfg,
    "flow_msg": FlowMsgC,
    "dp_counter": DpCounter,
}
KERNEL_ONLY: dict[str, str] = {}

DEFINES: dict[str, int] = {
    "EP_ENFORCE_INGRESS": EP_ENFORCE_INGRESS,
    "EP_ENFORCE_EGRESS": EP_ENFORCE_EGRESS,
    "EP_AUDIT": EP_AUDIT,
    "EP_ANY_DENY_INGRESS": EP_ANY_DENY_INGRESS,
    "EP_ANY_DENY_EGRESS": EP_ANY_DENY_EGRESS,
    "EP_L7_INGRESS": EP_L7_INGRESS,
    "DROP_PROXY_LOOKUP_FAILED": DROP_PROXY_LOOKUP_FAILED,
    "DROP_PROXY_SET_FAILED": DROP_PROXY_SET_FAILED,
    "PK_PORT": PK_PORT,
    "PK_RANGE": PK_RANGE,
    "PK_PROTO": PK_PROTO,
    "PK_ANY": PK_ANY,
    "PK_ANY_IDENTITY_SHIFT": PK_ANY_IDENTITY_SHIFT,
    "POLICY_PREFIX_ANY": POLICY_PREFIX_ANY,
    "POLICY_PREFIX_PROTO": POLICY_PREFIX_PROTO,
    "POLICY_PREFIX_PORT": POLICY_PREFIX_PORT,
    "DP_COUNTERS": DP_COUNTERS,
    "DP_LOST_SLOTS": DP_LOST_SLOTS,
    "DIR_INGRESS": ptypes.INGRESS,
    "DIR_EGRESS": ptypes.EGRESS,
    "MATCH_NONE": MATCH_NONE,
    "MATCH_L3_ONLY": MATCH_L3_ONLY,
    "MATCH_L3_L4": MATCH_L3_L4,
    "MATCH_L4_ONLY": MATCH_L4_ONLY,
    "MATCH_ALL": MATCH_ALL,
    # the flow record's enums are Hubble's/Cilium's, kept in observe.hubble.raw
    "FLOW_DROP": raw.MSG_DROP,
    "FLOW_TRACE": raw.MSG_TRACE,
    "FLOW_POLICY_VERDICT": raw.MSG_POLICY_VERDICT,
    "OBS_TO_ENDPOINT": raw.OBS_TO_ENDPOINT,
    "OBS_TO_PROXY": raw.OBS_TO_PROXY,
    "OBS_FROM_ENDPOINT": raw.OBS_FROM_ENDPOINT,
    "VERDICT_FORWARDED": raw.VERDICT_FORWARDED,
    "VERDICT_DROPPED": raw.VERDICT_DROPPED,
    "VERDICT_AUDIT": raw.VERDICT_AUDIT,
    "CT_NEW": raw.CT_NEW,
    "CT_ESTABLISHED": raw.CT_ESTABLISHED,
    "CT_REPLY": raw.CT_REPLY,
    "CT_RELATED": raw.CT_RELATED,
}

# encoders/decoders: the mirrors as struct.Struct (padding skipped)
EP_INFO, POLICY_KEY, POLICY_VALUE = packed(EpInfo), packed(PolicyKeyC), packed(PolicyValue)
IPCACHE_KEY, IPCACHE_VALUE = packed(IpcacheKey), packed(IpcacheValue)
CT_KEY, CT_VALUE, FLOW_MSG, DP_COUNTER = packed(CtKey), packed(CtValue), packed(FlowMsgC), packed(DpCounter)
PROXY_CFG = packed(ProxyCfg)


def proxy_cfg(mark: int, cgroup_id: int) -> bytes:
    return PROXY_CFG.pack(mark, cgroup_id)


def ep_info(ep_id: int, flags: int, identity: int, ipv4: str, policy_slot: int,
            policy_kinds: tuple[int, int] = (0, 0)) -> bytes:
    """``policy_kinds``: PK_* of the entries in force, by direction (INGRESS, EGRESS)."""
    return EP_INFO.pack(ep_id, flags, identity, socket.inet_aton(ipv4), policy_slot, bytes(policy_kinds))


def policy_kind(k: PolicyKey) -> int:
    """PK_* of a compiled entry; PK_RANGE entries (blocks of port ranges) go to the LPM trie `policy_ranges`,
    the others to the hash map `policy`."""
    if k.proto == 0:
        return PK_ANY
    if k.port_prefix == 0:
        return PK_PROTO
    return PK_PORT if k.port_prefix == 16 else PK_RANGE


def is_port_range(k: PolicyKey) -> bool:
    return policy_kind(k) == PK_RANGE


def policy_summary(entries: Mapping[PolicyKey, PolicyEntry]) -> tuple[int, tuple[int, int]]:
    """What ep_info says of an endpoint's entries: (EP_ANY_DENY_* flags, policy_kinds by direction)."""
    flags, kinds = 0, [0, 0]
    for k, e in entries.items():
        any_identity = k.identity == 0
        kinds[k.direction] |= policy_kind(k) << (PK_ANY_IDENTITY_SHIFT if any_identity else 0)
        if any_identity and e.deny:
            flags |= EP_ANY_DENY_EGRESS if k.direction == ptypes.EGRESS else EP_ANY_DENY_INGRESS
        if e.l7 and not e.deny and k.direction == ptypes.INGRESS:
            flags |= EP_L7_INGRESS
    return flags, (kinds[0], kinds[1])


def policy_key(k: PolicyKey, slot: int) -> bytes:
    """The key of a compiled entry (either map), stored under the endpoint's policy slot (not its id)."""
    if k.proto == 0:
        prefixlen = POLICY_FIXED_BITS
    else:
        prefixlen = POLICY_FIXED_BITS + 8 + k.port_prefix
    port = k.port if k.proto else 0
    if 0 <= k.port_prefix <= 16:  # the hash map compares every bit: no stray bits below the prefix
        port &= (0xFFFF << (16 - k.port_prefix)) & 0xFFFF
    return POLICY_KEY.pack(prefixlen, slot, k.direction, k.identity, k.proto, port.to_bytes(2, "big"))


def policy_key_decode(raw: bytes) -> tuple[int, int, int, int, int, int]:
    """(slot, direction, identity, proto, port, port_prefix)"""
    prefixlen, ep_id, direction, identity, proto, port = POLICY_KEY.unpack(raw)
    port_prefix = max(0, prefixlen - POLICY_FIXED_BITS - 8)
    return ep_id, direction, identity, proto, int.from_bytes(port, "big"), port_prefix


def policy_key_is_range(raw: bytes) -> bool:
    """An encoded key of `policy_ranges` (see :func:`is_port_range`)."""
    return int.from_bytes(raw[:4], "little") not in (POLICY_PREFIX_ANY, POLICY_PREFIX_PROTO, POLICY_PREFIX_PORT)


def policy_key_rebase(raw: bytes, slot: int) -> bytes:
    """The same key under another policy slot."""
    return raw[:4] + slot.to_bytes(2, "little") + raw[6:]


def match_type(k: PolicyKey) -> int:
    """Cilium's policy_match_type of an entry."""
    if k.identity:
        return MATCH_L3_L4 if k.proto else MATCH_L3_ONLY
    return MATCH_L4_ONLY if k.proto else MATCH_ALL


def policy_value(e: PolicyEntry, k: PolicyKey, proxy_port: int = 0, dns_port: int = 0) -> bytes:
    """``proxy_port``: where the agent's L7 proxy listens, ``dns_port`` its DNS proxy; written for the
    entries that need them."""
    port = 0 if e.deny else dns_port if e.dns else proxy_port if e.l7 else 0
    return POLICY_VALUE.pack(int(e.deny), int(e.audit), match_type(k), e.rule_id, port.to_bytes(2, "big"))


def ct_key_ifindex(raw: bytes) -> int:
    """The interface (host-side veth) of a conntrack key."""
    return int(CtKey.from_buffer_copy(raw[: ctypes.sizeof(CtKey)]).ifindex)


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
