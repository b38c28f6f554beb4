"""Python side of bpf/include/process_abi.h: record layouts (ctypes mirrors) and the decoder.

Registered in ``apiary.sensors.abi``: a test compares every mirror in ``STRUCTS`` with the BTF of the
built object and every ``DEFINES`` entry with the header.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

from apiary.observe import raw
from apiary.observe.raw import ExecMsg, ExitMsg, ForkMsg, RawMsg
from apiary.sensors.abi import MsgType, packed

OBJECT, HEADER = "process", "process_abi.h"

MSG_EXEC, MSG_FORK, MSG_EXIT, MSG_BENCH = MsgType.EXEC, MsgType.FORK, MsgType.EXIT, MsgType.BENCH

CNT_NAMES = [
    "exec",
    "fork",
    "exit",
    "bench",
    "lost_exec",
    "lost_fork",
    "lost_exit",
    "lost_bench",
    "procs_full",
]
CNT = {name: i for i, name in enumerate(CNT_NAMES)}

PROC_F_EXECED, PROC_F_CLONE, PROC_F_PROCFS = 1, 2, 4
PATH_BUF, ARGS_BUF, PATH_DEPTH = 4096, 4096, 128  # longest path or cwd, argv; path components walked
BIN_MAX = 256  # bytes of a process's binary path kept for matchBinaries (NUL included)


class MsgHdr(ctypes.Structure):
    _fields_ = [("type", c_uint8), ("_pad", c_uint8 * 3), ("size", c_uint32), ("ktime", c_uint64)]


class MsgExec(ctypes.Structure):
    """Followed by binary_len + cwd_len + args_len bytes."""

    _fields_ = [
        ("hdr", MsgHdr),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("ppid", c_uint32),
        ("flags", c_uint32),
        ("parent_ktime", c_uint64),
        ("uid", c_uint32),
        ("euid", c_uint32),
        ("gid", c_uint32),
        ("egid", c_uint32),
        ("auid", c_uint32),
        ("_pad", c_uint32),
        ("cgroup_id", c_uint64),
        ("binary_len", c_uint16),
        ("cwd_len", c_uint16),
        ("args_len", c_uint16),
        ("_pad2", c_uint16),
    ]


class MsgFork(ctypes.Structure):
    _fields_ = [
        ("hdr", MsgHdr),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("ppid", c_uint32),
        ("_pad", c_uint32),
        ("parent_ktime", c_uint64),
    ]


class MsgExit(ctypes.Structure):
    _fields_ = [
        ("hdr", MsgHdr),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("proc_ktime", c_uint64),
        ("code", c_uint32),  # kernel exit_code: status << 8 | signal
        ("_pad", c_uint32),
    ]


class MsgBench(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("seq", c_uint64)]


class ProcBinary(ctypes.Structure):
    """The binary a live process runs, keyed by tgid (matchBinaries)."""

    _fields_ = [("len", c_uint32), ("path", ctypes.c_char * BIN_MAX)]


class ProcEntry(ctypes.Structure):
    """The kernel's table of live processes, keyed by tgid."""

    _fields_ = [("ktime", c_uint64), ("parent_ktime", c_uint64), ("ppid", c_uint32), ("flags", c_uint32)]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "msg_hdr": MsgHdr,
    "msg_exec": MsgExec,
    "msg_fork": MsgFork,
    "msg_exit": MsgExit,
    "msg_bench": MsgBench,
    "proc_binary": ProcBinary,
    "proc_entry": ProcEntry,
}
KERNEL_ONLY: dict[str, str] = {}

DEFINES: dict[str, int] = {
    **{f"MSG_{t.name}": t.value for t in (MSG_EXEC, MSG_FORK, MSG_EXIT, MSG_BENCH)},
    **{f"CNT_{n.upper()}": i for i, n in enumerate(CNT_NAMES)},
    "CNT_MAX": len(CNT_NAMES),
    **{
        f"EXEC_F_{n}": getattr(raw, f"EXEC_F_{n}")
        for n in ("REEXEC", "CLONE", "TRUNC_ARGS", "TRUNC_PATH", "TRUNC_CWD", "ERR_CWD", "ERR_ARGS", "NO_PARENT")
    },
    "PROC_F_EXECED": PROC_F_EXECED,
    "PROC_F_CLONE": PROC_F_CLONE,
    "PROC_F_PROCFS": PROC_F_PROCFS,
    "PATH_BUF": PATH_BUF,
    "ARGS_BUF": ARGS_BUF,
    "PATH_DEPTH": PATH_DEPTH,
    "BIN_MAX": BIN_MAX,
}

# decoders: the mirrors as struct.Struct (padding skipped)
EXEC, FORK, EXIT, BENCH, PROC_ENTRY = (packed(c) for c in (MsgExec, MsgFork, MsgExit, MsgBench, ProcEntry))


def binary_entry(raw_path: bytes) -> bytes:
    """The proc_binary value of a path as the exec program writes it: cut to BIN_MAX - 1 bytes."""
    cut = raw_path[: BIN_MAX - 1]
    return bytes(ProcBinary(len(cut), cut))


def _s(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def decode(buf: memoryview | bytes) -> RawMsg | int | None:
    """Decode one ring-buffer record. Returns a message, MSG_BENCH for a bench record, or None."""
    kind = buf[0]
    if kind == MSG_EXEC:
        (_, _, ktime, pid, tid, ppid, flags, pkt, uid, euid, gid, egid, auid, cg, bl, cl, al) = EXEC.unpack_from(buf)
        o = EXEC.size
        data = bytes(buf[o : o + bl + cl + al])
        args = data[bl + cl :]
        if args.endswith(b"\0"):
            args = args[:-1]
        argv = [_s(a) for a in args.split(b"\0")] if args else []
        return ExecMsg(
            ktime,
            pid,
            tid,
            ppid,
            pkt,
            flags,
            uid,
            euid,
            gid,
            egid,
            auid,
            cg,
            _s(data[:bl]),
            _s(data[bl : bl + cl]),
            argv,
        )
    if kind == MSG_FORK:
        _, _, ktime, pid, tid, ppid, pkt = FORK.unpack_from(buf)
        return ForkMsg(ktime, pid, tid, ppid, pkt)
    if kind == MSG_EXIT:
        _, _, ktime, pid, tid, pkt, code = EXIT.unpack_from(buf)
        return ExitMsg(ktime, pid, tid, pkt, (code >> 8) & 0xFF, code & 0x7F)
    if kind == MSG_BENCH:
        return MSG_BENCH
    return None
