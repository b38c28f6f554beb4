"""The sensors without the agent: load, attach, act, read the ring. Fast, and what `make test-vm` runs
on the second kernel (Debian's 6.1) to show the same CO-RE objects work there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from apiary.observe.raw import EXEC_F_REEXEC, ExecMsg, ExitMsg
from apiary.sensors.process import abi as pabi
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tabi
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.testing.sensors import tracing_events
from apiary.tracing.types import ARG_FD, ArgFilter, ArgSpec, CompiledTracingPolicy, Hook, Selector


def test_process_sensor_sees_exec_and_exit_with_full_paths(tmp_path: Path) -> None:
    sensor = ProcessSensor(ringbuf_bytes=1 << 20)
    sensor.load()
    try:
        d = tmp_path / "with space"
        d.mkdir()
        p = subprocess.run(["/bin/sh", "-c", 'exec /bin/echo "a b" c'], cwd=d, capture_output=True)
        assert p.returncode == 0
        msgs: list[object] = []
        assert sensor.ring is not None
        sensor.ring.consume(lambda b: msgs.append(pabi.decode(b)))
    finally:
        sensor.close()
    execs = [m for m in msgs if isinstance(m, ExecMsg) and m.argv[:1] == ["/bin/echo"]]
    assert execs, msgs
    e = execs[-1]
    assert e.binary.endswith("/echo") and e.cwd == str(d) and e.argv == ["/bin/echo", "a b", "c"]
    assert e.flags & EXEC_F_REEXEC  # `exec` in the shell: the previous image of the same pid is the parent
    exits = [m for m in msgs if isinstance(m, ExitMsg) and m.pid == e.pid]
    assert exits and exits[-1].proc_ktime == e.ktime and exits[-1].status == 0


def test_tracing_sensor_kills_the_writer_before_the_write_lands() -> None:
    # a local filesystem: its write path checks for a pending fatal signal before copying (tmpfs, ext4);
    # a 9p or network filesystem may complete the write before the kill lands
    d = tempfile.mkdtemp(prefix="apiary-direct-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    target = os.path.join(d, "protected.conf")
    Path(target).write_text("original\n")
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps)
    try:
        ts.load()
        hook = Hook(
            source="kprobes[0] sys_write",
            event="process_kprobe",
            function_name="__x64_sys_write",
            attach_points=("write",),
            args=(ArgSpec(0, ARG_FD, tetragon_type="fd"),),
            selectors=(Selector(args=(ArgFilter(0, "Prefix", (d + "/",)),), action="Sigkill"),),
            realisation="syscall entry of write",
        )
        ts.apply("/deny", CompiledTracingPolicy("deny", "", "TracingPolicy", "enforce", None, [hook]), None)
        r = subprocess.run(
            ["/bin/sh", "-c", f"echo appended >> {target}; echo survived"], capture_output=True, text=True
        )
        assert r.returncode == -9 and "survived" not in r.stdout
        assert Path(target).read_text() == "original\n"
        ok = subprocess.run(["/bin/sh", "-c", "echo elsewhere > /dev/null"], capture_output=True)
        assert ok.returncode == 0
        evs = tracing_events(ps)
        assert evs and bytes(evs[-1].str[0])[: evs[-1].slen[0]].decode() == target
        assert evs[-1].flags & tabi.EV_ENFORCED and ts.hook_counters(0)["enforced"] == 1
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


LSM_POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: lsm-deny-open}
spec:
  lsmhooks:
  - hook: file_open
    args: [{index: 0, type: file}]
    selectors:
    - matchArgs: [{index: 0, operator: Prefix, values: ["DIR/"]}]
      matchActions: [{action: Override, argError: -1}]
"""


