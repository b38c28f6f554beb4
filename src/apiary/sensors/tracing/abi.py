"""Python side of bpf/include/tracing_abi.h: hook configuration encoder and event decoder.

Registered in ``apiary.sensors.abi``: a test compares every mirror in ``STRUCTS`` with the BTF of the
built object and every ``DEFINES`` entry with the header. The sensor limits are tracing.types' MAX_*
under their C names.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Callable
from ctypes import c_uint32, c_uint64
from functools import lru_cache

from apiary.sensors.abi import MsgType, from_bytes
from apiary.tracing.types import (
    ARG_BPRM,
    ARG_BUF,
    ARG_CHARS,
    ARG_CONNSOCK,
    ARG_CRED,
    ARG_DATALOC,
    ARG_FD,
    ARG_FILEPTR,
    ARG_INT,
    ARG_KSOCKADDR,
    ARG_KSTRING,
    ARG_PATHPTR,
    ARG_SKB,
    ARG_SOCK,
    ARG_SOCKADDR,
    ARG_SOCKETPTR,
    ARG_STRING,
    ARG_UINT,
    GUARD_CHECKS,
    MAX_ARG_BYTES,
    MAX_ARG_FILTERS,
    MAX_ARGS,
    MAX_BINARY,
    MAX_FOLLOW,
    MAX_HOOKS,
    MAX_HOOKS_PER_SYSCALL,
    MAX_NAMESPACE_FILTERS,
    MAX_SELECTORS,
    MAX_STRING,
    MAX_VALUES,
    REG_CRED,
    REG_EXE,
    REG_NONE,
    REG_RET,
    Guard,
    Hook,
)

OBJECT, HEADER = "gsys", "tracing_abi.h"

MSG_GENERIC = MsgType.GENERIC
# the sensor limits (tracing.types) under their C names
GS_HOOKS, GS_PER_SYSCALL, GS_ARGS, GS_SELECTORS = MAX_HOOKS, MAX_HOOKS_PER_SYSCALL, MAX_ARGS, MAX_SELECTORS
GS_FILTERS, GS_VALS, GS_STR = MAX_ARG_FILTERS, MAX_VALUES, MAX_STRING
GS_ARGSTR, GS_BIN = MAX_ARG_BYTES, MAX_BINARY
GS_QUICK = 4  # values of a hook's quick reject (struct gs_quick)
KIND = {
    ARG_INT: 1,
    ARG_UINT: 2,
    ARG_STRING: 3,
    ARG_FD: 4,
    ARG_SOCKADDR: 5,
    ARG_FILEPTR: 6,
    ARG_DATALOC: 7,
    ARG_CHARS: 8,
    ARG_KSTRING: 9,
    ARG_SOCK: 10,
    ARG_CRED: 11,
    ARG_BUF: 12,
    ARG_SKB: 13,
    ARG_PATHPTR: 14,
    ARG_BPRM: 15,
    ARG_CONNSOCK: 16,
    ARG_SOCKETPTR: 17,
    ARG_KSOCKADDR: 18,
}
# guard checks (GS_G_*): bit n = GUARD_CHECKS[n]
GUARD_BITS = {name: 1 << n for n, name in enumerate(GUARD_CHECKS)}
STRING_KINDS = (ARG_STRING, ARG_FD, ARG_FILEPTR, ARG_DATALOC, ARG_CHARS, ARG_KSTRING, ARG_BUF, ARG_PATHPTR, ARG_BPRM)
# pseudo syscall numbers of the LSM programs (GS_NR_LSM_*)
LSM_HOOKS = {"__lsm_file_open": 4096, "__lsm_file_permission": 4097, "__lsm_bprm_check_security": 4098}
# keys of gs_syscalls (an array map): pseudo numbers of cookie-named attach points from NR_DYN, below NR_MAX
NR_DYN, NR_MAX = 8192, 12288
GS_NS, GS_FOLLOW = MAX_NAMESPACE_FILTERS, MAX_FOLLOW
NS_TYPES = {
    "Uts": 1,
    "Ipc": 2,
    "Mnt": 3,
    "Pid": 4,
    "PidForChildren": 5,
    "Net": 6,
    "Time": 7,
    "TimeForChildren": 8,
    "Cgroup": 9,
    "User": 10,
}
# /proc/PID/ns/<file> of each type (host_ns is pid 1's)
NS_FILES = {
    "Uts": "uts",
    "Ipc": "ipc",
    "Mnt": "mnt",
    "Pid": "pid",
    "PidForChildren": "pid_for_children",
    "Net": "net",
    "Time": "time",
    "TimeForChildren": "time_for_children",
    "Cgroup": "cgroup",
    "User": "user",
}
# bytes of the integer types narrower than a register (the rest of the register is not the value)
INT_SIZES = {
    "int": 4,
    "int32": 4,
    "sint32": 4,
    "uint32": 4,
    "int16": 2,
    "sint16": 2,
    "uint16": 2,
    "int8": 1,
    "sint8": 1,
    "uint8": 1,
}
RATE_SCOPES = {"thread": 0, "process": 1, "global": 2}
CAP_TYPES = {"Effective": 1, "Inheritable": 2, "Permitted": 3}
FOLLOW_BIN, FOLLOW_PID = 1, 2
# pseudo numbers of kprobe-realised functions: the attach cookie of the kprobe link
KPROBES = {"__kprobe_vfs_write": 5000, "__kprobe_vfs_read": 5001}
KIND_NAME = {v: k for k, v in KIND.items()}
OPS = {
    "Equal": 1,
    "NotEqual": 2,
    "Prefix": 3,
    "NotPrefix": 4,
    "Postfix": 5,
    "NotPostfix": 6,
    "GT": 7,
    "GreaterThan": 7,
    "LT": 8,
    "LessThan": 8,
    "Mask": 9,
    "InRange": 10,
    "NotInRange": 11,
    "DAddr": 12,
    "NotDAddr": 13,
    "DPort": 14,
    "NotDPort": 15,
    "Family": 16,
    "SAddr": 17,
    "NotSAddr": 18,
    "SPort": 19,
    "NotSPort": 20,
    "Protocol": 21,
}
BIN_OPS = {"In": 1, "NotIn": 2, "Prefix": 3, "NotPrefix": 4}
ACTIONS = {"Post": 1, "NoPost": 2, "Sigkill": 3, "Signal": 4, "DenyConnect": 5, "Override": 6}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
F_ENABLED, F_SCOPED, F_MONITOR, F_BINARIES, F_RETURN, F_AT_EXIT = 1, 2, 4, 8, 16, 32
EV_MONITOR, EV_ENFORCED, EV_TRUNC, EV_EXEMPT = 1, 2, 4, 8
CNT = ("matched", "posted", "enforced", "lost", "exempted")  # per hook, GS_CNT_* order (GS_NCNT of them)
ENFORCING = ("Sigkill", "Signal", "Override", "DenyConnect")  # the actions the agent is exempt from
FNV_BASIS, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv(data: bytes) -> int:
    h = FNV_BASIS
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


class Filter(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint8),
        ("op", ctypes.c_uint8),
        ("nvals", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("lens", ctypes.c_uint32 * 4),
        ("ints", (ctypes.c_int64 * 2) * 4),
        ("hash", ctypes.c_uint64 * 4),
    ]


class NsFilter(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("op", ctypes.c_uint8),
        ("n", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("vals", ctypes.c_uint32 * 4),
    ]


class Follow(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint8),
        ("op", ctypes.c_uint8),
        ("n", ctypes.c_uint8),
        ("pid_ns", ctypes.c_uint8),
        ("lens", ctypes.c_uint32 * 4),
        ("hash", ctypes.c_uint64 * 4),
        ("pids", ctypes.c_uint32 * 4),
    ]


class Sel(ctypes.Structure):
    _fields_ = [
        ("nfilters", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("signal", ctypes.c_uint8),
        ("post", ctypes.c_uint8),
        ("bin_op", ctypes.c_uint8),
        ("nbins", ctypes.c_uint8),
        ("pid_op", ctypes.c_uint8),
        ("npids", ctypes.c_uint8),
        ("pids", ctypes.c_uint32 * 4),
        ("rate_ns", ctypes.c_uint64),
        ("bin_lens", ctypes.c_uint32 * 4),
        ("bin_hash", ctypes.c_uint64 * 4),
        ("f", Filter * GS_FILTERS),
        ("bin_follow", ctypes.c_uint8),
        ("pid_follow", ctypes.c_uint8),
        ("nns", ctypes.c_uint8),
        ("cap_type", ctypes.c_uint8),
        ("cap_op", ctypes.c_uint8),
        ("nret", ctypes.c_uint8),
        ("rate_scope", ctypes.c_uint8),
        ("pid_ns", ctypes.c_uint8),
        ("cap_mask", ctypes.c_uint64),
        ("ns", NsFilter * GS_NS),
        ("ret", Filter),
    ]


class Quick(ctypes.Structure):
    _fields_ = [
        ("reg", ctypes.c_uint8),
        ("n", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 6),
        ("val", ctypes.c_uint64 * GS_QUICK),
        ("mask", ctypes.c_uint64 * GS_QUICK),
    ]


class HookCfg(ctypes.Structure):
    _fields_ = [
        ("policy_id", ctypes.c_uint32),
        ("hook_id", ctypes.c_uint16),
        ("nargs", ctypes.c_uint8),
        ("nsel", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("guard_fd", ctypes.c_uint8),
        ("guard_pos", ctypes.c_uint8),
        ("guard_addr", ctypes.c_uint8),
        ("arg_index", ctypes.c_uint8 * GS_ARGS),
        ("arg_kind", ctypes.c_uint8 * GS_ARGS),
        ("ret_kind", ctypes.c_uint8),
        ("hash_mask", ctypes.c_uint8),
        ("hash_len", ctypes.c_uint8 * GS_ARGS),
        ("copy_mask", ctypes.c_uint8),
        ("arg_off", ctypes.c_uint16 * GS_ARGS),
        ("arg_size", ctypes.c_uint8 * GS_ARGS),
        ("_pad3", ctypes.c_uint8),
        ("guard", ctypes.c_uint16),
        ("sel", Sel * GS_SELECTORS),
        ("quick", Quick),
    ]


class SysCfg(ctypes.Structure):
    _fields_ = [("n", ctypes.c_uint16), ("hooks", ctypes.c_uint16 * 8), ("_pad", ctypes.c_uint16)]


class Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("_pad0", ctypes.c_uint8 * 3),
        ("size", ctypes.c_uint32),
        ("ktime", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("proc_ktime", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("hook_id", ctypes.c_uint16),
        ("selector", ctypes.c_int8),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("nargs", ctypes.c_uint8),
        ("syscall_nr", ctypes.c_uint16),
        ("ret", ctypes.c_int64),
        ("sel_mask", ctypes.c_uint8),
        ("_pad2", ctypes.c_uint8 * 7),
        ("ints", ctypes.c_int64 * GS_ARGS),
        ("slen", ctypes.c_uint16 * GS_ARGS),
        ("_pad1", ctypes.c_uint16 * 3),
        ("str", (ctypes.c_char * GS_ARGSTR) * GS_ARGS),
    ]


class SockInfo(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_uint16),
        ("type", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("state", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("saddr6", ctypes.c_uint8 * 16),
        ("daddr6", ctypes.c_uint8 * 16),
    ]


class CredInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid")] + [
        ("securebits", ctypes.c_uint32),
        ("user_ns", ctypes.c_uint32),
        ("cap_inheritable", ctypes.c_uint64),
        ("cap_permitted", ctypes.c_uint64),
        ("cap_effective", ctypes.c_uint64),
    ]


def credinfo(raw: bytes) -> CredInfo:
    return from_bytes(CredInfo, raw)


class SkbInfo(ctypes.Structure):
    _fields_ = [
        ("s", SockInfo),
        ("len", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("hash", ctypes.c_uint32),
    ]


class AgentInfo(ctypes.Structure):
    """The agent's own process, exempt from the enforcing actions (tgid 0: nobody): its tgid and start time
    in clock ticks since boot, so a reused pid is not exempt."""

    _fields_ = [("tgid", c_uint32), ("_pad", c_uint32), ("start_ticks", c_uint64), ("tick_ns", c_uint64),
                ("helpers_cgroup", c_uint64)]


class ScopeKey(ctypes.Structure):
    _fields_ = [("policy_id", c_uint32), ("_pad", c_uint32), ("cgroup_id", c_uint64)]


def agent_info(tgid: int, start_ticks: int, tick_ns: int, helpers_cgroup: int = 0) -> bytes:
    return bytes(AgentInfo(tgid=tgid, start_ticks=start_ticks, tick_ns=tick_ns, helpers_cgroup=helpers_cgroup))


def scope_key(policy_id: int, cgroup_id: int) -> bytes:
    return bytes(ScopeKey(policy_id=policy_id, cgroup_id=cgroup_id))


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "gs_filter": Filter,
    "gs_nsf": NsFilter,
    "gs_follow": Follow,
    "gs_selector": Sel,
    "gs_hook": HookCfg,
    "gs_quick": Quick,
    "gs_sys": SysCfg,
    "gs_event": Event,
    "gs_sockinfo": SockInfo,
    "gs_credinfo": CredInfo,
    "gs_skbinfo": SkbInfo,
    "gs_agent": AgentInfo,
    "gs_scope_key": ScopeKey,
}
KERNEL_ONLY = {
    "gs_pend_key": "key of the entry-to-exit map of return hooks",
    "gs_hashes": "per-CPU scratch of string hashes",
}

_KIND_C = {ARG_FILEPTR: "FILEPTR", ARG_PATHPTR: "PATHPTR", ARG_BPRM: "BPRM", ARG_SOCK: "SOCK", ARG_CRED: "CRED",
           ARG_SKB: "SKB"}
DEFINES: dict[str, int] = {
    "MSG_GENERIC": MSG_GENERIC,
    "GS_HOOKS": GS_HOOKS,
    "GS_PER_SYSCALL": GS_PER_SYSCALL,
    "GS_ARGS": GS_ARGS,
    "GS_SELECTORS": GS_SELECTORS,
    "GS_FILTERS": GS_FILTERS,
    "GS_VALS": GS_VALS,
    "GS_STR": GS_STR,
    "GS_ARGSTR": GS_ARGSTR,
    "GS_BIN": GS_BIN,
    "GS_QUICK": GS_QUICK,
    "GS_NS": GS_NS,
    "GS_FOLLOW": GS_FOLLOW,
    **{f"GS_ARG_{_KIND_C.get(k, k.replace('_', '').upper())}": v for k, v in KIND.items()},
    "GS_REG_RET": REG_RET,
    "GS_REG_CRED": REG_CRED,
    "GS_REG_EXE": REG_EXE,
    "GS_REG_NONE": REG_NONE,
    **{f"GS_G_{c.upper()}": bit for c, bit in GUARD_BITS.items()},
    "GS_NR_LSM_FILE_OPEN": LSM_HOOKS["__lsm_file_open"],
    "GS_NR_LSM_FILE_PERMISSION": LSM_HOOKS["__lsm_file_permission"],
    "GS_NR_LSM_BPRM_CHECK": LSM_HOOKS["__lsm_bprm_check_security"],
    "GS_NR_DYN": NR_DYN,
    "GS_NR_MAX": NR_MAX,
    **{f"GS_OP_{op.upper()}": v for op, v in OPS.items() if op not in ("GreaterThan", "LessThan")},
    **{f"GS_BIN_{op.upper()}": v for op, v in BIN_OPS.items()},
    **{f"GS_ACT_{a.upper()}": v for a, v in ACTIONS.items()},
    **{f"GS_NS_{re.sub(r'(?<!^)(?=[A-Z])', '_', n).upper()}": v for n, v in NS_TYPES.items()},
    **{f"GS_F_{n}": v for n, v in (("ENABLED", F_ENABLED), ("SCOPED", F_SCOPED), ("MONITOR", F_MONITOR),
                                    ("BINARIES", F_BINARIES), ("RETURN", F_RETURN), ("AT_EXIT", F_AT_EXIT))},
    **{f"GS_EV_{n}": v for n, v in (("MONITOR", EV_MONITOR), ("ENFORCED", EV_ENFORCED), ("TRUNC", EV_TRUNC),
                                     ("EXEMPT", EV_EXEMPT))},
    **{f"GS_CNT_{'EXEMPT' if c == 'exempted' else c.upper()}": i for i, c in enumerate(CNT)},
    "GS_NCNT": len(CNT),
    "GS_FOLLOW_BIN": FOLLOW_BIN,
    "GS_FOLLOW_PID": FOLLOW_PID,
    "GS_FNV_BASIS": FNV_BASIS,
    "GS_FNV_PRIME": FNV_PRIME,
}


# x86_64 syscalls newer than the UAPI header Debian 12 ships (linux-libc-dev 6.1), as the kernel's syscall_64.tbl
# numbers them (each but map_shadow_stack checked on 6.18: `perf stat -e syscalls:sys_enter_NAME` counts one
# syscall(NR)); the header's own numbers win
NEWER_X86_64_SYSCALLS = {
    "uretprobe": 335, "uprobe": 336, "cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453,
    "futex_wake": 454, "futex_wait": 455, "futex_requeue": 456, "statmount": 457, "listmount": 458,
    "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462,
    "setxattrat": 463, "getxattrat": 464, "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467,
    "file_getattr": 468, "file_setattr": 469,
}

# sys_enter_<tracepoint> of a syscall whose __NR_ name differs (its SYSCALL_DEFINE name); checked with perf stat
SYSCALL_TRACEPOINT_NAMES = {"newfstat": "fstat", "newlstat": "lstat", "newstat": "stat", "newuname": "uname",
                            "sendfile64": "sendfile", "umount": "umount2"}


@lru_cache(maxsize=1)
def syscall_numbers() -> dict[str, int]:
    """x86_64 syscall name -> number, from the kernel's UAPI header, and the syscalls newer than it."""
    out: dict[str, int] = {}
    with open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") as f:
        for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", f.read()):
            out[m.group(1)] = int(m.group(2))
    for name, nr in NEWER_X86_64_SYSCALLS.items():
        out.setdefault(name, nr)
    for tracepoint, name in SYSCALL_TRACEPOINT_NAMES.items():  # a syscall whose tracepoint has another name
        if name in out:
            out.setdefault(tracepoint, out[name])
    out.update(LSM_HOOKS)
    out.update(KPROBES)
    return out


