"""``tetra getevents -o compact`` lines: process events (exec/exit) and hook events (process_kprobe ...).

All follow Tetragon's ``CompactEncoder.EventToString`` (pkg/encoder/encoder.go; FORMATS.md §4.6), including
its spacing when a field is empty (``"%s %s %s"``: an exec without arguments ends with a space). The
arch prefix is cut from ``function_name`` (``__x64_sys_write`` -> ``sys_write``), known functions get
their emoji and word (``📝 write``, ``📬 open``, ``🔌 connect``, ``🔑 setuid`` ...), any other kprobe is
``❓ syscall <function_name>``, a tracepoint ``⁉️ tracepoint <subsys> <event>`` and an LSM hook
``🔒 LSM <hook>``. Go's formatting is kept, including the double space a missing field leaves and
the zero a missing int prints.

apiary's connect() realisation of ``tcp_connect`` carries a ``sock_arg`` read at connect() entry: the
socket's family, type and protocol with the destination of the user's sockaddr; the source is not chosen
yet (``0.0.0.0:0`` unless the socket was bound). A ``sockaddr_arg`` line reads ``tcp -> ADDR:PORT``.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from apiary.observe.clock import format_rfc3339_ns, parse_rfc3339_ns
from apiary.observe.colour import paint
from apiary.observe.tetragon.events import event_kind

__all__ = [
    "COMPACT_FORMATTERS",
    "compact",
    "head",
    "kprobe_line",
    "lsm_line",
    "process_info",
    "syscall_name",
    "tracepoint_line",
    "uprobe_line",
    "usdt_line",
    "with_timestamp",
]

_ARCH = re.compile(r"^(__x64_|__ia32_|__arm64_|__riscv_|__s390x_)(sys_.*)$")
# clone flags -> namespace names for sys_setns (encoder.go nsId)
_NS = {0: "any", 0x2000000: "cgroup", 0x8000000: "ipc", 0x40000000: "net", 0x20000: "mnt", 0x20000000: "pid",
       0x80: "time", 0x10000000: "user", 0x4000000: "uts"}


# --- process events (exec / exit) ---------------------------------------------------------------


def head(emoji: str, word: str, color: bool, colour: str = "blue") -> str:
    """``<emoji> <word padded to 7>``."""
    return paint(f"{emoji} {word:<7}", colour, color)


def process_info(event: dict[str, Any], proc: dict[str, Any], color: bool) -> str:
    """``<where> <binary>``: namespace/pod for pod processes, else the node name."""
    pod = proc.get("pod")
    where = f"{pod.get('namespace', '')}/{pod.get('name', '')}" if pod else event.get("node_name", "")
    return f"{paint(where, 'green', color)} {paint(proc.get('binary', ''), 'magenta', color)}"


def _exec_line(event: dict[str, Any], body: dict[str, Any], color: bool) -> str:
    proc = body.get("process") or {}
    args = paint(proc.get("arguments", ""), "cyan", color)
    return f"{head('🚀', 'process', color)} {process_info(event, proc, color)} {args}"


def _exit_line(event: dict[str, Any], body: dict[str, Any], color: bool) -> str:
    proc = body.get("process") or {}
    args = paint(proc.get("arguments", ""), "cyan", color)
    status = paint(str(body.get("signal") or body.get("status", 0)), "red", color)
    return f"{head('💥', 'exit', color)} {process_info(event, proc, color)} {args} {status}"


# --- hook events -------------------------------------------------------------------------------


def _dict(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: object) -> list[Any]:
    return v if isinstance(v, list) else []


def _cut_prefix(name: str) -> str:
    m = _ARCH.match(name)
    return m.group(2) if m else name


def _arg(args: list[Any], i: int) -> dict[str, Any] | None:
    if len(args) > i and isinstance(args[i], dict):
        return args[i]
    return None


def _file(a: dict[str, Any] | None, key: str = "file_arg") -> str:
    v = (a or {}).get(key)
    return str(v.get("path", "")) if isinstance(v, dict) else ""


def _string(a: dict[str, Any] | None) -> str:
    v = (a or {}).get("string_arg")
    return v if isinstance(v, str) else ""


def _int(a: dict[str, Any] | None, key: str = "int_arg") -> int:
    v = (a or {}).get(key)
    try:
        return int(v) if v is not None else 0
    except (TypeError, ValueError):
        return 0


def _sock(a: dict[str, Any] | None) -> str:
    s = (a or {}).get("sock_arg")
    if isinstance(s, dict):
        return f"tcp {s.get('saddr', '')}:{int(s.get('sport', 0))} -> {s.get('daddr', '')}:{int(s.get('dport', 0))}"
    sa = (a or {}).get("sockaddr_arg")
    if isinstance(sa, dict):
        return f"tcp -> {sa.get('addr', '')}:{int(sa.get('port', 0))}"
    return "tcp :0 -> :0"


def _body(event: dict[str, Any], key: str) -> dict[str, Any]:
    return _dict(event.get(key))


def kprobe_line(event: dict[str, Any], color: bool = False) -> str:
    """The compact line of a ``process_kprobe`` event (a GetEventsResponse dict)."""
    body = _body(event, "process_kprobe")
    proc = _dict(body.get("process"))
    info = process_info(event, proc, color)
    fn = str(body.get("function_name", ""))
    args = _list(body.get("args"))
    cyan = lambda s: paint(s, "cyan", color)  # noqa: E731
    sc = _cut_prefix(fn)
    if sc in ("sys_write", "sys_read"):
        ev = head("📝", "write", color) if sc == "sys_write" else head("📚", "read", color)
        a0 = _arg(args, 0)
        file = cyan(_file(a0)) if a0 and "file_arg" in a0 else ""
        # Tetragon's layout puts the count third (fd, buf, count); a policy may declare fewer args
        size = _arg(args, 2) or next((a for a in args if isinstance(a, dict) and "size_arg" in a), None)
        nbytes = cyan(f"{_int(size, 'size_arg')} bytes") if size is not None else ""
        return f"{ev} {info} {file} {nbytes}"
    if sc == "fd_install":
        a1 = _arg(args, 1)
        return f"{head('📬', 'open', color)} {info} {cyan(_file(a1)) if a1 and 'file_arg' in a1 else ''}"
    if sc in ("sys_openat", "sys_open"):
        word = "openat" if sc == "sys_openat" else "open"
        # Tetragon reads the path from the second arg; a policy that declares only the path has it first
        a1 = _arg(args, 1) or next((a for a in args if isinstance(a, dict) and "string_arg" in a), None)
        return f"{head('📬️', word, color)} {info} {cyan(_string(a1)) if a1 is not None else ''}"
    if sc == "sys_close":
        a0 = _arg(args, 0)
        return f"{head('📪', 'close', color)} {info} {cyan(_file(a0)) if a0 and 'file_arg' in a0 else ''}"
    if sc in ("sys_mount", "sys_pivot_root"):
        word = "mount" if sc == "sys_mount" else "pivot_root"
        a0, a1 = _arg(args, 0), _arg(args, 1)
        src = cyan(_string(a0)) if a0 is not None else ""
        dst = cyan(_string(a1)) if a1 is not None else ""
        return f"{head('💾', word, color)} {info} {src} {dst}"
    if sc == "sys_setuid":
        a0 = _arg(args, 0)
        return f"{head('🔑', 'setuid', color)} {info} {cyan(str(_int(a0))) if a0 is not None else ''}"
    if sc == "sys_clock_settime":
        return f"{head('⏰', 'clock_settime', color)} {info}"
    if sc == "proc_exec_connector":
        return f"{head('🔧', 'proc_exec_connector', color)} {info}"
    if sc == "sys_setns":
        a1 = _arg(args, 1)
        return f"{head('🔧', 'setns', color)} {info} {_NS.get(_int(a1), '') if a1 is not None else ''}"
    if sc in ("tcp_connect", "tcp_close", "tcp_sendmsg"):
        emoji, word = {"tcp_connect": ("🔌", "connect"), "tcp_close": ("\U0001f9f9", "close"),
                       "tcp_sendmsg": ("📤", "sendmsg")}[sc]
        a0 = _arg(args, 0)
        sock = cyan(_sock(a0)) if a0 is not None else ""
        if sc == "tcp_sendmsg":
            return f"{head(emoji, word, color)} {info} {sock} bytes {_int(_arg(args, 1))}"
        return f"{head(emoji, word, color)} {info} {sock}"
    if sc == "bpf_check":
        a0 = _arg(args, 0)
        ba = (a0 or {}).get("bpf_attr_arg") or {}
        attr = cyan(f"{ba.get('ProgType', '')} {ba.get('ProgName', '')} instruction count {int(ba.get('InsnCnt', 0))}"
                    ) if a0 is not None else ""
        return f"{head('🐝', 'bpf_load', color)} {info} {attr}"
    if sc == "security_perf_event_alloc":
        a0 = _arg(args, 0)
        pe = (a0 or {}).get("perf_event_arg") or {}
        attr = cyan(f"{pe.get('Type', '')} {pe.get('KprobeFunc', '')}") if a0 is not None else ""
        return f"{head('🐝', 'perf_event_alloc', color)} {info} {attr}"
    if sc in ("security_bpf_map_alloc", "security_bpf_map_create"):
        a0 = _arg(args, 0)
        m = (a0 or {}).get("bpf_map_arg") or {}
        attr = cyan(f"{m.get('MapType', '')} {m.get('MapName', '')} key size {int(m.get('KeySize', 0))} value size "
                    f"{int(m.get('ValueSize', 0))} max entries {int(m.get('MaxEntries', 0))}") if a0 is not None else ""
        return f"{head('🗺', 'bpf_map_create', color)} {info} {attr}"
    if sc == "security_file_permission":
        ev, attr = head("❓", "security_file_permission", color), ""
        a0, a1 = _arg(args, 0), _arg(args, 1)
        if a0 is not None and a1 is not None:
            mask = _int(a1)
            if mask == 0x02:
                ev = head("📝", "write", color)
            elif mask == 0x04:
                ev = head("📚", "read", color)
            attr = cyan(_file(a0))
        return f"{ev} {info} {attr}"
    if sc == "security_mmap_file":
        ev, attr = head("❓", "security_mmap_file", color), ""
        a0, a1 = _arg(args, 0), _arg(args, 1)
        if a0 is not None and a1 is not None:
            prot = _int(a1, "uint_arg")
            tag = "mmap-" + "".join(c for bit, c in ((1, "r"), (2, "w"), (4, "x")) if prot & bit)
            ev, attr = head("📝", tag, color), cyan(_file(a0))
        return f"{ev} {info} {attr}"
    if sc in ("security_path_truncate", "security_file_truncate"):
        ev, attr = head("❓", sc, color), ""
        a0 = _arg(args, 0)
        if a0 is not None:
            attr = cyan(_file(a0, "path_arg" if sc == "security_path_truncate" else "file_arg"))
            ev = head("📝", "truncate", color)
        return f"{ev} {info} {attr}"
    return f"{head('❓', 'syscall', color)} {info} {fn}"


@cache
def _syscall_table() -> dict[int, str]:
    """x86_64/arm64 syscall numbers from the kernel headers when installed (empty otherwise)."""
    out: dict[int, str] = {}
    for path in sorted(glob.glob("/usr/include/*/asm/unistd_64.h")) + ["/usr/include/asm/unistd_64.h"]:
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r"#define __NR_(\w+)\s+(\d+)", line)
                    if m:
                        out.setdefault(int(m.group(2)), m.group(1))
        except OSError:
            continue
        if out:
            break
    return out


def syscall_name(nr: int) -> str:
    """The name of syscall ``nr`` of this architecture ("" when unknown)."""
    return _syscall_table().get(nr, "")


def tracepoint_line(event: dict[str, Any], color: bool = False) -> str:
    """The compact line of a ``process_tracepoint`` event."""
    body = _body(event, "process_tracepoint")
    proc = _dict(body.get("process"))
    info = process_info(event, proc, color)
    subsys, ev = str(body.get("subsys", "")), str(body.get("event", ""))
    if f"{subsys}/{ev}" == "raw_syscalls/sys_enter":
        args = _list(body.get("args"))
        a0 = _arg(args, 0) or {}
        name = "unknown"
        nr: int | None = None
        abi = ""
        if "long_arg" in a0:
            nr = _int(a0, "long_arg")
        elif isinstance(a0.get("syscall_id"), dict):
            nr, abi = int(a0["syscall_id"].get("id", -1)), str(a0["syscall_id"].get("abi", ""))
        if nr is not None and syscall_name(nr):
            name = syscall_name(nr) if abi in ("", "x64", "arm64") else f"{abi}/{syscall_name(nr)}"
        return f"{head('☎ ', 'syscall', color)} {info} {name}"
    return f"{head('⁉️', 'tracepoint', color)} {info} {subsys} {ev}"


def lsm_line(event: dict[str, Any], color: bool = False) -> str:
    """The compact line of a ``process_lsm`` event."""
    body = _body(event, "process_lsm")
    proc = _dict(body.get("process"))
    return f"{head('🔒', 'LSM', color)} {process_info(event, proc, color)} {body.get('function_name', '')}"


def uprobe_line(event: dict[str, Any], color: bool = False) -> str:
    """The compact line of a ``process_uprobe`` event."""
    body = _body(event, "process_uprobe")
    proc = _dict(body.get("process"))
    return f"{head('🕵️', 'uprobe', color)} {process_info(event, proc, color)} {body.get('path', '')} " \
        f"{body.get('symbol', '')}"


def usdt_line(event: dict[str, Any], color: bool = False) -> str:
    """The compact line of a ``process_usdt`` event."""
    body = _body(event, "process_usdt")
    proc = _dict(body.get("process"))
    return f"{head('🕵️', 'usdt', color)} {process_info(event, proc, color)} {body.get('path', '')} " \
        f"{body.get('provider', '')} {body.get('name', '')}"


# --- any event ---------------------------------------------------------------------------------

CompactFormatter = Callable[[dict[str, Any], dict[str, Any], bool], str]

# event key -> formatter(event, body, color); a new event kind adds its entry here.
COMPACT_FORMATTERS: dict[str, CompactFormatter] = {
    "process_exec": _exec_line,
    "process_exit": _exit_line,
    "process_kprobe": lambda event, body, color: kprobe_line(event, color),
    "process_tracepoint": lambda event, body, color: tracepoint_line(event, color),
    "process_lsm": lambda event, body, color: lsm_line(event, color),
    "process_uprobe": lambda event, body, color: uprobe_line(event, color),
    "process_usdt": lambda event, body, color: usdt_line(event, color),
}


def compact(event: dict[str, Any], color: bool = False) -> str:
    """One ``tetra getevents -o compact`` line for a Tetragon JSON event dict."""
    kind = event_kind(event) or "unknown"
    body = _body(event, kind)
    fmt = COMPACT_FORMATTERS.get(kind)
    if fmt is not None:
        return fmt(event, body, color)
    line = head("❓", kind, color)
    proc = body.get("process")
    return f"{line} {process_info(event, proc, color)}" if isinstance(proc, dict) else line


def with_timestamp(line: str, event: dict[str, Any]) -> str:
    """Prefix a compact line with the event time (UTC, 9 fractional digits), as ``--timestamps``."""
    t = event.get("time")
    try:
        ts = format_rfc3339_ns(parse_rfc3339_ns(t) if t else 0)
    except ValueError:
        ts = str(t)
    return f"{ts} {line}"
