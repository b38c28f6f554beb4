"""The tracing sensor's attachments: attach names to gs_syscalls keys, the links (pinned when pinning) and
the syscall table that makes hooks live."""

from __future__ import annotations

from typing import Any

from apiary.loader import (
    BpfError,
    KprobeLink,
    LsmLink,
    RawTracepointCookieLink,
    TracepointLink,
    TracingLink,
    UprobeLink,
)
from apiary.sensors.tracing import abi
from apiary.sensors.tracing.state import CONNECT_LINKS, FOLLOW_PROGS, TracingState


class HookLinks(TracingState):
    """Attach names, links and the syscall table (gs_syscalls)."""

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

    def _nr(self, name: str) -> int:
        """The key of gs_syscalls for a hook's attach name (a syscall number or a pseudo number)."""
        nums = abi.syscall_numbers()
        if name in nums:
            return nums[name]
        if name.startswith(("__tp_", "__uprobe_", "__kprobe_", "__rawtp_")):
            if name not in self._dyn:
                nr = abi.NR_DYN + len(self._dyn)
                if nr >= abi.NR_MAX:
                    raise BpfError(f"attach {name}", 28, f"more than {abi.NR_MAX - abi.NR_DYN} attach points")
                self._dyn[name] = nr
            return self._dyn[name]
        raise KeyError(name)

    def _names(self) -> dict[int, str]:
        out = {nr: name for name, nr in abi.syscall_numbers().items()}
        out.update({nr: name for name, nr in self._dyn.items()})
        return out

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
        if self._sys_keys is None:  # the entries in use (an array: every key exists), once per load
            self._sys_keys = {
                int.from_bytes(k, "little") for k, v in self.sys_map.lookup_batch() if v[:2] != b"\0\0"
            }
        empty = bytes(abi.SysCfg())
        for nr in self._sys_keys - table.keys():
            self.sys_map.update(nr.to_bytes(4, "little"), empty)
        self._sys_keys = set(table)
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
        return TracepointLink.attach(prog(self.enter_prog), "syscalls", f"sys_enter_{name}")
