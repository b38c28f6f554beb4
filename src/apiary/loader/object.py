"""BPF object files: open, set read-only config, choose programs, load; programs and their info."""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _libbpf as L
from .btf import Btf
from .errors import BpfError, VerifierError, from_errno
from .maps import Map

PROG_TYPES = {
    0: "unspec",
    1: "socket_filter",
    2: "kprobe",
    3: "sched_cls",
    4: "sched_act",
    5: "tracepoint",
    6: "xdp",
    7: "perf_event",
    8: "cgroup_skb",
    9: "cgroup_sock",
    10: "lwt_in",
    11: "lwt_out",
    12: "lwt_xmit",
    13: "sock_ops",
    14: "sk_skb",
    15: "cgroup_device",
    16: "sk_msg",
    17: "raw_tracepoint",
    18: "cgroup_sock_addr",
    19: "lwt_seg6local",
    20: "lirc_mode2",
    21: "sk_reuseport",
    22: "flow_dissector",
    23: "cgroup_sysctl",
    24: "raw_tracepoint_writable",
    25: "cgroup_sockopt",
    26: "tracing",
    27: "struct_ops",
    28: "ext",
    29: "lsm",
    30: "sk_lookup",
    31: "syscall",
}


def prog_info(fd: int) -> L.BpfProgInfo:
    info = L.BpfProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if L.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise BpfError("get program info", L.errno())
    return info


