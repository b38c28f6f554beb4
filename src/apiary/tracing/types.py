"""What the TracingPolicy compiler (pure) hands to the kernel-facing generic syscall sensor.

The sensor on a kernel without kprobes is one raw tracepoint program on `raw_syscalls/sys_enter`
driven by maps: per syscall number, the hooks that watch it; per hook, the argument specs and up to
five selectors evaluated in order (first match wins) with the action of the matching selector.
Fixed in-kernel limits (values beyond them are rejected at apply time, never truncated):
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ARGS = 5  # arguments read per hook
MAX_SELECTORS = 5
MAX_ARG_FILTERS = 5  # matchArgs entries per selector
MAX_VALUES = 4  # values per filter
MAX_STRING = 128  # bytes of a string value (Equal/Prefix/Postfix compare at most this many)
MAX_BINARY = 256  # bytes of a binary path in matchBinaries

# argument kinds the sensor can read at syscall entry
ARG_INT = "int"  # signed 64-bit register value (int, long, sint*, size_t read as int)
ARG_UINT = "uint"  # unsigned
ARG_STRING = "string"  # NUL-terminated user string (string, filename, path given as a user pointer)
ARG_FD = "fd"  # file descriptor resolved in the kernel to its file path
ARG_SOCKADDR = "sockaddr"  # user sockaddr (connect/bind): family, address, port
ARG_FILEPTR = "file_ptr"  # a struct file in kernel memory (LSM hooks), resolved to its full path


@dataclass(frozen=True)
class ArgSpec:
    index: int  # syscall argument index (0..5)
    kind: str  # ARG_*
    label: str = ""
    tetragon_type: str = ""  # the type the policy wrote (for the event's arg key: int_arg, string_arg, file_arg…)


@dataclass(frozen=True)
class ArgFilter:
    arg: int  # position in Hook.args
    op: str  # Equal NotEqual Prefix NotPrefix Postfix NotPostfix GT LT Mask InRange NotInRange
    # (sockaddr: SAddr? no: DAddr NotDAddr DPort NotDPort Family)
    values: tuple[int | str, ...]  # ints for int ops; strings for string ops; "a.b.c.d/n" for DAddr;
    # (lo, hi) pairs for InRange/NotInRange and port ranges are encoded as "lo:hi" strings


@dataclass(frozen=True)
class BinaryFilter:
    op: str  # In NotIn Prefix NotPrefix
    values: tuple[str, ...]
    follow_children: bool = False


@dataclass(frozen=True)
class PidFilter:
    op: str  # In NotIn
    values: tuple[int, ...]
    follow_forks: bool = False


@dataclass(frozen=True)
class Selector:
    args: tuple[ArgFilter, ...] = ()
    binaries: BinaryFilter | None = None
    pids: PidFilter | None = None
    action: str = "Post"  # Post NoPost Sigkill Signal DenyConnect Override
    signal: int = 0  # for Signal (Sigkill means 9); for Override the errno the hook returns
    rate_limit_ns: int = 0  # Post rateLimit
    post: bool = True  # whether an event is sent (NoPost: False; Sigkill/Signal send one too)


@dataclass(frozen=True)
class Hook:
    """One watched operation, realised on this kernel."""

    source: str  # what the user wrote, e.g. "kprobes[0] sys_write" or "tracepoints[1] syscalls/sys_enter_openat"
    event: str  # "process_kprobe" | "process_tracepoint" | "process_lsm"
    function_name: str  # for process_kprobe/lsm: e.g. "__x64_sys_write"; for tracepoints: "subsys/event"
    syscalls: tuple[str, ...]  # syscall names (without sys_ prefix) whose entry realises it, e.g. ("write",)
    args: tuple[ArgSpec, ...]
    selectors: tuple[Selector, ...]
    realisation: str  # human text: how it is realised and what that misses
    message: str = ""
    tags: tuple[str, ...] = ()


@dataclass
class CompiledTracingPolicy:
    name: str
    namespace: str  # "" for TracingPolicy (cluster-scoped)
    kind: str  # TracingPolicy | TracingPolicyNamespaced
    mode: str  # enforce | monitor (options policy-mode)
    pod_selector: dict[str, object] | None  # k8s label selector on endpoint labels, None = every process
    hooks: list[Hook] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown at apply time: realisations, limits
