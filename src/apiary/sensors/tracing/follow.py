"""followChildren / followForks: the gs_mb bits of the tracing sensor, seeded from /proc for processes that
already run (the kernel sets them for what starts from then on)."""

from __future__ import annotations

import os

from apiary.sensors.tracing import abi
from apiary.sensors.tracing.links import HookLinks
from apiary.sensors.tracing.state import FOLLOW_PROGS
from apiary.tracing.types import Hook


class FollowBits(HookLinks):
    """Claiming and freeing gs_follow / gs_mb bits."""

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
