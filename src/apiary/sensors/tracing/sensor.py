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
``close()`` removes the directory; the next ``load()`` adopts it: the maps are reused, the links kept
(``adopt``), and each restored policy whose encoding is unchanged keeps its hooks; ``finish_adoption``
removes what no restored policy claimed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.kernel.features import kernel_at_least
from apiary.loader import (
    BpfError,
    BpfObject,
    CgroupLink,
    KprobeLink,
    LsmLink,
    Map,
    PinnedLink,
    RawTracepointCookieLink,
    RingBuffer,
    TracepointLink,
    TracingLink,
    TypedMap,
    UprobeLink,
)
from apiary.loader.fs import cgroup2_root
from apiary.loader.paths import bpf_object
from apiary.observe.procfs import process_start_ticks
from apiary.sensors.base import LinkRow, OwnedMap, ProgramRow, RecordHandler, RingCounts, link_rows
from apiary.sensors.pins import MANIFEST, PinSet, link_file, object_digest, read_manifest, write_manifest
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi
from apiary.tracing.types import CompiledTracingPolicy, Hook

SHARED = ("events", "procs", "binaries")  # the process sensor's maps, reused
FOLLOW_PROGS = ("gs_follow_exec", "gs_follow_fork", "gs_follow_exit")


CONNECT_LINKS = ("@connect4", "@connect6")  # DenyConnect: the cgroup connect programs, in self.links order


@dataclass
class LoadedPolicy:
    policy: CompiledTracingPolicy
    policy_id: int
    hook_ids: list[int] = field(default_factory=list)
    enabled: bool = True
    cgroups: set[int] = field(default_factory=set)
    carried: dict[str, int] = field(default_factory=dict)  # counts of the versions it replaced (set-mode…)
    digest: str = ""


@dataclass
class AdoptedPolicy:
    """A policy a previous agent left in the pinned maps, not yet claimed by a restored policy."""

    policy_id: int
    hook_ids: list[int]
    cgroups: set[int]
    digest: str
    attach: dict[int, tuple[list[str], bool]]  # hook id -> attach names, has a return hook


