"""The socket load balancer as one sensor: the lb object, its Cilium-shaped maps, and five cgroup hooks on
the cgroup v2 root (connect4, sendmsg4, recvmsg4, getpeername4, post_bind4).

Tables are written whole or not at all, as a diff against what the maps hold: a change is checked against
every map's capacity first (the error names the map and the numbers), then written in an order where a
reader never meets a dangling reference (backends, then backend slots, then masters; stale masters before
their slots and backends are removed), and undone if a kernel write fails part-way.

With a pin directory the maps, the events ring and the five cgroup links are pinned there (sensors/pins.py), so
a killed agent's services keep balancing. The next agent whose object and configuration match adopts them
(the links stay as they are: their programs use the very maps adopted), reads what the maps hold, and its
first write is the diff to the desired tables (``reconciled``). A clean stop detaches and removes the pins, or
(``close(keep_pins=True)``: the agent's clean stop while services exist) leaves them as a kill does.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from apiary.kernel.probes import in_named_netns
from apiary.loader import BpfObject, CgroupLink, Map, PinnedLink, RingBuffer, TcFilter
from apiary.loader.paths import bpf_object
from apiary.sensors.abi import packed
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts, link_rows
from apiary.sensors.pins import PinSet, keep_links, object_digest
from apiary.sensors.reconcile import diff
from apiary.services.backends import LBTable, ServiceEntry

from . import abi

PROGRAMS = ("lb_connect4", "lb_sendmsg4", "lb_recvmsg4", "lb_getpeername4", "lb_post_bind4")
SO_NETNS_COOKIE = 71  # socket(7), Linux 5.14+
MAPS = ("lb4_services", "lb4_backends", "lb4_reverse_nat", "lb4_reverse_sk", "lb4_affinity", "lb_affinity_match",
        "lb4_maglev", "lb_host_addrs", "lb4_nat", "lb4_local_netns")
PINNED = (*MAPS, "lb_stats", "lb_events")
TC_HANDLE, TC_PRIORITY = 0xA1B, 1  # apiary's NodePort filters on a node device (endpoint veths use 1/1)


class LBCapacityError(ValueError):
    """A change that does not fit a map: nothing was written."""


@dataclass(frozen=True)
class Sizes:
    services: int = abi.LB_SERVICE_MAP_ENTRIES
    backends: int = abi.LB_BACKEND_MAP_ENTRIES
    rev_nat: int = abi.LB_REVNAT_MAP_ENTRIES
    affinity: int = abi.LB_AFFINITY_ENTRIES
    maglev: int = abi.LB_MAGLEV_ENTRIES


def host_netns_cookie() -> int:
    """The netns cookie of the caller's network namespace (the host's, for the agent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def netns_cookie(name: str) -> int:
    """The netns cookie of /run/netns/NAME (from a socket made in it by a short-lived thread); OSError if gone."""
    return in_named_netns(name, host_netns_cookie)


Entries = dict[bytes, bytes]


@dataclass
class Contents:
    """What the maps hold (or should): key bytes -> value bytes, per map."""

    backends: Entries
    slots: Entries  # service entries with slot > 0
    masters: Entries  # slot 0
    rev_nat: Entries
    affinity_match: Entries
    maglev: Entries

    @classmethod
    def empty(cls) -> Contents:
        return cls({}, {}, {}, {}, {}, {})


@dataclass
class PackMemo:
    """Packed map bytes kept between :func:`contents` calls, so that an unchanged entry is a lookup."""

    # a frontend's entries (by the identity of the tuple lb_table memoised) -> (that tuple, packed entries)
    groups: dict[int, tuple[tuple[ServiceEntry, ...], list[tuple[bytes, bytes, bytes | None]]]] = field(
        default_factory=dict)
    rev_nat: dict[tuple[int, str, int], tuple[bytes, bytes]] = field(default_factory=dict)

    def clear(self) -> None:
        self.groups.clear()
        self.rev_nat.clear()


