"""The generic syscall sensor: loads gsys.bpf.o next to the process sensor (sharing its ring buffer,
live-process and binary maps), writes TracingPolicy hooks into its maps, decodes its events."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.loader import BpfError, BpfObject, CgroupLink, KprobeLink, LsmLink, TracepointLink, TypedMap
from apiary.loader.fs import cgroup2_root
from apiary.tracing.types import CompiledTracingPolicy, Hook

from . import tracing_abi as abi
from .paths import bpf_object
from .process import ProcessSensor


@dataclass
class LoadedPolicy:
    policy: CompiledTracingPolicy
    policy_id: int
    hook_ids: list[int] = field(default_factory=list)
    enabled: bool = True
    cgroups: set[int] = field(default_factory=set)


class TracingSensor:
    name = "tracing"

    def __init__(
        self, process: ProcessSensor, obj_path: str | Path | None = None, lsm: bool = False, kprobes: bool = False
    ) -> None:
        self.process = process
        self.lsm = lsm  # load the BPF-LSM programs (only where the kernel allows them)
        self.kprobes = kprobes  # load the kprobe program (only where the kernel has kprobes)
        self.obj_path = Path(obj_path) if obj_path else bpf_object("gsys")
        self.obj: BpfObject | None = None
        self.links: list[Any] = []
        self.policies: dict[str, LoadedPolicy] = {}  # key: namespace/name
        self.hooks: dict[int, tuple[LoadedPolicy, Hook]] = {}
        self.sys_links: dict[str, Any] = {}  # one tracepoint link per watched syscall, one LSM link per hook
        self._next_policy = 1

    def load(self) -> None:
        assert self.process.obj is not None
        obj = BpfObject(self.obj_path, "gsys")
        try:
            for shared in ("events", "procs", "binaries"):
                obj.reuse_map(shared, self.process.obj.map(shared).fd)
            obj.program("gs_file_open").autoload = self.lsm
            obj.program("gs_kprobe").autoload = self.kprobes
            obj.load()
            self.obj = obj
            root = cgroup2_root()
            if root:
                self.links.append(CgroupLink.attach(obj.program("gs_connect4"), root))
        except BaseException:
            self.obj = obj
            self.close()
            raise
        self.hooks_map = obj.map("gs_hooks")
        self.sys_map = obj.map("gs_syscalls")
        self.scope_map = obj.map("gs_scope")
        self.counters = TypedMap(obj.map("gs_counters"), "<I", "<Q")

    def close(self) -> None:
        for lk in self.sys_links.values():
            lk.destroy()
        self.sys_links.clear()
        for lk in self.links:
            lk.destroy()
        self.links.clear()
        if self.obj:
            self.obj.close()
            self.obj = None

    def programs(self) -> list[tuple[str, int, str]]:
        if not self.obj:
            return []
        watched = ", ".join(sorted(n for n in self.sys_links if not n.startswith("__lsm_"))) or "none yet"
        rows = [
            ("gs_sys_enter", self.obj.program("gs_sys_enter").fd, f"tracepoint syscalls/sys_enter_* ({watched})"),
            ("gs_connect4", self.obj.program("gs_connect4").fd, "cgroup/connect4 (cgroup v2 root)"),
        ]
        if self.lsm:
            rows.append(("gs_file_open", self.obj.program("gs_file_open").fd, "lsm/file_open"))
        if self.kprobes:
            kp = ", ".join(sorted(n.removeprefix("__kprobe_") for n in self.sys_links if n.startswith("__kprobe_")))
            rows.append(("gs_kprobe", self.obj.program("gs_kprobe").fd, f"kprobe ({kp or 'none yet'})"))
        return rows

    # ------------------------------------------------------------------ policies
    def _syscall_hooks(
        self, extra: dict[int, list[int]] | None = None, drop: set[int] | None = None
    ) -> dict[int, list[int]]:
        nums = abi.syscall_numbers()
        table: dict[int, list[int]] = {}
        for hid, (_lp, hook) in self.hooks.items():
            if drop and hid in drop:
                continue
            for name in hook.syscalls:
                table.setdefault(nums[name], []).append(hid)
        for nr, hids in (extra or {}).items():
            table.setdefault(nr, []).extend(hids)
        return table

    def apply(self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None) -> LoadedPolicy:
        """Load (or replace) a policy as a whole: check everything, then write."""
        old = self.policies.get(key)
        nums = abi.syscall_numbers()
        for hook in policy.hooks:
            for name in hook.syscalls:
                if name not in nums:
                    raise BpfError(f"hook {hook.source}", 22, f"unknown syscall {name!r} on this architecture")
        drop = set(old.hook_ids) if old else set()
        in_use = {hid for hid in self.hooks if hid not in drop}
        free = [i for i in range(abi.GS_HOOKS) if i not in in_use]
        if len(free) < len(policy.hooks):
            raise BpfError(
                "tracing hooks",
                28,
                f"the policy needs {len(policy.hooks)} hooks, {len(free)} of {abi.GS_HOOKS} are free",
            )
        ids = free[: len(policy.hooks)]
        extra: dict[int, list[int]] = {}
        for hid, hook in zip(ids, policy.hooks, strict=True):
            for name in hook.syscalls:
                extra.setdefault(nums[name], []).append(hid)
        table = self._syscall_hooks(extra, drop)
        crowded = [nr for nr, h in table.items() if len(h) > abi.GS_PER_SYSCALL]
        if crowded:
            raise BpfError("tracing hooks", 28, f"more than {abi.GS_PER_SYSCALL} hooks on syscall numbers {crowded}")
        lp = LoadedPolicy(policy, old.policy_id if old else self._next_policy, ids, True, set(cgroups or ()))
        if not old:
            self._next_policy += 1
        scoped = policy.pod_selector is not None or policy.kind == "TracingPolicyNamespaced"
        flags = abi.F_ENABLED | (abi.F_SCOPED if scoped else 0) | (abi.F_MONITOR if policy.mode == "monitor" else 0)
        # write: scope first, then hook configs, then the syscall table that makes them live
        self._write_scope(lp, old)
        for hid, hook in zip(ids, policy.hooks, strict=True):
            self.hooks_map.update(hid.to_bytes(4, "little"), abi.encode_hook(hook, lp.policy_id, hid, flags))
        for hid in drop - set(ids):
            self.hooks.pop(hid, None)
        for hid, hook in zip(ids, policy.hooks, strict=True):
            self.hooks[hid] = (lp, hook)
        self._write_syscalls()
        self.policies[key] = lp
        return lp

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

    def _write_syscalls(self) -> None:
        table = self._syscall_hooks()
        names = {nr: name for name, nr in abi.syscall_numbers().items()}
        assert self.obj is not None
        for nr in table:  # attach before the table makes hooks live, so nothing is half-watched
            name = names[nr]
            if name in self.sys_links:
                continue
            if name.startswith("__kprobe_"):
                if not self.kprobes:
                    raise BpfError(f"attach {name}", 95, "this kernel has no kprobes")
                self.sys_links[name] = KprobeLink.attach(
                    self.obj.program("gs_kprobe"), name.removeprefix("__kprobe_"), cookie=nr
                )
            elif name.startswith("__lsm_"):
                if not self.lsm:
                    raise BpfError(f"attach {name}", 95, "this kernel has no BPF-LSM")
                self.sys_links[name] = LsmLink.attach(self.obj.program("gs_" + name.removeprefix("__lsm_")))
            else:
                self.sys_links[name] = TracepointLink.attach(
                    self.obj.program("gs_sys_enter"), "syscalls", f"sys_enter_{name}"
                )
        for nr, hids in table.items():
            cfg = abi.SysCfg(n=len(hids))
            for i, h in enumerate(hids):
                cfg.hooks[i] = h
            self.sys_map.update(nr.to_bytes(4, "little"), bytes(cfg))
        for raw in list(self.sys_map.keys()):
            if int.from_bytes(raw, "little") not in table:
                self.sys_map.delete(raw)
        live = {names[nr] for nr in table}
        for name in [n for n in self.sys_links if n not in live]:  # unwatched syscalls pay nothing
            self.sys_links.pop(name).destroy()

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
            self.hooks.pop(hid, None)
        self._write_syscalls()
        for hid in lp.hook_ids:
            self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
        for cg in lp.cgroups:
            self.scope_map.delete(_scope_key(lp.policy_id, cg))

    def hook_counters(self, hid: int) -> dict[str, int]:
        return {name: sum(self.counters.get(hid * 4 + i) or [0]) for i, name in enumerate(abi.CNT)}

    def kernel_memory(self, lp: LoadedPolicy) -> int:
        return len(lp.hook_ids) * self.hooks_map.value_size + len(lp.cgroups) * 24


def _scope_key(policy_id: int, cgroup_id: int) -> bytes:
    return policy_id.to_bytes(4, "little") + b"\0" * 4 + cgroup_id.to_bytes(8, "little")


def cgroup_id(path: str) -> int:
    """A cgroup v2 directory's id is its inode number (what bpf_get_current_cgroup_id returns)."""
    return os.stat(path).st_ino
