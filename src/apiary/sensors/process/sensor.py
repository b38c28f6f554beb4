"""The process sensor: exec/fork/exit programs, the live-process map and the event ring buffer.

With a pin directory its links and maps are pinned (layout in sensors/pins.py): a killed agent leaves them
working, so the binary and process maps the tracing sensor's matchBinaries / followChildren read stay
current, and the next agent adopts them. ``close()`` removes them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from apiary.loader import (
    BPF_NOEXIST,
    BpfError,
    BpfObject,
    Map,
    PinnedLink,
    RingBuffer,
    TracepointLink,
    TracingLink,
    TypedMap,
)
from apiary.loader.paths import bpf_object
from apiary.observe.raw import EXEC_F_PROCFS, ExecMsg
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts, link_rows
from apiary.sensors.pins import PinSet, keep_links, object_digest
from apiary.sensors.process import abi

PROGRAMS = {
    "on_exec": "tp_btf/sched_process_exec",
    "on_fork": "tp_btf/sched_process_fork",
    "on_exit": "tp_btf/sched_process_exit",
}
# kept across agent restarts (shared with the tracing sensor: events, procs, binaries)
PINNED = ("events", "counters", "procs", "binaries")
BIN_MAX = abi.BIN_MAX


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
        self.links: list[TracingLink | TracepointLink | PinnedLink] = []
        self.ring: RingBuffer | None = None
        self.info = SensorInfo()
        self.seed_full = 0  # processes from /proc that did not fit the kernel's table
        self.pins: PinSet | None = None
        self.adopted = False  # the maps and links are those a previous agent pinned

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
            manifest = None
            if self.pin_dir:
                ident = {
                    "object": object_digest(self.obj_path),
                    "ringbuf": self.ringbuf_bytes or 0,
                    "procs": self.procs_max or 0,
                    "wakeup": self.wakeup_bytes,
                }
                self.pins = PinSet(self.pin_dir, ident)
                manifest = self.pins.open()
                self.adopted = manifest is not None
                if manifest is None:
                    self.pins.create()
            if self.pins:
                self.pins.load(obj, PINNED, self.adopted)
            else:
                obj.load()
            self.obj = obj
            for name, point in PROGRAMS.items():
                link = self._link(name, point)
                self.links.append(link)
                self.info.programs.append((name, link.prog.fd, point))  # an adopted link keeps its program
            if self.bench_tgid:
                self.links.append(TracepointLink.attach(obj.program("bench_event"), "syscalls", "sys_enter_getppid"))
                self.info.programs.append(
                    ("bench_event", obj.program("bench_event").fd, "tracepoint/syscalls/sys_enter_getppid")
                )
            self.ring = RingBuffer(obj.map("events"))
            if self.pins:
                for m in PINNED:
                    self.info.pins[m] = self.pins.map_path(m)
                if not self.adopted:
                    self.pins.write({"links": {n: [self.pins.link_path(n), point] for n, point in PROGRAMS.items()}})
        except BaseException:
            self.obj = obj
            self.close()
            raise
        self.procs = TypedMap(obj.map("procs"), "<I", "<QQII")
        self.counters_map = TypedMap(obj.map("counters"), "<I", "<Q")

    def _link(self, name: str, point: str) -> TracingLink | PinnedLink:
        """The pinned link a previous agent left for this program, else a new one (pinned when pinning)."""
        assert self.obj is not None
        if self.pins and self.adopted:
            old = self.pins.adopt_link(name, point)
            if old is not None:
                return old
        link = TracingLink.attach(self.obj.program(name))
        if self.pins:
            try:
                link.pin(self.pins.link_path(name))
            except BaseException:
                link.destroy()
                raise
        return link

    # --- kernel state -----------------------------------------------------------------------
    def seed(self, msgs: list[ExecMsg]) -> int:
        """Tell the kernel about processes that existed before the sensor (from /proc): their entries in
        the live-process map and the binary map (what matchBinaries reads), as the exec program writes them.

        Entries the kernel created meanwhile win (BPF_NOEXIST). Returns process entries written; those that
        did not fit (the table is smaller than the processes running) are counted in ``seed_full``.
        """
        n = 0
        self.seed_full = 0
        assert self.obj is not None
        binaries = self.obj.map("binaries")
        for m in msgs:
            flags = abi.PROC_F_EXECED | (abi.PROC_F_PROCFS if m.flags & EXEC_F_PROCFS else 0)
            entry = (m.ktime, m.parent_ktime, m.ppid, flags)
            wrote = _put_new(partial(self.procs.put, m.pid, entry, BPF_NOEXIST))
            if wrote < 0:
                self.seed_full += 1
                continue
            n += wrote
            value = binary_entry(m.binary)
            if value is not None:
                _put_new(partial(binaries.update, m.pid.to_bytes(4, "little"), value, BPF_NOEXIST))
        return n

    def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(abi.CNT_NAMES):
            out[name] = self.counters_map.sum_percpu(i) or 0
        return out

    def maps(self) -> dict[str, Map]:
        return self.obj.maps if self.obj else {}

    # --- the Sensor shape (sensors/base.py) ---------------------------------------------------
    def program_rows(self) -> list[ProgramRow]:
        if not self.obj:
            return []
        link_ids = {lk.prog.name: getattr(lk, "id", 0) for lk in self.links}
        return [ProgramRow(name, fd, point, link_ids.get(name, 0)) for name, fd, point in self.info.programs]

    def link_rows(self) -> list[LinkRow]:
        return link_rows(self.links) if self.obj else []

    def owned_maps(self) -> list[OwnedMap]:
        # the ring, process and binary maps are shared with the tracing sensor: reported here, by their owner
        return [
            OwnedMap(name, m, self.info.pins.get(name), in_status=not _internal(name))
            for name, m in self.maps().items()
        ]

    def records_into(self) -> RingBuffer | None:
        return self.ring

    def handlers(self) -> Mapping[int, RecordHandler]:
        return {
            abi.MSG_EXEC: RecordHandler("exec", abi.decode),
            abi.MSG_FORK: RecordHandler("fork", abi.decode),
            abi.MSG_EXIT: RecordHandler("exit", abi.decode),
            abi.MSG_BENCH: RecordHandler("bench", abi.decode),
        }

    def ring_counts(self) -> RingCounts:
        if not self.obj:
            return RingCounts({}, {})
        kc = self.counters()
        kinds = ("exec", "fork", "exit", "bench")
        return RingCounts({k: kc.get(k, 0) for k in kinds}, {k: kc.get("lost_" + k, 0) for k in kinds}, kc)

    def close(self, keep_pins: bool = False) -> None:
        """``keep_pins`` (--keep-sensors-on-exit): the links stay attached and the maps pinned, as after a kill."""
        if keep_pins:
            keep_links(self.links)
        for link in self.links:
            link.destroy()
        self.links.clear()
        if self.ring:
            self.ring.close()
            self.ring = None
        if self.pins:
            self.pins.release(keep_pins)
            self.pins = None
            self.info.pins.clear()
        if self.obj:
            self.obj.close()
            self.obj = None


def _internal(name: str) -> bool:
    """Maps status does not list: the object's globals and its ABI type anchor."""
    return name.endswith((".rodata", ".bss", ".data")) or name == "abi_types"


def binary_entry(path: str) -> bytes | None:
    """The binary map's value for an executable path from /proc/PID/exe (struct proc_binary: len, path[256]),
    as the exec program writes it: the file's full path, cut to BIN_MAX - 1 bytes. None for no path."""
    if not path.startswith("/"):
        return None
    if path.endswith(" (deleted)") and not os.path.exists(path):
        path = path.removesuffix(" (deleted)")  # the kernel's walk of an unlinked file has no such suffix
    return abi.binary_entry(os.fsencode(path))


def _put_new(write: Callable[[], None]) -> int:
    """1 when a BPF_NOEXIST write landed, 0 when the kernel had the entry already (it saw the process first),
    -1 when the map is full (E2BIG)."""
    try:
        write()
    except BpfError as e:
        if e.errno == errno.E2BIG:  # the table is full
            return -1
        if e.errno != errno.EEXIST:
            raise
        return 0
    return 1
