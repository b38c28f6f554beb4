from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache, tetragon_arguments
from apiary.observe.procfs import find_cgroup2_mount, scan_procfs
from apiary.observe.raw import EXEC_F_ERR_CWD, EXEC_F_NO_PARENT, EXEC_F_PROCFS


def test_scan_real_proc_finds_this_process() -> None:
    before = time.monotonic_ns()
    result = scan_procfs()
    by_pid = {m.pid: m for m in result}
    me = by_pid[os.getpid()]
    assert me.flags & EXEC_F_PROCFS
    assert me.ppid == os.getppid()
    assert me.argv == sys.orig_argv
    assert me.binary == os.path.realpath(sys.executable)
    assert me.cwd == os.getcwd()
    assert (me.uid, me.euid, me.gid, me.egid) == (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    assert 0 < me.ktime <= before
    assert me.tid == me.pid
    parent = by_pid.get(me.ppid)
    if parent is not None:
        assert me.parent_ktime == parent.ktime
        assert result.index(parent) < result.index(me)
    keys = [(m.ktime, m.pid) for m in result]
    assert keys == sorted(keys)
    assert len(by_pid) == len(result)
    if 1 in by_pid:
        assert by_pid[1].ppid == 0 and by_pid[1].parent_ktime == 0
    for m in result:  # no kernel threads
        assert m.binary or m.argv
    mount = find_cgroup2_mount()
    if mount is not None:
        with open("/proc/self/cgroup") as f:
            path = next(ln[3:].strip() for ln in f if ln.startswith("0::"))
        assert me.cgroup_id == os.stat(os.path.join(mount[0], path.lstrip("/"))).st_ino

    cache = ProcessCache("node", KtimeClock())
    for m in result:
        cache.on_exec(m)
    p = cache.get_by_pid(os.getpid())
    assert p is not None and p.flags.startswith("procFS")
    assert "miss" not in p.flags or parent is None
    assert p.arguments == tetragon_arguments(sys.orig_argv[1:])


def _proc(root: Path, pid: int, ppid: int, start: int, cmdline: bytes, exe: str | None, cwd: str | None,
          comm: str = "x", tgid: int | None = None, cgroup: str = "0::/\n") -> None:  # fmt: skip
    d = root / str(pid)
    d.mkdir()
    rest = ["0"] * 17 + [str(start)] + ["0"] * 30
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} " + " ".join(rest) + "\n")
    (d / "status").write_text(
        f"Name:\t{comm}\nTgid:\t{tgid or pid}\nPid:\t{pid}\nPPid:\t{ppid}\n"
        "Uid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\n"
    )
    (d / "cmdline").write_bytes(cmdline)
    (d / "cgroup").write_text(cgroup)
    if exe is not None:
        os.symlink(exe, d / "exe")
    if cwd is not None:
        os.symlink(cwd, d / "cwd")


def test_scan_fake_proc(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    root.mkdir()
    cg = tmp_path / "cg"
    (cg / "system.slice" / "web.service").mkdir(parents=True)
    (root / "self").mkdir()
    (root / "self" / "mountinfo").write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n"
        f"41 31 0:38 / {str(cg).replace(' ', chr(92) + '040')} rw,relatime - cgroup2 cgroup2 rw\n"
    )
    _proc(root, 1, 0, 10, b"/sbin/init\0splash\0", None, "/")  # exe unreadable: pid 1 is kept
    _proc(root, 2, 0, 11, b"", None, None, comm="kthreadd")  # kernel thread: skipped
    _proc(root, 100, 1, 500, b"bash\0-c\0echo a b\0", "/usr/bin/bash", "/home/u", comm="ba) sh",
          cgroup="0::/system.slice/web.service\n")  # fmt: skip
    (root / "100" / "loginuid").write_text("1000")
    _proc(root, 101, 1, 501, b"bash\0", "/usr/bin/bash", "/", tgid=100)  # a thread: skipped
    _proc(root, 300, 999, 700, b"orphan\0", "/opt/orphan", None)  # parent gone, cwd unreadable
    (root / "77").mkdir()  # vanished while scanning: no files left
    (root / "net").mkdir()

    result = scan_procfs(str(root), boottime_to_monotonic_ns=-5_000_000_000, clk_tck=100)
    assert [m.pid for m in result] == [1, 100, 300]
    assert result.vanished == 1
    init, bash, orphan = result
    assert init.binary == "/sbin/init" and init.argv == ["/sbin/init", "splash"]
    assert init.ktime == 10 * 10_000_000 - 5_000_000_000
    assert (init.ppid, init.parent_ktime, init.auid) == (0, 0, 4294967295)
    assert init.cgroup_id == os.stat(cg).st_ino
    assert bash.ktime == 500 * 10_000_000 - 5_000_000_000
    assert (bash.ppid, bash.parent_ktime) == (1, init.ktime)
    assert (bash.uid, bash.euid, bash.gid, bash.egid, bash.auid) == (1000, 1001, 100, 101, 1000)
    assert (bash.binary, bash.cwd, bash.argv) == ("/usr/bin/bash", "/home/u", ["bash", "-c", "echo a b"])
    assert bash.cgroup_id == os.stat(cg / "system.slice" / "web.service").st_ino
    assert bash.flags == EXEC_F_PROCFS
    assert orphan.flags == EXEC_F_PROCFS | EXEC_F_ERR_CWD | EXEC_F_NO_PARENT
    assert (orphan.ppid, orphan.parent_ktime, orphan.cwd) == (999, 0, "")

    cache = ProcessCache("n", KtimeClock(0))
    procs = [cache.on_exec(m) for m in result]
    assert [p.flags for p in procs] == ["procFS rootcwd", "procFS", "procFS miss rootcwd errorCWD"]
    assert cache.parent(procs[1]) is procs[0]
    assert procs[1].arguments == '-c "echo a b"'

    # no cgroup2 mount: cgroup ids are 0
    (root / "self" / "mountinfo").write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    assert all(m.cgroup_id == 0 for m in scan_procfs(str(root), boottime_to_monotonic_ns=0, clk_tck=100))
    assert scan_procfs(str(tmp_path / "missing")) == []