def host_ns(namespace: str) -> int:
    """The inode number of pid 1's namespace of a type (what Tetragon's ``host_ns`` means). Where pid 1's
    namespaces cannot be read (a sandbox that hides pid 1 from us), the agent's own: it runs in the host's."""
    try:
        return os.stat(f"/proc/1/ns/{NS_FILES[namespace]}").st_ino
    except PermissionError:
        return os.stat(f"/proc/self/ns/{NS_FILES[namespace]}").st_ino


def _encode_filter(f: Filter, op: str, kind: str, values: tuple[int | str, ...]) -> None:
    f.op = OPS[op]
    f.nvals = len(values)
    for v, val in enumerate(values):
        if kind in STRING_KINDS:
            b = str(val).encode()
            f.lens[v] = len(b)
            f.hash[v] = fnv(b[::-1] if op in ("Postfix", "NotPostfix") else b)
        elif op in ("DAddr", "NotDAddr", "SAddr", "NotSAddr"):
            net = ipaddress.IPv4Network(str(val), strict=False)
            f.ints[v][0] = int(net.network_address)
            f.ints[v][1] = int(net.netmask)
        elif op in ("DPort", "NotDPort", "SPort", "NotSPort", "InRange", "NotInRange"):
            lo, _, hi = str(val).partition(":")
            f.ints[v][0], f.ints[v][1] = _s64(int(lo)), _s64(int(hi or lo))
        elif op == "Family":
            f.ints[v][0] = int(val) if str(val).isdigit() else getattr(socket, str(val))
        else:
            f.ints[v][0] = _s64(int(val))


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def follow_slots_needed(hook: Hook) -> list[tuple[int, str]]:
    """(selector index, "bin" | "pid") of each followChildren / followForks filter of a hook."""
    out: list[tuple[int, str]] = []
    for si, sel in enumerate(hook.selectors):
        if sel.binaries and sel.binaries.follow_children:
            out.append((si, "bin"))
        if sel.pids and sel.pids.follow_forks:
            out.append((si, "pid"))
    return out