def contents(table: LBTable, luts: Mapping[int, list[int] | bytes], memo: PackMemo | None = None) -> Contents:
    """The map contents of an LB table, with the Maglev tables (rev-NAT id -> backend ids, or their packed
    value) given. ``memo`` (kept by the caller between calls) holds what entries packed to last time."""
    memo = PackMemo() if memo is None else memo
    c = Contents.empty()
    for bid, be in table.backends.items():
        c.backends[abi.u32(bid)] = abi.backend_value(be.address, be.port, be.protocol, be.state.wire)
    # a table built without its groups (by hand) is packed whole, not remembered
    gmemo = memo.groups if table.groups else {}
    for group in table.groups or [tuple(table.services)]:
        hit = gmemo.get(id(group))
        if hit is None or hit[0] is not group:
            hit = gmemo[id(group)] = (group, [
                (abi.service_key(e.address, e.port, e.protocol, e.slot),
                 abi.service_value(e.backend_id, e.count, e.rev_nat_id, e.flags),
                 abi.affinity_match_key(e.backend_id, e.rev_nat_id) if e.slot > 0 else None) for e in group])
        for key, value, match in hit[1]:
            if match is None:
                c.masters[key] = value
            else:
                c.slots[key] = value
                c.affinity_match[match] = b"\x01"
    for rid, (addr, port) in table.rev_nat.items():
        rn = memo.rev_nat.get((rid, addr, port))
        if rn is None:
            rn = memo.rev_nat[(rid, addr, port)] = (abi.u16(rid), abi.revnat_value(addr, port))
        c.rev_nat[rn[0]] = rn[1]
    for rid, lut in luts.items():
        c.maglev[abi.u16(rid)] = lut if isinstance(lut, bytes) else maglev_value(lut)
    return c


def maglev_value(lut: list[int]) -> bytes:
    """The lb4_maglev value of a Maglev table (backend ids, one per slot)."""
    return struct.pack(f"<{len(lut)}I", *lut)


