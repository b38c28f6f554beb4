"""Decoded kernel messages of the process sensor (plain data, no kernel access).

The kernel side writes the layouts in ``bpf/include/process_abi.h``; ``apiary.sensors.process.abi``
decodes ring-buffer records into these objects. The process cache and the event encoders only ever
see these classes, so they are testable without root.

Every process is identified by ``(pid, ktime)`` where ``ktime`` is the CLOCK_MONOTONIC time in ns
of the exec (or of the fork, for a process that has not exec'd, or the start time read from
/proc for processes found at start-up). ``exec_id = base64("<node>:<ktime>:<pid>")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ExecMsg.flags bits (kernel and /proc scanner)
EXEC_F_REEXEC = 1 << 0  # the pid had exec'd before: the parent is the previous image of the same pid
EXEC_F_CLONE = 1 << 1  # first exec after a fork: the parent is the forking process
EXEC_F_TRUNC_ARGS = 1 << 2  # argv longer than the kernel buffer: cut, and flagged
EXEC_F_TRUNC_PATH = 1 << 3  # binary path deeper/longer than the kernel walk allows
EXEC_F_TRUNC_CWD = 1 << 4  # cwd deeper/longer than the kernel walk allows
EXEC_F_ERR_CWD = 1 << 5  # cwd could not be read
EXEC_F_ERR_ARGS = 1 << 6  # argv could not be read from user memory
EXEC_F_PROCFS = 1 << 7  # built from /proc at agent start-up, not seen by the kernel sensor
EXEC_F_NO_PARENT = 1 << 8  # the kernel found no parent entry (parent_ktime is 0)


@dataclass(slots=True)
class ExecMsg:
    """A new program image in a process (execve), or a process found in /proc at start-up."""

    ktime: int
    pid: int
    tid: int
    ppid: int
    parent_ktime: int
    flags: int
    uid: int
    euid: int
    gid: int
    egid: int
    auid: int
    cgroup_id: int
    binary: str
    cwd: str
    argv: list[str] = field(default_factory=list)  # argv[0] included


@dataclass(slots=True)
class ForkMsg:
    """A new process (thread-group leader) created by fork/clone; it runs its parent's image."""

    ktime: int
    pid: int
    tid: int
    ppid: int
    parent_ktime: int


@dataclass(slots=True)
class ExitMsg:
    """The last thread of a process exited. ``proc_ktime`` identifies the image that exited."""

    ktime: int
    pid: int
    tid: int
    proc_ktime: int
    status: int  # exit status (0..255) when exited normally
    signal: int  # terminating signal number, 0 when exited normally


RawMsg = ExecMsg | ForkMsg | ExitMsg
