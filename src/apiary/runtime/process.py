"""The process sensor: exec/fork/exit programs, the live-process map and the event ring buffer."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from apiary.loader import BPF_NOEXIST, BpfError, BpfObject, Map, RingBuffer, TracepointLink, TracingLink, TypedMap
from apiary.loader.fs import remove_pin_tree
from apiary.observe.raw import EXEC_F_PROCFS, ExecMsg

from . import process_abi as abi
from .paths import bpf_object

PROGRAMS = {
    "on_exec": "tp_btf/sched_process_exec",
    "on_fork": "tp_btf/sched_process_fork",
    "on_exit": "tp_btf/sched_process_exit",
}


@dataclass
class SensorInfo:
    """What the sensor loaded, for status and `apiary bpf list`."""

    programs: list[tuple[str, int, str]] = field(default_factory=list)  # name, prog fd, attach point
    pins: dict[str, str] = field(default_factory=dict)  # map name -> pin path


class ProcessSensor:
    """Loads and attaches the process programs as one unit; ``close()`` detaches and unpins all."""

    name = "process"

    def __init__(
        self,
        pin_dir: str | Path | None = None,
        ringbuf_bytes: int | None = None,
        procs_max: int | None = None,
        bench_tgid: int = 0,
        wakeup_bytes: int = 0,
        obj_path: str | Path | None = None,
    ) -> None:
        self.pin_dir = Path(pin_dir) if pin_dir else None
        self.ringbuf_bytes = ringbuf_bytes
        self.procs_max = procs_max
        self.bench_tgid = bench_tgid
        self.wakeup_bytes = wakeup_bytes
        self.obj_path = Path(obj_path) if obj_path else bpf_object("process")
        self.obj: BpfObject | None = None
        self.links: list[TracingLink | TracepointLink] = []
        self.ring: RingBuffer | None = None
        self.info = SensorInfo()
        self.seed_full = 0  # processes from /proc that did not fit the kernel's table

    def load(self) -> None:
        obj = BpfObject(self.obj_path, "process")
        try:
            if self.ringbuf_bytes:
                size = self.ringbuf_bytes
                if size < 4096 or size & (size - 1):
                    raise BpfError(f"ring buffer size {size}: must be a power of two of at least 4096 bytes")
                obj.set_max_entries("events", size)
            if self.procs_max:
                obj.set_max_entries("procs", self.procs_max)
            obj.program("bench_event").autoload = bool(self.bench_tgid)
            obj.set_rodata(bench_tgid=self.bench_tgid, wakeup_bytes=self.wakeup_bytes)
            obj.load()
            self.obj = obj
            for name, point in PROGRAMS.items():
                self.links.append(TracingLink.attach(obj.program(name)))
                self.info.programs.append((name, obj.program(name).fd, point))
            if self.bench_tgid:
                self.links.append(TracepointLink.attach(obj.program("bench_event"), "syscalls", "sys_enter_getppid"))
                self.info.programs.append(
                    ("bench_event", obj.program("bench_event").fd, "tracepoint/syscalls/sys_enter_getppid")
                )
            self.ring = RingBuffer(obj.map("events"))
            if self.pin_dir:
                remove_pin_tree(self.pin_dir)
                os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
                for m in ("procs", "counters"):
                    path = str(self.pin_dir / m)
                    obj.map(m).pin(path)
                    self.info.pins[m] = path
        except BaseException:
            self.obj = obj
            self.close()
            raise
        self.procs = TypedMap(obj.map("procs"), "<I", "<QQII")
        self.counters_map = TypedMap(obj.map("counters"), "<I", "<Q")

    # --- kernel state -----------------------------------------------------------------------
    def seed(self, msgs: list[ExecMsg]) -> int:
        """Tell the kernel about processes that existed before the sensor (from /proc).

        Entries the kernel created meanwhile win (BPF_NOEXIST). Returns entries written; those that
        did not fit (the table is smaller than the processes running) are counted in ``seed_full``.
        """
        n = 0
        self.seed_full = 0
        for m in msgs:
            flags = abi.PROC_F_EXECED | (abi.PROC_F_PROCFS if m.flags & EXEC_F_PROCFS else 0)
            try:
                self.procs.put(m.pid, (m.ktime, m.parent_ktime, m.ppid, flags), BPF_NOEXIST)
                n += 1
            except BpfError as e:
                if e.errno == 7:  # E2BIG: the table is full
                    self.seed_full += 1
                elif e.errno != 17:  # EEXIST: the kernel saw it first
                    raise
        return n

    def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(abi.CNT_NAMES):
            out[name] = self.counters_map.sum_percpu(i) or 0
        return out

    def maps(self) -> dict[str, Map]:
        return self.obj.maps if self.obj else {}

    def close(self) -> None:
        for link in self.links:
            link.destroy()
        self.links.clear()
        if self.ring:
            self.ring.close()
            self.ring = None
        if self.pin_dir and self.info.pins:
            remove_pin_tree(self.pin_dir)
            self.info.pins.clear()
        if self.obj:
            self.obj.close()
            self.obj = None
