"""Kernel functions realised on syscall tracepoints (no kprobes) see what the function sees, no more: real
processes do the thing the function sees and the things it does not, and exactly the expected events arrive.
The policies are compiled for a kernel without kprobes/BPF-LSM, so the realisations are tested wherever this
runs; the guards are read from the kernel objects (the fd's file and socket, the return value, the task's
credentials)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from apiary.kernel.features import features_from_tracefs
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tabi
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.testing.agent import AgentProcess
from apiary.testing.sensors import tracing_events
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.types import Hook

UPSTREAM = Path("/work/shared/conformance/tetragon-policies/tracingpolicy/tcp-connect-only-private-addrs.yaml")


def _apply(ts: TracingSensor, spec: str) -> None:
    """Compile a policy as for a kernel without kprobes/BPF-LSM (the syscall realisations) and load it."""
    text = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: real\nspec:\n"
    [p] = load_tracing_policies(text + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    c = compile_tracing_policy(p, features_from_tracefs(kprobes=False, lsm=False))
    ts.apply("/real", c, None)


def _run(script: str) -> tuple[int, str]:
    """A workload in a child Python process: its pid and its stdout (it must succeed)."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return p.pid, out


_NAMES = {nr: name for name, nr in tabi.syscall_numbers().items()}


def _events(ps: ProcessSensor, ts: TracingSensor, pids: set[int]) -> list[tuple[str, str, tabi.Event]]:
    """(kernel function, syscall, event) of the events of some processes, in order."""
    out = []
    for ev in tracing_events(ps):
        if ev.pid in pids:
            hook: Hook = ts.hooks[ev.hook_id][1]
            out.append((hook.function_name, _NAMES.get(ev.syscall_nr, str(ev.syscall_nr)), ev))
    return out


def _s(ev: tabi.Event, i: int) -> str:
    return bytes(ev.str[i])[: ev.slen[i]].decode(errors="replace")


def _dest(ev: tabi.Event) -> tuple[int, str, int]:
    si = tabi.sockinfo(bytes(ev.str[0])[: ev.slen[0]])
    addr = ipaddress.IPv6Address(bytes(si.daddr6)) if si.family == 10 else ipaddress.IPv4Address(si.daddr)
    return si.family, str(addr), si.dport


_CONNECTS = """
    import ctypes, errno, os, socket
    d = {d!r}
    us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); us.bind(d + "/s"); us.listen()
    ud = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ud.bind(d + "/g")
    t4 = socket.socket(); t4.bind(("127.0.0.1", 0)); t4.listen()
    t6 = socket.socket(socket.AF_INET6); t6.bind(("::1", 0)); t6.listen()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(d + "/s")
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.connect(d + "/g")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", 9))
    c4 = socket.socket(); c4.connect(t4.getsockname())
    try:
        c4.connect(t4.getsockname())  # already connected: EISCONN before the protocol's connect
    except OSError as e:
        assert e.errno == errno.EISCONN
    c6 = socket.socket(socket.AF_INET6); c6.connect(t6.getsockname()[:2])
    f = os.open(d + "/plain", os.O_CREAT | os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    sa = bytes([2, 0, 0, 9, 127, 0, 0, 1]) + bytes(8)
    assert libc.connect(f, sa, 16) == -1 and ctypes.get_errno() == errno.ENOTSOCK  # not a socket
    print(t4.getsockname()[1], t6.getsockname()[1])
"""


def test_tcp_connect_only_for_tcp_sockets_the_kernel_connects(sensors, workdir) -> None:
    ps, ts = sensors
    _apply(ts, """
        kprobes:
        - {call: tcp_connect, syscall: false, args: [{index: 0, type: sock}]}
        - call: security_socket_connect
          syscall: false
          args: [{index: 0, type: socket}, {index: 1, type: sockaddr}, {index: 2, type: int}]
        """)
    pid, out = _run(_CONNECTS.format(d=workdir))
    p4, p6 = (int(x) for x in out.split())
    evs = _events(ps, ts, {pid})
    tcp = [ev for fn, _sc, ev in evs if fn == "tcp_connect"]
    # the loopback TCP connects over IPv4 and IPv6; not unix stream/dgram, UDP, the connected socket, the file
    assert [_dest(e) for e in tcp] == [(2, "127.0.0.1", p4), (10, "::1", p6)]
    si = tabi.sockinfo(bytes(tcp[0].str[0])[: tcp[0].slen[0]])
    assert (si.type, si.protocol) == (1, 6)  # read from the socket: SOCK_STREAM, IPPROTO_TCP
    # the LSM hook runs for every connect() of a socket (before the protocol's checks), not for a file's fd
    lsm = [e for fn, _sc, e in evs if fn == "security_socket_connect"]
    assert [tabi.sockaddr(e.ints[1])[0] for e in lsm] == [1, 1, 2, 2, 2, 10]
    # its struct socket is the fd's: (family, type) read from the kernel's socket
    socks = [tabi.sockinfo(bytes(e.str[0])[: e.slen[0]]) for e in lsm]
    assert [(si.family, si.type) for si in socks] == [(1, 1), (1, 2), (2, 2), (2, 1), (2, 1), (10, 1)]


