"""The standard workload: one child process that touches every kind of thing a tracing policy watches.

Unix stream/dgram, TCP, UDP and IPv6 (::1) connects to listeners it opens itself on loopback; reads and writes
on files, pipes and sockets; readv/writev; pread/pwrite on a pipe (ESPIPE); a bad fd; set*id that succeeds and
that fails; execs (a binary, a script, a failing one, a missing one); opens with O_TRUNC/O_CREAT/O_PATH, a
relative path after chdir and a missing file. Network traffic only to loopback.

The child imports and prepares everything first and says ``ready``; it waits for ``go`` on stdin, so a policy
can be scoped to its pid (matchPIDs followForks) before it does anything. Each step records its start on
CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns), so an event can be put in the step that caused it.

    with Workload(directory) as w:
        apply_policy_scoped_to(w.pid)
        result = w.run()          # steps, ports, end
        result.step_at(event.ktime)
"""

from __future__ import annotations

import bisect
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

# the steps, in order (a step's events are those between its start and the next step's start)
STEPS = (
    "open-creat",
    "open-read",
    "open-trunc",
    "open-path",
    "open-relative",
    "open-missing",
    "writev-readv",
    "pwrite-pread-file",
    "pipe-rw",
    "pipe-pread-pwrite",
    "bad-fd",
    "unix-stream",
    "unix-dgram",
    "tcp4",
    "udp4",
    "tcp6",
    "udp6",
    "tcp4-refused",
    "setid",
    "exec",
    "exec-script",
    "exec-noexec",
    "exec-missing",
)
NOBODY = 65534
BAD_FD = 1000  # closed in the child (checked), so reads and writes on it fail with EBADF


@dataclass
class WorkloadResult:
    steps: list[tuple[str, int]]  # (step, start on CLOCK_MONOTONIC in ns)
    end: int  # when the last step ended
    # port -> the workload's names for it, in the order it used them (listeners and UDP clients are on ephemeral
    # ports, and a port closed in one step can come back in a later one: tcp4's listener as udp4's client)
    ports: dict[int, tuple[str, ...]]
    errors: dict[str, str] = field(default_factory=dict)  # step -> the errno the step expected and got

    def port_name(self, port: int, step: str | None) -> str | int:
        """What ``port`` was while ``step`` ran: the step's own listener or client, else the port's one name."""
        names = self.ports.get(port, ())
        for n in names:
            if step is not None and n in (step, f"{step}-client"):
                return n
        return names[0] if len(names) == 1 else port

    def step_at(self, ktime: int) -> str | None:
        """The step running at ``ktime``; None before the first or after the last."""
        if ktime > self.end:
            return None
        i = bisect.bisect_right([t for _s, t in self.steps], ktime) - 1
        return self.steps[i][0] if i >= 0 else None


class Workload:
    """The standard workload in a child process (``python -m apiary.testing.workload DIR``)."""

    def __init__(self, directory: str, timeout: float = 300.0) -> None:
        self.directory = directory
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Workload:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apiary.testing.workload", self.directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the workload did not start: {line!r}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def run(self) -> WorkloadResult:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.read()
        rc = self.proc.wait(self.timeout)
        if rc != 0:
            raise RuntimeError(f"the workload failed (exit {rc}): {out[-2000:]}")
        data = json.loads(out)
        return WorkloadResult(
            [(s, t) for s, t in data["steps"]],
            data["end"],
            {int(p): tuple(n) for p, n in data["ports"].items()},
            data["errors"],
        )

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------- the child
def _expect_error(errors: dict[str, str], step: str, call: Any, *args: Any) -> None:
    try:
        call(*args)
    except OSError as e:
        errors[step] = (errors[step] + "," if step in errors else "") + (os.strerror(e.errno) if e.errno else str(e))
        return
    raise AssertionError(f"workload step {step}: {call.__name__}{args} did not fail")


def _pair(family: int, kind: int, addr: Any, ports: dict[int, list[str]], name: str) -> tuple[socket.socket, ...]:
    """A listener of its own and a connected client (plus the accepted end for streams)."""
    srv = socket.socket(family, kind)
    srv.bind(addr)
    if family != socket.AF_UNIX:
        ports.setdefault(srv.getsockname()[1], []).append(name)
    if kind == socket.SOCK_STREAM:
        srv.listen(1)
    cli = socket.socket(family, kind)
    if kind == socket.SOCK_DGRAM:  # the client gets an address of its own: the server connects back to it
        cli.bind(addr + ".client" if family == socket.AF_UNIX else addr)
    cli.connect(srv.getsockname())
    if kind == socket.SOCK_STREAM:
        acc, _ = srv.accept()
        return srv, cli, acc
    if family != socket.AF_UNIX:  # the server connects back to the client's ephemeral port
        ports.setdefault(cli.getsockname()[1], []).append(f"{name}-client")
    srv.connect(cli.getsockname())
    return srv, cli, srv