class Program:
    """One program of a BpfObject (valid while the object is open)."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self.obj = obj
        self.ptr = ptr
        self.name: str = L.lib.bpf_program__name(ptr).decode()
        self.section: str = L.lib.bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return L.lib.bpf_program__fd(self.ptr)

    @property
    def type_name(self) -> str:
        return PROG_TYPES.get(L.lib.bpf_program__type(self.ptr), "?")

    @property
    def autoload(self) -> bool:
        return bool(L.lib.bpf_program__autoload(self.ptr))

    @autoload.setter
    def autoload(self, on: bool) -> None:
        if self.obj.loaded:
            raise BpfError(f"program {self.name}: autoload can only change before load")
        L.lib.bpf_program__set_autoload(self.ptr, on)

    @property
    def loaded(self) -> bool:
        return self.fd >= 0

    def info(self) -> L.BpfProgInfo:
        return prog_info(self.fd)

    def test_run(
        self, data: bytes = b"", ctx: bytes | None = None, repeat: int = 1, data_out_size: int = 0
    ) -> tuple[int, int, bytes]:
        """BPF_PROG_TEST_RUN: returns (retval, average ns per run, data out)."""
        din = ctypes.create_string_buffer(data, len(data)) if data else None
        dout = ctypes.create_string_buffer(data_out_size) if data_out_size else None
        cin = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
        opts = L.BpfTestRunOpts(
            sz=ctypes.sizeof(L.BpfTestRunOpts),
            data_in=ctypes.cast(din, ctypes.c_void_p) if din else None,
            data_size_in=len(data),
            data_out=ctypes.cast(dout, ctypes.c_void_p) if dout else None,
            data_size_out=data_out_size,
            ctx_in=ctypes.cast(cin, ctypes.c_void_p) if cin else None,
            ctx_size_in=len(ctx) if ctx else 0,
            repeat=repeat,
        )
        if L.lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)) != 0:
            raise from_errno(f"test run program {self.name}", L.errno(), "BPF_PROG_TEST_RUN for " + self.type_name)
        out = dout.raw[: opts.data_size_out] if dout else b""
        return opts.retval, opts.duration, out

    def __repr__(self) -> str:
        return f"<Program {self.name} sec={self.section}>"


class BpfObject:
    """An ELF object file opened with libbpf. Configure, then ``load()``; ``close()`` frees all."""

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BpfError(f"open BPF object {self.path}", 2, "file not found (run `make build`)")
        self.name = name or self.path.name.split(".")[0]
        opts = L.BpfObjectOpenOpts(sz=ctypes.sizeof(L.BpfObjectOpenOpts))
        with L.captured_log() as log:
            ptr = L.lib.bpf_object__open_file(str(self.path).encode(), ctypes.byref(opts))
        if not ptr:
            raise BpfError(f"open BPF object {self.path}", L.errno(), _last(log))
        self.ptr: int | None = ptr
        self.loaded = False
        self.programs: dict[str, Program] = {}
        p = L.lib.bpf_object__next_program(ptr, None)
        while p:
            prog = Program(self, p)
            self.programs[prog.name] = prog
            p = L.lib.bpf_object__next_program(ptr, p)
        self._map_ptrs: dict[str, int] = {}
        m = L.lib.bpf_object__next_map(ptr, None)
        while m:
            self._map_ptrs[L.lib.bpf_map__name(m).decode()] = m
            m = L.lib.bpf_object__next_map(ptr, m)
        self._maps: dict[str, Map] = {}
        self.btf = Btf(L.lib.bpf_object__btf(ptr), owner=self)

    # --- before load -----------------------------------------------------------------------------
    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise BpfError(f"{self.name}: no program named {name!r}") from None

    def set_rodata(self, **values: Any) -> None:
        """Set ``const volatile`` globals before load (libbpf-tools style configuration)."""
        if self.loaded:
            raise BpfError(f"{self.name}: read-only data can only be set before load")
        sec = next((n for n in self._map_ptrs if n.endswith(".rodata")), None)
        if sec is None:
            raise BpfError(f"{self.name}: object has no .rodata section")
        size = ctypes.c_size_t(0)
        base = L.lib.bpf_map__initial_value(self._map_ptrs[sec], ctypes.byref(size))
        layout = self.btf.datasec(".rodata")
        for key, val in values.items():
            if key not in layout:
                raise BpfError(f"{self.name}: no const volatile variable {key!r} in .rodata")
            off, vsize = layout[key]
            if isinstance(val, bool | int):
                raw = int(val).to_bytes(vsize, "little", signed=int(val) < 0)
            elif isinstance(val, bytes):
                if len(val) > vsize:
                    raise BpfError(f"{self.name}: value for {key} is {len(val)} bytes, room for {vsize}")
                raw = val.ljust(vsize, b"\0")
            else:
                raise TypeError(f"rodata {key}: int, bool or bytes, not {type(val).__name__}")
            ctypes.memmove(base + off, raw, vsize)

    def set_max_entries(self, map_name: str, n: int) -> None:
        if map_name not in self._map_ptrs:
            raise BpfError(f"{self.name}: no map named {map_name!r}")
        if L.lib.bpf_map__set_max_entries(self._map_ptrs[map_name], n) != 0:
            raise BpfError(f"{self.name}: set max_entries of {map_name}", L.errno())

    def set_value_size(self, map_name: str, n: int) -> None:
        if map_name not in self._map_ptrs:
            raise BpfError(f"{self.name}: no map named {map_name!r}")
        if L.lib.bpf_map__set_value_size(self._map_ptrs[map_name], n) != 0:
            raise BpfError(f"{self.name}: set value_size of {map_name}", L.errno())

    def map_names(self) -> list[str]:
        """The names of the object's maps (before or after load), internal ones (.rodata…) included."""
        return list(self._map_ptrs)

    def reuse_map(self, map_name: str, fd: int) -> None:
        """Use an existing (e.g. pinned) map instead of creating this one at load."""
        if L.lib.bpf_map__reuse_fd(self._map_ptrs[map_name], fd) != 0:
            raise BpfError(f"{self.name}: reuse map {map_name}", L.errno())

    def load(self) -> None:
        if self.ptr is None:
            raise BpfError(f"{self.name}: object is closed")
        with L.captured_log() as log:
            rc = L.lib.bpf_object__load(self.ptr)
        if rc != 0:
            err = L.errno() or -rc
            text = "\n".join(log)
            failed = _failed_program(text) or self.name
            if _has_verifier_log(text):
                raise VerifierError(f"load program {failed}", err, text)
            raise from_errno(f"load program {failed}", err, f"program type {_prog_type(self, failed)}", _last(log))
        self.loaded = True
        for n, mp in self._map_ptrs.items():
            fd = L.lib.bpf_map__fd(mp)
            if fd >= 0:
                self._maps[n] = Map(fd, n)

    # --- after load ------------------------------------------------------------------------------
    def map(self, name: str) -> Map:
        try:
            return self._maps[name]
        except KeyError:
            raise BpfError(f"{self.name}: no loaded map named {name!r}") from None

    @property
    def maps(self) -> dict[str, Map]:
        return dict(self._maps)

    def loaded_programs(self) -> Iterator[Program]:
        return (p for p in self.programs.values() if p.loaded)

    def close(self) -> None:
        if self.ptr is not None:
            L.lib.bpf_object__close(self.ptr)
            self.ptr = None
            self._maps.clear()

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last(log: list[str]) -> str:
    lines = [ln.strip() for ln in "".join(log).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _failed_program(text: str) -> str | None:
    # libbpf: "libbpf: prog 'name': BPF program load failed: ..." / "failed to load program 'name'"

    m = re.search(r"prog '([^']+)': (?:BPF program load failed|failed to load)", text)
    if not m:
        m = re.search(r"failed to load program '([^']+)'", text)
    return m.group(1) if m else None


def _has_verifier_log(text: str) -> bool:
    if "-- BEGIN PROG LOAD LOG --" not in text:
        return False
    body = text.split("-- BEGIN PROG LOAD LOG --", 1)[1].split("-- END PROG LOAD LOG --", 1)[0]
    return bool(body.strip())


def _prog_type(obj: BpfObject, prog: str) -> str:
    p = obj.programs.get(prog)
    return f"{p.type_name} ({p.section})" if p else "?"
