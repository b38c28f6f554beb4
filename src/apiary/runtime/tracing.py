"""The generic syscall sensor: loads gsys.bpf.o next to the process sensor (sharing its ring buffer,
live-process and binary maps), writes TracingPolicy hooks into its maps, decodes its events."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.loader import (
    BpfError,
    BpfObject,
    CgroupLink,
    KprobeLink,
    LsmLink,
    RawTracepointCookieLink,
    TracepointLink,
    TracingLink,
    TypedMap,
    UprobeLink,
)
from apiary.loader.fs import cgroup2_root
from apiary.tracing.compile import kernel_at_least
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
        self.raw_tp = kernel_at_least(6, 10)  # raw tracepoints take attach cookies
        self.obj_path = Path(obj_path) if obj_path else bpf_object("gsys")
        self.obj: BpfObject | None = None
        self.links: list[Any] = []
        self.policies: dict[str, LoadedPolicy] = {}  # key: namespace/name
        self.hooks: dict[int, tuple[LoadedPolicy, Hook]] = {}
        self.sys_links: dict[str, Any] = {}  # one tracepoint link per watched syscall, one LSM link per hook
        self._next_policy = 1
        self._dyn: dict[str, int] = {}  # pseudo numbers (attach cookies) of tracepoints, uprobes, kprobes
        self.follow: dict[int, tuple[int, int, str]] = {}  # gs_mb bit -> (hook id, selector, "bin"|"pid")
        self.follow_links: list[Any] = []

    def load(self) -> None:
        assert self.process.obj is not None
        obj = BpfObject(self.obj_path, "gsys")
        try:
            for shared in ("events", "procs", "binaries"):
                obj.reuse_map(shared, self.process.obj.map(shared).fd)
            for lsm_prog in ("gs_file_open", "gs_file_permission", "gs_bprm_check_security"):
                obj.program(lsm_prog).autoload = self.lsm
            obj.program("gs_raw_tp").autoload = self.raw_tp  # bpf_get_attach_cookie in raw_tp: 6.10+
            obj.load()
            self.obj = obj
            root = cgroup2_root()
            if root:
                for prog in ("gs_connect4", "gs_connect6"):
                    self.links.append(CgroupLink.attach(obj.program(prog), root))
        except BaseException:
            self.obj = obj
            self.close()
            raise
        self.hooks_map = obj.map("gs_hooks")
        self.sys_map = obj.map("gs_syscalls")
        self.scope_map = obj.map("gs_scope")
        self.counters = TypedMap(obj.map("gs_counters"), "<I", "<Q")
        self.follow_map = obj.map("gs_follow")
        self.mb_map = TypedMap(obj.map("gs_mb"), "<I", "<Q")

    def close(self) -> None:
        for lk in list(self.sys_links.values()) + self.follow_links:
            lk.destroy()
        self.sys_links.clear()
        self.follow_links.clear()
        for lk in self.links:
            lk.destroy()
        self.links.clear()
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
            for name in hook.syscalls:
                table.setdefault(self._nr(name), []).append(hid)
        for nr, hids in (extra or {}).items():
            table.setdefault(nr, []).extend(hids)
        return table

    def apply(self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None) -> LoadedPolicy:
        """Load (or replace) a policy as a whole: check everything, then write."""
        old = self.policies.get(key)
        nums = abi.syscall_numbers()
        for hook in policy.hooks:
            for name in hook.syscalls:
                if name not in nums and not name.startswith(("__tp_", "__uprobe_", "__kprobe_", "__rawtp_")):
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
        lp = LoadedPolicy(policy, old.policy_id if old else self._next_policy, ids, True, set(cgroups or ()))
        if not old:
            self._next_policy += 1
        scoped = policy.pod_selector is not None or policy.kind == "TracingPolicyNamespaced"
        flags = abi.F_ENABLED | (abi.F_SCOPED if scoped else 0) | (abi.F_MONITOR if policy.mode == "monitor" else 0)
        # write: scope first, then follow bits, then hook configs, then the syscall table that makes them live
        self._write_scope(lp, old)
        for b in old_bits:
            self._free_bit(b)
        assign = dict(zip(wanted, free_bits, strict=False))
        tree = proc_tree() if assign else {}  # one /proc scan for all the policy's follow filters
        for (hid, si, w), b in assign.items():
            hook = policy.hooks[ids.index(hid)]
            self._claim_bit(b, hid, si, w, hook, tree)
        for hid, hook in zip(ids, policy.hooks, strict=True):
            follow = {(si, w): b for (h, si, w), b in assign.items() if h == hid}
            self.hooks_map.update(
                hid.to_bytes(4, "little"), abi.encode_hook(hook, lp.policy_id, hid, flags, follow)
            )
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
                self.apply(key, old.policy, old.cgroups)
            raise
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
        names = self._names()
        # return hooks and hooks evaluated at the exit need the exit; all but the latter the entry
        returns = {
            self._nr(n)
            for _lp, hook in self.hooks.values()
            if hook.ret is not None or hook.at_exit
            for n in hook.syscalls
        }
        entries = {  # hooks at the exit that compare the credentials with the entry's record them there
            self._nr(n)
            for _lp, hook in self.hooks.values()
            if not hook.at_exit or "cred_new" in hook.guard.checks
            for n in hook.syscalls
        }
        assert self.obj is not None
        for nr in table:  # attach before the table makes hooks live, so nothing is half-watched
            name = names[nr]
            if nr in entries and name not in self.sys_links:
                self.sys_links[name] = self._attach(name, nr, False)
            if nr in returns and f"__exit_{name}" not in self.sys_links:
                self.sys_links[f"__exit_{name}"] = self._attach(name, nr, True)
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
            for p in ("gs_follow_exec", "gs_follow_fork", "gs_follow_exit"):
                self.follow_links.append(TracingLink.attach(self.obj.program(p)))
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
            self.hooks.pop(hid, None)
        for b in [b for b, (hid, _si, _w) in self.follow.items() if hid in lp.hook_ids]:
            self._free_bit(b)
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
