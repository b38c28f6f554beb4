from __future__ import annotations

import base64

import pytest

from apiary.observe.clock import KtimeClock
from apiary.observe.process import (
    ProcessCache,
    make_exec_id,
    parse_exec_id,
    tetragon_arguments,
    tetragon_flags,
)
from apiary.observe.raw import (
    EXEC_F_CLONE,
    EXEC_F_ERR_ARGS,
    EXEC_F_ERR_CWD,
    EXEC_F_PROCFS,
    EXEC_F_REEXEC,
    EXEC_F_TRUNC_ARGS,
    ExecMsg,
    ExitMsg,
    ForkMsg,
)

NODE = "test-node"
OFFSET = 1_700_000_000 * 10**9  # wall = ktime + OFFSET


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def exec_msg(
    pid: int,
    ktime: int,
    ppid: int = 0,
    pktime: int = 0,
    flags: int = EXEC_F_CLONE,
    binary: str = "/bin/sh",
    argv: list[str] | None = None,
    cwd: str = "/",
) -> ExecMsg:
    return ExecMsg(
        ktime=ktime,
        pid=pid,
        tid=pid,
        ppid=ppid,
        parent_ktime=pktime,
        flags=flags,
        uid=1000,
        euid=1001,
        gid=100,
        egid=101,
        auid=4294967295,
        cgroup_id=42,
        binary=binary,
        cwd=cwd,
        argv=argv if argv is not None else [binary],
    )


def exit_msg(pid: int, ktime: int, status: int = 0, signal: int = 0) -> ExitMsg:
    return ExitMsg(ktime=ktime + 1, pid=pid, tid=pid, proc_ktime=ktime, status=status, signal=signal)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def cache(clock: FakeTime) -> ProcessCache:
    return ProcessCache(NODE, KtimeClock(OFFSET), capacity=1000, dead_ttl=30.0, now=clock)


def test_exec_id_matches_tetragon_testdata() -> None:
    want = "Z2tlLW1pY2hpLTIyMDM4LWRlZmF1bHQtcG9vbC00MzczMGZhYi1sOHpyOjEzNjY1ODIyNjI0ODU2OjY4Nzkw"
    node = "gke-michi-22038-default-pool-43730fab-l8zr"
    assert make_exec_id(node, 13665822624856, 68790) == want
    assert parse_exec_id(want) == (node, 13665822624856, 68790)
    c = ProcessCache(node, KtimeClock(0))
    p = c.on_exec(exec_msg(68790, 13665822624856, binary="/usr/bin/netserver", argv=["netserver", "-D"]))
    assert p.exec_id == want
    assert c.get(want) is p
    # padding is kept (standard base64, not URL-safe, not stripped)
    assert make_exec_id("kind-control-plane", 1, 0) == "a2luZC1jb250cm9sLXBsYW5lOjE6MA=="
    with pytest.raises(ValueError):
        parse_exec_id("not base64!")


def test_arguments_quoting_mimics_tetragon() -> None:
    assert tetragon_arguments([]) == ""
    assert tetragon_arguments(["--version"]) == "--version"
    assert tetragon_arguments(["-c", "curl https://ebpf.io/applications/#tetragon"]) == (
        '-c "curl https://ebpf.io/applications/#tetragon"'
    )
    # a quoted argument always gets a leading space, even when it comes first
    assert tetragon_arguments(["a b", "c"]) == ' "a b" c'
    # an empty first argument vanishes, a later one leaves a double space (Go's ArgsDecoder)
    assert tetragon_arguments(["", "x"]) == "x"
    assert tetragon_arguments(["a", "", "b"]) == "a  b"


def test_flags_fixed_order() -> None:
    assert tetragon_flags({"clone", "rootcwd", "execve"}) == "execve rootcwd clone"
    assert tetragon_flags({"errorCWD", "miss", "procFS", "truncArgs"}) == "procFS truncArgs miss errorCWD"


