"""The DNS proxy's socket holder: the proxy's listening UDP and TCP sockets outlive the agent.

When the agent dies its file descriptors go with it; were it the only holder of the DNS proxy's sockets, the
datapath's ``bpf_sk_assign`` would find no socket and every endpoint's DNS would fail until the next agent is
up (cilium#30984). So the agent starts a holder: ``sleep infinity`` that inherited the two sockets, in the L7
proxy's cgroup. While no agent runs, queries the datapath hands over wait in the sockets' queues (the UDP
receive buffer, the TCP accept backlog); the next agent takes the very same sockets back from the holder with
``pidfd_getfd`` (Linux >= 5.6) and answers them from its restored rules and cache. The holder stays for the
next restart; `apiary uninstall` (and the tests' clean-up) end it with the proxy's cgroup.

A holder is only trusted when everything recorded about it still holds: the PID has the recorded start time
(no PID reuse), it is in this instance's proxy cgroup, and the recorded descriptors are the recorded
sockets (inode numbers). Nothing is ever found or killed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from apiary.store import FileStore, StoreError

STATE_KEY = "dnsproxy-holder.json"
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified syscall table, Linux 5.6)
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class HolderRecord:
    pid: int
    start_time: int  # /proc/PID/stat field 22: tells a reused PID apart
    port: int
    udp_fd: int
    tcp_fd: int
    udp_inode: int
    tcp_inode: int


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # after "pid (comm)": field 22 overall


def _in_cgroup(pid: int, cgroup: Path) -> bool:
    try:
        return str(pid) in (cgroup / "cgroup.procs").read_text().split()
    except OSError:
        return False


def _fd_inode(pid: int, fd: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return int(link[8:-1]) if link.startswith("socket:[") else None


def verified(rec: HolderRecord, cgroup: Path) -> bool:
    """Is ``rec`` still our live holder, with our two sockets?"""
    return (_start_time(rec.pid) == rec.start_time and _in_cgroup(rec.pid, cgroup)
            and _fd_inode(rec.pid, rec.udp_fd) == rec.udp_inode and _fd_inode(rec.pid, rec.tcp_fd) == rec.tcp_inode)


def load(state_dir: str | Path) -> HolderRecord | None:
    try:
        raw = FileStore(state_dir).get(STATE_KEY)
        return HolderRecord(**json.loads(raw)) if raw else None
    except (StoreError, ValueError, TypeError):
        return None


def spawn(state_dir: str | Path, cgroup: Path, udp: socket.socket, tcp: socket.socket, port: int) -> HolderRecord:
    """Start a holder of ``udp`` and ``tcp`` in ``cgroup`` and record it in the state directory."""
    fds = (udp.fileno(), tcp.fileno())
    # the shell joins the cgroup, then becomes `sleep`, which keeps the inherited sockets open and never reads
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f'echo $$ > "{cgroup / "cgroup.procs"}" && exec sleep infinity'],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=fds,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    start = _start_time(proc.pid)
    while not _in_cgroup(proc.pid, cgroup):  # the shell wrote its PID there, then execs `sleep`
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise OSError(f"the DNS socket holder did not start (exit code {proc.poll()})")
        time.sleep(0.01)
    rec = HolderRecord(proc.pid, start or 0, port, fds[0], fds[1], os.fstat(fds[0]).st_ino, os.fstat(fds[1]).st_ino)
    FileStore(state_dir).put(STATE_KEY, json.dumps(asdict(rec)).encode())
    return rec


def take(rec: HolderRecord, cgroup: Path) -> tuple[socket.socket, socket.socket] | None:
    """Duplicates of the holder's two sockets (the same sockets, with what is queued on them), or None when
    ``rec`` is not (any more) our holder or the kernel has no pidfd_getfd."""
    if not verified(rec, cgroup):
        return None
    try:
        pidfd = os.pidfd_open(rec.pid)
    except OSError:
        return None
    got: list[int] = []
    try:
        if not verified(rec, cgroup):  # the pidfd pins this process: check again against a reuse in between
            return None
        for fd in (rec.udp_fd, rec.tcp_fd):
            new = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if new < 0:
                return None
            got.append(new)
        udp = socket.socket(fileno=got[0])
        tcp = socket.socket(fileno=got[1])
        got.clear()
        return udp, tcp
    finally:
        os.close(pidfd)
        for fd in got:
            os.close(fd)


def stop(state_dir: str | Path, cgroup: Path) -> bool:
    """End the recorded holder when it is verified ours; forget the record. True when one was ended."""
    rec = load(state_dir)
    if rec is None:
        return False
    ended = False
    if verified(rec, cgroup):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
            ended = True
        deadline = time.monotonic() + 5
        while _in_cgroup(rec.pid, cgroup) and time.monotonic() < deadline:  # so the cgroup can be removed
            time.sleep(0.01)
    with contextlib.suppress(StoreError):
        FileStore(state_dir).delete(STATE_KEY)
    return ended