def test_lsm_override_makes_the_open_fail_and_the_process_lives() -> None:
    """Only where BPF-LSM works (the 6.1 VM): the open fails with EPERM before anything happens."""
    import dataclasses

    import pytest

    from apiary.kernel.features import features_from_tracefs
    from apiary.loader import BpfError
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    d = tempfile.mkdtemp(prefix="apiary-lsm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    target = os.path.join(d, "protected.conf")
    Path(target).write_text("original\n")
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, lsm=True)
    try:
        try:
            ts.load()
        except BpfError as e:
            pytest.skip(f"no BPF-LSM on this kernel ({e})")
        feats = dataclasses.replace(features_from_tracefs(), lsm=True)
        (pol,) = load_tracing_policies(LSM_POLICY.replace("DIR", d))
        compiled = compile_tracing_policy(pol, feats)
        assert compiled.hooks[0].attach_points == ("__lsm_file_open",)
        ts.apply("/lsm-deny-open", compiled, None)
        r = subprocess.run(["/bin/sh", "-c", f"echo x > {target}; echo alive"], capture_output=True, text=True)
        assert r.returncode == 0 and "alive" in r.stdout  # the process lives
        assert "Operation not permitted" in r.stderr
        ts.delete("/lsm-deny-open")  # the policy denies every open under the directory, reads included
        assert Path(target).read_text() == "original\n"  # untouched: not even truncated
        evs = tracing_events(ps)
        assert evs and bytes(evs[-1].str[0])[: evs[-1].slen[0]].decode() == target
        assert evs[-1].action == tabi.ACTIONS["Override"] and evs[-1].flags & tabi.EV_ENFORCED
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


KPROBE_POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: vfs-write}
spec:
  kprobes:
  - call: vfs_write
    syscall: false
    args: [{index: 0, type: file}, {index: 2, type: size_t}]
    selectors:
    - matchArgs: [{index: 0, operator: Prefix, values: ["DIR/"]}]
