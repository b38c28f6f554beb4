"""The endpoint datapath as one unit: the lxc object, its maps, per-endpoint TC attachments, and the
map writer that makes the kernel hold a CompiledPolicy.

The policy is two maps with the same key: the hash map `policy` (entries of one port, one protocol or any
protocol) and the LPM trie `policy_ranges` (the blocks of port ranges). The datapath looks up only the kinds
of entries an endpoint's policy has (`ep_info.policy_kinds`): the LPM only when there are port ranges.
Policy writes are atomic per endpoint: each endpoint has two policy slots (ep_id << 1 | gen). The new
entries are written under the idle slot (both maps), then one update of the endpoint's `ep_info` switches
slot, enforcement flags and entry kinds together, then the old slot's entries are deleted. A packet sees
either the old policy or the new one, never a mix. Capacity is checked before anything is written.

With a pin directory, the maps that carry enforcement (PINNED) are pinned there with a manifest (sensors/pins.py).
A restarted agent whose object and sizes match adopts them: the new programs share the maps the old ones
(still attached) use, conntrack included, and replace them on each veth in one tc operation. Its first sync
reconciles the adopted maps to the desired state (sensors/reconcile.py): an endpoint whose entries already
match is left alone; one that differs is rewritten through its idle slot and switched as any change is; entries
of unknown slots and endpoints are removed. ``reconciled`` holds the diff applied, one line per map/endpoint.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import socket
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from apiary.loader import BpfError, BpfObject, Map, RingBuffer, TcFilter, TypedMap
from apiary.loader.fs import remove_pin_tree
from apiary.loader.paths import bpf_object
from apiary.policy.types import CompiledPolicy, EndpointPolicy, PolicyEntry, PolicyKey
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts
from apiary.sensors.network import abi
from apiary.sensors.network.endpoints import Endpoint
from apiary.sensors.pins import PinSet, object_digest
from apiary.sensors.reconcile import MapDiff, apply, diff

ETH_HLEN = 14  # BPF_PROG_TEST_RUN of a TC program needs at least an Ethernet header
# the flows ring too: what the adopted programs report while no agent runs is read by the next one (or counted lost)
PINNED = ("endpoints", "policy", "policy_ranges", "ipcache", "ct", "dp_counters", "dp_lost", "ep_ifindex", "proxy",
          "flows")


# from_netdev on a node device (--devices): after the NodePort filter (sensors/lb: handle 0xA1B, priority 1)
DEV_TC_HANDLE, DEV_TC_PRIORITY = 0xA1C, 2


class CapacityError(BpfError):
    pass


@dataclass
class _EpState:
    gen: int = 0
    flags: int = 0
    identity: int = 0
    keys: set[bytes] = field(default_factory=set)  # policy keys (both maps) written under the current slot
    policy: dict[PolicyKey, PolicyEntry] | None = None  # the entries now in force
    proxy_port: int = 0  # the proxy ports written into its L7 entries (HTTP | DNS << 16)
    attached: list[TcFilter] = field(default_factory=list)


@dataclass
class _Staged:
    """An endpoint's new policy, written under its idle slot and not switched to yet."""

    ep: Endpoint
    gen: int
    flags: int
    identity: int
    slot: int
    policy: dict[PolicyKey, PolicyEntry]
    keys: set[bytes]
    kinds: tuple[int, int]  # PK_* of the entries by direction (ep_info.policy_kinds)


_ipcache_key = functools.lru_cache(maxsize=1 << 16)(abi.ipcache_key)  # prefix text -> key bytes

# conntrack lifetimes, seconds: a connection in its handshake, established, closing, not TCP
CT_TIMEOUTS_S = {"ct_timeout_syn": 60, "ct_timeout_tcp": 21600, "ct_timeout_close": 10, "ct_timeout_other": 60}
_HZ_CHOICES = (100, 250, 300, 1000)  # what CONFIG_HZ can be


