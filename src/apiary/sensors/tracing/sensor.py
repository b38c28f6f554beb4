"""The generic syscall sensor: loads gsys.bpf.o next to the process sensor (sharing its ring buffer,
live-process and binary maps), writes TracingPolicy hooks into its maps, decodes its events.

Pins (with a pin directory; the agent uses ``<pin_root>/tracing``), so enforcement survives a killed agent:

    <pin_root>/process/{events,procs,binaries,counters}   the process sensor's maps (shared; see process.py)
    <pin_root>/process/links/on_{exec,fork,exit}        its links
    <pin_root>/tracing/manifest     array map, one entry: NUL-padded JSON (sensors/pins.py), with
        "identity": {object digest, lsm, kprobes, raw_tp}   (a mismatch: the whole directory is removed)
        "next_policy": int, "dyn": {attach name: pseudo number (the links' attach cookie)},
        "policies": {"<namespace>/<name>": {"id": policy id, "hooks": [gs_hooks index...], "cgroups": [...],
                     "digest": sha256 of the encoded hooks, "attach": {hook id: [[attach names], has return]}}},
        "follow": {gs_mb bit: [hook id, selector, "bin"|"pid"]},
        "links": {attach name: [pin path, what it is attached to]}
    <pin_root>/tracing/<map>        every gs_* map (gs_hooks, gs_syscalls, gs_scope, gs_mb, gs_follow, gs_counters…)
    <pin_root>/tracing/links/<quoted attach name>   one per attachment: a syscall name ("openat"),
        "__exit_<name>", "__kprobe_<fn>", "__uprobe_<path>:<sym>", "__tp_<subsys>/<event>", "__rawtp_<tp>",
        "__lsm_<hook>", "@connect4", "@connect6", "@follow_exec", "@follow_fork", "@follow_exit"

To switch a policy off without an agent: ``disable_pinned_policy(pin_dir, key)`` (zeroes its gs_hooks and
gs_follow entries, the "hooks" of its manifest entry, and drops it from the manifest), and drop it from
tracingpolicies.json; the next agent start removes its links and remaining entries. A clean
``close()`` removes the directory (``close(keep_pins=True)``, the agent's --keep-sensors-on-exit, leaves it as a
kill does); the next ``load()`` adopts it: the maps are reused, the links kept
(``adopt``), and each restored policy whose encoding is unchanged keeps its hooks; ``finish_adoption``
removes what no restored policy claimed.

TracingSensor is built from parts, one module each (state, links, follow, adoption, policies; see state.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apiary.kernel.features import kernel_at_least
from apiary.kernel.probes import tracepoint_record_loads
from apiary.loader import BpfObject, CgroupLink, RingBuffer, TypedMap
from apiary.loader.fs import cgroup2_root
from apiary.loader.paths import bpf_object
from apiary.observe.procfs import process_start_ticks
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts, link_rows
from apiary.sensors.pins import PinSet, keep_links, object_digest
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi
from apiary.sensors.tracing.adoption import disable_pinned_policy
from apiary.sensors.tracing.follow import ancestry, cgroup_id, ns_pid, pid_ns_inode, proc_tree
from apiary.sensors.tracing.policies import PolicyWrites
from apiary.sensors.tracing.state import CONNECT_LINKS, FOLLOW_PROGS, SHARED, AdoptedPolicy, LoadedPolicy
from apiary.tracing.types import Hook

__all__ = [
    "CONNECT_LINKS",
    "FOLLOW_PROGS",
    "SHARED",
    "AdoptedPolicy",
    "LoadedPolicy",
    "TracingSensor",
    "ancestry",
    "cgroup_id",
    "disable_pinned_policy",
    "ns_pid",
    "pid_ns_inode",
    "proc_tree",
]


class TracingSensor(PolicyWrites):
    name = "tracing"

    def __init__(
        self,
        process: ProcessSensor,
        obj_path: str | Path | None = None,
        lsm: bool = False,
        kprobes: bool = False,
        pin_dir: str | Path | None = None,
    ) -> None:
        self.process = process
        self.lsm = lsm  # load the BPF-LSM programs (only where the kernel allows them)
        self.kprobes = kprobes  # load the kprobe program (only where the kernel has kprobes)
        self.raw_tp = kernel_at_least(6, 10)  # raw tracepoints take attach cookies
        # the syscall entry program: gs_sys_enter reads the record with plain loads (bpf_rdonly_cast),
        # gs_sys_enter_pr with probe reads where the kernel does not allow that (decided at load, by a probe)
        self.enter_prog = "gs_sys_enter"
        self.obj_path = Path(obj_path) if obj_path else bpf_object("gsys")
        self.obj: BpfObject | None = None
        self.links: list[Any] = []
        self.policies: dict[str, LoadedPolicy] = {}  # key: namespace/name
        self.hooks: dict[int, tuple[LoadedPolicy, Hook]] = {}
        # hooks of deleted or replaced policies, oldest first: their events still in the ring are theirs
        # (hook ids are reused least recently retired first, so such a late event is not misattributed)
        self.retired: dict[int, tuple[LoadedPolicy, Hook]] = {}
        # the kernel's counters of a hook slot when its current hook got it: a hook counts from there
        self.baseline: dict[int, dict[str, int]] = {}
        self.sys_links: dict[str, Any] = {}  # one tracepoint link per watched syscall, one LSM link per hook
        self._next_policy = 1
        self._sys_keys = None
        self._dyn: dict[str, int] = {}  # pseudo numbers (attach cookies) of tracepoints, uprobes, kprobes
        self.follow: dict[int, tuple[int, int, str]] = {}  # gs_mb bit -> (hook id, selector, "bin"|"pid")
        self.follow_links: list[Any] = []
        self.pin_dir = Path(pin_dir) if pin_dir else None
        self.pins: PinSet | None = None
        self.adopted: dict[str, AdoptedPolicy] = {}  # left by a previous agent, not yet restored
        self.adopted_links = 0

    def load(self) -> None:
        assert self.process.obj is not None
        obj = BpfObject(self.obj_path, "gsys")
        manifest: dict[str, Any] | None = None
        try:
            for shared in SHARED:
                obj.reuse_map(shared, self.process.obj.map(shared).fd)
            for lsm_prog in ("gs_file_open", "gs_file_permission", "gs_bprm_check_security"):
                obj.program(lsm_prog).autoload = self.lsm
            obj.program("gs_raw_tp").autoload = self.raw_tp  # bpf_get_attach_cookie in raw_tp: 6.10+
            self.enter_prog = "gs_sys_enter" if tracepoint_record_loads() else "gs_sys_enter_pr"
            for enter in ("gs_sys_enter", "gs_sys_enter_pr"):
                obj.program(enter).autoload = enter == self.enter_prog
            obj.set_rodata(wakeup_bytes=self.process.wakeup_bytes)  # batch wake-ups like the process sensor
            own = [n for n in obj.map_names() if n not in SHARED and "." not in n]
            if self.pin_dir:
                ident = {
                    "object": object_digest(self.obj_path),
                    "lsm": self.lsm,
                    "kprobes": self.kprobes,
                    "raw_tp": self.raw_tp,
                    "enter": self.enter_prog,
                }
                self.pins = PinSet(self.pin_dir, ident)
                # the shared maps must be the ones the pinned programs write: only with the process sensor's pins
                manifest = self.pins.open() if self.process.adopted else None
                if manifest is None:
                    self.pins.create()
            if self.pins:
                self.pins.load(obj, own, manifest is not None)
            else:
                obj.load()
            self.obj = obj
            self.hooks_map = obj.map("gs_hooks")
            self.sys_map = obj.map("gs_syscalls")
            self._sys_keys = None
            self.scope_map = obj.map("gs_scope")
            self.counters = TypedMap(obj.map("gs_counters"), "<I", "<Q")
            self.follow_map = obj.map("gs_follow")
            self.mb_map = TypedMap(obj.map("gs_mb"), "<I", "<Q")
            self.agent_map = obj.map("gs_agent")
            if manifest is not None:
                self._adopt(manifest)
            root = cgroup2_root()
            if root and not self.links:
                for name in CONNECT_LINKS:
                    p = obj.program("gs_" + name[1:])
                    self.links.append(self._pinned(name, lambda p=p: CgroupLink.attach(p, root)))
            self._save()
        except BaseException:
            self.obj = obj
            self.close()
            raise

    def exempt_agent(self, pid: int | None, helpers_cgroup: int = 0) -> None:
        """Exempt this process (the agent) from Sigkill/Signal/Override/DenyConnect, or nobody (None).
        The kernel knows it by tgid and start time: a later process reusing the pid is not exempt.
        ``helpers_cgroup``: the cgroup id of the agent's own helper processes (its proxy), exempt too."""
        if pid is None:
            value = abi.agent_info(0, 0, 0)
        else:
            tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            value = abi.agent_info(pid, process_start_ticks(f"/proc/{pid}"), tick_ns, helpers_cgroup)
        self.agent_map.update((0).to_bytes(4, "little"), value)

    def close(self, keep_pins: bool = False) -> None:
        """``keep_pins`` (--keep-sensors-on-exit): the links stay attached and the maps pinned, with the manifest
        the next agent adopts them by, as after a kill."""
        if keep_pins:
            keep_links([*self.sys_links.values(), *self.follow_links, *self.links])
        for lk in list(self.sys_links.values()) + self.follow_links:
            lk.destroy()
        self.sys_links.clear()
        self.follow_links.clear()
        for lk in self.links:
            lk.destroy()
        self.links.clear()
        if self.pins:
            self.pins.release(keep_pins)
            self.pins = None
        if self.obj:
            self.obj.close()
            self.obj = None

    def programs(self) -> list[tuple[str, int, str]]:
        if not self.obj:
            return []
        watched = ", ".join(sorted(n for n in self.sys_links if not n.startswith("__"))) or "none yet"
        variant = "" if self.enter_prog == "gs_sys_enter" else f": {self.enter_prog}"
        rows = [
            (
                "gs_sys_enter",  # (the variant loaded: its own name in the description)
                self.obj.program(self.enter_prog).fd,
                f"tracepoint syscalls/sys_enter_* ({watched}){variant}",
            ),
            ("gs_connect4", self.obj.program("gs_connect4").fd, "cgroup/connect4 (cgroup v2 root)"),
            ("gs_connect6", self.obj.program("gs_connect6").fd, "cgroup/connect6 (cgroup v2 root)"),
        ]
        if self.lsm:
            rows.append(("gs_file_open", self.obj.program("gs_file_open").fd, "lsm/file_open"))
        exits = sorted(n.removeprefix("__exit_") for n in self.sys_links if n.startswith("__exit_"))
        if exits:
            rows.append(("gs_sys_exit", self.obj.program("gs_sys_exit").fd, f"returns of {', '.join(exits)}"))
        probes = sorted(n.removeprefix("__kprobe_") for n in self.sys_links if n.startswith("__kprobe_"))
        probes += sorted(n.removeprefix("__uprobe_") for n in self.sys_links if n.startswith("__uprobe_"))
        if probes:
            rows.append(("gs_kprobe", self.obj.program("gs_kprobe").fd, f"kprobe/uprobe ({', '.join(probes)})"))
        tps = sorted(n.removeprefix("__tp_") for n in self.sys_links if n.startswith("__tp_"))
        if tps:
            rows.append(("gs_tp", self.obj.program("gs_tp").fd, f"tracepoints ({', '.join(tps)})"))
        if self.follow_links:
            rows.append(("gs_follow_exec", self.obj.program("gs_follow_exec").fd, "followChildren/followForks"))
        return rows

    def program_rows(self) -> list[ProgramRow]:
        return [ProgramRow(name, fd, point) for name, fd, point in self.programs()]

    def link_rows(self) -> list[LinkRow]:
        return link_rows([*self.links, *self.sys_links.values(), *self.follow_links]) if self.obj else []

    def owned_maps(self) -> list[OwnedMap]:
        """Its gs_* maps (status lists none of them); the shared ones are the process sensor's to report."""
        if not self.obj:
            return []
        return [
            OwnedMap(name, m, self.pins.map_path(name) if self.pins and "." not in name else None, in_status=False)
            for name, m in self.obj.maps.items()
            if name not in SHARED
        ]

    def records_into(self) -> RingBuffer | None:
        return self.process.ring  # the process sensor's ring, shared

    def handlers(self) -> Mapping[int, RecordHandler]:
        return {abi.MSG_GENERIC: RecordHandler("generic", abi.decode_record)}

    def ring_counts(self) -> RingCounts:
        if not self.obj:
            return RingCounts({}, {})
        t = self.totals()
        return RingCounts({"tracing": t["posted"]}, {"tracing": t["lost"]})
