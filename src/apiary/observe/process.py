"""User-space process cache: kernel exec/fork/exit messages -> Tetragon-style process records.

A process image is identified by ``(pid, ktime)``; its Tetragon ``exec_id`` is
``base64("<node>:<ktime>:<pid>")``. Records link to their parent by ``(ppid, parent_ktime)``.

Reference counting (the Tetragon scheme): a record counts one reference for itself while its image
runs, plus one per child record that holds it. A record holds its parent from insertion until it is
itself released, so the ancestor chain of every live process stays in the cache. A record is
released when its image is over (exit, or replaced by a later exec/fork of the same pid) and no
child holds it: it then goes to the "dead" queue, where it can still be found (a late exit event, an
exec whose parent just exited) for ``dead_ttl`` seconds, and releases its own parent.
"""

from __future__ import annotations

import base64
import binascii
import functools
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apiary.observe.clock import KtimeClock
from apiary.observe.raw import (
    EXEC_F_CLONE,
    EXEC_F_ERR_ARGS,
    EXEC_F_ERR_CWD,
    EXEC_F_NO_PARENT,
    EXEC_F_PROCFS,
    EXEC_F_TRUNC_ARGS,
    EXEC_F_TRUNC_CWD,
    ExecMsg,
    ExitMsg,
    ForkMsg,
)

# Tetragon's flag names in the fixed order of DecodeCommonFlags.
FLAG_ORDER = (
    "execve procFS errorEnvs truncArgs miss errorFilename errorArgs nocwd rootcwd errorCWD clone "
    "errorCgroupName errorCgroupID errorCgroupSubsysCgrp errorCgroupSubsys errorCgroups "
    "errorPathResolutionCwd dataFilename dataArgs inInitTree"
).split()

Key = tuple[int, int]  # (pid, ktime)


def tetragon_flags(names: Iterable[str]) -> str:
    """Flag names -> Tetragon's space-separated string in its fixed order (unknown names dropped)."""
    return _flags(frozenset(names))


@functools.lru_cache(maxsize=256)
def _flags(s: frozenset[str]) -> str:
    return sys.intern(" ".join(f for f in FLAG_ORDER if f in s))


def make_exec_id(node: str, ktime: int, pid: int) -> str:
    return base64.b64encode(f"{node}:{ktime}:{pid}".encode()).decode("ascii")


def parse_exec_id(exec_id: str) -> tuple[str, int, int]:
    """``exec_id`` -> (node, ktime, pid). Raises ``ValueError`` when it is not one."""
    try:
        node, ktime, pid = base64.b64decode(exec_id, validate=True).decode().rsplit(":", 2)
        return node, int(ktime), int(pid)
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not an exec_id: {exec_id!r}") from e


def tetragon_arguments(args: Iterable[str]) -> str:
    """argv[1:] -> Tetragon's ``arguments`` string (quirks of its ArgsDecoder included).

    Arguments are joined by single spaces; one containing a space is wrapped in double quotes and
    always preceded by a space, even when it comes first (``['-c', 'a b']`` -> ``-c "a b"``,
    ``['a b']`` -> `` "a b"``).
    """
    out = ""
    for a in args:
        if " " in a:
            out += f' "{a}"'
        elif not out:
            out = a
        else:
            out += " " + a
    return out