def encode_follow(hook: Hook, si: int, what: str) -> bytes:
    sel = hook.selectors[si]
    f = Follow()
    if what == "bin":
        assert sel.binaries is not None
        f.kind = FOLLOW_BIN
        f.op = BIN_OPS["Prefix" if sel.binaries.op in ("Prefix", "NotPrefix") else "In"]
        f.n = len(sel.binaries.values)
        for v, path in enumerate(sel.binaries.values):
            b = path.encode()
            f.lens[v] = len(b)
            f.hash[v] = fnv(b)
    else:
        assert sel.pids is not None
        f.kind = FOLLOW_PID
        f.op = BIN_OPS["In"]
        f.pid_ns = int(sel.pids.namespace_pid)
        f.n = len(sel.pids.values)
        for v, pid in enumerate(sel.pids.values):
            f.pids[v] = pid
    return bytes(f)


def encode_hook(
    hook: Hook,
    policy_id: int,
    hook_id: int,
    flags: int,
    follow: dict[tuple[int, str], int] | None = None,
    ns_resolver: Callable[[str], int] = host_ns,
) -> bytes:
    """The gs_hook record of a hook; ``follow`` maps (selector, "bin"|"pid") to its gs_mb bit."""
    h = HookCfg(policy_id=policy_id, hook_id=hook_id, nargs=len(hook.args), nsel=len(hook.selectors), flags=flags)
    if hook.ret is not None:
        if not hook.at_exit:  # evaluated at the exit anyway: the return value is in the event
            h.flags |= F_RETURN
        h.ret_kind = KIND[hook.ret.kind]
    if hook.at_exit:
        h.flags |= F_AT_EXIT
    encode_guard(h, hook.guard)
    for i, a in enumerate(hook.args):
        h.arg_index[i] = a.index
        h.arg_kind[i] = KIND[a.kind]
        h.arg_off[i] = a.size_index if a.kind in (ARG_BUF, ARG_CONNSOCK) else a.offset
        if a.at_return:
            h.copy_mask |= 1 << i
        h.arg_size[i] = a.size or INT_SIZES.get(a.tetragon_type, 0)  # registers: narrow ints are truncated
    for si, sel in enumerate(hook.selectors):
        s = h.sel[si]
        s.nfilters = len(sel.args)
        s.action = ACTIONS[sel.action]
        s.signal = 9 if sel.action == "Sigkill" else sel.signal  # Override: the errno
        s.post = int(sel.post)
        s.rate_ns = sel.rate_limit_ns
        s.rate_scope = RATE_SCOPES[sel.rate_scope]
        if sel.binaries:
            h.flags |= F_BINARIES
            s.bin_op = BIN_OPS[sel.binaries.op]
            s.nbins = len(sel.binaries.values)
            for v, path in enumerate(sel.binaries.values):
                b = path.encode()
                s.bin_lens[v] = len(b)
                s.bin_hash[v] = fnv(b)
            if sel.binaries.follow_children:
                s.bin_follow = 1 + (follow or {})[(si, "bin")]
        if sel.pids:
            s.pid_op = BIN_OPS[sel.pids.op]
            s.npids = len(sel.pids.values)
            s.pid_ns = int(sel.pids.namespace_pid)
            for v, pid in enumerate(sel.pids.values):
                s.pids[v] = pid
            if sel.pids.follow_forks:
                s.pid_follow = 1 + (follow or {})[(si, "pid")]
        s.nns = len(sel.namespaces)
        for ni, nsf in enumerate(sel.namespaces):
            e = s.ns[ni]
            e.type = NS_TYPES[nsf.namespace]
            e.op = BIN_OPS[nsf.op]
            e.n = len(nsf.values)
            for v, val in enumerate(nsf.values):
                e.vals[v] = ns_resolver(nsf.namespace) if val == "host_ns" else int(val)
        if sel.capabilities:
            s.cap_type = CAP_TYPES[sel.capabilities.type_]
            s.cap_op = BIN_OPS[sel.capabilities.op]
            s.cap_mask = sel.capabilities.mask
        if sel.ret is not None and hook.ret is not None:
            s.nret = 1
            _encode_filter(s.ret, sel.ret.op, hook.ret.kind, sel.ret.values)
        for fi, flt in enumerate(sel.args):
            f = s.f[fi]
            f.arg = flt.arg
            kind = hook.args[flt.arg].kind
            if kind in STRING_KINDS:
                if not h.hash_mask & (1 << flt.arg):
                    h.hash_len[flt.arg] = 1
                h.hash_mask |= 1 << flt.arg
                if flt.op in ("Postfix", "NotPostfix") or h.hash_len[flt.arg] == 0:
                    h.hash_len[flt.arg] = 0  # the tail hashes need the whole string
                else:
                    need = max(len(str(v).encode()) for v in flt.values) if flt.values else 1
                    h.hash_len[flt.arg] = max(h.hash_len[flt.arg], min(need, GS_ARGSTR - 1))
            _encode_filter(f, flt.op, kind, flt.values)
    encode_quick(h.quick, hook)
    return bytes(h)


