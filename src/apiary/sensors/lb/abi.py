"""Python side of bpf/include/lb_abi.h: Cilium's lb4 map layouts (FORMATS.md 9.1), addresses and ports in
network byte order (mirrored as byte arrays)."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

OBJECT, HEADER = "lb", "lb_abi.h"

LB_SERVICE_MAP_ENTRIES = 65536
LB_BACKEND_MAP_ENTRIES = 65536
LB_REVNAT_MAP_ENTRIES = 65536
LB_REVERSE_SK_ENTRIES = 262144
LB_AFFINITY_ENTRIES = 65536
LB_MAGLEV_ENTRIES = 4096
LB_MAGLEV_MAX = 131071
LB_LOCAL_NETNS_ENTRIES = 4096
LB_MSG_DROP = 20
DROP_NO_SERVICE = 158

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": socket.IPPROTO_SCTP}
STAT_NAMES = ("translated", "reverse_translated", "no_backend", "bind_refused", "affinity_hits",
              "reverse_sk_full", "events_lost", "nodeport_in", "nodeport_out")


class Lb4Key(ctypes.Structure):
    _fields_ = [("address", c_uint8 * 4), ("dport", c_uint8 * 2), ("backend_slot", c_uint16), ("proto", c_uint8),
                ("scope", c_uint8), ("pad", c_uint8 * 2)]


class Lb4Service(ctypes.Structure):
    _fields_ = [("backend_id", c_uint32), ("count", c_uint16), ("rev_nat_index", c_uint16), ("flags", c_uint8),
                ("flags2", c_uint8), ("qcount", c_uint16)]


class Lb4Backend(ctypes.Structure):
    _fields_ = [("address", c_uint8 * 4), ("port", c_uint8 * 2), ("proto", c_uint8), ("flags", c_uint8),
                ("cluster_id", c_uint16), ("zone", c_uint8), ("pad", c_uint8)]


class Lb4ReverseNat(ctypes.Structure):
    _fields_ = [("address", c_uint8 * 4), ("port", c_uint8 * 2), ("pad", c_uint16)]


class Lb4RevnatSkKey(ctypes.Structure):
    _fields_ = [("cookie", c_uint64), ("address", c_uint8 * 4), ("port", c_uint8 * 2), ("pad", c_uint16)]


class Lb4RevnatSkVal(ctypes.Structure):
    _fields_ = [("address", c_uint8 * 4), ("port", c_uint8 * 2), ("rev_nat_index", c_uint16)]


class Lb4AffinityKey(ctypes.Structure):
    _fields_ = [("client_id", c_uint64), ("rev_nat_id", c_uint16), ("netns_cookie", c_uint8), ("pad", c_uint8 * 5)]


class LbAffinityVal(ctypes.Structure):
    _fields_ = [("last_used", c_uint64), ("backend_id", c_uint32), ("pad", c_uint32)]


class LbAffinityMatch(ctypes.Structure):
    _fields_ = [("backend_id", c_uint32), ("rev_nat_id", c_uint16), ("pad", c_uint16)]


class LbDropMsg(ctypes.Structure):
    _fields_ = [("type", c_uint8), ("reason", c_uint8), ("proto", c_uint8), ("hook", c_uint8),
                ("address", c_uint8 * 4), ("port", c_uint8 * 2), ("sport", c_uint8 * 2), ("saddr", c_uint8 * 4),
                ("pid", c_uint32), ("ifindex", c_uint32), ("cgroup_id", c_uint64), ("netns_cookie", c_uint64),
                ("ktime", c_uint64)]


class Lb4NatKey(ctypes.Structure):
    _fields_ = [("saddr", c_uint8 * 4), ("daddr", c_uint8 * 4), ("sport", c_uint8 * 2), ("dport", c_uint8 * 2),
                ("proto", c_uint8), ("dir", c_uint8), ("pad", c_uint8 * 2)]


class Lb4NatVal(ctypes.Structure):
    _fields_ = [("address", c_uint8 * 4), ("port", c_uint8 * 2), ("rev_nat_index", c_uint16), ("backend_id", c_uint32),
                ("pad", c_uint32)]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "lb4_key": Lb4Key,
    "lb4_service": Lb4Service,
    "lb4_backend": Lb4Backend,
    "lb4_reverse_nat": Lb4ReverseNat,
    "lb4_revnat_sk_key": Lb4RevnatSkKey,
    "lb4_revnat_sk_val": Lb4RevnatSkVal,
    "lb4_affinity_key": Lb4AffinityKey,
    "lb_affinity_val": LbAffinityVal,
    "lb_affinity_match": LbAffinityMatch,
    "lb_drop_msg": LbDropMsg,
    "lb4_nat_key": Lb4NatKey,
    "lb4_nat_val": Lb4NatVal,
}
KERNEL_ONLY: dict[str, str] = {"lb4_maglev_lut": "a table of maglev_m backend ids, written as packed u32s"}
DEFINES: dict[str, int] = {
    "LB_SERVICE_MAP_ENTRIES": LB_SERVICE_MAP_ENTRIES,
    "LB_BACKEND_MAP_ENTRIES": LB_BACKEND_MAP_ENTRIES,
    "LB_REVNAT_MAP_ENTRIES": LB_REVNAT_MAP_ENTRIES,
    "LB_REVERSE_SK_ENTRIES": LB_REVERSE_SK_ENTRIES,
    "LB_AFFINITY_ENTRIES": LB_AFFINITY_ENTRIES,
    "LB_MAGLEV_ENTRIES": LB_MAGLEV_ENTRIES,
    "LB_MAGLEV_MAX": LB_MAGLEV_MAX,
    "LB_LOCAL_NETNS_ENTRIES": LB_LOCAL_NETNS_ENTRIES,
    "LB_MSG_DROP": LB_MSG_DROP,
    "DROP_NO_SERVICE": DROP_NO_SERVICE,
    "LB_STAT_MAX": 10,
    "LB_NAT_ENTRIES": 65536,
}


def ip4(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def port16(port: int) -> bytes:
    return port.to_bytes(2, "big")


def service_key(address: str, port: int, protocol: str, slot: int) -> bytes:
    return bytes(Lb4Key(address=(c_uint8 * 4)(*ip4(address)), dport=(c_uint8 * 2)(*port16(port)),
                        backend_slot=slot, proto=PROTOCOLS[protocol]))


def service_value(backend_id: int, count: int, rev_nat_id: int, flags: int) -> bytes:
    return bytes(Lb4Service(backend_id=backend_id, count=count, rev_nat_index=rev_nat_id, flags=flags))


def backend_value(address: str, port: int, protocol: str, state: int) -> bytes:
    return bytes(Lb4Backend(address=(c_uint8 * 4)(*ip4(address)), port=(c_uint8 * 2)(*port16(port)),
                            proto=PROTOCOLS[protocol], flags=state))


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "little")


def revnat_value(address: str, port: int) -> bytes:
    return bytes(Lb4ReverseNat(address=(c_uint8 * 4)(*ip4(address)), port=(c_uint8 * 2)(*port16(port))))


def affinity_match_key(backend_id: int, rev_nat_id: int) -> bytes:
    return bytes(LbAffinityMatch(backend_id=backend_id, rev_nat_id=rev_nat_id))