"""


def test_kprobe_on_vfs_write_reports_the_file_and_size() -> None:
    """Only where kprobes work (the 6.1 VM): a real kprobe on the kernel function, not the syscalls."""
    import dataclasses

    import pytest

    from apiary.kernel.features import features_from_tracefs
    from apiary.loader import BpfError
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    d = tempfile.mkdtemp(prefix="apiary-kp-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    target = os.path.join(d, "log.txt")
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, kprobes=True)
    try:
        ts.load()
        feats = dataclasses.replace(features_from_tracefs(), kprobes=True)
        (pol,) = load_tracing_policies(KPROBE_POLICY.replace("DIR", d))
        compiled = compile_tracing_policy(pol, feats)
        assert compiled.hooks[0].attach_points == ("__kprobe_vfs_write",)
        try:
            ts.apply("/vfs-write", compiled, None)
        except BpfError as e:
            pytest.skip(f"no kprobes on this kernel ({e})")
        subprocess.run(["/bin/sh", "-c", f"printf 12345 > {target}"], check=True)
        evs = tracing_events(ps)
        mine = [e for e in evs if bytes(e.str[0])[: e.slen[0]].decode() == target]
        assert mine and mine[-1].ints[1] == 5  # size_t count of the write
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


def _lsm_sensor() -> tuple[ProcessSensor, TracingSensor]:
    import pytest

    from apiary.loader import BpfError

    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, lsm=True)
    try:
        ts.load()
    except BpfError as e:
        ts.close()
        ps.close()
        pytest.skip(f"no BPF-LSM on this kernel ({e})")
    return ps, ts


def test_lsm_bprm_check_denies_the_exec_of_one_binary() -> None:
    """Only where BPF-LSM works (the 6.1 VM): exec of a copied binary fails with EPERM, the shell lives."""
    from apiary.tracing.types import ARG_FILEPTR

    d = tempfile.mkdtemp(prefix="apiary-bprm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    banned = os.path.join(d, "banned-true")
    shutil.copy("/bin/true", banned)
    ps, ts = _lsm_sensor()
    try:
        hook = Hook(
            source="lsmhooks[0] bprm_check_security",
            event="process_lsm",
            function_name="bprm_check_security",
            attach_points=("__lsm_bprm_check_security",),
            args=(ArgSpec(0, ARG_FILEPTR, tetragon_type="linux_binprm"),),
            selectors=(Selector(args=(ArgFilter(0, "Equal", (banned,)),), action="Override", signal=1),),
            realisation="BPF-LSM",
        )
        ts.apply("/no-exec", CompiledTracingPolicy("no-exec", "", "TracingPolicy", "enforce", None, [hook]), None)
        r = subprocess.run(["/bin/sh", "-c", f"{banned}; echo rc=$?; /bin/true && echo other-ok"],
                           capture_output=True, text=True)
        assert "Operation not permitted" in r.stderr and "other-ok" in r.stdout and r.returncode == 0
        evs = tracing_events(ps)
        assert [bytes(e.str[0])[: e.slen[0]].decode() for e in evs] == [banned]
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


def test_lsm_file_permission_denies_the_write_not_the_open() -> None:
    """Only where BPF-LSM works: writing to an already open file fails with EPERM; reading still works."""
    from apiary.tracing.types import ARG_FILEPTR, ARG_INT

    d = tempfile.mkdtemp(prefix="apiary-fperm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    target = os.path.join(d, "data")
    Path(target).write_text("original\n")
    ps, ts = _lsm_sensor()
    try:
        may_write = 2
        hook = Hook(
            source="lsmhooks[0] file_permission",
            event="process_lsm",
            function_name="file_permission",
            attach_points=("__lsm_file_permission",),
            args=(ArgSpec(0, ARG_FILEPTR, tetragon_type="file"), ArgSpec(1, ARG_INT, tetragon_type="int")),
            selectors=(
                Selector(
                    args=(ArgFilter(0, "Prefix", (d + "/",)), ArgFilter(1, "Mask", (may_write,))),
                    action="Override",
                    signal=1,
                ),
            ),
            realisation="BPF-LSM",
        )
        ts.apply("/ro", CompiledTracingPolicy("ro", "", "TracingPolicy", "enforce", None, [hook]), None)
        code = (
            f"import os\nfd = os.open({target!r}, os.O_RDWR)\nprint(os.read(fd, 8))\n"
            "try:\n    os.write(fd, b'x')\nexcept PermissionError:\n    print('EPERM')\n"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0 and "b'original'" in r.stdout and "EPERM" in r.stdout, r
        assert Path(target).read_text() == "original\n"
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


def test_kretprobe_reports_what_vfs_write_returned() -> None:
    """Only where kprobes work (the 6.1 VM): entry args and the return value of the kernel function."""
    import pytest

    from apiary.loader import BpfError
    from apiary.tracing.types import ARG_FILEPTR, ARG_INT

    d = tempfile.mkdtemp(prefix="apiary-kret-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    target = os.path.join(d, "log.txt")
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, kprobes=True)
    try:
        ts.load()
        hook = Hook(
            source="kprobes[0] vfs_write",
            event="process_kprobe",
            function_name="vfs_write",
            attach_points=("__kprobe_vfs_write",),
            args=(ArgSpec(0, ARG_FILEPTR, tetragon_type="file"),),
            selectors=(Selector(args=(ArgFilter(0, "Prefix", (d + "/",)),), ret=ArgFilter(0, "GT", (0,))),),
            realisation="kprobe + kretprobe",
            ret=ArgSpec(0, ARG_INT, tetragon_type="int"),
        )
        try:
            ts.apply("/kret", CompiledTracingPolicy("kret", "", "TracingPolicy", "enforce", None, [hook]), None)
        except BpfError as e:
            pytest.skip(f"no kprobes on this kernel ({e})")
        subprocess.run(["/bin/sh", "-c", f"printf 1234567 > {target}"], check=True)
        evs = tracing_events(ps)
        mine = [e for e in evs if bytes(e.str[0])[: e.slen[0]].decode() == target]
        assert [e.ret for e in mine] == [7]
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


def test_kprobe_tcp_connect_reads_the_socket() -> None:
    """Only where kprobes work (the 6.1 VM): tcp_connect's struct sock, both ends known; SPort/Protocol filters."""
    import socket

    import pytest

    from apiary.agent.tracing import _sock_arg
    from apiary.loader import BpfError
    from apiary.tracing.types import ARG_SOCK

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, kprobes=True)
    try:
        ts.load()
        hook = Hook(
            source="kprobes[0] tcp_connect",
            event="process_kprobe",
            function_name="tcp_connect",
            attach_points=("__kprobe_tcp_connect",),
            args=(ArgSpec(0, ARG_SOCK, tetragon_type="sock"),),
            selectors=(
                Selector(
                    args=(
                        ArgFilter(0, "DPort", (port,)),
                        ArgFilter(0, "Protocol", (6,)),
                        ArgFilter(0, "SAddr", ("127.0.0.0/8",)),
                    )
                ),
            ),
            realisation="kprobe",
        )
        try:
            ts.apply("/conn", CompiledTracingPolicy("conn", "", "TracingPolicy", "enforce", None, [hook]), None)
        except BpfError as e:
            pytest.skip(f"no kprobes on this kernel ({e})")
        c = socket.create_connection(("127.0.0.1", port))
        sport = c.getsockname()[1]
        c.close()
        evs = tracing_events(ps)
        socks = [_sock_arg(tabi.sockinfo(bytes(e.str[0])[: e.slen[0]])) for e in evs]
        assert socks == [
            {
                "family": "AF_INET",
                "type": "SOCK_STREAM",
                "protocol": "IPPROTO_TCP",
                "saddr": "127.0.0.1",
                "daddr": "127.0.0.1",
                "sport": sport,
                "dport": port,
                "state": "TCP_SYN_SENT",
            }
        ]
    finally:
        ts.close()
        ps.close()
        srv.close()