def quick_values(hook: Hook) -> tuple[int, list[tuple[int, int]]] | None:
    """A hook's quick reject at a syscall's entry: the register of a user string every selector compares
    with Equal or Prefix (one such filter per selector: each is necessary for its selector to match), and
    (value, mask) of the first 8 bytes of every value, little-endian; None when the hook has none (no
    selectors, evaluated at the exit, a selector without such a filter, or more than GS_QUICK values)."""
    if not hook.selectors or hook.at_exit:
        return None
    arg: int | None = None
    words: list[tuple[int, int]] = []
    for sel in hook.selectors:
        flt = next((f for f in sel.args if f.op in ("Equal", "Prefix") and hook.args[f.arg].kind == ARG_STRING
                    and (arg is None or f.arg == arg)), None)
        if flt is None:
            return None
        arg = flt.arg
        for val in flt.values:
            b = str(val).encode()[:GS_STR]
            k = len(b) + 1 if flt.op == "Equal" and len(b) < 8 else min(len(b), 8)  # an Equal's NUL too
            word = int.from_bytes(b[:8].ljust(8, b"\0"), "little")
            mask = (1 << (8 * k)) - 1
            if (word & mask, mask) not in words:
                words.append((word & mask, mask))
    if arg is None or len(words) > GS_QUICK or hook.args[arg].index > 5:
        return None
    return hook.args[arg].index, words


