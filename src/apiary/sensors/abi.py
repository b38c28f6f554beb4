"""The registry of every kernel ABI mirrored in Python, and the one mirroring style they share.

Every struct that BPF and Python both read or write is declared once, as a ``ctypes.Structure`` whose
members carry the C names (padding included), in the ``abi`` module of its sensor. Each such module
lists them in ``STRUCTS`` ({C struct name: mirror}), names the built object whose BTF holds them
(``OBJECT``) and its header (``HEADER``), the header's structs Python never touches (``KERNEL_ONLY``)
and the header constants it shares (``DEFINES``: {C macro or enumerator: Python value}). A test
compares every mirror with the BTF of the built object (size, each member's name, offset and size) and
every ``DEFINES`` entry with the header, so a change on one side only fails there instead of corrupting
records. Hot decoders unpack with ``packed(cls)``: a ``struct.Struct`` derived from the mirror (padding
skipped), never a second hand-written layout.
"""

from __future__ import annotations

import ctypes
import importlib
import struct
from enum import IntEnum
from types import ModuleType
from typing import TypeVar

# the sensor ABI modules, in the order their objects load
MIRRORS = (
    "apiary.sensors.process.abi",
    "apiary.sensors.tracing.abi",
    "apiary.sensors.network.abi",
    "apiary.sensors.prefilter.abi",
    "apiary.sensors.lb.abi",
)


class MsgType(IntEnum):
    """The type byte every record of the shared ring buffer starts with (process_abi.h and tracing_abi.h
    MSG_*); datapath flows have their own ring and Cilium's monitor types (observe.hubble.raw)."""

    EXEC = 1
    FORK = 2
    EXIT = 3
    GENERIC = 10  # a tracing hook's event
    BENCH = 100


def mirrors() -> list[ModuleType]:
    return [importlib.import_module(m) for m in MIRRORS]


def layout(cls: type[ctypes.Structure]) -> tuple[int, dict[str, tuple[int, int]]]:
    """(size, {member: (offset, size)}) of a mirror, as BTF states a struct's."""
    return ctypes.sizeof(cls), {f[0]: (getattr(cls, f[0]).offset, getattr(cls, f[0]).size) for f in cls._fields_}


_CODES: dict[type, str] = {
    ctypes.c_uint8: "B",
    ctypes.c_int8: "b",
    ctypes.c_uint16: "H",
    ctypes.c_int16: "h",
    ctypes.c_uint32: "I",
    ctypes.c_int32: "i",
    ctypes.c_uint64: "Q",
    ctypes.c_int64: "q",
}


def _code(t: type) -> str:
    if issubclass(t, ctypes.Structure):
        return _body(t)
    if issubclass(t, ctypes.Array):
        elem: type = t._type_  # type: ignore[assignment]  # typeshed types _type_ as ctypes' type code
        if elem in (ctypes.c_uint8, ctypes.c_char):  # byte arrays (addresses in network order): bytes
            return f"{t._length_}s"
        n: int = t._length_  # type: ignore[assignment]  # typeshed: a property on the class
        return _code(elem) * n
    return _CODES[t]


def _body(cls: type[ctypes.Structure]) -> str:
    fmt, pos = "", 0
    for name, typ, *_ in cls._fields_:
        f = getattr(cls, name)
        if f.offset > pos:
            fmt += f"{f.offset - pos}x"
        fmt += f"{f.size}x" if name.startswith("_") else _code(typ)
        pos = f.offset + f.size
    if ctypes.sizeof(cls) > pos:
        fmt += f"{ctypes.sizeof(cls) - pos}x"
    return fmt


def packed(cls: type[ctypes.Structure]) -> struct.Struct:
    """A little-endian ``struct.Struct`` of a mirror: members in order, nested structs flattened, arrays as
    one value per element (byte arrays as one ``bytes``), padding members skipped."""
    s = struct.Struct("<" + _body(cls))
    assert s.size == ctypes.sizeof(cls), cls
    return s


_S = TypeVar("_S", bound=ctypes.Structure)


def from_bytes(cls: type[_S], raw: bytes | memoryview) -> _S:
    """A record as the kernel sent it: it may be shorter than the struct (the rest is zero)."""
    size = ctypes.sizeof(cls)
    return cls.from_buffer_copy(bytes(raw[:size]).ljust(size, b"\0"))