def test_exec_flags_from_kernel_bits(cache: ProcessCache) -> None:
    init = cache.on_exec(exec_msg(1, 10, flags=EXEC_F_PROCFS, binary="/sbin/init"))
    assert init.flags == "procFS rootcwd"
    assert init.parent_exec_id is None
    p = cache.on_exec(
        exec_msg(5, 50, 4, 40, flags=EXEC_F_CLONE | EXEC_F_TRUNC_ARGS | EXEC_F_ERR_ARGS, argv=["sh", "x"])
    )
    assert p.flags == "execve truncArgs miss errorArgs rootcwd clone"
    assert p.arguments == ""  # argv could not be read
    assert p.parent_exec_id == make_exec_id(NODE, 40, 4)  # kept even though the parent is unknown
    assert cache.parent(p) is None
    q = cache.on_exec(exec_msg(6, 60, 1, 10, flags=EXEC_F_ERR_CWD, cwd="/ignored"))
    assert q.flags == "execve errorCWD"
    assert q.cwd == ""
    r = cache.on_exec(exec_msg(7, 70, 1, 10, flags=0, cwd="/home/u"))
    assert r.flags == "execve"
    assert cache.stats()["misses"]["get"] == 1
    f = cache.on_fork(ForkMsg(ktime=80, pid=8, tid=8, ppid=77, parent_ktime=70))
    assert (f.flags, f.binary, f.parent_exec_id) == ("miss clone", "", make_exec_id(NODE, 70, 77))
    assert cache.stats()["misses"]["get"] == 2


def test_fork_exec_exit_chain(cache: ProcessCache) -> None:
    init = cache.on_exec(exec_msg(1, 10, flags=EXEC_F_PROCFS, binary="/sbin/init"))
    bash = cache.on_exec(exec_msg(100, 1000, 1, 10, binary="/bin/bash", argv=["bash", "-l"], cwd="/root"))
    assert bash.flags == "execve clone"
    assert cache.parent(bash) is init
    assert init.refcnt == 2  # itself + bash

    child = cache.on_fork(ForkMsg(ktime=2000, pid=200, tid=200, ppid=100, parent_ktime=1000))
    assert child.flags == "clone"
    assert (child.binary, child.arguments, child.cwd, child.uid, child.euid) == (
        "/bin/bash",
        "-l",
        "/root",
        1000,
        1001,
    )
    assert child.parent_exec_id == bash.exec_id
    assert cache.get_by_pid(200) is child
    assert bash.refcnt == 2

    cat = cache.on_exec(exec_msg(200, 3000, 100, 1000, binary="/bin/cat", argv=["cat", "/etc/passwd"]))
    assert cat.flags == "execve rootcwd clone"
    assert cat.arguments == "/etc/passwd"
    assert cache.parent(cat) is bash
    assert cache.get_by_pid(200) is cat
    # the fork record is replaced: over, released, but still findable during the grace period
    assert child.exited and child.refcnt == 0
    assert cache.get(child.exec_id) is child
    assert bash.refcnt == 2  # itself + cat (the fork record released its reference)
    assert cache.ancestors(cat) == [init]

    assert cache.on_exit(exit_msg(200, 3000)) is cat
    assert cat.exited and cat.refcnt == 0
    assert bash.refcnt == 1
    assert cache.on_exit(exit_msg(200, 3000)) is cat  # a duplicate exit changes nothing
    assert bash.refcnt == 1

    assert cache.on_exit(exit_msg(999, 1)) is None
    assert cache.stats()["misses"]["remove"] == 1