@dataclass(slots=True, eq=False)
class Process:
    """One process image, with the fields Tetragon's ``Process`` message needs."""

    pid: int
    ktime: int
    exec_id: str
    parent_exec_id: str | None
    binary: str
    arguments: str
    cwd: str
    flags: str
    uid: int
    euid: int
    gid: int
    egid: int
    auid: int
    cgroup_id: int
    start_time: str
    tid: int = 0
    ppid: int = 0
    parent_ktime: int = 0
    refcnt: int = 0
    exited: bool = False  # the image is over: the process exited, or exec'd/forked a newer image
    pod: dict[str, Any] | None = None  # endpoint info attached by cgroup id (later)
    holds_parent: bool = field(default=False, repr=False)
    # (refcnt, pod) -> encoded JSON: ancestors repeat in every event, so they are encoded once
    json_memo: tuple[int, Any, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> Key:
        return (self.pid, self.ktime)

    @property
    def parent_key(self) -> Key | None:
        return (self.ppid, self.parent_ktime) if self.parent_exec_id is not None else None


class ProcessCache:
    """Bounded cache of process records with reference counting and delayed eviction.

    Memory bound: at most ``capacity`` records (live + dead) are kept. Measured with tracemalloc on
    CPython 3.11 (42-character node name), a live record costs about 800 bytes plus its text: the
    slotted object (~220 B), ``exec_id`` and ``start_time`` strings (~190 B; ``parent_exec_id`` is
    the parent's string object and ``flags`` strings are interned), ints and the key tuple
    (~150 B), the ordered-dict and pid-index entries (~230 B); a dead-queue entry adds ~190 B. So::

        bytes <= capacity * (1000 + len(node) + avg(len(binary) + len(arguments) + len(cwd)))

    i.e. at most ~75 MB for the default 65536 entries with 150 bytes of path/argument text each.
    The kernel caps argv and path sizes, which caps the per-entry text.

    When an insert exceeds ``capacity``, the oldest dead records go first, then the oldest live
    ones (counted in ``evictions``).
    """

    def __init__(
        self,
        node: str,
        clock: KtimeClock | None = None,
        capacity: int = 65536,
        dead_ttl: float = 30.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.node = node
        self.clock = clock if clock is not None else KtimeClock()
        self.capacity = capacity
        self.dead_ttl = dead_ttl
        self._now = now
        self._procs: OrderedDict[Key, Process] = OrderedDict()  # insertion order = age
        self._by_pid: dict[int, Key] = {}  # pid -> current image
        self._dead: OrderedDict[Key, float] = OrderedDict()  # key -> eviction deadline
        self.evictions = 0  # live records dropped because the cache was full
        self.expired = 0  # dead records dropped (ttl elapsed, or cache full)
        self.misses = {"get": 0, "remove": 0}

    def __len__(self) -> int:
        return len(self._procs)

    # --- kernel messages -------------------------------------------------------------------------

    def on_exec(self, msg: ExecMsg) -> Process:
        """A new image (execve, or a process found in /proc): record it and return it."""
        self._expire()
        old = self._procs.get((msg.pid, msg.ktime))
        if old is not None:
            return old
        parent = self._find_parent(msg.ppid, msg.parent_ktime)
        f = msg.flags
        names = {"procFS" if f & EXEC_F_PROCFS else "execve"}
        if f & EXEC_F_TRUNC_ARGS:
            names.add("truncArgs")
        if parent is None and (msg.ppid or f & EXEC_F_NO_PARENT):
            names.add("miss")
        if f & EXEC_F_ERR_ARGS:
            names.add("errorArgs")
        cwd = msg.cwd
        if f & EXEC_F_ERR_CWD:
            cwd = ""
            names.add("errorCWD")
            if f & EXEC_F_PROCFS:
                names.add("rootcwd")  # Tetragon's /proc reader sets both when cwd is unreadable
        elif cwd == "/":
            names.add("rootcwd")
        if f & EXEC_F_CLONE:
            names.add("clone")
        if f & EXEC_F_TRUNC_CWD:
            names.add("errorPathResolutionCwd")
        p = Process(
            pid=msg.pid,
            ktime=msg.ktime,
            exec_id=make_exec_id(self.node, msg.ktime, msg.pid),
            parent_exec_id=None,
            binary=msg.binary,
            arguments="" if f & EXEC_F_ERR_ARGS else tetragon_arguments(msg.argv[1:]),
            cwd=cwd,
            flags=tetragon_flags(names),
            uid=msg.uid,
            euid=msg.euid,
            gid=msg.gid,
            egid=msg.egid,
            auid=msg.auid,
            cgroup_id=msg.cgroup_id,
            start_time=self.clock.to_rfc3339(msg.ktime),
            tid=msg.tid,
        )
        self._install(p, parent, msg.ppid, msg.parent_ktime)
        return p

    def on_fork(self, msg: ForkMsg) -> Process:
        """A new process running its parent's image: record it (flags ``clone``) and return it."""
        self._expire()
        old = self._procs.get((msg.pid, msg.ktime))
        if old is not None:
            return old
        parent = self._find_parent(msg.ppid, msg.parent_ktime)
        src = parent or Process(0, 0, "", None, "", "", "", "", 0, 0, 0, 0, 4294967295, 0, "")
        p = Process(
            pid=msg.pid,
            ktime=msg.ktime,
            exec_id=make_exec_id(self.node, msg.ktime, msg.pid),
            parent_exec_id=None,
            binary=src.binary,
            arguments=src.arguments,
            cwd=src.cwd,
            flags="clone" if parent else "miss clone",
            uid=src.uid,
            euid=src.euid,
            gid=src.gid,
            egid=src.egid,
            auid=src.auid,
            cgroup_id=src.cgroup_id,
            start_time=self.clock.to_rfc3339(msg.ktime),
            tid=msg.pid,
            pod=src.pod,
        )
        self._install(p, parent, msg.ppid, msg.parent_ktime)
        return p

    def on_exit(self, msg: ExitMsg) -> Process | None:
        """The process ``(pid, proc_ktime)`` exited: mark it and return it (None, counted, if unknown).

        ``proc_ktime`` 0 means "the current image of pid".
        """
        self._expire()
        p = self._procs.get((msg.pid, msg.proc_ktime))
        if p is None and msg.proc_ktime == 0:
            p = self.get_by_pid(msg.pid)
        if p is None:
            self.misses["remove"] += 1
            return None
        self._finish(p)
        return p

    # --- lookups ---------------------------------------------------------------------------------

    def get(self, exec_id: str) -> Process | None:
        self._expire()
        try:
            node, ktime, pid = parse_exec_id(exec_id)
        except ValueError:
            node, ktime, pid = "", 0, 0
        p = self._procs.get((pid, ktime)) if node == self.node else None
        if p is None:
            self.misses["get"] += 1
        return p

    def get_by_key(self, pid: int, ktime: int) -> Process | None:
        """The image ``(pid, ktime)``: the one a kernel message names by its process start ktime.

        A pid the kernel reused (another process, another start ktime) is not the image asked for, so
        it is never returned. ``ktime`` 0 means the kernel did not know the process's start: then the
        current image of ``pid`` if it still runs (a record whose image is over is another process).
        A miss is counted (``misses["get"]``).
        """
        self._expire()
        if ktime:
            p = self._procs.get((pid, ktime))
        else:
            p = self.get_by_pid(pid)
            if p is not None and p.exited:
                p = None
        if p is None:
            self.misses["get"] += 1
        return p

    def get_by_pid(self, pid: int) -> Process | None:
        """The current (latest) image of ``pid``, possibly already exited but not yet evicted."""
        self._expire()
        key = self._by_pid.get(pid)
        return self._procs.get(key) if key is not None else None

    def parent(self, p: Process) -> Process | None:
        key = p.parent_key
        return self._procs.get(key) if key is not None else None

    def ancestors(self, p: Process, limit: int | None = None) -> list[Process]:
        """The parent's parent, its parent ... up to the root (Tetragon's ``ancestors``; closest first).

        The immediate parent is not included.
        """
        out: list[Process] = []
        seen = {p.key}
        q = self.parent(p)
        if q is None:
            return out
        seen.add(q.key)
        q = self.parent(q)
        while q is not None and q.key not in seen and (limit is None or len(out) < limit):
            out.append(q)
            seen.add(q.key)
            q = self.parent(q)
        return out

    def stats(self) -> dict[str, Any]:
        self._expire()
        return {
            "size": len(self._procs),
            "capacity": self.capacity,
            "dead": len(self._dead),
            "evictions": self.evictions,
            "expired": self.expired,
            "misses": dict(self.misses),
        }

    # --- internals -------------------------------------------------------------------------------

    def _find_parent(self, ppid: int, parent_ktime: int) -> Process | None:
        if ppid == 0 and parent_ktime == 0:
            return None  # pid 1, kthreadd: no parent
        parent = self._procs.get((ppid, parent_ktime))
        if parent is None and parent_ktime == 0:
            parent = self.get_by_pid(ppid)  # the kernel did not know the parent: best effort by pid
        if parent is None:
            self.misses["get"] += 1
        return parent

    def _install(self, p: Process, parent: Process | None, ppid: int, parent_ktime: int) -> None:
        p.refcnt = 1  # the running image
        if parent is not None:
            p.ppid, p.parent_ktime, p.parent_exec_id = parent.pid, parent.ktime, parent.exec_id
            p.holds_parent = True
            self._hold(parent)
        elif parent_ktime:  # unknown parent: keep the kernel's reference to it, as Tetragon does
            p.ppid, p.parent_ktime = ppid, parent_ktime
            p.parent_exec_id = make_exec_id(self.node, parent_ktime, ppid)
        self._procs[p.key] = p
        prev = self._procs.get(self._by_pid.get(p.pid, (-1, -1)))
        if prev is None or prev.ktime <= p.ktime:
            self._by_pid[p.pid] = p.key
            if prev is not None:
                self._finish(prev)  # a newer image of this pid replaces the previous one
        self._enforce_capacity(p.key)

    def _hold(self, q: Process | None) -> None:
        """Take a reference on q, reviving it (and the ancestors it had released) if it was dead."""
        while q is not None:
            q.refcnt += 1
            if self._dead.pop(q.key, None) is None:
                return  # q was held already, and so are its ancestors
            parent = self._procs.get(q.parent_key) if q.parent_key else None
            if parent is None:
                return
            q.holds_parent = True  # a dead record had released its parent: take it again
            q = parent

    def _finish(self, p: Process) -> None:
        if not p.exited:
            p.exited = True
            p.refcnt -= 1
            self._settle(p)

    def _settle(self, p: Process | None) -> None:
        """Move released records to the dead queue, releasing their parents in turn."""
        while p is not None and p.exited and p.refcnt <= 0 and p.key not in self._dead:
            self._dead[p.key] = self._now() + self.dead_ttl
            p = self._release_parent(p)

    def _release_parent(self, p: Process) -> Process | None:
        if not p.holds_parent:
            return None
        p.holds_parent = False
        parent = self._procs.get(p.parent_key) if p.parent_key else None
        if parent is not None:
            parent.refcnt -= 1
        return parent

    def _remove(self, key: Key) -> Process:
        p = self._procs.pop(key)
        self._dead.pop(key, None)
        if self._by_pid.get(p.pid) == key:
            del self._by_pid[p.pid]
        return p

    def _expire(self) -> None:
        if not self._dead:
            return
        now = self._now()
        while self._dead:
            key, deadline = next(iter(self._dead.items()))
            if deadline > now:
                break
            self._remove(key)
            self.expired += 1

    def _enforce_capacity(self, protect: Key) -> None:
        while len(self._procs) > self.capacity:
            if self._dead:
                self._remove(next(iter(self._dead)))
                self.expired += 1
                continue
            # oldest live leaf first (no child holds it), so long-lived ancestors such as pid 1 stay
            key = next((k for k, q in self._procs.items() if k != protect and q.refcnt <= 1), None)
            if key is None:
                key = next(iter(self._procs))
                if key == protect:
                    return
            victim = self._remove(key)
            self.evictions += 1
            self._settle(self._release_parent(victim))