class LoadBalancer:
    name = "lb"

    def __init__(self, sizes: Sizes | None = None, maglev_m: int = 16381, nodeport_range: tuple[int, int] =
                 (30000, 32767), obj_path: str | Path | None = None, pin_dir: str | Path | None = None) -> None:
        self.sizes = sizes or Sizes()
        self.maglev_m = maglev_m
        self.nodeport_range = nodeport_range
        self.obj_path = Path(obj_path) if obj_path else bpf_object("lb")
        self.obj: BpfObject | None = None
        self.maps: dict[str, Map] = {}
        self.links: list[CgroupLink | PinnedLink] = []
        self.pinset = PinSet(Path(pin_dir), {}) if pin_dir else None
        self.adopted = False
        self.reconciled: list[str] = []  # the diff the first write over adopted maps applied
        self.devices: dict[str, tuple[int, list[TcFilter]]] = {}  # name -> (ifindex, [ingress, egress])
        self.cgroup = ""
        self.written = Contents.empty()
        self.ring: RingBuffer | None = None
        self.local_netns = 0  # entries written to lb4_local_netns

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        obj = BpfObject(self.obj_path, "lb")
        try:
            obj.set_rodata(host_netns_cookie=host_netns_cookie(), maglev_m=self.maglev_m,
                           nodeport_min=self.nodeport_range[0], nodeport_max=self.nodeport_range[1])
            obj.set_value_size("lb4_maglev", 4 * self.maglev_m)
            s = self.sizes
            for m, n in (("lb4_services", s.services), ("lb4_backends", s.backends), ("lb_affinity_match", s.backends),
                         ("lb4_reverse_nat", s.rev_nat), ("lb4_affinity", s.affinity), ("lb4_maglev", s.maglev)):
                obj.set_max_entries(m, n)
            pins = self.pinset
            if pins is None:
                obj.load()
            else:
                pins.identity = {"object": object_digest(self.obj_path), "sizes": list(vars(s).values()),
                                 "maglev_m": self.maglev_m, "nodeport": list(self.nodeport_range),
                                 "netns": host_netns_cookie()}
                self.adopted = pins.open() is not None
                if not self.adopted:
                    pins.create()
                pins.load(obj, PINNED, self.adopted)
                if not self.adopted:
                    pins.write({})
        except BaseException:
            obj.close()
            raise
        self.obj = obj
        self.maps = {m: obj.map(m) for m in MAPS}
        self.stats_map = obj.map("lb_stats")
        self.ring = RingBuffer(obj.map("lb_events"))
        if self.adopted:
            self.written = self.held()

    def held(self) -> Contents:
        """What the maps hold now."""
        c = Contents.empty()
        for k, v in self.maps["lb4_services"].items():
            (c.slots if int.from_bytes(k[6:8], "little") else c.masters)[k] = v
        c.backends = dict(self.maps["lb4_backends"].items())
        c.rev_nat = dict(self.maps["lb4_reverse_nat"].items())
        c.affinity_match = dict(self.maps["lb_affinity_match"].items())
        c.maglev = dict(self.maps["lb4_maglev"].items())
        return c

    def attach(self, cgroup: str) -> None:
        """The five hooks on ``cgroup`` (the cgroup v2 root: every socket of the node); adopted when pinned."""
        assert self.obj
        try:
            for p in PROGRAMS:
                if self.pinset is None:
                    self.links.append(CgroupLink.attach(self.obj.program(p), cgroup))
                    continue
                old = self.pinset.adopt_link(p, cgroup) if self.adopted else None
                if old is not None:
                    self.links.append(old)
                    continue
                lk = CgroupLink.attach(self.obj.program(p), cgroup)
                self.links.append(lk)
                lk.pin(self.pinset.link_path(p))
        except BaseException:
            self._detach()
            raise
        self.cgroup = cgroup

    def attach_device(self, name: str) -> None:
        """The NodePort/ExternalIP TC path on a node device (clients on other hosts reach services through it)."""
        assert self.obj
        if name in self.devices:
            return
        ifindex = socket.if_nametoindex(name)  # OSError: no such device
        filters: list[TcFilter] = []
        try:
            for prog, egress in (("lb_nodeport_in", False), ("lb_nodeport_out", True)):
                filters.append(TcFilter.attach(self.obj.program(prog), ifindex, egress=egress, handle=TC_HANDLE,
                                               priority=TC_PRIORITY))
        except BaseException:
            for f in filters:
                f.destroy()
            raise
        self.devices[name] = (ifindex, filters)

    def _detach(self) -> None:
        for lk in self.links:
            lk.destroy()
        self.links.clear()
        for _, filters in self.devices.values():
            for f in filters:
                f.destroy()
        self.devices.clear()

    def close(self, keep_pins: bool = False) -> None:
        """``keep_pins``: leave the hooks attached (cgroup links by their pins, the NodePort filters on their
        devices) and the maps pinned for the next agent, as a kill does."""
        if keep_pins:
            keep_links(self.links)
            self.links.clear()
            self.devices.clear()  # tc filters stay on their devices; the next agent replaces them in place
        self._detach()
        if self.pinset is not None:
            self.pinset.release(keep_pins)
        if self.ring:
            self.ring.close()
            self.ring = None
        if self.obj:
            self.obj.close()
            self.obj = None
            self.maps = {}

    # ------------------------------------------------------------------ tables
    def check_capacity(self, want: Contents) -> None:
        s = self.sizes
        for name, n, cap in (
            ("lb4_services", len(want.masters) + len(want.slots), s.services),
            ("lb4_backends", len(want.backends), s.backends),
            ("lb4_reverse_nat", len(want.rev_nat), s.rev_nat),
            ("lb_affinity_match", len(want.affinity_match), s.backends),
            ("lb4_maglev", len(want.maglev), s.maglev),
        ):
            if n > cap:
                raise LBCapacityError(f"{name}: the services need {n} entries, the map holds {cap} "
                                      f"(nothing was changed)")

    def write(self, want: Contents) -> dict[str, int]:
        """Make the maps hold ``want``: all of it or (a write failed) what they held before."""
        self.check_capacity(want)
        old = self.written
        done: list[tuple[str, bytes, bytes | None]] = []  # (map, key, previous value or None)
        plan = [
            ("lb4_backends", want.backends, old.backends),
            ("lb_affinity_match", want.affinity_match, old.affinity_match),
            ("lb4_maglev", want.maglev, old.maglev),
            ("lb4_reverse_nat", want.rev_nat, old.rev_nat),
            ("lb4_services", want.slots, old.slots),
            ("lb4_services", want.masters, old.masters),
        ]
        counts = {"written": 0, "deleted": 0}
        if self.adopted:  # the first write over adopted maps: say what reconciling them took
            self.adopted = False
            names = ("lb4_backends", "lb_affinity_match", "lb4_maglev", "lb4_reverse_nat", "lb4_services (slots)",
                     "lb4_services (masters)")
            diffs = [(n, diff(new, prev)) for n, (_, new, prev) in zip(names, plan, strict=True)]
            self.reconciled = [d.summary(n) for n, d in diffs if not d.empty] or [
                f"{len(want.masters)} frontends, {len(want.backends)} backends already matched"]
        try:
            for name, new, prev in plan:
                for k, v in new.items():
                    if prev.get(k) != v:
                        self.maps[name].update(k, v)
                        done.append((name, k, prev.get(k)))
                        counts["written"] += 1
            for name, new, prev in reversed(plan):  # masters go first, backends last
                for k in prev.keys() - new.keys():
                    self.maps[name].delete(k)
                    done.append((name, k, prev[k]))
                    counts["deleted"] += 1
        except BaseException:
            for name, k, was in reversed(done):
                if was is None:
                    self.maps[name].delete(k)
                else:
                    self.maps[name].update(k, was)
            raise
        self.written = want
        return counts

    def set_host_addrs(self, addrs: Iterable[str]) -> None:
        m = self.maps["lb_host_addrs"]
        want = {ipaddress.IPv4Address(a).packed for a in addrs}
        have = set(m.keys())
        for k in want - have:
            m.update(k, b"\x01")
        for k in have - want:
            m.delete(k)

    def set_local_netns(self, cookies: Iterable[int]) -> None:
        """The endpoints' netns cookies (lb4_local_netns): their sockets get the NodePort wildcard lookup. Past
        the map's capacity the rest are left out (their sockets reach a NodePort at its ClusterIP only)."""
        m = self.maps["lb4_local_netns"]
        want = {c.to_bytes(8, "little") for c in sorted(set(cookies))[:m.max_entries]}
        have = set(m.keys())
        for k in want - have:
            m.update(k, b"\x01")
        for k in have - want:
            m.delete(k)
        self.local_netns = len(want)

    def stats(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(abi.STAT_NAMES):
            raw = self.stats_map.lookup(i.to_bytes(4, "little"))
            out[name] = sum(int.from_bytes(v[:8], "little") for v in self.stats_map.percpu_values(raw)) if raw else 0
        return out

    def fill(self) -> dict[str, dict[str, int]]:
        w = self.written
        n = {"lb4_services": len(w.masters) + len(w.slots), "lb4_backends": len(w.backends),
             "lb4_reverse_nat": len(w.rev_nat), "lb4_maglev": len(w.maglev), "lb4_local_netns": self.local_netns}
        return {m: {"entries": v, "capacity": self.maps[m].max_entries} for m, v in n.items()}

    # ------------------------------------------------------------------ Sensor rows
    def program_rows(self) -> list[ProgramRow]:
        if not self.obj:
            return []
        rows = [ProgramRow(lk.prog.name, lk.prog.fd, lk.describe(), lk.id) for lk in self.links]
        for name, (_, filters) in self.devices.items():
            rows += [ProgramRow(f.prog.name, f.prog.fd, f"{name} ({f.describe()})") for f in filters]
        return rows

    def link_rows(self) -> list[LinkRow]:
        rows = link_rows(self.links)
        for name, (_, filters) in self.devices.items():
            rows += [LinkRow(0, f.prog.name, f"{name} ({f.describe()})") for f in filters]
        return rows

    def owned_maps(self) -> list[OwnedMap]:
        if not self.obj:
            return []
        big = ("lb4_reverse_sk", "lb4_affinity", "lb4_nat")  # LRU maps: too large to walk for status
        return [OwnedMap(m, self.maps[m], count_entries=m not in big) for m in MAPS] + [
            OwnedMap("lb_stats", self.stats_map, in_status=False, count_entries=False)]

    def records_into(self) -> RingBuffer | None:
        return self.ring

    def handlers(self) -> dict[int, RecordHandler]:
        return {abi.LB_MSG_DROP: RecordHandler("lb_drop", decode_drop)}

    def ring_counts(self) -> RingCounts:
        return RingCounts({}, {"lb_drop": self.stats()["events_lost"]} if self.obj else {})


@dataclass(frozen=True)
class LBDrop:
    """A connect()/sendmsg() refused, or a NodePort packet dropped: the frontend had no usable backend
    (SERVICE_BACKEND_NOT_FOUND)."""

    ktime: int
    reason: int
    protocol: int
    hook: str  # connect4 | sendmsg4 | nodeport
    address: str
    port: int
    saddr: str  # nodeport: the client ("" for a socket: the agent knows it by its cgroup)
    sport: int
    pid: int
    ifindex: int
    cgroup_id: int
    netns_cookie: int


_DROP = packed(abi.LbDropMsg)
_HOOKS = ("connect4", "sendmsg4", "nodeport")


def decode_drop(buf: memoryview | bytes) -> LBDrop:
    (_t, reason, proto, hook, addr, port, sport, saddr, pid, ifindex, cg, ns, kt) = _DROP.unpack_from(buf)
    return LBDrop(kt, reason, proto, _HOOKS[hook] if hook < len(_HOOKS) else str(hook),
                  str(ipaddress.IPv4Address(addr)), int.from_bytes(port, "big"),
                  str(ipaddress.IPv4Address(saddr)) if hook == 2 else "", int.from_bytes(sport, "big"), pid, ifindex,
                  cg, ns)