def encode_quick(q: Quick, hook: Hook) -> None:
    qv = quick_values(hook)
    if qv is None:
        return
    q.reg = qv[0]
    q.n = len(qv[1])
    for v, (word, mask) in enumerate(qv[1]):
        q.val[v], q.mask[v] = word, mask


def encode_guard(h: HookCfg, g: Guard) -> None:
    h.guard = sum(GUARD_BITS[c] for c in g.checks)
    h.guard_fd, h.guard_pos, h.guard_addr = (REG_NONE if r < 0 else r for r in (g.fd, g.pos, g.addr))


def decode_event(buf: memoryview | bytes) -> Event:
    """An event as sent: the kernel sends only up to the last string slot in use (the rest is zero)."""
    return from_bytes(Event, buf)


# the head of struct gs_event the agent reads at once: type, size, ktime, pid, tid, proc_ktime, cgroup_id, hook_id
_HEAD = struct.Struct("<B3xIQIIQQH")
HEAD_SIZE = _HEAD.size
if [Event.ktime.offset, Event.pid.offset, Event.proc_ktime.offset, Event.cgroup_id.offset, Event.hook_id.offset] != [
    8, 16, 24, 32, 40
]:
    raise ImportError("struct gs_event's head moved: update _HEAD with it")


class EventRecord:
    """A tracing record as read from the ring: its bytes, and the head fields the agent needs at once (which
    process and hook); the whole event (``decode``) only when its JSON is built."""

    __slots__ = ("raw", "ktime", "pid", "tid", "proc_ktime", "cgroup_id", "hook_id")

    def __init__(self, raw: bytes) -> None:
        _, _, self.ktime, self.pid, self.tid, self.proc_ktime, self.cgroup_id, self.hook_id = _HEAD.unpack_from(raw)
        self.raw = raw

    def decode(self) -> Event:
        return decode_event(self.raw)


def decode_record(buf: memoryview | bytes) -> EventRecord:
    """A record's head now, the rest when needed (``EventRecord.decode``); struct.error when it is too short."""
    return EventRecord(bytes(buf))


def skbinfo(raw: bytes) -> SkbInfo:
    return from_bytes(SkbInfo, raw)


def sockinfo(raw: bytes) -> SockInfo:
    return from_bytes(SockInfo, raw)


def sockaddr(v: int) -> tuple[int, str, int]:
    v &= 0xFFFFFFFFFFFFFFFF
    return v >> 48, str(ipaddress.IPv4Address(v & 0xFFFFFFFF)), (v >> 32) & 0xFFFF
