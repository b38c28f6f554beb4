"""The XDP prefilter as one sensor: the prefilter object, its four deny maps and drop counters, and one
XDP link per chosen device.

Changes are map writes only (the program is never reloaded) and apply whole or not at all: the change is
planned (and refused, naming the bad value) before any write, and an entry written before a failing write
is removed again (a removed one put back). Devices attach in native mode where the driver has it, else in
generic (skb) mode; ``devices()`` says which mode each one got and why.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiary.loader import BpfError, BpfObject, Map, RingBuffer, XdpModeLink
from apiary.loader.paths import bpf_object
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts, link_rows

from . import abi
from .cidrs import MAP_NAMES, DenyLists, Network, Plan, PrefilterError, map_of, parse_cidrs

MODES = ("auto", "native", "generic")


@dataclass
class Device:
    name: str
    ifindex: int
    mode: str  # native | generic: what holds
    link: XdpModeLink
    note: str = ""  # why not native, when asked for auto


class Prefilter:
    name = "prefilter"

    def __init__(self, capacity: int = abi.PF_DEFAULT_ENTRIES, obj_path: str | Path | None = None) -> None:
        self.capacity = capacity
        self.obj_path = Path(obj_path) if obj_path else bpf_object("prefilter")
        self.obj: BpfObject | None = None
        self.maps: dict[str, Map] = {}
        self.lists = DenyLists(capacity)
        self.devs: dict[str, Device] = {}

    # ------------------------------------------------------------------ lifecycle
    def load(self, baseline: bool = False) -> None:
        """Load the object (``baseline``: the empty XDP program too, for the benchmark)."""
        obj = BpfObject(self.obj_path, "prefilter")
        try:
            for m in MAP_NAMES:
                obj.set_max_entries(m, self.capacity)
            obj.set_max_entries("pf_drops", 4 * self.capacity)
            obj.program("pf_empty").autoload = baseline
            obj.load()
        except BaseException:
            obj.close()
            raise
        self.obj = obj
        self.maps = {m: obj.map(m) for m in MAP_NAMES}
        self.drops = obj.map("pf_drops")

    def close(self) -> None:
        for d in self.devs.values():
            d.link.destroy()
        self.devs.clear()
        if self.obj:
            self.obj.close()
            self.obj = None
            self.maps = {}

    # ------------------------------------------------------------------ devices
    def attach(self, ifname: str, mode: str = "auto") -> Device:
        """XDP on one device (again: the same device keeps its link)."""
        assert self.obj
        if mode not in MODES:
            raise PrefilterError(f"mode: {mode!r} is not one of {', '.join(MODES)}", "mode")
        if ifname in self.devs:
            return self.devs[ifname]
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise PrefilterError(f"devices: no network device {ifname!r} on this node", "devices", 404) from None
        prog = self.obj.program("prefilter")
        note = ""
        if mode == "generic":
            link = XdpModeLink.attach_mode(prog, ifindex, "generic")
        else:
            try:
                link = XdpModeLink.attach_mode(prog, ifindex, "native")
            except BpfError as e:
                if mode == "native" or e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP):
                    raise
                note = f"the driver of {ifname} has no native XDP ({errno.errorcode.get(e.errno, e.errno)})"
                link = XdpModeLink.attach_mode(prog, ifindex, "generic")
        dev = Device(ifname, ifindex, link.mode, link, note)
        self.devs[ifname] = dev
        return dev

    def detach(self, ifname: str) -> None:
        dev = self.devs.pop(ifname, None)
        if dev is None:
            raise PrefilterError(f"devices: the prefilter is not attached to {ifname!r}", "devices", 404)
        dev.link.destroy()

    def devices(self) -> list[dict[str, Any]]:
        return [
            {"device": d.name, "ifindex": d.ifindex, "mode": d.mode, "link_id": d.link.id, "note": d.note}
            for d in self.devs.values()
        ]

    # ------------------------------------------------------------------ deny lists
    def add(self, cidrs: object, revision: int | None = None) -> dict[str, Any]:
        nets = parse_cidrs(cidrs)
        plan = self.lists.plan_add(nets, revision)
        self._apply(plan)
        return self._result(plan)

    def delete(self, cidrs: object, revision: int | None = None) -> dict[str, Any]:
        nets = parse_cidrs(cidrs)
        plan = self.lists.plan_delete(nets, revision)
        self._apply(plan)
        return self._result(plan)

    def _result(self, plan: Plan) -> dict[str, Any]:
        return {
            "revision": self.lists.revision,
            "added": [str(n) for n in plan.add],
            "deleted": [str(n) for n in plan.remove],
            "unchanged": [str(n) for n in plan.unchanged],
        }

    def _apply(self, plan: Plan) -> None:
        """Write a plan, all of it or (on a failing write) none of it."""
        zero = b"\0" * (self.drops.slot * self.drops.ncpus)
        added: list[Network] = []
        removed: list[Network] = []
        try:
            used = self.lists.used_slots()
            for n, slot in plan.add.items():
                if slot < used:  # a reused slot starts from 0 (one never used is 0 already)
                    self.drops.update(slot.to_bytes(4, "little"), zero)
                self.maps[map_of(n)].update(abi.key(n), abi.value(slot))
                added.append(n)
            for n in plan.remove:
                self.maps[map_of(n)].delete(abi.key(n))
                removed.append(n)
        except BaseException:
            for n in added:
                self.maps[map_of(n)].delete(abi.key(n))
            for n in removed:
                self.maps[map_of(n)].update(abi.key(n), abi.value(plan.remove[n]))
            raise
        self.lists.commit(plan)

    def drops_of(self, slot: int) -> int:
        raw = self.drops.lookup(slot.to_bytes(4, "little"))
        if raw is None:
            return 0
        return sum(int.from_bytes(v[:8], "little") for v in self.drops.percpu_values(raw))

    def listing(self) -> dict[str, Any]:
        """Revision, devices, and every entry with its map and drop count (Cilium's `prefilter list`)."""
        entries = sorted(self.lists.entries.items(), key=lambda kv: (kv[0].version, kv[0]))
        return {
            "revision": self.lists.revision,
            "devices": self.devices(),
            "capacity_per_map": self.capacity,
            "entries": [{"cidr": str(n), "map": map_of(n), "drops": self.drops_of(s)} for n, s in entries],
        }

    # ------------------------------------------------------------------ Sensor rows
    def program_rows(self) -> list[ProgramRow]:
        if not self.obj:
            return []
        prog = self.obj.program("prefilter")
        where = ", ".join(f"xdp {d.mode} {d.name}" for d in self.devs.values()) or "not attached"
        link_id = next(iter(self.devs.values())).link.id if len(self.devs) == 1 else 0
        return [ProgramRow(prog.name, prog.fd, where, link_id)]

    def link_rows(self) -> list[LinkRow]:
        return [LinkRow(r.id, r.program, f"xdp {d.mode} {d.name}", r.pin)
                for d, r in zip(self.devs.values(), link_rows(d.link for d in self.devs.values()), strict=True)]

    def owned_maps(self) -> list[OwnedMap]:
        if not self.obj:
            return []
        return [OwnedMap(m, self.maps[m]) for m in MAP_NAMES] + [OwnedMap("pf_drops", self.drops, count_entries=False)]

    def records_into(self) -> RingBuffer | None:
        return None

    def handlers(self) -> dict[int, RecordHandler]:
        return {}

    def ring_counts(self) -> RingCounts:
        return RingCounts({}, {})