@functools.cache
def kernel_hz() -> int:
    """CONFIG_HZ of the running kernel: the unit of bpf_jiffies64(), the conntrack clock. From the kernel's
    config where libbpf reads it (/boot/config-<release>, /proc/config.gz), else measured from the jiffies
    counter of /proc/timer_list over 0.2 s."""
    for path in (f"/boot/config-{os.uname().release}", "/proc/config.gz"):
        with contextlib.suppress(OSError, ValueError, EOFError):
            with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        return int(line.split("=", 1)[1])

    def sample() -> tuple[int, float]:
        try:
            found = re.search(r"^jiffies: (\d+)", Path("/proc/timer_list").read_text(), flags=re.M)
        except OSError:
            found = None
        if not found:
            raise BpfError("kernel HZ", 2, "no CONFIG_HZ in the kernel config and no jiffies in /proc/timer_list")
        return int(found.group(1)), time.monotonic()

    j0, t0 = sample()
    time.sleep(0.2)
    j1, t1 = sample()
    return min(_HZ_CHOICES, key=lambda hz: abs(hz - (j1 - j0) / (t1 - t0)))


def lxc_rodata(trace_interval_s: float = 5.0, wakeup_bytes: int = 0, hz: int | None = None) -> dict[str, int]:
    """The lxc object's configuration (set before load): conntrack times converted to jiffies."""
    hz = hz or kernel_hz()
    out = {name: secs * hz for name, secs in CT_TIMEOUTS_S.items()}
    return {**out, "trace_interval": max(1, round(trace_interval_s * hz)), "wakeup_bytes": wakeup_bytes}