def test_address_filters_by_family(sensors, workdir) -> None:
    """IPv4 address values: an IPv6 destination is in none of them (NotDAddr matches it, as in Tetragon); a UNIX
    sockaddr has no address (neither operator matches), whatever bytes its path has where an IPv4 address is."""
    ps, ts = sensors
    _apply(ts, """
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors: [{matchArgs: [{index: 0, operator: NotDAddr, values: [127.0.0.0/8]}]}]
        - call: security_socket_connect
          syscall: false
          args: [{index: 1, type: sockaddr}]
          selectors: [{matchArgs: [{index: 1, operator: NotSAddr, values: [127.0.0.0/8]}]}]
        """)
    pid, out = _run(_CONNECTS.format(d=workdir))
    p6 = int(out.split()[1])
    evs = _events(ps, ts, {pid})
    # both hooks watch connect(), in the policy's order
    assert [(fn, tabi.sockaddr(ev.ints[0])[0]) for fn, _sc, ev in evs] == [
        ("tcp_connect", 10), ("security_socket_connect", 10)]
    assert _dest(evs[0][2]) == (10, "::1", p6)


def test_deny_connect_on_ipv6_fails_that_connect_not_the_next_ipv4_one(sensors) -> None:
    ps, ts = sensors
    with socket.socket(socket.AF_INET6) as t6, socket.socket() as t4:
        t6.bind(("::1", 0))
        t6.listen()
        t4.bind(("127.0.0.1", 0))
        t4.listen()
        port6 = t6.getsockname()[1]
        _apply(ts, f"""
            kprobes:
            - call: tcp_connect
              syscall: false
              args: [{{index: 0, type: sock}}]
              selectors:
              - matchArgs: [{{index: 0, operator: DPort, values: ["{port6}"]}}]
                matchActions: [{{action: DenyConnect}}]
            """)
        pid, out = _run(f"""
            import socket
            c6 = socket.socket(socket.AF_INET6)
            print(c6.connect_ex(("::1", {port6})))
            c4 = socket.socket()
            print(c4.connect_ex(("127.0.0.1", {t4.getsockname()[1]})))
            """)
    assert out.split() == ["1", "0"]  # EPERM for the denied IPv6 connect; the IPv4 one is not touched
    [(_fn, _sc, ev)] = _events(ps, ts, {pid})
    assert _dest(ev) == (10, "::1", port6) and ev.flags & tabi.EV_ENFORCED


def test_upstream_private_addrs_policy_kills_nothing_connecting_locally(workdir) -> None:
    """tcp-connect-only-private-addrs.yaml (NotDAddr private ranges -> Sigkill) applied unchanged: a UNIX
    socket client (the CLI itself) and a loopback TCP client survive; the policy is then deleted."""
    text = UPSTREAM.read_text()
    agent = AgentProcess("--no-network")
    try:
        agent.start(timeout=120)
        r = agent.cli("tp", "apply", "-f", "-", input=text)
        try:
            assert r.returncode == 0, r.stderr
            assert "connect-only-private-addrs" in agent.cli("tp", "list").stdout
            status = agent.cli("status")  # connects the agent's UNIX socket
            assert status.returncode == 0, (status.returncode, status.stderr)
            tcp = subprocess.run([sys.executable, "-c", textwrap.dedent("""
                import socket
                s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
                c = socket.socket(); c.connect(s.getsockname()); print("connected")
                """)], capture_output=True, text=True, timeout=60)
            assert (tcp.returncode, tcp.stdout.strip()) == (0, "connected")
        finally:
            d = agent.cli("tp", "delete", "connect-only-private-addrs")
            if d.returncode != 0:
                # the policy may still be live: stop the agent by signal, never by connecting to its socket here
                # (a regression would kill this test process too and leave the agent and its policy running)
                agent.stop()
        assert d.returncode == 0, d.stderr
        assert "connect-only-private-addrs" not in agent.cli("tp", "list").stdout
    finally:
        agent.cleanup()