class TracingSensor:
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
            obj.set_rodata(wakeup_bytes=self.process.wakeup_bytes)  # batch wake-ups like the process sensor
            own = [n for n in obj.map_names() if n not in SHARED and "." not in n]
            if self.pin_dir:
                ident = {
                    "object": object_digest(self.obj_path),
                    "lsm": self.lsm,
                    "kprobes": self.kprobes,
                    "raw_tp": self.raw_tp,
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

    def exempt_agent(self, pid: int | None) -> None:
        """Exempt this process (the agent) from Sigkill/Signal/Override/DenyConnect, or nobody (None).
        The kernel knows it by tgid and start time: a later process reusing the pid is not exempt."""
        if pid is None:
            value = abi.agent_info(0, 0, 0)
        else:
            tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            value = abi.agent_info(pid, process_start_ticks(f"/proc/{pid}"), tick_ns)
        self.agent_map.update((0).to_bytes(4, "little"), value)

    # ------------------------------------------------------------------ pins
    def _pinned(self, name: str, attach: Any) -> Any:
        """A new link from ``attach()``, pinned under the attach name when pinning."""
        link = attach()
        if self.pins:
            try:
                link.pin(self.pins.link_path(name))
            except BaseException:
                link.destroy()
                raise
        return link

    def _adopt(self, manifest: dict[str, Any]) -> None:
        """Take over what a previous agent left: its links (kept attached), ids and policies (until restored)."""
        assert self.pins is not None
        self._next_policy = int(manifest.get("next_policy", 1))
        self._dyn = {str(k): int(v) for k, v in manifest.get("dyn", {}).items()}
        self.follow = {int(b): (int(h), int(si), str(w)) for b, (h, si, w) in manifest.get("follow", {}).items()}
        for key, rec in manifest.get("policies", {}).items():
            self.adopted[key] = AdoptedPolicy(
                int(rec["id"]),
                [int(h) for h in rec["hooks"]],
                {int(c) for c in rec["cgroups"]},
                str(rec["digest"]),
                {int(h): ([str(n) for n in names], bool(ret)) for h, (names, ret) in rec["attach"].items()},
            )
        for name, (_path, point) in manifest.get("links", {}).items():
            link = self.pins.adopt_link(name, str(point))
            if link is None:
                continue
            self.adopted_links += 1
            if name in CONNECT_LINKS:
                self.links.append(link)
            elif name.startswith("@follow_"):
                self.follow_links.append(link)
            else:
                self.sys_links[name] = link
        if self.follow and len(self.follow_links) != len(FOLLOW_PROGS):  # lost pins: attach them anew
            for lk in self.follow_links:
                lk.destroy()
            self.follow_links = [self._follow_link(p) for p in FOLLOW_PROGS]

    def _follow_link(self, prog: str) -> Any:
        assert self.obj is not None
        return self._pinned("@" + prog.removeprefix("gs_"), lambda: TracingLink.attach(self.obj.program(prog)))

    def _link_names(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.sys_links)
        for name, lk in zip(CONNECT_LINKS, self.links, strict=False):
            out[name] = lk
        for p, lk in zip(FOLLOW_PROGS, self.follow_links, strict=False):
            out["@" + p.removeprefix("gs_")] = lk
        return out

    def _save(self) -> None:
        """Write the manifest: what the next agent needs to adopt these pins."""
        if not self.pins:
            return
        policies: dict[str, Any] = {}
        for key, ad in self.adopted.items():
            policies[key] = {
                "id": ad.policy_id,
                "hooks": ad.hook_ids,
                "cgroups": sorted(ad.cgroups),
                "digest": ad.digest,
                "attach": {h: [n, r] for h, (n, r) in ad.attach.items()},
            }
        for key, lp in self.policies.items():
            attach = {
                hid: [list(hook.attach_points), hook.ret is not None]
                for hid, (_lp, hook) in self.hooks.items()
                if hid in lp.hook_ids
            }
            policies[key] = {
                "id": lp.policy_id,
                "hooks": lp.hook_ids,
                "cgroups": sorted(lp.cgroups),
                "digest": lp.digest,
                "attach": attach,
            }
        self.pins.write(
            {
                "next_policy": self._next_policy,
                "dyn": self._dyn,
                "policies": policies,
                "follow": {b: list(v) for b, v in self.follow.items()},
                "links": {n: [lk.pin_path, _attach_point(lk)] for n, lk in self._link_names().items()},
            }
        )

    def finish_adoption(self) -> list[str]:
        """After the agent restored its stored policies: remove what a previous agent left and nothing claimed
        (policies, hooks, follow bits, scope entries, links)."""
        notes = []
        for ps in (self.process.pins, self.pins):
            if ps and ps.discarded:
                notes.append(f"pins of the previous agent in {ps.discarded}")
        if self.pins and self.pins.adopted:
            notes.append(
                f"tracing: adopted {self.adopted_links} pinned links, "
                f"{len(self.policies)} policies kept enforcing while the agent was down"
            )
        for key, ad in list(self.adopted.items()):
            self._drop(ad)
            notes.append(f"tracing: removed policy {key} left in the kernel by the previous agent (not stored)")
        self.adopted.clear()
        self._write_syscalls()
        zero = b"\0" * self.hooks_map.value_size
        for hid in range(abi.GS_HOOKS):
            if hid not in self.hooks and (self.hooks_map.lookup(hid.to_bytes(4, "little")) or zero) != zero:
                self.hooks_map.update(hid.to_bytes(4, "little"), zero)
        fzero = b"\0" * self.follow_map.value_size
        for b in range(abi.GS_FOLLOW):
            if b not in self.follow and (self.follow_map.lookup(b.to_bytes(4, "little")) or fzero) != fzero:
                self.follow_map.update(b.to_bytes(4, "little"), fzero)
        live = 0
        for b in self.follow:
            live |= 1 << b
        for pid, bits in list(self.mb_map.items()):
            if bits & ~live:
                self.mb_map.put(pid, bits & live)
        ids = {lp.policy_id for lp in self.policies.values()}
        for raw in list(self.scope_map.keys()):
            if int.from_bytes(raw[:4], "little") not in ids:
                self.scope_map.delete(raw)
        if self.pins:
            held = {link_file(n) for n in self._link_names()}
            for f in self.pins.link_names() - held:
                os.unlink(self.pins.root / "links" / f)
        self._save()
        return notes

    def _drop(self, ad: AdoptedPolicy) -> None:
        """Remove an adopted policy's map entries (its links go with the next syscall-table write)."""
        for b in [b for b, (hid, _si, _w) in self.follow.items() if hid in ad.hook_ids]:
            self._free_bit(b)
        for hid in ad.hook_ids:
            self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
        for cg in ad.cgroups:
            self.scope_map.delete(_scope_key(ad.policy_id, cg))

    def close(self) -> None:
        for lk in list(self.sys_links.values()) + self.follow_links:
            lk.destroy()
        self.sys_links.clear()
        self.follow_links.clear()
        for lk in self.links:
            lk.destroy()
        self.links.clear()
        if self.pins:
            self.pins.remove()
            self.pins = None
        if self.obj:
            self.obj.close()
            self.obj = None

    def programs(self) -> list[tuple[str, int, str]]:
        if not self.obj:
            return []
        watched = ", ".join(sorted(n for n in self.sys_links if not n.startswith("__"))) or "none yet"
        rows = [
            ("gs_sys_enter", self.obj.program("gs_sys_enter").fd, f"tracepoint syscalls/sys_enter_* ({watched})"),
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

    # ------------------------------------------------------------------ the Sensor shape (sensors/base.py)
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

    def _nr(self, name: str) -> int:
        """The key of gs_syscalls for a hook's attach name (a syscall number or a pseudo number)."""
        nums = abi.syscall_numbers()
        if name in nums:
            return nums[name]
        if name.startswith(("__tp_", "__uprobe_", "__kprobe_", "__rawtp_")):
            if name not in self._dyn:
                self._dyn[name] = 8192 + len(self._dyn)
            return self._dyn[name]
        raise KeyError(name)

    def _names(self) -> dict[int, str]:
        out = {nr: name for name, nr in abi.syscall_numbers().items()}
        out.update({nr: name for name, nr in self._dyn.items()})
        return out

    # ------------------------------------------------------------------ policies
    def _syscall_hooks(
        self, extra: dict[int, list[int]] | None = None, drop: set[int] | None = None
    ) -> dict[int, list[int]]:
        table: dict[int, list[int]] = {}
        for hid, (_lp, hook) in self.hooks.items():
            if drop and hid in drop:
                continue
            for name in hook.attach_points:
                table.setdefault(self._nr(name), []).append(hid)
        for ad in self.adopted.values():  # left by a previous agent, enforcing until restored or removed
            for hid, (names, _ret) in ad.attach.items():
                if drop and hid in drop:
                    continue
                for name in names:
                    table.setdefault(self._nr(name), []).append(hid)
        for nr, hids in (extra or {}).items():
            table.setdefault(nr, []).extend(hids)
        return table

    def apply(
        self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None, enabled: bool = True
    ) -> LoadedPolicy:
        """Load (or replace) a policy as a whole: check everything, then write (disabled: never live)."""
        lp = self._apply(key, policy, cgroups, enabled)
        self._save()
        return lp

    def _keep(self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None) -> LoadedPolicy | None:
        """A restored policy a previous agent left enforcing, unchanged: keep its hooks, bits and links."""
        ad = self.adopted.get(key)
        if ad is None or len(ad.hook_ids) != len(policy.hooks):
            return None
        bits = {(hid, si, w): b for b, (hid, si, w) in self.follow.items() if hid in ad.hook_ids}
        encoded = self._encode(policy, ad.policy_id, ad.hook_ids, bits)
        if _digest(policy, encoded) != ad.digest:
            return None
        del self.adopted[key]
        # the kernel holds these records already (the enabled flag as the last agent left it: the caller sets it)
        first = self.hooks_map.lookup(ad.hook_ids[0].to_bytes(4, "little")) if ad.hook_ids else None
        on = bool(first and first[abi.HookCfg.flags.offset] & abi.F_ENABLED)
        lp = LoadedPolicy(policy, ad.policy_id, list(ad.hook_ids), on, set(cgroups or ()), digest=ad.digest)
        self._write_scope(lp, LoadedPolicy(policy, ad.policy_id, [], True, ad.cgroups))
        for hid, hook in zip(lp.hook_ids, policy.hooks, strict=True):
            self.hooks[hid] = (lp, hook)
        self.policies[key] = lp
        self._write_syscalls()
        return lp

    def _encode(
        self,
        policy: CompiledTracingPolicy,
        policy_id: int,
        ids: list[int],
        bits: dict[tuple[int, int, str], int],
        enabled: bool = True,
    ) -> list[bytes]:
        """The gs_hooks records of a policy's hooks, given its ids and followChildren bits (the digest is always
        of the enabled records: enabling does not change what a policy is)."""
        scoped = policy.pod_selector is not None or policy.kind == "TracingPolicyNamespaced"
        flags = (abi.F_ENABLED if enabled else 0) | (abi.F_SCOPED if scoped else 0)
        flags |= abi.F_MONITOR if policy.mode == "monitor" else 0
        return [
            abi.encode_hook(hook, policy_id, hid, flags, {(si, w): b for (h, si, w), b in bits.items() if h == hid})
            for hid, hook in zip(ids, policy.hooks, strict=True)
        ]

    def _apply(
        self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None, enabled: bool = True
    ) -> LoadedPolicy:
        kept = self._keep(key, policy, cgroups)
        if kept is not None:
            if kept.enabled != enabled:
                self.set_enabled(key, enabled)
            return kept
        if key in self.adopted:  # changed while the agent was down: replaced as a whole
            self._drop(self.adopted.pop(key))
        old = self.policies.get(key)
        nums = abi.syscall_numbers()
        for hook in policy.hooks:
            for name in hook.attach_points:
                if name not in nums and not name.startswith(("__tp_", "__uprobe_", "__kprobe_", "__rawtp_")):
                    raise BpfError(f"hook {hook.source}", 22, f"unknown syscall {name!r} on this architecture")
        drop = set(old.hook_ids) if old else set()
        in_use = {hid for hid in self.hooks if hid not in drop}
        in_use |= {hid for ad in self.adopted.values() for hid in ad.hook_ids}
        rank = {hid: n for n, hid in enumerate([*self.retired, *sorted(drop)], start=1)}
        free = sorted((i for i in range(abi.GS_HOOKS) if i not in in_use), key=lambda i: rank.get(i, 0))
        if len(free) < len(policy.hooks):
            raise BpfError(
                "tracing hooks",
                28,
                f"the policy needs {len(policy.hooks)} hooks, {len(free)} of {abi.GS_HOOKS} are free",
            )
        ids = free[: len(policy.hooks)]
        extra: dict[int, list[int]] = {}
        for hid, hook in zip(ids, policy.hooks, strict=True):
            for name in hook.attach_points:
                extra.setdefault(self._nr(name), []).append(hid)
        # followChildren / followForks bits: the old policy's are freed when the new one is written
        old_bits = {b for b, (hid, _si, _w) in self.follow.items() if hid in drop}
        free_bits = [b for b in range(abi.GS_FOLLOW) if b not in self.follow or b in old_bits]
        wanted = [(hid, si, w) for hid, hook in zip(ids, policy.hooks, strict=True)
                  for si, w in abi.follow_slots_needed(hook)]
        if len(wanted) > len(free_bits):
            raise BpfError(
                "tracing follow slots",
                28,
                f"the policy needs {len(wanted)} followChildren/followForks slots, {len(free_bits)} of "
                f"{abi.GS_FOLLOW} are free",
            )
        table = self._syscall_hooks(extra, drop)
        crowded = [nr for nr, h in table.items() if len(h) > abi.GS_PER_SYSCALL]
        if crowded:
            raise BpfError("tracing hooks", 28, f"more than {abi.GS_PER_SYSCALL} hooks on syscall numbers {crowded}")
        lp = LoadedPolicy(policy, old.policy_id if old else self._next_policy, ids, enabled, set(cgroups or ()))
        if not old:
            self._next_policy += 1
        else:
            lp.carried = self.policy_counters(old)
        # write: scope first, then follow bits, then hook configs, then the syscall table that makes them live
        self._write_scope(lp, old)
        for b in old_bits:
            self._free_bit(b)
        assign = dict(zip(wanted, free_bits, strict=False))
        tree = proc_tree() if assign else {}  # one /proc scan for all the policy's follow filters
        for (hid, si, w), b in assign.items():
            hook = policy.hooks[ids.index(hid)]
            self._claim_bit(b, hid, si, w, hook, tree)
        encoded = self._encode(policy, lp.policy_id, ids, assign)
        lp.digest = _digest(policy, encoded)
        if not enabled:
            encoded = self._encode(policy, lp.policy_id, ids, assign, enabled=False)
        for hid, raw in zip(ids, encoded, strict=True):
            self.baseline[hid] = self._raw_counters(hid)
            self.hooks_map.update(hid.to_bytes(4, "little"), raw)
        prev_hooks = dict(self.hooks)
        for hid in drop - set(ids):
            self.hooks.pop(hid, None)
        for hid, hook in zip(ids, policy.hooks, strict=True):
            self.hooks[hid] = (lp, hook)
        try:
            self._write_syscalls()
        except BaseException:
            # an attach failed (a missing uprobe target, no kprobes…): nothing of the new policy stays
            for b in assign.values():
                self._free_bit(b)
            self.hooks = {hid: v for hid, v in prev_hooks.items() if hid not in drop}
            for hid in ids:
                self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
            self.policies.pop(key, None)
            self._write_syscalls()
            if old:
                self._apply(key, old.policy, old.cgroups, old.enabled).carried = lp.carried
            raise
        for hid in drop:
            if hid not in ids:
                self._retire(hid, prev_hooks.get(hid))
        for hid in ids:
            self.retired.pop(hid, None)
        self.policies[key] = lp
        return lp

    def _retire(self, hid: int, entry: tuple[LoadedPolicy, Hook] | None) -> None:
        self.retired.pop(hid, None)
        if entry is not None:
            self.retired[hid] = entry

    def hook_of(self, hid: int) -> tuple[LoadedPolicy, Hook] | None:
        """The policy and hook an event's hook id names: a live one, else one deleted or replaced since."""
        return self.hooks.get(hid) or self.retired.get(hid)

    def _write_scope(self, lp: LoadedPolicy, old: LoadedPolicy | None) -> None:
        for cg in lp.cgroups:
            self.scope_map.update(_scope_key(lp.policy_id, cg), b"\x01")
        if old:
            for cg in old.cgroups - lp.cgroups:
                self.scope_map.delete(_scope_key(old.policy_id, cg))

    def set_cgroups(self, key: str, cgroups: set[int]) -> None:
        lp = self.policies[key]
        new = LoadedPolicy(lp.policy, lp.policy_id, lp.hook_ids, lp.enabled, set(cgroups))
        self._write_scope(new, lp)
        lp.cgroups = new.cgroups
        self._save()

    def _write_syscalls(self) -> None:
        table = self._syscall_hooks()
        names = self._names()
        # return hooks and hooks evaluated at the exit need the exit; all but the latter the entry
        returns = {
            self._nr(n)
            for _lp, hook in self.hooks.values()
            if hook.ret is not None or hook.at_exit
            for n in hook.attach_points
        }
        entries = {  # hooks at the exit that compare the credentials with the entry's record them there
            self._nr(n)
            for _lp, hook in self.hooks.values()
            if not hook.at_exit or "cred_new" in hook.guard.checks
            for n in hook.attach_points
        }
        returns |= {
            self._nr(n) for ad in self.adopted.values() for names, ret in ad.attach.values() if ret for n in names
        }
        assert self.obj is not None
        for nr in table:  # attach before the table makes hooks live, so nothing is half-watched
            name = names[nr]
            if nr in entries and name not in self.sys_links:
                self.sys_links[name] = self._pinned(name, lambda n=name, r=nr: self._attach(n, r, False))
            if nr in returns and f"__exit_{name}" not in self.sys_links:
                self.sys_links[f"__exit_{name}"] = self._pinned(
                    f"__exit_{name}", lambda n=name, r=nr: self._attach(n, r, True)
                )
        for nr, hids in table.items():
            cfg = abi.SysCfg(n=len(hids))
            for i, h in enumerate(hids):
                cfg.hooks[i] = h
            self.sys_map.update(nr.to_bytes(4, "little"), bytes(cfg))
        for raw in list(self.sys_map.keys()):
            if int.from_bytes(raw, "little") not in table:
                self.sys_map.delete(raw)
        live = {names[nr] for nr in table if nr in entries} | {f"__exit_{names[nr]}" for nr in table if nr in returns}
        for name in [n for n in self.sys_links if n not in live]:  # unwatched syscalls pay nothing
            self.sys_links.pop(name).destroy()

    def _attach(self, name: str, nr: int, ret: bool) -> Any:
        assert self.obj is not None
        prog = self.obj.program
        if name.startswith("__kprobe_"):
            if not self.kprobes:
                raise BpfError(f"attach {name}", 95, "this kernel has no kprobes")
            fn = name.removeprefix("__kprobe_")
            try:
                if ret:
                    return KprobeLink.attach(prog("gs_kretprobe"), fn, retprobe=True, cookie=nr)
                return KprobeLink.attach(prog("gs_kprobe"), fn, cookie=nr)
            except BpfError as e:
                raise BpfError(
                    f"kprobe on {fn}",
                    e.errno,
                    f"the kernel has no probeable function {fn} (missing, inlined or notrace; "
                    "/sys/kernel/tracing/available_filter_functions lists the probeable ones)",
                ) from e
        if name.startswith("__uprobe_"):
            path, _, sym = name.removeprefix("__uprobe_").rpartition(":")
            try:
                if ret:
                    return UprobeLink.attach(prog("gs_kretprobe"), path, sym, retprobe=True, cookie=nr)
                return UprobeLink.attach(prog("gs_kprobe"), path, sym, cookie=nr)
            except BpfError as e:
                raise BpfError(
                    f"uprobe on {path}:{sym}", e.errno, f"no file {path} with a function symbol {sym}"
                ) from e
        if name.startswith("__lsm_"):
            if not self.lsm:
                raise BpfError(f"attach {name}", 95, "this kernel has no BPF-LSM")
            return LsmLink.attach(prog("gs_" + name.removeprefix("__lsm_")))
        if name.startswith("__rawtp_"):
            if not self.raw_tp:
                raise BpfError(f"attach {name}", 95, "raw tracepoints with attach cookies need Linux 6.10+")
            return RawTracepointCookieLink.attach_raw(prog("gs_raw_tp"), name.removeprefix("__rawtp_"), nr)
        if name.startswith("__tp_"):
            subsys, _, event = name.removeprefix("__tp_").partition("/")
            return TracepointLink.attach(prog("gs_tp"), subsys, event, cookie=nr)
        if ret:
            return TracepointLink.attach(prog("gs_sys_exit"), "syscalls", f"sys_exit_{name}")
        return TracepointLink.attach(prog("gs_sys_enter"), "syscalls", f"sys_enter_{name}")

    # ------------------------------------------------------------------ followChildren / followForks
    def _claim_bit(
        self, bit: int, hid: int, si: int, what: str, hook: Hook, tree: dict[int, tuple[int, str]]
    ) -> None:
        assert self.obj is not None
        self.follow_map.update(bit.to_bytes(4, "little"), abi.encode_follow(hook, si, what))
        self.follow[bit] = (hid, si, what)
        if not self.follow_links:
            for prog_name in FOLLOW_PROGS:
                self.follow_links.append(self._follow_link(prog_name))
        # processes that already run: from /proc (the kernel sets the bit for what starts from now on)
        sel = hook.selectors[si]
        for pid in tree:
            chain = ancestry(tree, pid)
            if what == "bin":
                assert sel.binaries is not None
                prefix = sel.binaries.op in ("Prefix", "NotPrefix")
                hit = any(
                    (exe.startswith(v) if prefix else exe == v)
                    for _p, exe in chain
                    for v in sel.binaries.values
                )
            else:
                assert sel.pids is not None
                if sel.pids.namespace_pid:  # followed within the process's own PID namespace only
                    own = pid_ns_inode(pid)
                    ids = []
                    for p, _exe in chain:
                        if pid_ns_inode(p) not in (own, 0):
                            break
                        ids.append(ns_pid(p))
                else:
                    ids = [p for p, _exe in chain]
                hit = any(p in sel.pids.values for p in ids)
            if hit:
                cur = self.mb_map.get(pid) or 0
                self.mb_map.put(pid, cur | (1 << bit))

    def _free_bit(self, bit: int) -> None:
        self.follow.pop(bit, None)
        self.follow_map.update(bit.to_bytes(4, "little"), b"\0" * self.follow_map.value_size)
        for pid, bits in list(self.mb_map.items()):
            if bits & (1 << bit):
                self.mb_map.put(pid, bits & ~(1 << bit))
        if not self.follow:
            for lk in self.follow_links:
                lk.destroy()
            self.follow_links.clear()

    def set_enabled(self, key: str, on: bool) -> None:
        lp = self.policies[key]
        for hid in lp.hook_ids:
            raw = bytearray(self.hooks_map.lookup(hid.to_bytes(4, "little")) or b"")
            flag_off = abi.HookCfg.flags.offset
            raw[flag_off] = (raw[flag_off] | abi.F_ENABLED) if on else (raw[flag_off] & ~abi.F_ENABLED)
            self.hooks_map.update(hid.to_bytes(4, "little"), bytes(raw))
        lp.enabled = on

    def delete(self, key: str) -> None:
        lp = self.policies.pop(key)
        for hid in lp.hook_ids:
            self._retire(hid, self.hooks.pop(hid, None))
        for b in [b for b, (hid, _si, _w) in self.follow.items() if hid in lp.hook_ids]:
            self._free_bit(b)
        self._write_syscalls()
        for hid in lp.hook_ids:
            self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
        for cg in lp.cgroups:
            self.scope_map.delete(_scope_key(lp.policy_id, cg))
        self._save()

    def _raw_counters(self, hid: int) -> dict[str, int]:
        n = len(abi.CNT)
        return {name: sum(self.counters.get(hid * n + i) or [0]) for i, name in enumerate(abi.CNT)}

    def hook_counters(self, hid: int) -> dict[str, int]:
        """What a hook counted since it got its slot (a slot's earlier hooks' counts are not its own)."""
        base = self.baseline.get(hid, {})
        return {k: v - base.get(k, 0) for k, v in self._raw_counters(hid).items()}

    def policy_counters(self, lp: LoadedPolicy) -> dict[str, int]:
        """A policy's counts: its hooks', and those of the versions it replaced."""
        out = {name: lp.carried.get(name, 0) for name in abi.CNT}
        for hid in lp.hook_ids:
            for k, v in self.hook_counters(hid).items():
                out[k] += v
        return out

    def totals(self) -> dict[str, int]:
        """Events every hook slot ever posted to the ring and lost (ring full), policies gone included."""
        out = {"posted": 0, "lost": 0}
        for hid in range(abi.GS_HOOKS):
            raw = self._raw_counters(hid)
            for name in out:
                out[name] += raw[name]
        return out

    def kernel_memory(self, lp: LoadedPolicy) -> int:
        return len(lp.hook_ids) * self.hooks_map.value_size + len(lp.cgroups) * 24


def disable_pinned_policy(pin_dir: str | Path, key: str) -> int:
    """Without a running agent: stop a pinned policy ("<namespace>/<name>") from acting at once (its gs_hooks
    and gs_follow entries zeroed) and forget it in the manifest. The caller also drops it from the stored
    state (tracingpolicies.json); the next agent start detaches its links and removes what is left of it.
    Returns how many hooks were switched off (0 when the pins hold no such policy)."""
    d = Path(pin_dir)
    if not (d / MANIFEST).exists():
        return 0
    maps: dict[str, Map] = {}
    try:
        for n in (MANIFEST, "gs_hooks", "gs_follow"):
            maps[n] = Map.from_pin(str(d / n))
        data = read_manifest(maps[MANIFEST])
        rec = (data or {}).get("policies", {}).pop(key, None)
        if data is None or rec is None:
            return 0
        hooks = {int(h) for h in rec["hooks"]}
        for hid in hooks:
            maps["gs_hooks"].update(hid.to_bytes(4, "little"), b"\0" * maps["gs_hooks"].value_size)
        follow = data.get("follow", {})
        for bit in [b for b, (hid, _si, _w) in follow.items() if int(hid) in hooks]:
            maps["gs_follow"].update(int(bit).to_bytes(4, "little"), b"\0" * maps["gs_follow"].value_size)
            del follow[bit]
        write_manifest(maps[MANIFEST], data)
        return len(hooks)
    finally:
        for m in maps.values():
            m.close()


def _attach_point(link: Any) -> str:
    return link.target if isinstance(link, PinnedLink) else link.describe()


def _digest(policy: CompiledTracingPolicy, encoded: list[bytes]) -> str:
    """What a policy's hooks hold in the kernel: their records and attach points."""
    h = hashlib.sha256()
    for hook, raw in zip(policy.hooks, encoded, strict=True):
        h.update(raw)
        h.update(repr((hook.attach_points, hook.ret is not None)).encode())
    return h.hexdigest()


def _scope_key(policy_id: int, cgroup_id: int) -> bytes:
    return abi.scope_key(policy_id, cgroup_id)


def proc_tree() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, executable path or "") of the processes running now."""
    out: dict[int, tuple[int, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
        except OSError:  # a kernel thread, or a process we may not inspect: still a link in the ancestry
            exe = ""
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        out[int(d)] = (ppid, exe)
    return out


def pid_ns_inode(pid: int) -> int:
    """The inode of a process's PID namespace; 0 when it cannot be read."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return 0


def ns_pid(pid: int) -> int:
    """A process's PID as its own PID namespace sees it (the last NSpid of /proc/PID/status); -1 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return -1


def ancestry(tree: dict[int, tuple[int, str]], pid: int) -> list[tuple[int, str]]:
    """(pid, exe) of a process and its ancestors, nearest first."""
    chain: list[tuple[int, str]] = []
    seen: set[int] = set()
    while pid in tree and pid not in seen:
        seen.add(pid)
        ppid, exe = tree[pid]
        chain.append((pid, exe))
        pid = ppid
    return chain


def cgroup_id(path: str) -> int:
    """A cgroup v2 directory's id is its inode number (what bpf_get_current_cgroup_id returns)."""
    return os.stat(path).st_ino