def test_kprobe_commit_creds_reports_the_new_credentials() -> None:
    """Only where kprobes work (the 6.1 VM): the credentials a process switches to, ids and capabilities."""
    import pytest

    from apiary.agent.tracing import _cred_arg
    from apiary.loader import BpfError
    from apiary.tracing.types import ARG_CRED, BinaryFilter

    setpriv = os.path.realpath(shutil.which("setpriv") or "/usr/bin/setpriv")
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, kprobes=True)
    try:
        ts.load()
        hook = Hook(
            source="kprobes[0] commit_creds",
            event="process_kprobe",
            function_name="commit_creds",
            attach_points=("__kprobe_commit_creds",),
            args=(ArgSpec(0, ARG_CRED, tetragon_type="cred"),),
            selectors=(Selector(binaries=BinaryFilter("In", (setpriv,))),),
            realisation="kprobe",
        )
        try:
            ts.apply("/creds", CompiledTracingPolicy("creds", "", "TracingPolicy", "enforce", None, [hook]), None)
        except BpfError as e:
            pytest.skip(f"no kprobes on this kernel ({e})")
        subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "true"], check=True)
        evs = tracing_events(ps)
        creds = [_cred_arg(tabi.credinfo(bytes(e.str[0])[: e.slen[0]])) for e in evs]
        last = creds[-1]
        assert (last["uid"], last["euid"], last["gid"], last["egid"]) == (65534, 65534, 65534, 65534)
        assert "effective" not in last["caps"]  # a non-root uid drops the effective capabilities
        assert any("CAP_SYS_ADMIN" in c["caps"].get("effective", []) for c in creds[:-1])  # still root before
    finally:
        ts.close()
        ps.close()


GENERIC_KPROBE = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: closes}
spec:
  kprobes:
  - call: filp_close
    syscall: false
    return: true
    args: [{index: 0, type: file}]
    returnArg: {index: 0, type: int}
    selectors:
    - matchArgs: [{index: 0, operator: Prefix, values: ["DIR/"]}]
