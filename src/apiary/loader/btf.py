"""Read struct layouts and .rodata variables from an object's BTF (through libbpf)."""

from __future__ import annotations

import ctypes
from typing import Any

from . import _libbpf as L
from .errors import BpfError

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION = 1, 2, 3, 4, 5
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_VAR, KIND_DATASEC = 8, 9, 10, 14, 15


class Btf:
    """A view of a BTF object owned by someone else (a BpfObject) or parsed from a file."""

    def __init__(self, ptr: int | None, owner: Any = None, owned: bool = False) -> None:
        self.ptr = ptr
        self.owner = owner  # keeps the owning object alive
        self.owned = owned

    @classmethod
    def from_file(cls, path: str) -> Btf:
        ptr = L.lib.btf__parse(path.encode(), None)
        if not ptr or L.lib.libbpf_get_error(ptr):
            raise BpfError(f"parse BTF {path}", L.errno())
        return cls(ptr, owned=True)

    def close(self) -> None:
        if self.owned and self.ptr:
            L.lib.btf__free(self.ptr)
            self.ptr = None

    def _t(self, tid: int) -> L.BtfType:
        return L.lib.btf__type_by_id(self.ptr, tid).contents

    def _name(self, off: int) -> str:
        return (L.lib.btf__name_by_offset(self.ptr, off) or b"").decode()

    def find(self, name: str, kind: int) -> int:
        if not self.ptr:
            raise BpfError("object has no BTF (build with clang -g)")
        tid = L.lib.btf__find_by_name_kind(self.ptr, name.encode(), kind)
        if tid < 0:
            raise BpfError(f"BTF has no {name!r}")
        return tid

    def _extra(self, tid: int, cls: type[ctypes.Structure], n: int) -> list[Any]:
        base = ctypes.addressof(self._t(tid)) + ctypes.sizeof(L.BtfType)
        return [cls.from_address(base + i * ctypes.sizeof(cls)) for i in range(n)]

    def struct_layout(self, name: str) -> tuple[int, dict[str, tuple[int, int]]]:
        """(size, {member: (byte offset, byte size)}) of ``struct name``."""
        tid = self.find(name, KIND_STRUCT)
        t = self._t(tid)
        vlen = t.info & 0xFFFF
        kflag = t.info >> 31
        members: dict[str, tuple[int, int]] = {}
        for m in self._extra(tid, L.BtfMember, vlen):
            bit_off = m.offset & 0xFFFFFF if kflag else m.offset
            members[self._name(m.name_off)] = (bit_off // 8, L.lib.btf__resolve_size(self.ptr, m.type))
        return t.size_or_type, members

    def datasec(self, name: str) -> dict[str, tuple[int, int]]:
        """{variable: (offset, size)} of a data section such as .rodata."""
        tid = L.lib.btf__find_by_name_kind(self.ptr, name.encode(), KIND_DATASEC) if self.ptr else -1
        if tid < 0:
            return {}
        vlen = self._t(tid).info & 0xFFFF
        out: dict[str, tuple[int, int]] = {}
        for v in self._extra(tid, L.BtfVarSecinfo, vlen):
            out[self._name(self._t(v.type).name_off)] = (v.offset, v.size)
        return out