def test_vfs_write_and_read_only_where_the_kernel_calls_them(sensors, workdir) -> None:
    ps, ts = sensors
    _apply(ts, """
        kprobes:
        - {call: vfs_write, syscall: false, args: [{index: 0, type: file}, {index: 2, type: size_t}]}
        - {call: vfs_read, syscall: false, args: [{index: 0, type: file}, {index: 2, type: size_t}]}
        """)
    pid, out = _run(f"""
        import errno, os
        d = {workdir!r}
        f = os.open(d + "/f", os.O_CREAT | os.O_RDWR)
        r, w = os.pipe()
        os.write(f, b"1")                          # vfs_write
        os.write(w, b"22")                         # vfs_write (a pipe is written through it too)
        os.pwrite(f, b"333", 0)                    # vfs_write
        os.writev(f, [b"4444"])                    # vfs_writev: not vfs_write
        for bad in (lambda: os.pwrite(w, b"5", 0),   # a pipe is not seekable: ESPIPE first
                    lambda: os.write(987, b"6"),     # a bad fd: EBADF first
                    lambda: os.pwrite(f, b"7", -1)): # a negative position: EINVAL first
            try:
                bad()
            except OSError:
                pass
        o = os.open(d + "/f", os.O_PATH)
        try:
            os.write(o, b"8")                      # O_PATH: fdget refuses it (EBADF)
        except OSError:
            pass
        ro = os.open(d + "/f", os.O_RDONLY)
        try:
            os.write(ro, b"9")                     # not open for writing: vfs_write itself says EBADF
        except OSError:
            pass
        os.read(r, 2)                              # vfs_read
        os.pread(f, 1, 0)                          # vfs_read
        os.readv(f, [bytearray(1)])                # vfs_readv: not vfs_read
        try:
            os.pread(r, 1, 0)                      # ESPIPE first
        except OSError:
            pass
    """)
    f = f"{workdir}/f"
    got = [(fn, sc, _s(e, 0) if _s(e, 0) == f else "pipe", e.ints[1]) for fn, sc, e in _events(ps, ts, {pid})
           if _s(e, 0) == f or e.ints[1] == 2]
    # Python's own start-up reads are of other files; the pipe's read is 2 bytes
    assert got == [
        ("vfs_write", "write", f, 1), ("vfs_write", "write", "pipe", 2), ("vfs_write", "pwrite64", f, 3),
        ("vfs_write", "write", f, 1), ("vfs_read", "read", "pipe", 2), ("vfs_read", "pread64", f, 1)]


def test_security_file_permission_needs_the_mode_and_a_valid_fd(sensors, workdir) -> None:
    ps, ts = sensors
    _apply(ts, f"""
        kprobes:
        - call: security_file_permission
          syscall: false
          args: [{{index: 0, type: file}}, {{index: 1, type: int}}]
          selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: [{workdir}/]}}]}}]
        """)
    pid, _ = _run(f"""
        import os
        d = {workdir!r}
        rw = os.open(d + "/rw", os.O_CREAT | os.O_RDWR)
        ro = os.open(d + "/ro", os.O_CREAT | os.O_RDONLY)
        p = os.open(d + "/rw", os.O_PATH)
        os.write(rw, b"a")          # MAY_WRITE
        os.writev(rw, [b"b"])       # MAY_WRITE (vfs_writev checks too)
        os.pwritev(rw, [b"c"], 0)   # MAY_WRITE
        os.preadv(rw, [bytearray(1)], 0)  # MAY_READ
        for bad in (lambda: os.write(ro, b"x"), lambda: os.writev(ro, [b"x"]),  # not open for writing
                    lambda: os.read(p, 1), lambda: os.write(987, b"x"),          # O_PATH, bad fd
                    lambda: os.pwritev(rw, [b"x"], -5)):                         # negative position
            try:
                bad()
            except OSError:
                pass
        os.read(ro, 1)              # MAY_READ
    """)
    # glibc may issue pwritev/preadv as pwritev2/preadv2: the same check either way
    got = [(sc.removesuffix("2"), _s(e, 0).rsplit("/", 1)[1]) for fn, sc, e in _events(ps, ts, {pid})]
    assert got == [("write", "rw"), ("writev", "rw"), ("pwritev", "rw"), ("preadv", "rw"), ("read", "ro")]


