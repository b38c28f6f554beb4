"""The XDP prefilter as one sensor: the prefilter object, its four deny maps and drop counters, and one
XDP link per chosen device.

Changes are map writes only (the program is never reloaded) and apply whole or not at all: the change is
planned (and refused, naming the bad value) before any write, and an entry written before a failing write
is removed again (a removed one put back). Devices attach in native mode where the driver has it, else in
generic (skb) mode; ``devices()`` says which mode each one got and why.

With a pin directory the four deny maps, the drop counters and each device's XDP link are pinned there
(sensors/pins.py; the manifest says which device and mode each link holds), so a killed or stopped agent's
prefilter keeps dropping. The next agent whose object and capacity match adopts them: ``restore`` makes the
maps hold the stored lists exactly (entries kept with their counter slots, so their counts go on; stale ones
removed, missing ones added) and says what that took; ``attach`` takes over a device's pinned link when it
still holds that device in the mode asked for, and ``release_stale`` detaches the pinned links of devices no
longer wanted.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiary.loader import BpfError, BpfObject, Map, PinnedLink, RingBuffer, XdpModeLink
from apiary.loader.paths import bpf_object
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts, link_rows
from apiary.sensors.pins import PinSet, keep_links, object_digest
from apiary.sensors.reconcile import MapDiff, apply, diff

from . import abi
from .cidrs import MAP_NAMES, DenyLists, Network, Plan, PrefilterError, map_of, parse_cidrs

MODES = ("auto", "native", "generic")
PINNED = (*MAP_NAMES, "pf_drops")


def kept_slots(nets: list[Network], held: dict[str, dict[bytes, bytes]], nslots: int) -> dict[Network, int]:
    """The wanted prefixes adopted maps already hold, with the counter slot each holds (a slot out of range
    or held twice is not kept: that entry is written again with a fresh slot)."""
    out: dict[Network, int] = {}
    taken: set[int] = set()
    for n in nets:
        raw = held[map_of(n)].get(abi.key(n))
        slot = int.from_bytes(raw[:4], "little") if raw is not None else -1
        if 0 <= slot < nslots and slot not in taken:
            out[n] = slot
            taken.add(slot)
    return out


@dataclass
class Device:
    name: str
    ifindex: int
    mode: str  # native | generic: what holds
    link: XdpModeLink | PinnedLink
    note: str = ""  # why not native, when asked for auto


class Prefilter:
    name = "prefilter"

    def __init__(self, capacity: int = abi.PF_DEFAULT_ENTRIES, obj_path: str | Path | None = None,
                 pin_dir: str | Path | None = None) -> None:
        self.capacity = capacity
        self.obj_path = Path(obj_path) if obj_path else bpf_object("prefilter")
        self.obj: BpfObject | None = None
        self.maps: dict[str, Map] = {}
        self.lists = DenyLists(capacity)
        self.devs: dict[str, Device] = {}
        self.pinset = PinSet(Path(pin_dir), {}) if pin_dir else None
        self.adopted = False  # the maps (and maybe links) were adopted from an earlier agent's pins
        self.pinned: dict[str, dict[str, Any]] = {}  # device -> {ifindex, mode, note}: the pinned links

    # ------------------------------------------------------------------ lifecycle
    def load(self, baseline: bool = False) -> None:
        """Load the object (``baseline``: the empty XDP program too, for the benchmark)."""
        obj = BpfObject(self.obj_path, "prefilter")
        try:
            for m in MAP_NAMES:
                obj.set_max_entries(m, self.capacity)
            obj.set_max_entries("pf_drops", 4 * self.capacity)
            obj.program("pf_empty").autoload = baseline
            pins = self.pinset
            if pins is None:
                obj.load()
            else:
                pins.identity = {"object": object_digest(self.obj_path), "capacity": self.capacity}
                manifest = pins.open()
                self.adopted = manifest is not None
                if manifest is None:
                    pins.create()
                pins.load(obj, PINNED, self.adopted)
                self.pinned = dict((manifest or {}).get("devices", {}))
                if manifest is None:
                    pins.write({"devices": {}})
        except BaseException:
            obj.close()
            if self.pinset is not None:
                self.pinset.close()
            raise
        self.obj = obj
        self.maps = {m: obj.map(m) for m in MAP_NAMES}
        self.drops = obj.map("pf_drops")

    def close(self, keep_pins: bool = False) -> None:
        """``keep_pins``: the devices keep their XDP links and the maps stay pinned for the next agent."""
        links = [d.link for d in self.devs.values()]
        if keep_pins:
            keep_links(links)  # closes our handles; the pins keep the devices' XDP links attached
        else:
            for lk in links:
                lk.destroy()
        self.devs.clear()
        if self.pinset is not None:
            self.pinset.release(keep_pins)
            if not keep_pins:
                self.pinned.clear()
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
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise PrefilterError(f"devices: no network device {ifname!r} on this node", "devices", 404) from None
        had = self.devs.get(ifname)
        if had is not None:
            if had.link.xdp_ifindex() == ifindex:
                return had
            del self.devs[ifname]  # that device was deleted (its link went with it): this one is another
            had.link.destroy()
        old = self._adopt(ifname, ifindex, mode)
        if old is not None:
            return old
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
        if self.pinset is not None:
            try:
                link.pin(self.pinset.link_path(ifname))
            except BaseException:
                link.destroy()
                raise
        self.devs[ifname] = dev
        self._write_manifest()
        return dev

    def _adopt(self, ifname: str, ifindex: int, mode: str) -> Device | None:
        """The device's pinned link, when it still holds this very device in the mode asked for; otherwise
        that link is detached (a new one replaces it)."""
        had = self.pinned.pop(ifname, None)
        if self.pinset is None or had is None:
            return None
        link = self.pinset.adopt_link(ifname, f"xdp {had.get('mode')} {ifname}")
        if link is None:
            return None
        if link.xdp_ifindex() != ifindex or mode not in ("auto", had.get("mode")):
            link.destroy()  # a device of that name that is another one now, or another mode asked for
            return None
        dev = Device(ifname, ifindex, str(had.get("mode")), link, str(had.get("note", "")))
        self.devs[ifname] = dev
        return dev

    def release_stale(self) -> list[str]:
        """Detach the pinned links of devices not attached (again) by now: the names."""
        if self.pinset is None:
            return []
        gone = sorted(self.pinned)
        wanted = {self.pinset.link_path(d) for d in self.devs}
        for f in self.pinset.link_names():
            path = str(self.pinset.root / "links" / f)
            if path not in wanted:
                os.unlink(path)  # the last reference: the kernel detaches it
        self.pinned.clear()
        self._write_manifest()
        return gone

    def _write_manifest(self) -> None:
        if self.pinset is not None:
            devs = {d.name: {"ifindex": d.ifindex, "mode": d.mode, "note": d.note} for d in self.devs.values()}
            self.pinset.write({"devices": {**self.pinned, **devs}})

    def detach(self, ifname: str) -> None:
        dev = self.devs.pop(ifname, None)
        if dev is None:
            raise PrefilterError(f"devices: the prefilter is not attached to {ifname!r}", "devices", 404)
        dev.link.destroy()
        self._write_manifest()

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

    def restore(self, nets: list[Network], revision: int) -> list[str]:
        """Make the maps hold ``nets`` (the stored lists) at ``revision``: entries the maps hold already keep
        their counter slots (and counts), stale ones go, missing ones come with zeroed counters. The diff
        applied, one line per map that changed (or one saying all matched)."""
        held = {m: dict(self.maps[m].items()) for m in MAP_NAMES}
        kept = kept_slots(nets, held, 4 * self.capacity)
        self.lists.restore(kept, revision, 4 * self.capacity if self.adopted else 0)
        plan = self.lists.plan_add([n for n in nets if n not in kept])
        want: dict[str, dict[bytes, bytes]] = {m: {} for m in MAP_NAMES}
        for n, slot in (kept | plan.add).items():
            want[map_of(n)][abi.key(n)] = abi.value(slot)
        diffs: dict[str, MapDiff] = {m: diff(want[m], held[m]) for m in MAP_NAMES}
        zero = b"\0" * (self.drops.slot * self.drops.ncpus)
        for slot in plan.add.values():
            if slot < self.lists.used_slots():
                self.drops.update(slot.to_bytes(4, "little"), zero)
        for m, d in diffs.items():
            apply(self.maps[m], d)
        self.lists.commit(plan)
        self.lists.revision = revision
        return [d.summary(m) for m, d in diffs.items() if not d.empty] or [f"{len(nets)} CIDRs already matched"]

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
        first = next(iter(self.devs.values()), None)
        link_id = first.link.id if first is not None and len(self.devs) == 1 else 0
        fd = first.link.prog.fd if first is not None else prog.fd  # an adopted link runs the earlier agent's
        return [ProgramRow(prog.name, fd, where, link_id)]

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
