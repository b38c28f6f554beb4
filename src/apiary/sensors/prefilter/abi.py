"""Python side of bpf/include/prefilter_abi.h: the deny maps' key and value."""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint32

from .cidrs import Network

OBJECT, HEADER = "prefilter", "prefilter_abi.h"
PF_DEFAULT_ENTRIES = 16384


class V4Key(ctypes.Structure):
    _fields_ = [("prefixlen", c_uint32), ("addr", c_uint8 * 4)]


class V6Key(ctypes.Structure):
    _fields_ = [("prefixlen", c_uint32), ("addr", c_uint8 * 16)]


class Value(ctypes.Structure):
    _fields_ = [("id", c_uint32)]


STRUCTS: dict[str, type[ctypes.Structure]] = {"pf_v4_key": V4Key, "pf_v6_key": V6Key, "pf_value": Value}
KERNEL_ONLY: dict[str, str] = {}
DEFINES: dict[str, int] = {"PF_DEFAULT_ENTRIES": PF_DEFAULT_ENTRIES}


def key(net: Network) -> bytes:
    """The key of a prefix in its map (the same layout in the LPM trie and the exact hash, as Cilium)."""
    return net.prefixlen.to_bytes(4, "little") + net.network_address.packed


def value(slot: int) -> bytes:
    return bytes(Value(id=slot))