def test_opens_at_their_exit_with_the_full_path(sensors, workdir) -> None:
    ps, ts = sensors
    _apply(ts, f"""
        kprobes:
        - call: fd_install
          syscall: false
          args: [{{index: 0, type: int}}, {{index: 1, type: file}}]
          selectors: [{{matchArgs: [{{index: 1, operator: Prefix, values: [{workdir}/]}}]}}]
        - call: security_file_open
          syscall: false
          args: [{{index: 0, type: file}}]
          selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: [{workdir}/]}}]}}]
        """)
    pid, out = _run(f"""
        import os
        os.makedirs({workdir!r} + "/sub")
        os.chdir({workdir!r} + "/sub")
        a = os.open("rel", os.O_CREAT | os.O_WRONLY)      # relative: the kernel sees the full path
        b = os.open("../sub/./rel", os.O_PATH)           # O_PATH: installed, but no security_file_open
        try:
            os.open("missing", os.O_RDONLY)              # fails: neither
        except FileNotFoundError:
            pass
        print(a, b)
    """)
    a, b = (int(x) for x in out.split())
    rel = f"{workdir}/sub/rel"
    got = [(fn, sc, _s(e, 1) if fn == "fd_install" else _s(e, 0), e.ints[0] if fn == "fd_install" else None)
           for fn, sc, e in _events(ps, ts, {pid})]
    assert got == [("fd_install", "openat", rel, a), ("security_file_open", "openat", rel, None),
                   ("fd_install", "openat", rel, b)]


def test_commit_creds_when_the_credentials_change(sensors) -> None:
    ps, ts = sensors
    _apply(ts, "kprobes: [{call: commit_creds, syscall: false, args: [{index: 0, type: cred}]}]")
    pid, out = _run("""
        import os
        c = os.fork()
        if c == 0:
            try:
                os.setresgid(65534, 65534, 65534)  # changes: commit_creds
                os.setuid(65534)                     # changes: commit_creds
                try:
                    os.setuid(0)                     # refused (EPERM): no commit
                except PermissionError:
                    pass
            finally:
                os._exit(0)
        os.waitpid(c, 0)
        print(c)
    """)
    child = int(out)
    got = []
    for _fn, sc, e in _events(ps, ts, {pid, child}):
        ci = tabi.credinfo(bytes(e.str[0])[: e.slen[0]])
        got.append((e.pid, sc, ci.uid, ci.euid, ci.gid))
    # the exec that started the workload installed credentials too (every exec commits the binprm's)
    assert got == [(pid, "execve", 0, 0, 0), (child, "setresgid", 0, 0, 65534),
                   (child, "setuid", 65534, 65534, 65534)]


def test_bprm_check_sees_the_execs_that_happen_as_full_paths(sensors, workdir) -> None:
    ps, ts = sensors
    _apply(ts, "kprobes: [{call: security_bprm_check, syscall: false, args: [{index: 0, type: linux_binprm}]}]")
    shutil.copy("/bin/true", f"{workdir}/prog")
    Path(workdir, "s.sh").write_text("#!/bin/sh\nexit 0\n")
    Path(workdir, "noexec").write_text("#!/bin/sh\n")
    os.chmod(f"{workdir}/s.sh", 0o755)
    pid, out = _run(f"""
        import os
        os.chdir({workdir!r})
        pids = []
        for path in ("./prog", "s.sh", "./noexec", "./missing"):  # relative: the kernel sees the full path
            c = os.fork()
            if c == 0:
                try:
                    os.execv(path, [path])
                finally:
                    os._exit(127)
            os.waitpid(c, 0)
            pids.append(c)
        print(*pids)
    """)
    prog, script, noexec, missing = (int(x) for x in out.split())
    got = [(ev.pid, _s(ev, 0)) for _fn, _sc, ev in _events(ps, ts, {prog, script, noexec, missing})]
    # a script is seen as its interpreter; no execute permission (EACCES) and a missing file: never checked
    assert got == [(prog, f"{workdir}/prog"), (script, os.path.realpath("/bin/sh"))]
