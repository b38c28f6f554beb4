"""The tracing sensor's selector features and hook kinds, for real: return values, uprobes, generic
tracepoints, followChildren / followForks, matchNamespaces, matchCapabilities. Each test runs real processes
that do (or do not do) the watched thing and checks the events the kernel sent and what happened."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tabi
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.testing.sensors import tracing_events
from apiary.tracing.types import (
    ARG_INT,
    ARG_STRING,
    ArgFilter,
    ArgSpec,
    BinaryFilter,
    CapabilityFilter,
    CompiledTracingPolicy,
    Hook,
    NamespaceFilter,
    PidFilter,
    Selector,
)

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")


@pytest.fixture(scope="module")
def _module_sensors() -> Iterator[tuple[ProcessSensor, TracingSensor]]:
    """One process + tracing sensor pair for the module (loading them is most of each test's time under the
    VM's TCG); each test gets them with no policy loaded and an empty ring."""
    ps = ProcessSensor(ringbuf_bytes=1 << 22)
    ps.load()
    ts = TracingSensor(ps)
    try:
        ts.load()
        yield ps, ts
    finally:
        ts.close()
        ps.close()


@pytest.fixture
def sensors(_module_sensors: tuple[ProcessSensor, TracingSensor]) -> Iterator[tuple[ProcessSensor, TracingSensor]]:
    ps, ts = _module_sensors
    tracing_events(ps)  # what earlier tests left in the ring
    try:
        yield ps, ts
    finally:
        for key in list(ts.policies):
            ts.delete(key)
        assert not ts.sys_links, f"links left after every policy was deleted: {sorted(ts.sys_links)}"


def _s(ev: tabi.Event, i: int) -> str:
    return bytes(ev.str[i])[: ev.slen[i]].decode()


def _open_hook(d: str, *sels: Selector, ret: ArgSpec | None = None) -> Hook:
    return Hook(
        source="kprobes[0] sys_openat",
        event="process_kprobe",
        function_name="__x64_sys_openat",
        attach_points=("openat",),
        args=(ArgSpec(1, ARG_STRING, tetragon_type="string"),),
        selectors=tuple(dataclasses.replace(s, args=(ArgFilter(0, "Prefix", (d + "/",)),)) for s in sels),
        realisation="syscall entry of openat",
        ret=ret,
    )


def _apply(ts: TracingSensor, name: str, *hooks: Hook) -> None:
    ts.apply(f"/{name}", CompiledTracingPolicy(name, "", "TracingPolicy", "enforce", None, list(hooks)), None)


def _paths(evs: list[tabi.Event], d: str) -> list[str]:
    return [_s(e, 0) for e in evs if _s(e, 0).startswith(d + "/")]


def test_return_hook_reports_only_the_failed_opens_with_their_errno(sensors, workdir) -> None:
    ps, ts = sensors
    Path(workdir, "exists").write_text("x")
    hook = _open_hook(workdir, Selector(ret=ArgFilter(0, "LT", (0,))), ret=ArgSpec(0, ARG_INT, tetragon_type="int"))
    _apply(ts, "failed-opens", hook)
    assert "__exit_openat" in ts.sys_links  # the syscall's exit tracepoint is attached too
    subprocess.run(["cat", f"{workdir}/exists", f"{workdir}/missing"], capture_output=True)
    evs = [e for e in tracing_events(ps) if _s(e, 0).startswith(workdir)]
    assert [(_s(e, 0), e.ret) for e in evs] == [(f"{workdir}/missing", -2)]  # ENOENT; the good open is filtered
    ts.delete("/failed-opens")
    assert "__exit_openat" not in ts.sys_links and "openat" not in ts.sys_links


def test_uprobe_on_a_libc_function_reports_its_string_args_and_can_kill(sensors) -> None:
    ps, ts = sensors
    tag = f"apiary-{uuid.uuid4().hex[:8]}"

    def hook(action: str) -> Hook:
        return Hook(
            source="uprobes[0]",
            event="process_uprobe",
            function_name="strverscmp",
            attach_points=(f"__uprobe_{LIBC}:strverscmp",),
            args=(ArgSpec(0, ARG_STRING, tetragon_type="string"), ArgSpec(1, ARG_STRING, tetragon_type="string")),
            selectors=(Selector(args=(ArgFilter(0, "Prefix", (tag,)),), action=action),),
            realisation="uprobe",
            path=LIBC,
        )

    call = f"import ctypes; ctypes.CDLL('libc.so.6').strverscmp(b'{tag}-a', b'other'); print('returned')"
    _apply(ts, "uprobe-post", hook("Post"))
    r = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    assert r.returncode == 0 and "returned" in r.stdout
    evs = [e for e in tracing_events(ps) if _s(e, 0).startswith(tag)]
    assert len(evs) == 1 and (_s(evs[0], 0), _s(evs[0], 1)) == (f"{tag}-a", "other")
    _apply(ts, "uprobe-post", hook("Sigkill"))  # replaced in place
    r = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    assert r.returncode == -9 and "returned" not in r.stdout  # killed inside the library call
    evs = [e for e in tracing_events(ps) if _s(e, 0).startswith(tag)]
    assert len(evs) == 1 and evs[0].flags & tabi.EV_ENFORCED


def test_follow_children_matches_what_the_shell_runs_not_the_same_binary_elsewhere(sensors, workdir) -> None:
    ps, ts = sensors
    for n in ("f1", "f2", "f3"):
        Path(workdir, n).write_text(n)
    # a shell binary of its own: the test itself may run under dash (make runs recipes with /bin/sh)
    bindir = tempfile.mkdtemp(prefix="apiary-shell-")
    shell = os.path.join(bindir, "myshell")
    shutil.copy("/usr/bin/dash", shell)
    # started before the policy: its bit comes from /proc when the policy is applied
    early = subprocess.Popen([shell, "-c", f"read x; cat {workdir}/f3 >/dev/null"], stdin=subprocess.PIPE, text=True)
    try:
        sel = Selector(binaries=BinaryFilter("In", (shell,), follow_children=True))
        _apply(ts, "shell-children", _open_hook(workdir, sel))
        assert ts.follow_links  # the exec/fork/exit programs run only while a follow filter exists
        subprocess.run([shell, "-c", f"cat {workdir}/f1 >/dev/null"], check=True)
        subprocess.run(["cat", f"{workdir}/f2"], check=True, capture_output=True)  # cat, but not under the shell
        assert early.stdin is not None
        early.stdin.write("go\n")
        early.stdin.close()
        assert early.wait(10) == 0
    finally:
        if early.poll() is None:
            early.kill()
            early.wait()
        shutil.rmtree(bindir, ignore_errors=True)
    evs = tracing_events(ps)
    assert sorted(_paths(evs, workdir)) == [f"{workdir}/f1", f"{workdir}/f3"]
    ts.delete("/shell-children")
    assert not ts.follow_links and not ts.follow


def test_follow_forks_matches_the_descendants_of_a_pid(sensors, workdir) -> None:
    ps, ts = sensors
    for n in ("g1", "g2"):
        Path(workdir, n).write_text(n)
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess; input(); subprocess.run(['cat', '{workdir}/g1'])"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        sel = Selector(pids=PidFilter("In", (parent.pid,), follow_forks=True))
        _apply(ts, "pid-tree", _open_hook(workdir, sel))
        assert parent.stdin is not None
        parent.stdin.write("go\n")
        parent.stdin.close()
        assert parent.wait(10) == 0
        subprocess.run(["cat", f"{workdir}/g2"], check=True, capture_output=True)  # not a descendant
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    evs = tracing_events(ps)
    mine = [e for e in evs if _s(e, 0) == f"{workdir}/g1"]
    assert mine and all(e.pid != parent.pid for e in mine)  # the grandchild cat, matched through the fork
    assert f"{workdir}/g2" not in _paths(evs, workdir)


def test_match_namespaces_net_not_host(sensors, workdir) -> None:
    ps, ts = sensors
    sel = Selector(namespaces=(NamespaceFilter("Net", "NotIn", ("host_ns",)),))
    _apply(ts, "not-host-net", _open_hook(workdir, sel))
    subprocess.run(["unshare", "--net", "cat", f"{workdir}/in-netns"], capture_output=True)
    subprocess.run(["cat", f"{workdir}/on-host"], capture_output=True)
    assert _paths(tracing_events(ps), workdir) == [f"{workdir}/in-netns"]


def test_match_capabilities_effective_sys_admin(sensors, workdir) -> None:
    ps, ts = sensors
    cap_sys_admin = 21
    sel = Selector(capabilities=CapabilityFilter("Effective", "In", 1 << cap_sys_admin))
    _apply(ts, "admins", _open_hook(workdir, sel))
    subprocess.run(["cat", f"{workdir}/as-root"], capture_output=True)
    unpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", f"{workdir}/as-nobody"]
    subprocess.run(unpriv, capture_output=True)
    assert _paths(tracing_events(ps), workdir) == [f"{workdir}/as-root"]


def test_a_failed_attach_leaves_nothing_behind(sensors) -> None:
    _ps, ts = sensors
    hook = Hook(
        source="uprobes[0]",
        event="process_uprobe",
        function_name="no_such_symbol_apiary",
        attach_points=(f"__uprobe_{LIBC}:no_such_symbol_apiary",),
        args=(),
        selectors=(),
        realisation="uprobe",
        path=LIBC,
    )
    from apiary.loader import BpfError

    with pytest.raises(BpfError):
        _apply(ts, "bad-uprobe", hook)
    assert not ts.policies and not ts.hooks and not ts.sys_links


@pytest.mark.parametrize(("scope", "expected"), [("thread", 3), ("global", 1)])
def test_rate_limit_scope(sensors, workdir, scope: str, expected: int) -> None:
    """rateLimit per thread (Tetragon's default): each of three processes gets its event; global: one."""
    ps, ts = sensors
    sel = Selector(rate_limit_ns=60_000_000_000, rate_scope=scope)
    _apply(ts, f"rate-{scope}", _open_hook(workdir, sel))
    for i in range(3):
        subprocess.run(["cat", f"{workdir}/r{i}"], capture_output=True)
    assert len(_paths(tracing_events(ps), workdir)) == expected


def test_follow_children_not_in(sensors, workdir) -> None:
    """NotIn with followChildren: neither the process nor any ancestor ran the binary."""
    ps, ts = sensors
    bindir = tempfile.mkdtemp(prefix="apiary-shell-")
    shell = os.path.join(bindir, "trusted-shell")
    shutil.copy("/usr/bin/dash", shell)
    try:
        sel = Selector(binaries=BinaryFilter("NotIn", (shell,), follow_children=True))
        _apply(ts, "untrusted", _open_hook(workdir, sel))
        subprocess.run([shell, "-c", f"cat {workdir}/from-trusted"], capture_output=True)
        subprocess.run(["cat", f"{workdir}/from-elsewhere"], capture_output=True)
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
    assert _paths(tracing_events(ps), workdir) == [f"{workdir}/from-elsewhere"]


def test_char_buf_with_size_arg_index_reads_the_written_bytes(sensors, workdir) -> None:
    """char_buf + sizeArgIndex (1-based, Tetragon's): exactly the bytes written, NULs included."""
    from apiary.kernel.features import features_from_tracefs
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    ps, ts = sensors
    (pol,) = load_tracing_policies(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: write-bytes}}