def test_reexec_parent_is_previous_image(cache: ProcessCache) -> None:
    cache.on_exec(exec_msg(52689, 100, flags=EXEC_F_PROCFS))
    bash = cache.on_exec(
        exec_msg(52699, 200, 52689, 100, binary="/bin/bash", argv=["bash", "-c", "curl https://ebpf.io"])
    )
    assert bash.arguments == '-c "curl https://ebpf.io"'
    curl = cache.on_exec(
        exec_msg(52699, 300, 52699, 200, flags=EXEC_F_REEXEC, binary="/usr/bin/curl", argv=["curl", "x"])
    )
    assert curl.flags == "execve rootcwd"  # no "clone": it is not the first exec after a fork
    assert curl.parent_exec_id == bash.exec_id
    assert cache.parent(curl) is bash
    assert cache.get_by_pid(52699) is curl
    assert bash.exited and bash.refcnt == 1  # its image is over, curl holds it
    cache.on_exit(exit_msg(52699, 300))
    assert bash.refcnt == 0
    assert cache.stats()["dead"] == 2


def test_ancestors_chain(cache: ProcessCache) -> None:
    cache.on_exec(exec_msg(1, 10, flags=EXEC_F_PROCFS))
    for i, pid in enumerate((10, 20, 30, 40)):
        parent = (1, 10) if i == 0 else (pid - 10, (pid - 10) * 10)
        cache.on_exec(exec_msg(pid, pid * 10, *parent))
    p = cache.get_by_pid(40)
    assert p is not None
    assert cache.parent(p).pid == 30
    assert [a.pid for a in cache.ancestors(p)] == [20, 10, 1]
    assert [a.pid for a in cache.ancestors(p, limit=2)] == [20, 10]
    init = cache.get_by_pid(1)
    assert cache.ancestors(init) == []
    assert cache.ancestors(cache.get_by_pid(10)) == []


def test_refcount_and_delayed_eviction(cache: ProcessCache, clock: FakeTime) -> None:
    parent = cache.on_exec(exec_msg(10, 100))
    child = cache.on_exec(exec_msg(11, 110, 10, 100))
    cache.on_exit(exit_msg(10, 100))
    assert parent.exited and parent.refcnt == 1  # held by its live child: not dead
    assert cache.stats()["dead"] == 0
    clock.t += 100
    assert cache.get(parent.exec_id) is parent  # no ttl runs while it is held

    cache.on_exit(exit_msg(11, 110))
    assert child.refcnt == 0 and parent.refcnt == 0
    assert cache.stats()["dead"] == 2
    clock.t += 29.9
    assert cache.get(child.exec_id) is child
    assert cache.get(parent.exec_id) is parent
    clock.t += 0.2
    assert cache.get(child.exec_id) is None
    assert cache.get(parent.exec_id) is None
    st = cache.stats()
    assert (st["size"], st["dead"], st["expired"], st["evictions"]) == (0, 0, 2, 0)
    assert cache.get_by_pid(10) is None


def test_exec_after_parent_exit_within_grace(cache: ProcessCache, clock: FakeTime) -> None:
    grand = cache.on_exec(exec_msg(1, 10, flags=EXEC_F_PROCFS))
    sh = cache.on_exec(exec_msg(10, 100, 1, 10))
    cache.on_exit(exit_msg(10, 100))
    assert cache.stats()["dead"] == 1
    clock.t += 20
    # the exec of a child of sh arrives after sh's exit (ring buffer reordering)
    late = cache.on_exec(exec_msg(11, 110, 10, 100))
    assert "miss" not in late.flags
    assert cache.parent(late) is sh
    assert sh.refcnt == 1 and cache.stats()["dead"] == 0  # revived by its child
    clock.t += 20  # past sh's original deadline: still there, it is held
    assert cache.get(sh.exec_id) is sh
    assert cache.ancestors(late) == [grand]

    cache.on_exit(exit_msg(11, 110))
    clock.t += 31
    assert cache.get(sh.exec_id) is None
    orphan = cache.on_exec(exec_msg(12, 120, 10, 100))
    assert orphan.flags == "execve miss rootcwd clone"


