"""What the TracingPolicy compiler (pure) hands to the kernel-facing generic syscall sensor.

The sensor on a kernel without kprobes is one raw tracepoint program on `raw_syscalls/sys_enter`
driven by maps: per syscall number, the hooks that watch it; per hook, the argument specs and up to
five selectors evaluated in order (first match wins) with the action of the matching selector.
Fixed in-kernel limits (values beyond them are refused at apply time, never truncated), the one Python
copy of tracing_abi.h's (apiary.sensors.tracing.abi names them as C does; a test checks the header):
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ARGS = 5  # arguments read per hook
MAX_SELECTORS = 5
MAX_ARG_FILTERS = 5  # matchArgs entries per selector
MAX_VALUES = 4  # values per filter
MAX_STRING = 128  # bytes of a string value (Equal/Prefix/Postfix compare at most this many)
MAX_BINARY = 256  # bytes of a binary path in matchBinaries
MAX_ARG_BYTES = 256  # bytes of a string argument kept in the event and hashed for matching (NUL included)
MAX_HOOKS = 64  # hooks the sensor holds across all policies
MAX_HOOKS_PER_SYSCALL = 7  # hooks watching one syscall

# argument kinds the sensor can read at syscall entry
ARG_INT = "int"  # signed 64-bit register value (int, long, sint*, size_t read as int)
ARG_UINT = "uint"  # unsigned
ARG_STRING = "string"  # NUL-terminated user string (string, filename, path given as a user pointer)
ARG_FD = "fd"  # file descriptor resolved in the kernel to its file path
ARG_SOCKADDR = "sockaddr"  # user sockaddr (connect/bind): family, address, port
ARG_FILEPTR = "file_ptr"  # a struct file in kernel memory (LSM hooks), resolved to its full path
ARG_DATALOC = "data_loc"  # tracepoint record: a __data_loc char[] string
ARG_CHARS = "chars"  # tracepoint record: a char array inside the record
ARG_KSTRING = "kstring"  # a char * in kernel memory
ARG_BUF = "buf"  # a user buffer of the length in another argument (char_buf with sizeArgIndex): bytes
ARG_SKB = "skb_ptr"  # a struct sk_buff in kernel memory (kprobes): its IPv4/TCP/UDP headers, len, mark…
ARG_PATHPTR = "path_ptr"  # a struct path in kernel memory (kprobes), resolved to its full path
ARG_BPRM = "bprm_ptr"  # a struct linux_binprm in kernel memory: its file's full path
ARG_CRED = "cred_ptr"  # a struct cred in kernel memory (kprobes): ids, securebits, capabilities, user namespace
ARG_SOCK = "sock_ptr"  # a struct sock in kernel memory (kprobes): family, type, protocol, both ends, state
ARG_SOCKETPTR = "socket_ptr"  # a struct socket in kernel memory (kprobes): its sock, as ARG_SOCK
ARG_KSOCKADDR = "ksockaddr"  # a struct sockaddr in kernel memory (kprobes): family, address, port
ARG_CONNSOCK = "conn_sock"  # connect(): the fd's socket (family, type, protocol, state) with the destination
# from the user's sockaddr (index: the sockaddr's register, REG_NONE: the socket's own; size_index: the fd's)
# register sources past the six syscall arguments (ArgSpec.index, Guard registers)
REG_RET = 6  # the syscall's return value (hooks evaluated at its exit)
REG_CRED = 7  # the current task's credentials (struct cred *) when the hook runs
REG_EXE = 8  # the current process's executable file (struct file *)
REG_NONE = 0xFF  # no register: ARG_CONNSOCK without a sockaddr (the socket as it is)
STRING_KINDS = (ARG_STRING, ARG_FD, ARG_FILEPTR, ARG_DATALOC, ARG_CHARS, ARG_KSTRING, ARG_BUF, ARG_PATHPTR, ARG_BPRM)
MAX_NAMESPACE_FILTERS = 4  # matchNamespaces entries per selector
MAX_FOLLOW = 64  # followChildren / followForks selectors across all policies


@dataclass(frozen=True)
class ArgSpec:
    index: int  # syscall argument index (0..5)
    kind: str  # ARG_*
    label: str = ""
    tetragon_type: str = ""  # the type the policy wrote (for the event's arg key: int_arg, string_arg, file_arg…)
    offset: int = 0  # tracepoint record: the field's offset
    size: int = 0  # tracepoint record: the field's size
    size_index: int = -1  # a second register the arg reads: char_buf its length, ARG_CONNSOCK the socket's fd
    at_return: bool = False  # returnCopy: the buffer is read when the call returns (length: the return value)


# Guard checks: what the kernel function a hook stands for needs to be called at all by the syscall, checked
# in the kernel on its objects before the selectors (tracing_abi.h GS_G_*).
GUARD_CHECKS = (
    "file",  # the fd is an open file fdget() accepts (not O_PATH)
    "read",  # ... with FMODE_READ and FMODE_CAN_READ
    "write",  # ... with FMODE_WRITE and FMODE_CAN_WRITE
    "pread",  # positional read: pos >= 0 and FMODE_PREAD
    "pwrite",  # positional write: pos >= 0 and FMODE_PWRITE
    "pos_opt",  # with pread/pwrite: pos -1 means the current position (preadv2/pwritev2)
    "socket",  # the fd is a socket
    "tcp",  # an unconnected TCP socket (AF_INET/AF_INET6) and a sockaddr of its family and length
    "ret_ok",  # at the exit: the syscall returned >= 0
    "addr",  # the user sockaddr (and its length, the next register) can be copied in
    "cred_new",  # at the exit: the task's credentials are new (commit_creds ran during the syscall)
)


@dataclass(frozen=True)
class Guard:
    checks: frozenset[str] = frozenset()  # of GUARD_CHECKS; all must hold
    fd: int = -1  # register of the fd (REG_RET: the return value)
    pos: int = -1  # register of the file position
    addr: int = -1  # register of the user sockaddr (its length: the next register)


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
    namespace_pid: bool = False  # isNamespacePID: compare the PID as the process's own PID namespace sees it


@dataclass(frozen=True)
class NamespaceFilter:
    namespace: str  # Uts Ipc Mnt Pid PidForChildren Net Time TimeForChildren Cgroup User
    op: str  # In NotIn
    values: tuple[str, ...]  # inode numbers, or "host_ns" (resolved on the node when applied)


@dataclass(frozen=True)
class CapabilityFilter:
    type_: str  # Effective Inheritable Permitted
    op: str  # In (has any of them) | NotIn (has none of them)
    mask: int  # bit n = capability number n


@dataclass(frozen=True)
class Selector:
    args: tuple[ArgFilter, ...] = ()
    binaries: BinaryFilter | None = None
    pids: PidFilter | None = None
    action: str = "Post"  # Post NoPost Sigkill Signal DenyConnect Override
    signal: int = 0  # for Signal (Sigkill means 9); for Override the errno the hook returns
    rate_limit_ns: int = 0  # Post rateLimit
    rate_scope: str = "thread"  # rateLimitScope: thread | process | global
    post: bool = True  # whether an event is sent (NoPost: False; Sigkill/Signal send one too)
    namespaces: tuple[NamespaceFilter, ...] = ()
    capabilities: CapabilityFilter | None = None
    ret: ArgFilter | None = None  # matchReturnArgs (arg field unused: the filter is on the return value)


@dataclass(frozen=True)
class Hook:
    """One watched operation, realised on this kernel."""

    source: str  # what the user wrote, e.g. "kprobes[0] sys_write" or "tracepoints[1] syscalls/sys_enter_openat"
    event: str  # "process_kprobe" | "process_tracepoint" | "process_lsm"
    function_name: str  # for process_kprobe/lsm: e.g. "__x64_sys_write"; for tracepoints: "subsys/event"
    # where it attaches: syscall names (sys_enter_<name>; sys_exit_<name> too for return hooks), or
    # "__kprobe_<function>", "__lsm_<hook>", "__tp_<subsys>/<event>", "__rawtp_<event>", "__uprobe_<path>:<symbol>"
    attach_points: tuple[str, ...]
    args: tuple[ArgSpec, ...]
    selectors: tuple[Selector, ...]
    realisation: str  # human text: how it is realised and what that misses
    message: str = ""
    tags: tuple[str, ...] = ()
    ret: ArgSpec | None = None  # return hooks: the return value's type; decided at exit
    path: str = ""  # uprobes: the binary (function_name is the symbol)
    guard: Guard = field(default_factory=Guard)  # checked in the kernel before the selectors
    at_exit: bool = False  # evaluated as a whole at the syscall's exit (sys_exit_<name>), args from REG_RET…


@dataclass
class CompiledTracingPolicy:
    name: str
    namespace: str  # "" for TracingPolicy (cluster-scoped)
    kind: str  # TracingPolicy | TracingPolicyNamespaced
    mode: str  # enforce | monitor (options policy-mode)
    pod_selector: dict[str, object] | None  # k8s label selector on endpoint labels, None = every process
    hooks: list[Hook] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown at apply time: realisations, limits
