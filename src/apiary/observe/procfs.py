"""Processes already running at agent start-up, read from /proc (Tetragon's procfs "procFS" events).

Each process (thread-group leader) becomes an :class:`ExecMsg` flagged ``EXEC_F_PROCFS`` whose
``ktime`` is the /proc start time moved onto the kernel's CLOCK_MONOTONIC, so it can be fed to the
process cache like a kernel exec. The start time has clock-tick resolution (usually 10 ms).
"""

from __future__ import annotations

import os
import time

from apiary.observe.raw import EXEC_F_ERR_CWD, EXEC_F_NO_PARENT, EXEC_F_PROCFS, ExecMsg

INVALID_UID = 4294967295


class ScanResult(list[ExecMsg]):
    """The scanned processes, parents before children; ``vanished`` counts processes that exited
    (or became unreadable) while being read and were skipped."""

    vanished: int = 0


def measure_boottime_to_monotonic_ns() -> int:
    """CLOCK_MONOTONIC - CLOCK_BOOTTIME (<= 0; non-zero once the machine has been suspended)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _unescape_mountinfo(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def find_cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str] | None:
    """(mount point, root of the mount inside the hierarchy) of the first cgroup2 mount, or None."""
    try:
        with open(mountinfo) as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                if post.split(" ", 1)[0] == "cgroup2":
                    fields = pre.split()
                    return _unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3])
    except OSError:
        pass
    return None


def _cgroup_id(pid_dir: str, mount: tuple[str, str] | None) -> int:
    if mount is None:
        return 0
    try:
        with open(os.path.join(pid_dir, "cgroup")) as f:
            path = next((ln[3:].rstrip("\n") for ln in f if ln.startswith("0::")), None)
    except OSError:
        return 0
    if path is None:
        return 0
    point, root = mount
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    try:
        return os.stat(point + "/" + path.lstrip("/")).st_ino
    except OSError:
        return 0


def _read_status(pid_dir: str) -> dict[str, str]:
    with open(os.path.join(pid_dir, "status")) as f:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f)}


def process_start_ticks(pid_dir: str = "/proc/self") -> int:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    with open(os.path.join(pid_dir, "stat")) as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _read_one(pid_dir: str, pid: int, clk_tck: int, offset_ns: int, mount: tuple[str, str] | None) -> ExecMsg | None:
    """ExecMsg (parent_ktime not yet filled) for pid, or None for threads and kernel threads.

    Raises OSError when the process vanished.
    """
    start_ticks = process_start_ticks(pid_dir)
    status = _read_status(pid_dir)
    if int(status.get("Tgid", pid)) != pid:
        return None
    with open(os.path.join(pid_dir, "cmdline"), "rb") as f:
        raw = f.read()
    argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0")] if raw else []
    if argv and argv[-1] == "":
        argv.pop()
    try:
        binary = os.readlink(os.path.join(pid_dir, "exe"))
    except OSError:
        if not raw and pid != 1:
            return None  # kernel thread
        binary = argv[0] if argv else ""  # not ours to read (non-root), or pid 1 seen from a container
    flags = EXEC_F_PROCFS
    try:
        cwd = os.readlink(os.path.join(pid_dir, "cwd"))
    except OSError:
        cwd, flags = "", flags | EXEC_F_ERR_CWD
    try:
        with open(os.path.join(pid_dir, "loginuid")) as f:
            auid = int(f.read().strip() or INVALID_UID)
    except (OSError, ValueError):
        auid = INVALID_UID
    uids = [int(x) for x in status.get("Uid", "").split()] or [INVALID_UID] * 4
    gids = [int(x) for x in status.get("Gid", "").split()] or [INVALID_UID] * 4
    return ExecMsg(
        ktime=start_ticks * 1_000_000_000 // clk_tck + offset_ns,
        pid=pid,
        tid=pid,
        ppid=int(status.get("PPid", "0") or 0),
        parent_ktime=0,
        flags=flags,
        uid=uids[0],
        euid=uids[1],
        gid=gids[0],
        egid=gids[1],
        auid=auid,
        cgroup_id=_cgroup_id(pid_dir, mount),
        binary=binary,
        cwd=cwd,
        argv=argv,
    )


def scan_procfs(
    root: str = "/proc",
    boottime_to_monotonic_ns: int | None = None,
    cgroup2_mount: str | None = None,
    clk_tck: int | None = None,
) -> ScanResult:
    """One ExecMsg per process in ``root``, sorted by start time then pid (parents first).

    ``boottime_to_monotonic_ns`` (default measured now) converts /proc start times (CLOCK_BOOTTIME)
    to the kernel's CLOCK_MONOTONIC ktime. ``cgroup2_mount`` defaults to the cgroup2 mount found
    in ``<root>/self/mountinfo``; ``cgroup_id`` is 0 when there is none.
    """
    offset = boottime_to_monotonic_ns
    if offset is None:
        offset = measure_boottime_to_monotonic_ns()
    tck = clk_tck or os.sysconf("SC_CLK_TCK")
    mount = (cgroup2_mount, "/") if cgroup2_mount else find_cgroup2_mount(os.path.join(root, "self/mountinfo"))
    result = ScanResult()
    try:
        names = os.listdir(root)
    except OSError:
        return result
    for name in names:
        if not name.isdigit():
            continue
        try:
            msg = _read_one(os.path.join(root, name), int(name), tck, offset, mount)
        except (OSError, ValueError, IndexError):
            result.vanished += 1  # exited while we read it: normal
            continue
        if msg is not None:
            result.append(msg)
    ktimes = {m.pid: m.ktime for m in result}
    for m in result:
        if m.ppid:
            if m.ppid in ktimes:
                m.parent_ktime = ktimes[m.ppid]
            else:
                m.flags |= EXEC_F_NO_PARENT
    result.sort(key=lambda m: (m.ktime, m.pid))
    return result