def test_exit_finds_process_and_ancestors_survive(cache: ProcessCache, clock: FakeTime) -> None:
    init = cache.on_exec(exec_msg(1, 10, flags=EXEC_F_PROCFS))
    a = cache.on_exec(exec_msg(2, 20, 1, 10))
    b = cache.on_exec(exec_msg(3, 30, 2, 20))
    cache.on_exit(exit_msg(2, 20))  # a exits before its child
    clock.t += 3600
    for i in range(500):  # lots of short-lived traffic in between
        cache.on_exec(exec_msg(1000 + i, 1000 + i, 1, 10))
        cache.on_exit(exit_msg(1000 + i, 1000 + i))
    assert cache.on_exit(exit_msg(3, 30)) is b
    assert cache.parent(b) is a and cache.parent(a) is init


def test_capacity_bound_under_100k_processes(clock: FakeTime) -> None:
    c = ProcessCache(NODE, KtimeClock(OFFSET), capacity=1000, now=clock)
    c.on_exec(exec_msg(1, 1, flags=EXEC_F_PROCFS))
    n = 100_000
    for i in range(n):  # exits lost: every record stays live
        c.on_exec(exec_msg(10 + i, 10 + i, 1, 1))
        if i % 997 == 0:
            assert len(c) <= 1000
    st = c.stats()
    assert st["size"] == 1000
    assert st["evictions"] == n + 1 - 1000
    assert c.get_by_pid(10 + n - 1) is not None  # the newest are kept
    assert c.get_by_pid(10) is None

    d = ProcessCache(NODE, KtimeClock(OFFSET), capacity=1000, dead_ttl=1e9, now=clock)
    init = d.on_exec(exec_msg(1, 1, flags=EXEC_F_PROCFS))
    for i in range(n):  # exits seen, but the ttl never runs out: dead records make room first
        d.on_exec(exec_msg(10 + i, 10 + i, 1, 1))
        d.on_exit(exit_msg(10 + i, 10 + i))
    st = d.stats()
    assert st["size"] <= 1000 and st["evictions"] == 0
    assert st["expired"] == n - (st["size"] - 1)
    assert d.get(init.exec_id) is init and init.refcnt == 1


def test_get_rejects_foreign_node_and_garbage(cache: ProcessCache) -> None:
    p = cache.on_exec(exec_msg(5, 50))
    assert cache.get(make_exec_id("other-node", 50, 5)) is None
    assert cache.get("%%%") is None
    assert cache.get(p.exec_id) is p
    assert cache.stats()["misses"]["get"] == 2
    assert base64.b64decode(p.exec_id).decode() == f"{NODE}:50:5"


def test_get_by_key_never_returns_another_process_of_a_reused_pid(cache: ProcessCache, clock: FakeTime) -> None:
    old = cache.on_exec(exec_msg(4321, 1_000, binary="/usr/bin/old"))
    cache.on_exit(exit_msg(4321, 1_000))
    new = cache.on_exec(exec_msg(4321, 9_000, binary="/usr/bin/new"))  # the pid, reused by another process
    assert cache.get_by_key(4321, 9_000) is new
    assert cache.get_by_key(4321, 1_000) is old  # the exited image, still in its grace period
    misses = cache.misses["get"]
    assert cache.get_by_key(4321, 5_000) is None  # a start ktime the cache never saw: not the pid's image
    assert cache.misses["get"] == misses + 1
    clock.t += 31  # the old image's grace period is over
    assert cache.get_by_key(4321, 1_000) is None
    assert cache.get_by_pid(4321) is new


def test_get_by_key_without_a_start_ktime_takes_only_a_running_image(cache: ProcessCache) -> None:
    p = cache.on_exec(exec_msg(77, 500))
    assert cache.get_by_key(77, 0) is p
    cache.on_exit(exit_msg(77, 500))
    assert cache.get_by_key(77, 0) is None  # that process is over: an event of pid 77 is another one's
    assert cache.get_by_key(78, 0) is None