def _sockets(step: str, family: int, kind: int, addr: Any, ports: dict[int, list[str]]) -> None:
    socks = _pair(family, kind, addr, ports, step)
    cli, peer = socks[1], socks[2]
    os.write(cli.fileno(), b"ping")
    os.read(peer.fileno(), 16)
    os.write(peer.fileno(), b"pong")
    os.read(cli.fileno(), 16)
    for s in socks:
        s.close()


def _child(d: str) -> None:
    os.makedirs(d, exist_ok=True)
    f = os.path.join(d, "file")
    script = os.path.join(d, "script.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o755)
    try:
        os.fstat(BAD_FD)
        raise AssertionError(f"fd {BAD_FD} is open in the workload")
    except OSError:
        pass
    refused = socket.socket()  # a port bound and not listening: connect() is refused
    refused.bind(("127.0.0.1", 0))
    ports: dict[int, list[str]] = {refused.getsockname()[1]: ["tcp4-refused"]}
    steps: list[tuple[str, int]] = []
    errors: dict[str, str] = {}
    here = os.getcwd()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(2)

    mono = time.monotonic_ns
    for name in STEPS:
        steps.append((name, mono()))
        if name == "open-creat":
            fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"hello world\n")
            os.close(fd)
        elif name == "open-read":
            fd = os.open(f, os.O_RDONLY)
            os.read(fd, 64)
            os.close(fd)
        elif name == "open-trunc":
            fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, b"0123456789")
            os.close(fd)
        elif name == "open-path":
            os.close(os.open(f, os.O_PATH))
        elif name == "open-relative":
            os.chdir(d)
            os.close(os.open("relative", os.O_WRONLY | os.O_CREAT, 0o644))
            os.chdir(here)
        elif name == "open-missing":
            _expect_error(errors, name, os.open, os.path.join(d, "missing"), os.O_RDONLY)
        elif name == "writev-readv":
            fd = os.open(f, os.O_RDWR)
            os.writev(fd, [b"ab", b"cde"])
            os.lseek(fd, 0, os.SEEK_SET)
            os.readv(fd, [bytearray(2), bytearray(3)])
            os.close(fd)
        elif name == "pwrite-pread-file":
            fd = os.open(f, os.O_RDWR)
            os.pwrite(fd, b"xyz", 1)
            os.pread(fd, 3, 1)
            os.close(fd)
        elif name == "pipe-rw":
            r, w = os.pipe()
            os.write(w, b"through the pipe")
            os.read(r, 64)
            os.close(r)
            os.close(w)
        elif name == "pipe-pread-pwrite":
            r, w = os.pipe()
            _expect_error(errors, name, os.pwrite, w, b"x", 0)
            _expect_error(errors, name, os.pread, r, 1, 0)
            os.close(r)
            os.close(w)
        elif name == "bad-fd":
            _expect_error(errors, name, os.read, BAD_FD, 1)
            _expect_error(errors, name, os.write, BAD_FD, b"x")
        elif name == "unix-stream":
            _sockets(name, socket.AF_UNIX, socket.SOCK_STREAM, os.path.join(d, "unix-stream.sock"), ports)
        elif name == "unix-dgram":
            _sockets(name, socket.AF_UNIX, socket.SOCK_DGRAM, os.path.join(d, "unix-dgram.sock"), ports)
        elif name == "tcp4":
            _sockets(name, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), ports)
        elif name == "udp4":
            _sockets(name, socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0), ports)
        elif name == "tcp6":
            _sockets(name, socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0), ports)
        elif name == "udp6":
            _sockets(name, socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 0), ports)
        elif name == "tcp4-refused":
            c = socket.socket()
            _expect_error(errors, name, c.connect, refused.getsockname())
            c.close()
        elif name == "setid":
            pid = os.fork()
            if pid == 0:  # in a child of its own: the workload keeps its credentials
                code = 0
                try:
                    os.setgid(NOBODY)  # succeeds (root)
                    os.setuid(NOBODY)  # succeeds
                    os.setuid(0)  # fails: no longer root
                    code = 3
                except PermissionError:
                    pass
                except BaseException:
                    code = 4
                os._exit(code)
            _pid, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise AssertionError(f"the set*id child exited {os.waitstatus_to_exitcode(status)}")
            errors[name] = "Operation not permitted"
        elif name == "exec":
            subprocess.run(["/bin/true"], check=True)
        elif name == "exec-script":
            subprocess.run([script], check=True)
        elif name == "exec-noexec":
            _expect_error(errors, name, subprocess.run, [f])
        elif name == "exec-missing":
            _expect_error(errors, name, subprocess.run, [os.path.join(d, "missing")])
    end = mono()
    refused.close()
    print(json.dumps({"steps": steps, "end": end, "ports": ports, "errors": errors}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
