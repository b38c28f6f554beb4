"""BPF maps by file descriptor: typed get/put/delete/iterate, batch operations, info, pinning."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from typing import Any

from . import _libbpf as L
from .errors import NO_SUCH_COMMAND, BpfError

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

MAP_TYPES = {
    1: "hash",
    2: "array",
    3: "prog_array",
    4: "perf_event_array",
    5: "percpu_hash",
    6: "percpu_array",
    7: "stack_trace",
    8: "cgroup_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
    12: "array_of_maps",
    13: "hash_of_maps",
    14: "devmap",
    15: "sockmap",
    16: "cpumap",
    17: "xskmap",
    18: "sockhash",
    19: "cgroup_storage",
    20: "reuseport_sockarray",
    21: "percpu_cgroup_storage",
    22: "queue",
    23: "stack",
    24: "sk_storage",
    25: "devmap_hash",
    26: "struct_ops",
    27: "ringbuf",
    28: "inode_storage",
    29: "task_storage",
    30: "bloom_filter",
}
PERCPU_TYPES = {5, 6, 10, 21}
_HASHLIKE = {1, 5, 9, 10, 11, 13}


def possible_cpus() -> int:
    try:
        text = open("/sys/devices/system/cpu/possible").read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def map_info(fd: int) -> L.BpfMapInfo:
    info = L.BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if L.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise BpfError("get map info", L.errno())
    return info


class Map:
    """A kernel map reached through a file descriptor this object owns (or borrows)."""

    def __init__(self, fd: int, name: str | None = None, *, owned: bool = False) -> None:
        info = map_info(fd)
        self.fd = fd
        self.owned = owned
        self.id = info.id
        self.name = name or info.name.decode()
        self.type = info.type
        self.type_name = MAP_TYPES.get(info.type, str(info.type))
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.map_flags
        self.percpu = info.type in PERCPU_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1
        # per-CPU values are arrays of 8-byte-aligned slots, one per possible CPU
        self.slot = (self.value_size + 7) & ~7 if self.percpu else self.value_size
        self.value_buf_size = self.slot * self.ncpus

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_pin(cls, path: str) -> Map:
        fd = L.lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError(f"open pinned map {path}", L.errno())
        return cls(fd, owned=True)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        fd = L.lib.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise BpfError(f"open map id {map_id}", L.errno())
        return cls(fd, owned=True)

    @classmethod
    def create(cls, map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> Map:
        fd = L.lib.bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries, None)
        if fd < 0:
            raise BpfError(f"create map {name}", L.errno())
        return cls(fd, name, owned=True)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pin(self, path: str) -> None:
        if L.lib.bpf_obj_pin(self.fd, path.encode()) != 0:
            raise BpfError(f"pin map {self.name} at {path}", L.errno())

    # --- raw byte operations -------------------------------------------------------------------
    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(key)} bytes, map wants {self.key_size}")
        return ctypes.create_string_buffer(key, self.key_size)

    def lookup(self, key: bytes) -> bytes | None:
        kb = self._key(key)
        vb = ctypes.create_string_buffer(self.value_buf_size)
        if L.lib.bpf_map_lookup_elem(self.fd, kb, vb) != 0:
            err = L.errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(f"lookup in map {self.name}", err)
        return vb.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.value_buf_size:
            raise ValueError(f"map {self.name}: value is {len(value)} bytes, map wants {self.value_buf_size}")
        if L.lib.bpf_map_update_elem(self.fd, self._key(key), ctypes.create_string_buffer(value), flags) != 0:
            raise BpfError(f"update map {self.name}", L.errno())

    def delete(self, key: bytes) -> bool:
        if L.lib.bpf_map_delete_elem(self.fd, self._key(key)) != 0:
            err = L.errno()
            if err == errno.ENOENT:
                return False
            raise BpfError(f"delete from map {self.name}", err)
        return True

    def keys(self) -> Iterator[bytes]:
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while L.lib.bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def count(self) -> int:
        """Entries in use: the number of keys for hash-like maps, max_entries for arrays."""
        if self.type not in _HASHLIKE:
            return self.max_entries
        return sum(1 for _ in self.keys())

    def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """All entries with BPF_MAP_LOOKUP_BATCH; falls back to iteration where unsupported."""
        out: list[tuple[bytes, bytes]] = []
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        vals = ctypes.create_string_buffer(self.value_buf_size * chunk)
        in_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        out_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        opts = L.BpfMapBatchOpts(sz=ctypes.sizeof(L.BpfMapBatchOpts))
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = L.lib.bpf_map_lookup_batch(
                self.fd, None if first else in_batch, out_batch, keys, vals, ctypes.byref(count), opts
            )
            err = L.errno() if rc != 0 else 0
            if rc != 0 and err != errno.ENOENT:  # ENOENT = done
                if first and err in NO_SUCH_COMMAND:
                    return list(self.items())
                raise BpfError(f"batch lookup in map {self.name}", err)
            n = count.value
            kr, vr = keys.raw, vals.raw
            for i in range(n):
                out.append(
                    (
                        kr[i * self.key_size : (i + 1) * self.key_size],
                        vr[i * self.value_buf_size : (i + 1) * self.value_buf_size],
                    )
                )
            if rc != 0:
                return out
            ctypes.memmove(in_batch, out_batch, len(out_batch))
            first = False

    def update_batch(self, entries: list[tuple[bytes, bytes]], flags: int = BPF_ANY) -> None:
        if not entries:
            return
        kb = ctypes.create_string_buffer(b"".join(k for k, _ in entries))
        vb = ctypes.create_string_buffer(b"".join(v for _, v in entries))
        count = ctypes.c_uint32(len(entries))
        opts = L.BpfMapBatchOpts(sz=ctypes.sizeof(L.BpfMapBatchOpts), elem_flags=flags)
        if L.lib.bpf_map_update_batch(self.fd, kb, vb, ctypes.byref(count), opts) != 0:
            err = L.errno()
            if err in NO_SUCH_COMMAND:
                for k, v in entries[count.value :]:
                    self.update(k, v, flags)
                return
            raise BpfError(f"batch update of map {self.name} ({count.value}/{len(entries)} written)", err)

    def delete_batch(self, keys: list[bytes]) -> int:
        """Delete ``keys`` with BPF_MAP_DELETE_BATCH (one call for all of them; one at a time where the map
        type has no batch operations). Keys that are not there are skipped. Returns how many were deleted."""
        done, start = 0, 0
        while start < len(keys):
            rest = keys[start:]
            kb = ctypes.create_string_buffer(b"".join(rest), self.key_size * len(rest))
            if any(len(k) != self.key_size for k in rest):
                raise ValueError(f"map {self.name}: every key must be {self.key_size} bytes")
            count = ctypes.c_uint32(len(rest))
            opts = L.BpfMapBatchOpts(sz=ctypes.sizeof(L.BpfMapBatchOpts))
            if L.lib.bpf_map_delete_batch(self.fd, kb, ctypes.byref(count), opts) == 0:
                return done + len(rest)
            err = L.errno()
            n = min(count.value, len(rest))
            done += n
            if err == errno.ENOENT:  # the key at n is not there; go on after it
                start += n + 1
            elif err in NO_SUCH_COMMAND and n == 0:  # no batch operations on this map type (or kernel)
                return done + sum(self.delete(k) for k in rest)
            else:
                raise BpfError(f"batch delete from map {self.name} ({done}/{len(keys)} deleted)", err)
        return done

    # --- per-CPU helpers -------------------------------------------------------------------------
    def percpu_values(self, raw: bytes) -> list[bytes]:
        return [raw[i * self.slot : i * self.slot + self.value_size] for i in range(self.ncpus)]

    def __repr__(self) -> str:
        return f"<Map {self.name} id={self.id} {self.type_name} {self.key_size}/{self.value_size}x{self.max_entries}>"


class TypedMap:
    """A Map with struct formats for key and value (``struct`` module syntax, explicit byte order)."""

    def __init__(self, m: Map, key_fmt: str, value_fmt: str) -> None:
        self.map = m
        self.k = struct.Struct(key_fmt)
        self.v = struct.Struct(value_fmt)
        if self.k.size != m.key_size:
            raise ValueError(f"map {m.name}: key format {key_fmt!r} is {self.k.size} bytes, map has {m.key_size}")
        if self.v.size != m.value_size:
            raise ValueError(f"map {m.name}: value format {value_fmt!r} is {self.v.size} bytes, map has {m.value_size}")

    def _pk(self, key: Any) -> bytes:
        return self.k.pack(*key) if isinstance(key, tuple) else self.k.pack(key)

    def _unk(self, raw: bytes) -> Any:
        t = self.k.unpack(raw)
        return t[0] if len(t) == 1 else t

    def _unv(self, raw: bytes) -> Any:
        t = self.v.unpack(raw[: self.v.size])
        return t[0] if len(t) == 1 else t

    def get(self, key: Any) -> Any:
        raw = self.map.lookup(self._pk(key))
        if raw is None:
            return None
        if self.map.percpu:
            return [self._unv(v) for v in self.map.percpu_values(raw)]
        return self._unv(raw)

    def put(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        vb = self.v.pack(*value) if isinstance(value, tuple) else self.v.pack(value)
        if self.map.percpu:
            vb = (vb + b"\0" * (self.map.slot - len(vb))) * self.map.ncpus
        self.map.update(self._pk(key), vb, flags)

    def delete(self, key: Any) -> bool:
        return self.map.delete(self._pk(key))

    def items(self) -> Iterator[tuple[Any, Any]]:
        for k, v in self.map.items():
            if self.map.percpu:
                yield self._unk(k), [self._unv(x) for x in self.map.percpu_values(v)]
            else:
                yield self._unk(k), self._unv(v)

    def sum_percpu(self, key: Any) -> Any:
        """Sum a per-CPU counter (a single integer or a tuple of integers) across CPUs."""
        vals = self.get(key)
        if vals is None:
            return None
        if isinstance(vals[0], tuple):
            return tuple(sum(col) for col in zip(*vals, strict=True))
        return sum(vals)