spec:
  kprobes:
  - call: sys_write
    syscall: true
    args:
    - {{index: 0, type: fd}}
    - {{index: 1, type: char_buf, sizeArgIndex: 3}}
    - {{index: 2, type: size_t}}
    selectors:
    - matchArgs: [{{index: 0, operator: Prefix, values: ["{workdir}/"]}}]
""")
    compiled = compile_tracing_policy(pol, features_from_tracefs())
    ts.apply("/write-bytes", compiled, None)
    data = b"hello\x00world\xff"
    code = f"import os\nfd = os.open({workdir + '/out'!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, {data!r})\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    evs = [e for e in tracing_events(ps) if _s(e, 0) == f"{workdir}/out"]
    assert len(evs) == 1 and bytes(evs[0].str[1])[: evs[0].slen[1]] == data and evs[0].ints[2] == len(data)


def test_return_copy_reads_what_the_call_put_in_the_buffer(sensors, workdir) -> None:
    """returnCopy: read()'s buffer is filled by the call, so it is read at exit, as many bytes as returned."""
    from apiary.kernel.features import features_from_tracefs
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    ps, ts = sensors
    Path(workdir, "secret").write_bytes(b"token=\x00abc123")
    (pol,) = load_tracing_policies(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: reads}}
spec:
  kprobes:
  - call: sys_read
    syscall: true
    return: true
    args:
    - {{index: 0, type: fd}}
    - {{index: 1, type: char_buf, returnCopy: true}}
    returnArg: {{index: 0, type: int}}
    selectors:
    - matchArgs: [{{index: 0, operator: Equal, values: ["{workdir}/secret"]}}]
