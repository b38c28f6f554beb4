"""Python side of bpf/include/process_abi.h: record layouts and the decoder.

``LAYOUTS`` lists every field with its offset so a kernel test can compare them with the BTF of
the built object: a change on one side without the other fails that test instead of corrupting
events.
"""

from __future__ import annotations

import struct

from apiary.observe.raw import ExecMsg, ExitMsg, ForkMsg, RawMsg

MSG_EXEC, MSG_FORK, MSG_EXIT, MSG_BENCH = 1, 2, 3, 100

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


def _layout(*fields: tuple[str, str]) -> tuple[struct.Struct, dict[str, int]]:
    """A little-endian packed struct from (name, format) pairs; names starting with '_' are padding."""
    fmt, offsets = "<", {}
    for name, code in fields:
        if not name.startswith("_"):
            offsets[name] = struct.calcsize(fmt)
        fmt += code
    return struct.Struct(fmt), offsets


_HDR = (("type", "B"), ("_pad", "3x"), ("size", "I"), ("ktime", "Q"))
EXEC, _EXEC_OFF = _layout(
    *_HDR,
    ("pid", "I"),
    ("tid", "I"),
    ("ppid", "I"),
    ("flags", "I"),
    ("parent_ktime", "Q"),
    ("uid", "I"),
    ("euid", "I"),
    ("gid", "I"),
    ("egid", "I"),
    ("auid", "I"),
    ("_pad", "4x"),
    ("cgroup_id", "Q"),
    ("binary_len", "H"),
    ("cwd_len", "H"),
    ("args_len", "H"),
    ("_pad2", "2x"),
)
FORK, _FORK_OFF = _layout(*_HDR, ("pid", "I"), ("tid", "I"), ("ppid", "I"), ("_pad", "4x"), ("parent_ktime", "Q"))
EXIT, _EXIT_OFF = _layout(*_HDR, ("pid", "I"), ("tid", "I"), ("proc_ktime", "Q"), ("code", "I"), ("_pad", "4x"))
BENCH, _ = _layout(*_HDR, ("seq", "Q"))
PROC_ENTRY, _PROC_OFF = _layout(("ktime", "Q"), ("parent_ktime", "Q"), ("ppid", "I"), ("flags", "I"))

PROC_F_EXECED, PROC_F_CLONE, PROC_F_PROCFS = 1, 2, 4


def _nest(off: dict[str, int]) -> dict[str, int]:
    """Header fields live in the nested ``struct msg_hdr hdr`` at offset 0 on the C side."""
    out = {"hdr": 0}
    out.update({k: v for k, v in off.items() if k not in ("type", "size", "ktime")})
    return out


# {C struct name: (size, {member: offset})} for the BTF comparison test
LAYOUTS: dict[str, tuple[int, dict[str, int]]] = {
    "msg_hdr": (struct.calcsize("<B3xIQ"), {"type": 0, "size": 4, "ktime": 8}),
    "msg_exec": (EXEC.size, _nest(_EXEC_OFF)),
    "msg_fork": (FORK.size, _nest(_FORK_OFF)),
    "msg_exit": (EXIT.size, _nest(_EXIT_OFF)),
    "proc_entry": (PROC_ENTRY.size, _PROC_OFF),
}


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