"""


def test_kprobe_on_any_kernel_function_reads_args_by_the_policys_types() -> None:
    """Only where kprobes work (the 6.1 VM): a function apiary has no table entry for (filp_close)."""
    import dataclasses

    import pytest

    from apiary.kernel.features import features_from_tracefs
    from apiary.loader import BpfError
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    d = tempfile.mkdtemp(prefix="apiary-gkp-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, kprobes=True)
    try:
        ts.load()
        (pol,) = load_tracing_policies(GENERIC_KPROBE.replace("DIR", d))
        compiled = compile_tracing_policy(pol, dataclasses.replace(features_from_tracefs(), kprobes=True))
        assert compiled.hooks[0].attach_points == ("__kprobe_filp_close",)
        try:
            ts.apply("/closes", compiled, None)
        except BpfError as e:
            pytest.skip(f"no kprobes on this kernel ({e})")
        subprocess.run(["/bin/sh", "-c", f"echo x > {d}/closed.txt"], check=True)
        evs = tracing_events(ps)
        mine = [(bytes(e.str[0])[: e.slen[0]].decode(), e.ret) for e in evs]
        assert (f"{d}/closed.txt", 0) in mine
    finally:
        ts.close()
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


PACKETS_AND_PATHS = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: packets-and-paths}
spec:
  kprobes:
  - call: ip_output
    syscall: false
    args: [{index: 2, type: skb}]
    selectors:
    - matchArgs:
      - {index: 2, operator: DPort, values: ["PORT"]}
      - {index: 2, operator: Protocol, values: [IPPROTO_UDP]}
      - {index: 2, operator: DAddr, values: ["127.0.0.0/8"]}
  - call: d_path
    syscall: false
    args: [{index: 0, type: path}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: ["DIR"]}]
"""


def test_kprobe_skb_and_path_args() -> None:
    """Only where kprobes work (the 6.1 VM): a packet's headers from its sk_buff, a struct path's full path.
    (vfs_statfs would be the obvious path function, but 6.1 inlines it into the statfs syscall.)"""
    import dataclasses
    import socket

    import pytest

    from apiary.agent.tracing import _skb_arg
    from apiary.kernel.features import features_from_tracefs
    from apiary.loader import BpfError
    from apiary.tracing.compile import compile_tracing_policy
    from apiary.tracing.load import load_tracing_policies

    d = tempfile.mkdtemp(prefix="apiary-skb-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps, kprobes=True)
    try:
        ts.load()
        (pol,) = load_tracing_policies(PACKETS_AND_PATHS.replace("PORT", str(port)).replace("DIR", d))
        compiled = compile_tracing_policy(pol, dataclasses.replace(features_from_tracefs(), kprobes=True))
        try:
            ts.apply("/pp", compiled, None)
        except BpfError as e:
            pytest.skip(f"no kprobes on this kernel ({e})")
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"x" * 100, ("127.0.0.1", port))
        sport = tx.getsockname()[1]
        tx.close()
        fd = os.open(d, os.O_RDONLY)  # readlink of /proc/self/fd/N: d_path() of the open file's path
        try:
            assert os.readlink(f"/proc/self/fd/{fd}") == d
        finally:
            os.close(fd)
        evs = tracing_events(ps)
        hooks = {hid: hook for hid, (_lp, hook) in ts.hooks.items()}
        pkts = [_skb_arg(tabi.skbinfo(bytes(e.str[0])[: e.slen[0]])) for e in evs
                if hooks[e.hook_id].function_name == "ip_output"]
        assert len(pkts) == 1
        p = pkts[0]
        ends = (p["saddr"], p["daddr"], p["sport"], p["dport"], p["proto"])
        assert ends == ("127.0.0.1", "127.0.0.1", sport, port, 17)
        assert p["len"] == 128  # 20 IP + 8 UDP + 100
        paths = [bytes(e.str[0])[: e.slen[0]].decode() for e in evs if hooks[e.hook_id].function_name == "d_path"]
        assert paths == [d]
    finally:
        ts.close()
        ps.close()
        rx.close()
        shutil.rmtree(d, ignore_errors=True)