""")
    ts.apply("/reads", compile_tracing_policy(pol, features_from_tracefs()), None)
    code = f"import os\nfd = os.open({workdir + '/secret'!r}, os.O_RDONLY)\nos.read(fd, 4096)\nos.read(fd, 4096)\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    evs = [e for e in tracing_events(ps) if _s(e, 0) == f"{workdir}/secret"]
    got = [(e.ret, bytes(e.str[1])[: e.slen[1]]) for e in evs]
    assert got == [(13, b"token=\x00abc123"), (0, b"")]  # the second read is at the end of the file


def test_namespace_pid_one_is_the_init_of_a_new_pid_namespace(sensors, workdir) -> None:
    """matchPIDs isNamespacePID: PID 1 as the process's own PID namespace sees it (a container's init)."""
    ps, ts = sensors
    for n in ("by-init", "by-child", "on-host"):
        Path(workdir, n).write_text(n)
    sel = Selector(pids=PidFilter("In", (1,), namespace_pid=True))
    _apply(ts, "ns-init", _open_hook(workdir, sel))
    # the shell is PID 1 of the new namespace and opens by-init itself (the redirect); cat is its PID 2
    r = subprocess.run(
        ["unshare", "--pid", "--fork", "/bin/sh", "-c", f"cat {workdir}/by-child < {workdir}/by-init"],
        capture_output=True,
    )
    assert r.returncode == 0, r
    subprocess.run(["cat", f"{workdir}/on-host"], capture_output=True)
    assert _paths(tracing_events(ps), workdir) == [f"{workdir}/by-init"]


def test_not_namespace_init_or_its_forks_sees_a_process_entering_the_namespace(sensors, workdir) -> None:
    """Tetragon's 'exec into a container' pattern: matchPIDs NotIn [1], isNamespacePID, followForks. The
    namespace's init and everything it forks are left out; a process that enters the namespace is seen."""
    ps, ts = sensors
    for n in ("app", "entered", "host"):
        Path(workdir, n).write_text(n)
    init = subprocess.Popen(
        ["unshare", "--pid", "--fork", "/bin/sh", "-c", f"read x; cat {workdir}/app"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.3)
        # the namespace's init: the child of unshare
        kids = Path(f"/proc/{init.pid}/task/{init.pid}/children").read_text().split()
        assert kids, "unshare has not forked yet"
        sel = Selector(pids=PidFilter("NotIn", (1,), follow_forks=True, namespace_pid=True))
        _apply(ts, "entered", _open_hook(workdir, sel))
        r = subprocess.run(
            ["nsenter", "--target", kids[0], "--pid", "--", "cat", f"{workdir}/entered"], capture_output=True
        )
        assert r.returncode == 0, r
        assert init.stdin is not None
        init.stdin.write("go\n")
        init.stdin.close()
        assert init.wait(10) == 0
        subprocess.run(["cat", f"{workdir}/host"], capture_output=True)
    finally:
        if init.poll() is None:
            init.kill()
            init.wait()
    assert _paths(tracing_events(ps), workdir) == [f"{workdir}/entered"]


def test_filter_on_the_bytes_of_a_char_buf(sensors, workdir) -> None:
    from apiary.kernel.features import features_from_tracefs
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    ps, ts = sensors
    (pol,) = load_tracing_policies(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: secret-writes}}