class Datapath:
    name = "datapath"

    def __init__(
        self,
        pin_dir: str | Path | None = None,
        ringbuf_bytes: int = 4 << 20,
        policy_max: int = 65536,
        ct_max: int = 65536,
        wakeup_bytes: int = 0,
        trace_interval_s: float = 5.0,
        obj_path: str | Path | None = None,
    ) -> None:
        self.pin_dir = Path(pin_dir) if pin_dir else None
        self.ringbuf_bytes = ringbuf_bytes
        self.policy_max = policy_max
        self.ct_max = ct_max
        self.wakeup_bytes = wakeup_bytes
        self.trace_interval_s = trace_interval_s
        self.obj_path = Path(obj_path) if obj_path else bpf_object("lxc")
        self.obj: BpfObject | None = None
        self.ring: RingBuffer | None = None
        self.pins: dict[str, str] = {}
        self.eps: dict[int, _EpState] = {}
        self.devices: dict[str, TcFilter] = {}  # node device -> its from_netdev filter (ingress)
        self.ipcache_now: dict[str, bytes] = {}
        self.audit = False
        self.proxy_port = 0  # the L7 proxy's listener (127.0.0.1): written into the entries that need it
        self.dns_proxy_port = 0  # the DNS proxy's (UDP and TCP, 127.0.0.1): written into the rules.dns entries
        self.pinset: PinSet | None = None
        self.adopted = False  # the maps were adopted from pins: the next sync reconciles them
        self.reconciled: list[str] = []  # the diff the reconciling sync applied

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        obj = BpfObject(self.obj_path, "lxc")
        try:
            obj.set_max_entries("flows", self.ringbuf_bytes)
            obj.set_max_entries("policy", self.policy_max)
            obj.set_max_entries("policy_ranges", self.policy_max)
            obj.set_max_entries("ct", self.ct_max)
            obj.set_rodata(**lxc_rodata(self.trace_interval_s, self.wakeup_bytes))
            obj.program("empty_tc").autoload = False
            if self.pin_dir:
                self.pinset = pins = PinSet(self.pin_dir, {"object": object_digest(self.obj_path),
                                                          "policy_max": self.policy_max, "ct_max": self.ct_max,
                                                          "ringbuf": self.ringbuf_bytes})
                self.adopted = pins.open() is not None
                if not self.adopted:
                    pins.create()
                pins.load(obj, PINNED, self.adopted)
                if not self.adopted:
                    pins.write({})
                self.pins = {m: pins.map_path(m) for m in PINNED}
            else:
                obj.load()
            self.obj = obj
            self.ring = RingBuffer(obj.map("flows"))
        except BaseException:
            self.obj = obj
            self.close()
            raise
        self.endpoints_map = obj.map("endpoints")
        self.policy_map = obj.map("policy")
        self.ranges_map = obj.map("policy_ranges")
        self.ipcache_map = obj.map("ipcache")
        self.ct_map = obj.map("ct")
        self.ep_ifindex_map = obj.map("ep_ifindex")
        self.proxy_map = obj.map("proxy")
        self.clock_map = obj.map("dp_clock")
        self.counters_map = TypedMap(obj.map("dp_counters"), "<I", "<QQ")
        self.lost_map = TypedMap(obj.map("dp_lost"), "<I", "<Q")

    def close(self, detach: bool = True) -> None:
        """``detach=False``: the endpoints keep their programs, and the pins stay for the next agent to adopt."""
        if detach:
            for st in self.eps.values():
                for f in st.attached:
                    f.destroy()
            for f in self.devices.values():
                f.destroy()
        self.eps.clear()
        self.devices.clear()
        if self.ring:
            self.ring.close()
            self.ring = None
        if self.pinset is not None:
            self.pinset.close()
            self.pinset = None
        if self.pin_dir and self.pins and detach:
            remove_pin_tree(self.pin_dir)
        self.pins.clear()
        if self.obj:
            self.obj.close()
            self.obj = None

    # ------------------------------------------------------------------ endpoints
    def attach(self, ep: Endpoint) -> None:
        assert self.obj
        st = self.eps.setdefault(ep.ep_id, _EpState())
        for f in st.attached:
            f.destroy()
        st.attached = [
            TcFilter.attach(self.obj.program("from_container"), ep.host_ifindex, egress=False),
            TcFilter.attach(self.obj.program("to_container"), ep.host_ifindex, egress=True),
        ]

    def attach_device(self, name: str) -> None:
        """from_netdev on a node device's ingress: the packets of clients on other hosts whose connections the
        L7 proxy holds are delivered to it (replaced in place when a previous agent left it)."""
        assert self.obj
        if name not in self.devices:
            ifindex = socket.if_nametoindex(name)  # OSError: no such device
            self.devices[name] = TcFilter.attach(self.obj.program("from_netdev"), ifindex, egress=False,
                                                 handle=DEV_TC_HANDLE, priority=DEV_TC_PRIORITY)

    def forget(self, ep: Endpoint) -> None:
        st = self.eps.pop(ep.ep_id, None)
        self.endpoints_map.delete(ep.host_ifindex.to_bytes(4, "little"))
        self.ep_ifindex_map.delete(ep.ep_id.to_bytes(4, "little"))
        if st:
            for f in st.attached:
                f.destroy()
            self._delete_keys(st.keys)
        # conntrack is keyed by interface: a later endpoint on a reused ifindex must not inherit it
        for k in [k for k, _ in self.ct_map.items() if abi.ct_key_ifindex(k) == ep.host_ifindex]:
            self.ct_map.delete(k)

    def programs(self) -> list[tuple[str, int, str]]:
        if not self.obj:
            return []
        rows = [(n, self.obj.program(n).fd, "tc (per endpoint veth)") for n in ("from_container", "to_container")]
        if self.devices:
            rows.append(("from_netdev", self.obj.program("from_netdev").fd, "tc ingress: " + ", ".join(self.devices)))
        return rows

    def filters(self) -> list[TcFilter]:
        return [f for st in self.eps.values() for f in st.attached] + list(self.devices.values())

    # ------------------------------------------------------------------ policy
    def check_capacity(self, compiled: CompiledPolicy) -> None:
        """Worst case during a write: every endpoint's old and new slots at once."""
        new = sum(len(p.entries) for p in compiled.endpoints.values())
        old = sum(len(st.keys) for st in self.eps.values())
        if new + old > self.policy_max:
            raise CapacityError(
                "policy map",
                28,
                f"the policy needs {new:,} entries (+{old:,} in force during the switch); capacity is "
                f"{self.policy_max:,}: nothing was written",
            )
        if len(compiled.ipcache) > self.ipcache_map.max_entries:
            raise CapacityError(
                "ipcache",
                28,
                f"{len(compiled.ipcache):,} prefixes, capacity {self.ipcache_map.max_entries:,}: nothing was written",
            )

    def sync(self, compiled: CompiledPolicy, endpoints: dict[int, Endpoint], identities: dict[int, int]) -> None:
        """Make the kernel hold ``compiled`` for these endpoints. ``identities``: ep_id -> identity.

        All or nothing: new and changed prefixes first, then every changed endpoint's entries under its idle
        slot (one batch per endpoint), then one ep_info update per endpoint switches it. On any error, what
        was written is taken back and the maps hold what they held before. Only after every switch are the
        old slots and the prefixes no longer referenced deleted (batched). Unchanged endpoints are not
        touched."""
        if self.adopted:
            self.adopted = False
            self.reconciled = self._reconcile(compiled, endpoints, identities)
            return
        self.check_capacity(compiled)
        undo: list[Callable[[], object]] = []
        try:
            stale = self._upsert_ipcache(compiled.ipcache, endpoints, undo)
            staged = []
            for ep_id, ep in endpoints.items():
                pol = compiled.endpoints.get(ep_id) or EndpointPolicy(ep_id, False, False)
                st = self._stage(ep, pol, identities[ep_id], undo)
                if st is not None:
                    staged.append(st)
            for st in staged:
                self._switch(st, undo)
        except BaseException:
            for fn in reversed(undo):
                with contextlib.suppress(BpfError):
                    fn()
            raise
        for st in staged:
            state = self.eps.setdefault(st.ep.ep_id, _EpState())
            self._delete_keys(state.keys)
            state.gen, state.flags, state.identity, state.policy, state.keys = (
                st.gen, st.flags, st.identity, st.policy, st.keys)
            state.proxy_port = self._ports()
        if stale:
            self.ipcache_map.delete_batch([_ipcache_key(p) for p in stale])
            for p in stale:
                del self.ipcache_now[p]

    def _upsert_ipcache(self, ipcache: dict[str, int], endpoints: dict[int, Endpoint],
                        undo: list[Callable[[], object]]) -> list[str]:
        """Write new and changed prefixes (one batch); returns the prefixes to delete once policy switched."""
        by_ip = {f"{ep.ipv4}/32": ep.ep_id for ep in endpoints.values()}
        now = self.ipcache_now
        changed = {}
        for p, ident in ipcache.items():
            v = abi.ipcache_value(ident, by_ip.get(p, 0))
            if now.get(p) != v:
                changed[p] = v
        if changed:
            old = {p: now.get(p) for p in changed}

            def restore() -> None:
                back = [(_ipcache_key(p), v) for p, v in old.items() if v is not None]
                self.ipcache_map.update_batch(back)
                self.ipcache_map.delete_batch([_ipcache_key(p) for p, v in old.items() if v is None])
                for p, v in old.items():
                    if v is None:
                        now.pop(p, None)
                    else:
                        now[p] = v

            undo.append(restore)
            self.ipcache_map.update_batch([(_ipcache_key(p), v) for p, v in changed.items()])
            now.update(changed)
        return [p for p in now if p not in ipcache]

    def _reconcile(self, compiled: CompiledPolicy, endpoints: dict[int, Endpoint],
                   identities: dict[int, int]) -> list[str]:
        """The first sync over adopted maps: make them hold ``compiled`` exactly, and say what that took."""
        lines: list[str] = []
        info_now = dict(self.endpoints_map.items())
        policy_now = dict(self.policy_map.items()) | dict(self.ranges_map.items())
        by_slot: dict[int, dict[bytes, bytes]] = {}
        for k, v in policy_now.items():
            by_slot.setdefault(abi.policy_key_decode(k)[0], {})[k] = v
        ip_now = dict(self.ipcache_map.items())
        by_ip = {f"{ep.ipv4}/32": ep.ep_id for ep in endpoints.values()}
        ip_want = {_ipcache_key(p): abi.ipcache_value(i, by_ip.get(p, 0)) for p, i in compiled.ipcache.items()}
        for p in compiled.ipcache:  # what is already right is not written again
            have = ip_now.get(_ipcache_key(p))
            if have is not None:
                self.ipcache_now[p] = have
        ip_diff = diff(ip_want, ip_now)
        # endpoint id -> its host veth's ifindex (the peer-ingress L7 decision reads it): wanted whole, as found
        if_want = {ep_id.to_bytes(4, "little"): ep.host_ifindex.to_bytes(4, "little")
                   for ep_id, ep in endpoints.items()}
        if_diff = diff(if_want, dict(self.ep_ifindex_map.items()))
        idle: list[bytes] = []
        matched = 0
        for ep_id, ep in endpoints.items():
            pol = compiled.endpoints.get(ep_id) or EndpointPolicy(ep_id, False, False)
            flags, kinds = self._flags(pol)
            raw = info_now.get(ep.host_ifindex.to_bytes(4, "little"))
            if raw is None or abi.EP_INFO.unpack(raw)[0] != ep_id:
                lines.append(f"policy map ep {ep_id}: not in the pinned maps, +{len(pol.entries)} entries")
                continue
            slot = abi.EP_INFO.unpack(raw)[4]
            idle += list(by_slot.get(slot ^ 1, {}))  # a write an earlier agent did not finish: not in force
            held = by_slot.get(slot, {})
            want = {abi.policy_key(k, slot): abi.policy_value(e, k, self.proxy_port, self.dns_proxy_port)
                    for k, e in pol.entries.items()}
            d = diff(want, held)
            st = self.eps[ep_id] = _EpState(gen=slot & 1, identity=identities[ep_id], keys=set(held))
            same_info = raw == abi.ep_info(ep_id, flags, identities[ep_id], ep.ipv4, slot, kinds)
            if d.empty and same_info:
                st.flags, st.policy, st.proxy_port = flags, dict(pol.entries), self._ports()
                matched += 1
            else:
                lines.append(d.summary(f"policy map ep {ep_id}") + ("" if same_info else ", endpoint info rewritten"))
        self._delete_keys(idle)
        self.sync(compiled, endpoints, identities)
        live = {(ep_id << 1) | st.gen for ep_id, st in self.eps.items()}
        stale = [k for s, keys in by_slot.items() if s not in live for k in keys if k not in idle]
        self._delete_keys(stale)
        ifs = {ep.host_ifindex.to_bytes(4, "little") for ep in endpoints.values()}
        gone = [k for k in info_now if k not in ifs]
        for k in gone:
            self.endpoints_map.delete(k)
        apply(self.ep_ifindex_map, if_diff)  # the sync above wrote only the endpoints whose policy it switched
        for d, what in ((MapDiff(remove=stale + idle), "policy map, unknown or unfinished slots"),
                        (MapDiff(remove=gone), "endpoints map, unknown endpoints"), (ip_diff, "ipcache"),
                        (if_diff, "ep_ifindex")):
            if not d.empty:
                lines.append(d.summary(what))
        lines.append(f"policy maps of {matched}/{len(endpoints)} endpoints already matched")
        return lines

    def _flags(self, pol: EndpointPolicy) -> tuple[int, tuple[int, int]]:
        """ep_info's flags and policy kinds for a policy."""
        flags = (
            (abi.EP_ENFORCE_INGRESS if pol.ingress_enforced else 0)
            | (abi.EP_ENFORCE_EGRESS if pol.egress_enforced else 0)
            | (abi.EP_AUDIT if self.audit else 0)
        )
        summary_flags, kinds = abi.policy_summary(pol.entries)  # which lookups can find something
        return flags | summary_flags, kinds

    def _ports(self) -> int:
        """The proxy ports an L7 entry carries: HTTP's in the low half, DNS's in the high half."""
        return self.proxy_port + (self.dns_proxy_port << 16)

    def _stage(self, ep: Endpoint, pol: EndpointPolicy, identity: int,
               undo: list[Callable[[], object]]) -> _Staged | None:
        """Write an endpoint's new entries under its idle slot; None when what is in force is already that."""
        st = self.eps.get(ep.ep_id) or _EpState()
        flags, kinds = self._flags(pol)
        if (st.policy is not None and (st.flags, st.identity, st.proxy_port) == (flags, identity, self._ports())
                and st.policy == pol.entries):
            return None
        gen = st.gen ^ 1
        slot = (ep.ep_id << 1) | gen
        policy_key, policy_value, is_range = abi.policy_key, abi.policy_value, abi.is_port_range
        exact: list[tuple[bytes, bytes]] = []
        ranges: list[tuple[bytes, bytes]] = []
        for k, v in pol.entries.items():
            (ranges if is_range(k) else exact).append((policy_key(k, slot), policy_value(v, k, self.proxy_port,
                                                                                        self.dns_proxy_port)))
        keys = [k for k, _ in exact] + [k for k, _ in ranges]
        undo.append(lambda: self._delete_keys(keys))
        self.policy_map.update_batch(exact)
        if ranges:
            self.ranges_map.update_batch(ranges)
        return _Staged(ep, gen, flags, identity, slot, dict(pol.entries), set(keys), kinds)

    def _switch(self, st: _Staged, undo: list[Callable[[], object]]) -> None:
        """One map update switches the endpoint's slot, flags and identity together."""
        key = st.ep.host_ifindex.to_bytes(4, "little")
        before = self.endpoints_map.lookup(key)
        m = self.endpoints_map
        undo.append(lambda: m.delete(key) if before is None else m.update(key, before))
        self.endpoints_map.update(key, abi.ep_info(st.ep.ep_id, st.flags, st.identity, st.ep.ipv4, st.slot,
                                                      st.kinds))
        self.ep_ifindex_map.update(st.ep.ep_id.to_bytes(4, "little"), key)

    def set_proxy(self, mark: int, cgroup_id: int) -> None:
        """Where redirected packets go (their mark) and which sockets are the proxy's (their cgroup); a zero
        mark makes every redirect fail closed."""
        self.proxy_map.update((0).to_bytes(4, "little"), abi.proxy_cfg(mark, cgroup_id))

    def _delete_keys(self, keys: Collection[bytes]) -> None:
        """Delete policy keys from the map each one lives in (missing keys are no error)."""
        ranges = [k for k in keys if abi.policy_key_is_range(k)]
        exact = [k for k in keys if not abi.policy_key_is_range(k)]
        if exact:
            self.policy_map.delete_batch(exact)
        if ranges:
            self.ranges_map.delete_batch(ranges)

    # ------------------------------------------------------------------ state
    def counters(self) -> dict[str, dict[str, int]]:
        """{"forwarded"|<drop reason code>: {"ingress_packets", ...}} summed over CPUs."""
        out: dict[str, dict[str, int]] = {}
        for idx in range(abi.DP_COUNTERS):
            vals = self.counters_map.get(idx)
            pk = sum(v[0] for v in vals)
            if not pk:
                continue
            by = sum(v[1] for v in vals)
            reason, direction = idx >> 1, "egress" if idx & 1 else "ingress"
            row = out.setdefault("forwarded" if reason == 0 else str(reason), {})
            row[f"{direction}_packets"] = pk
            row[f"{direction}_bytes"] = by
        return out

    def lost(self) -> int:
        return sum(sum(self.lost_map.get(i)) for i in range(abi.DP_LOST_SLOTS))

    def ct_clock(self) -> int:
        """The conntrack clock now (jiffies, the unit of ct_value.expires and .last_report)."""
        assert self.obj
        self.obj.program("ct_clock").test_run(bytes(ETH_HLEN))
        raw = self.clock_map.lookup(bytes(4))
        assert raw is not None
        return int.from_bytes(raw, "little")

    def ct_gc(self, now: int | None = None) -> int:
        """Delete expired connections (``now``: the conntrack clock, default ct_clock()). Returns how many."""
        now = now if now is not None else self.ct_clock()
        dead = [k for k, v in self.ct_map.items() if abi.CT_VALUE.unpack(v[: abi.CT_VALUE.size])[0] < now]
        for k in dead:
            self.ct_map.delete(k)
        return len(dead)

    def maps(self) -> dict[str, Map]:
        return self.obj.maps if self.obj else {}

    # ------------------------------------------------------------------ the Sensor shape (sensors/base.py)
    def program_rows(self) -> list[ProgramRow]:
        return [ProgramRow(name, fd, point) for name, fd, point in self.programs()]

    def link_rows(self) -> list[LinkRow]:
        return [LinkRow(0, f.prog.name, f.describe()) for f in self.filters()]

    def owned_maps(self) -> list[OwnedMap]:
        # the conntrack table is not counted by status: walking it would cost as much as it is large
        return [
            OwnedMap(
                name,
                m,
                self.pins.get(name),
                in_status=not (name.endswith(".rodata") or name == "dp_abi_types"),
                count_entries=name != "ct",
            )
            for name, m in self.maps().items()
        ]

    def records_into(self) -> RingBuffer | None:
        return self.ring

    def handlers(self) -> Mapping[int, RecordHandler]:
        """Every record of the flows ring is a flow message (its first byte is Cilium's monitor type)."""
        flow = RecordHandler("flow", abi.decode_flow)
        return dict.fromkeys(range(256), flow)

    def ring_counts(self) -> RingCounts:
        """Flows lost to a full ring (the datapath counts no records written)."""
        return RingCounts({}, {"flow": self.lost()} if self.obj else {})