spec:
  kprobes:
  - call: sys_write
    args:
    - {{index: 0, type: fd}}
    - {{index: 1, type: char_buf, sizeArgIndex: 3}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: Prefix, values: ["{workdir}/"]}}
      - {{index: 1, operator: Prefix, values: ["BEGIN PRIVATE KEY"]}}
""")
    ts.apply("/secret-writes", compile_tracing_policy(pol, features_from_tracefs()), None)
    for name, text in (("key.pem", "BEGIN PRIVATE KEY\nabc"), ("notes.txt", "hello")):
        Path(workdir, name).write_text(text)
    evs = tracing_events(ps)
    assert _paths(evs, workdir) == [f"{workdir}/key.pem"]


def test_raw_tracepoint_sched_process_exec_reads_the_binprm(sensors, workdir) -> None:
    """`raw: true` (Linux 6.10+: raw tracepoints with attach cookies): the tracepoint's own arguments, here the
    linux_binprm of sched_process_exec, resolved to the executed file's full path in the kernel."""
    from apiary.kernel.features import features_from_tracefs
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    ps, ts = sensors
    if not ts.raw_tp:
        pytest.skip("raw tracepoints take attach cookies from Linux 6.10")
    prog = os.path.join(workdir, "true-copy")
    shutil.copy("/bin/true", prog)
    (pol,) = load_tracing_policies(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: rawtp}}
spec:
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    raw: true
    args: [{{index: 2, type: linux_binprm}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Prefix, values: ["{workdir}/"]}}]
""")
    ts.apply("/rawtp", compile_tracing_policy(pol, features_from_tracefs()), None)
    assert "__rawtp_sched_process_exec" in ts.sys_links
    subprocess.run([prog], check=True)
    subprocess.run(["/bin/true"], check=True)
    assert _paths(tracing_events(ps), workdir) == [prog]
