"""Compile a loaded TracingPolicy into hooks the generic sensor realises (pure; no kernel, no root).

The sensor (``bpf/gsys.bpf.c``) evaluates the same hook tables and selectors from several attach points:
syscall tracepoints (``sys_enter_<name>``, plus ``sys_exit_<name>`` for return hooks), any other tracepoint
(fields read from the record by offset), kprobes and kretprobes, uprobes and uretprobes, and BPF-LSM
programs. Every hook is realised in one of the ways below and each realisation is reported in
``CompiledTracingPolicy.notes`` (shown at apply time); a hook or field with no faithful realisation
refuses the whole policy with a :class:`PolicyError` naming the field. ``Hook.syscalls`` names the
attach points (see :mod:`apiary.tracing.types`).

1. ``kprobes`` with ``syscall: true`` and ``call: sys_X`` (``__x64_sys_X`` too), and ``tracepoints``
   ``syscalls/sys_enter_X``: the entry of syscall X. Args by index are the syscall's arguments (for a
   tracepoint, field index 5 + n is argument n; 0-3 are the common fields, 4 the syscall number).
   The event's ``function_name`` is ``__x64_sys_X`` (tracepoints: ``syscalls/sys_enter_X``). With
   ``return: true`` the hook is completed at ``sys_exit_X``: the return value is read there and
   ``matchReturnArgs`` and the action are decided then.
2. Where the kernel has kprobes (``KernelFeatures.kprobes``), the kernel functions of the table below
   (and any other, args read as the policy's types) are kprobes on the function itself (a ``struct file``
   argument is resolved to its full path, a ``struct sock``/``struct socket`` read as a sock_arg, a
   ``struct cred`` as credentials, a ``struct linux_binprm`` as its file's path); ``return: true`` adds a
   kretprobe. Where the kernel has BPF-LSM (``KernelFeatures.lsm``), the lsmhooks ``file_open``,
   ``file_permission`` and ``bprm_check_security`` (the binprm resolved to its file's path) are BPF-LSM
   programs: the only realisation where ``Override`` (fail the operation with ``argError``) is possible.
3. Otherwise a few kernel functions (``syscall: false``) and LSM hooks, on the syscalls that call them. Each
   realisation carries a guard (:class:`~apiary.tracing.types.Guard`) the sensor checks on the kernel objects
   before the selectors, so a hook fires only where the kernel calls the function: the fd's file (valid, not
   O_PATH, its FMODE_* bits), the fd's socket (family, type, protocol, state), the user's sockaddr, the return
   value, the task's credentials. Some are evaluated as a whole at the syscall's exit (``Hook.at_exit``), their
   args taken from the return value (``REG_RET``) or the task (``REG_CRED``):

   ============================== =========================================== ==============================
   kernel function / LSM hook      syscalls (guard)                             args (kernel arg -> source)
   ============================== =========================================== ==============================
   vfs_write                       write (a valid fd) | pwrite64 (and pos >= 0  0 file -> fd 0 (its full
                                   on a seekable file); not writev & co., which path); 1 buf -> 1; 2 count
                                   never call it                                -> 2
   vfs_read                        read | pread64 (as vfs_write)                0 file -> fd 0; 2 count -> 2;
                                                                                1 buf: refused
   security_file_permission        write writev | pwrite64 pwritev | pwritev2   0 file -> fd 0; 1 mask: a
                                   (the file opened for writing; positional:    constant per syscall (MAY_WRITE
                                   pos >= 0, seekable), read family alike       2, MAY_READ 4)
   fd_install                      exit of open creat openat openat2            0 fd -> the return value; 1
                                   open_by_handle_at (returned >= 0)            file -> its file (full path)
   security_file_open, lsm         the same exits, not for O_PATH opens         0 file -> the returned fd's
   file_open                                                                    file (full path)
   tcp_connect                     connect (an unconnected AF_INET/AF_INET6     0 sock -> the fd's socket with
                                   TCP socket, a sockaddr of its family)        the sockaddr's destination
   security_socket_connect         connect (a socket fd, a copyable sockaddr)   1 sockaddr -> 1; 2 addrlen ->
                                                                                2; 0 socket: not available
   commit_creds                    exit of set*id, setfs*id, setgroups, capset, 0 cred -> the task's
                                   unshare, setns, prctl, keyctl, add_key,      credentials then
                                   request_key, execve(at) (the credentials
                                   changed during the call)
   security_bprm_check, lsm        exit of execve execveat (returned 0: the     0 linux_binprm -> the executed
   bprm_check_security             new program, before its first instruction)   file (full path; a script's
                                                                                interpreter)
   __sys_X                         X                                            same indices
   ============================== =========================================== ==============================

   No row reads a user path string any more: files are resolved in the kernel from an fd (the syscall's
   argument or its return value) or the process's executable, to their full path. What a realisation
   still misses is its ``misses`` text, shown at apply time and in ``tp list``. An arg marked "not
   available" is left out of events (noted) and a filter on it refuses the policy. An arg that exists
   on only some of the syscalls restricts a monitoring policy to those syscalls (noted) and refuses an
   enforcing one (the others would be a bypass). With ``return: true`` the value read is the syscall's
   return value (at its exit): for vfs_write, vfs_read and __sys_X it means the function's; for the
   LSM-like hooks and tcp_connect it means something else (noted, and ``matchReturnArgs`` on it refused);
   for fd_install (void) and commit_creds it is refused. Hooks decided at the exit act after the operation.
4. Any other tracepoint (``syscalls/sys_exit_*`` and ``raw_syscalls/sys_exit`` included): args by field
   index in the tracepoint's format file (``<tracefs>/events/S/E/format``, common fields included), read
   from the record by offset and size: integer fields, ``__data_loc char[]`` and ``char[N]`` strings,
   ``char *`` kernel strings and pointers read as integers.
5. ``raw_syscalls/sys_enter``: only its ``id`` (field 4) may be read, and only filtered by syscall
   name through a list (``InMap list:NAME``/``Equal``): the filter becomes the set of syscalls watched
   (every selector must name the same set, or none). The id is the event's syscall number.
6. ``uprobes`` by symbol (one hook per symbol of an absolute path): args from the first five argument
   registers (integers, user strings, fds); ``return: true`` adds a uretprobe.

Selectors: ``matchArgs``, ``matchBinaries`` (``followChildren``), ``matchPIDs`` (``followForks``),
``matchNamespaces``, ``matchCapabilities``, ``matchReturnArgs`` (return hooks), and the actions Post,
NoPost, Sigkill, Signal, DenyConnect (hooks realised on connect()) and Override (BPF-LSM hooks). On a
return hook the action is taken when the call returns, after its effect.

Everything else - other kernel functions and LSM hooks, raw tracepoints, USDTs, fentries, the loader,
enforcers, offsets/addresses of uprobes - is refused. Values beyond the sensor's fixed limits
(:mod:`apiary.tracing.types`) are refused with the field path and the limit, never truncated.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from apiary.policy.selectors import NAMESPACE_KEY

from .models import (
    CAPABILITIES,
    INT_TYPES,
    UNSIGNED_TYPES,
    ActionSelector,
    ArgSelector,
    HookSpec,
    KProbeArg,
    KProbeSelector,
    KProbeSpec,
    LsmHookSpec,
    PolicyError,
    Problem,
    TracepointSpec,
    TracingPolicyBase,
    UProbeSpec,
    parse_int,
    parse_port_range,
    resolve_arg,
)
from .types import (
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
    STRING_KINDS,
    ArgFilter,
    ArgSpec,
    BinaryFilter,
    CapabilityFilter,
    CompiledTracingPolicy,
    Guard,
    Hook,
    NamespaceFilter,
    PidFilter,
    Selector,
)

__all__ = [
    "KERNEL_FUNCTION_NAMES",
    "MAX_HOOKS",
    "MAX_HOOKS_PER_SYSCALL",
    "X86_64_SYSCALLS",
    "KernelFeatures",
    "TpField",
    "compile_tracing_policy",
    "features_from_tracefs",
    "syscalls_from_tracefs",
    "tracepoint_fields",
]


# Syscalls of x86_64 that have a syscalls/sys_enter_* tracepoint (Linux 6.18); used to recognise the seed
# article's bare syscall names and as a realistic set in tests. Real compilation uses KernelFeatures.syscalls.
X86_64_SYSCALLS = frozenset(
    """
accept accept4 access acct add_key adjtimex alarm arch_prctl bind bpf brk cachestat capget capset chdir
chmod chown chroot clock_adjtime clock_getres clock_gettime clock_nanosleep clock_settime clone clone3
close close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl
epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fallocate fanotify_init fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown
fchownat fcntl fdatasync fgetxattr file_getattr file_setattr flistxattr flock fork fremovexattr
fsconfig fsetxattr fsmount fsopen fspick fstatfs fsync ftruncate futex futex_requeue futex_wait
futex_waitv futex_wake futimesat get_mempolicy get_robust_list getcpu getcwd getdents getdents64
getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresuid getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday
getuid getxattr getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel
io_destroy io_getevents io_pgetevents io_setup io_submit io_uring_enter io_uring_register
io_uring_setup ioctl ioperm iopl ioprio_get ioprio_set kcmp keyctl kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules
lsm_set_self_attr madvise mbind membarrier memfd_create memfd_secret migrate_pages mincore mkdir
mkdirat mknod mknodat mlock mlock2 mlockall mmap modify_ldt mount mount_setattr move_mount move_pages
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap mseal msgctl
msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstat newfstatat
newlstat newstat newuname open open_by_handle_at open_tree open_tree_attr openat openat2 pause
perf_event_open personality pidfd_getfd pidfd_open pidfd_send_signal pipe pipe2 pivot_root pkey_alloc
pkey_free pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 process_madvise
process_mrelease process_vm_readv process_vm_writev pselect6 ptrace pwrite64 pwritev pwritev2 quotactl
quotactl_fd read readahead readlink readlinkat readv reboot recvfrom recvmmsg recvmsg remap_file_pages
removexattr removexattrat rename renameat renameat2 request_key restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
sched_getparam sched_getscheduler sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop sendfile64 sendmmsg
sendmsg sendto set_mempolicy set_mempolicy_home_node set_robust_list set_tid_address setdomainname
setfsgid setfsuid setgid setgroups sethostname setitimer setns setpgid setpriority setregid setresgid
setresuid setreuid setrlimit setsid setsockopt settimeofday setuid setxattr setxattrat shmat shmctl
shmdt shmget shutdown sigaltstack signalfd signalfd4 socket socketpair splice statfs statmount statx
swapoff swapon symlink symlinkat sync sync_file_range syncfs sysfs sysinfo syslog tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime
timerfd_settime times tkill truncate umask umount unlink unlinkat unshare uprobe uretprobe userfaultfd
ustat utime utimensat utimes vfork vhangup vmsplice wait4 waitid write writev
""".split()
)


# --- kernel features -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelFeatures:
    """What the running kernel lets apiary attach (found by preflight / probing at start-up)."""

    kprobes: bool
    fentry: bool
    lsm: bool
    override: bool  # kernel error injection (bpf_override_return)
    syscalls: frozenset[str] = frozenset()  # syscall names with a syscalls/sys_enter_<name> tracepoint
    tracefs: str = ""  # the tracefs root (tracepoint format files); "" = unknown
    raw_tp_cookie: bool = False  # raw tracepoints take attach cookies (Linux 6.10+): `raw: true` tracepoints

    def describe(self) -> str:
        """E.g. ``no kprobes (CONFIG_KPROBES off), fentry/BPF-LSM refused``."""
        parts = ["kprobes" if self.kprobes else "no kprobes (CONFIG_KPROBES off)"]
        refused = [n for n, ok in (("fentry", self.fentry), ("BPF-LSM", self.lsm)) if not ok]
        if refused:
            parts.append("/".join(refused) + " refused")
        else:
            parts.append("fentry and BPF-LSM")
        return ", ".join(parts)


def syscalls_from_tracefs(root: str = "/sys/kernel/tracing") -> frozenset[str]:
    """Syscall names that have a ``syscalls/sys_enter_<name>`` tracepoint; empty when tracefs is unreadable."""
    try:
        names = os.listdir(os.path.join(root, "events", "syscalls"))
    except OSError:
        return frozenset()
    return frozenset(n.removeprefix("sys_enter_") for n in names if n.startswith("sys_enter_"))


def features_from_tracefs(
    root: str = "/sys/kernel/tracing",
    *,
    kprobes: bool | None = None,
    fentry: bool = False,
    lsm: bool = False,
    override: bool = False,
) -> KernelFeatures:
    """KernelFeatures with the syscalls listed by tracefs (empty when unreadable).

    ``kprobes`` defaults to whether tracefs has ``kprobe_events`` (CONFIG_KPROBE_EVENTS); fentry, BPF-LSM
    and error injection cannot be seen in tracefs: pass what a load attempt (preflight) found. ``tracefs`` is
    ``root`` when it has an ``events`` directory (the tracepoints' format files), else ""."""
    if kprobes is None:
        kprobes = os.path.exists(os.path.join(root, "kprobe_events"))
    return KernelFeatures(
        kprobes=kprobes,
        fentry=fentry,
        lsm=lsm,
        override=override,
        syscalls=syscalls_from_tracefs(root),
        tracefs=root if os.path.isdir(os.path.join(root, "events")) else "",
        raw_tp_cookie=kernel_at_least(6, 10),
    )


def kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether the running kernel (or ``release``, e.g. ``6.18.44-fc``) is at least major.minor."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


@dataclass(frozen=True)
class TpField:
    """One field of a tracepoint's record, as its tracefs format file describes it."""

    name: str
    type_: str  # the C type as written, e.g. "unsigned short", "__data_loc char[]", "char[16]", "const char *"
    offset: int
    size: int
    signed: bool
    is_data_loc: bool = False  # __data_loc T[]: a u32 (length << 16 | offset) to data later in the record
    is_array: bool = False  # T name[N] inside the record
    array_len: int = 0  # N (0 when not a number)
    is_pointer: bool = False

    @property
    def element(self) -> str:
        """The C type without __data_loc, const/volatile, array brackets and pointer stars (e.g. "char")."""
        t = self.type_.removeprefix("__data_loc").split("[", 1)[0].replace("*", " ")
        return " ".join(w for w in t.split() if w not in ("const", "volatile"))


_FORMAT_FIELD = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);(?:\s*signed:(?P<signed>\d+);)?"
)
_FIELD_DECL = re.compile(r"^(?P<type>.*?)\s*(?P<name>[A-Za-z_]\w*)\s*(?:\[(?P<len>[^\]]*)\])?$")
_TP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def _parse_format(text: str) -> list[TpField]:
    out: list[TpField] = []
    for line in text.splitlines():
        m = _FORMAT_FIELD.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        d = _FIELD_DECL.match(decl)
        if not d:
            continue
        ctype, name, n = d.group("type").strip(), d.group("name"), d.group("len")
        data_loc = ctype.startswith("__data_loc")
        is_array = n is not None and not data_loc
        out.append(
            TpField(
                name=name,
                type_=f"{ctype}[{n}]" if is_array else ctype,
                offset=int(m.group("offset")),
                size=int(m.group("size")),
                signed=m.group("signed") == "1",
                is_data_loc=data_loc,
                is_array=is_array,
                array_len=int(n) if is_array and n and n.isdigit() else 0,
                is_pointer="*" in ctype,
            )
        )
    return out


def tracepoint_fields(root: str, subsys: str, event: str) -> list[TpField] | None:
    """The fields of tracepoint ``subsys/event`` in record order (common fields first), read from
    ``<root>/events/<subsys>/<event>/format``; None when the file cannot be read (no such tracepoint).

    Tetragon's tracepoint arg ``index`` is a position in this list."""
    if not root or not _TP_NAME.match(subsys) or not _TP_NAME.match(event) or ".." in subsys + event:
        return None
    try:
        with open(os.path.join(root, "events", subsys, event, "format")) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    return _parse_format(text)


def _arch_prefix() -> str:
    return {"aarch64": "__arm64_", "arm64": "__arm64_"}.get(platform.machine(), "__x64_")


# --- the realisation table -------------------------------------------------------------------------

# classes of kernel arguments a mapped function has at the syscall, and the Tetragon types each accepts
_FILE = "file"  # an fd resolved to its file path in the kernel
_BUF = "buf"  # a user buffer
_INT = "int"
_KFILE = "kfile"  # a struct file in kernel memory (the argument of an LSM hook or kprobed function)
_KBINPRM = "kbinprm"  # a struct linux_binprm, resolved to its file's path (the sensor reads bprm->file)
_SOCKADDR = "sockaddr"  # the user's struct sockaddr
_KSOCK = "ksock"  # a struct sock in kernel memory (a kprobed function's argument)
_KCRED = "kcred"  # a struct cred in kernel memory
_CONNSOCK = "connsock"  # connect(): the fd's socket with the destination of the user's sockaddr
_FDSOCK = "fdsock"  # connect(): the fd's struct socket as it is (not connected yet)
_KBPRM = "kbprm"  # a struct linux_binprm in kernel memory (a kprobed function's argument)
_KSOCKET = "ksocket"  # a struct socket in kernel memory (a kprobed function's argument)
_KSOCKADDR = "ksockaddr"  # a struct sockaddr in kernel memory (a kprobed function's argument)
_ANY = "any"  # direct syscall arguments: the policy's type decides
_UREG = "ureg"  # a uprobe's argument register: the policy's type decides (user-space values)
_KREG = "kreg"  # a kprobed function's argument register: the policy's type decides (kernel values)

_CLASS_TYPES: dict[str, frozenset[str]] = {
    _FILE: frozenset({"file", "fd"}),
    _KFILE: frozenset({"file"}),
    _KBINPRM: frozenset({"linux_binprm", "file"}),
    _BUF: frozenset({"char_buf", "string"}),
    _INT: frozenset(INT_TYPES),
    _SOCKADDR: frozenset({"sock", "sockaddr"}),
    _KSOCK: frozenset({"sock"}),
    _CONNSOCK: frozenset({"sock"}),
    _FDSOCK: frozenset({"socket"}),
    _KBPRM: frozenset({"linux_binprm"}),
    _KSOCKET: frozenset({"socket"}),
    _KSOCKADDR: frozenset({"sockaddr"}),
    _KCRED: frozenset({"cred"}),
}
_CLASS_TEXT = {
    _KFILE: "a file (a struct file in kernel memory)",
    _KBINPRM: "the program being executed (struct linux_binprm, read as its file's path)",
    _FILE: "a file (its fd at the syscall)",
    _BUF: "a user buffer",
    _INT: "an integer",
    _SOCKADDR: "a socket address (the user's sockaddr)",
    _KSOCK: "a socket (struct sock in kernel memory)",
    _KCRED: "credentials (struct cred in kernel memory)",
    _CONNSOCK: "a socket (the connect() fd's socket, with the destination of the user's sockaddr)",
    _FDSOCK: "a struct socket (the connect() fd's socket, before it connects)",
    _KBPRM: "the program being executed (struct linux_binprm in kernel memory, read as its file's path)",
    _KSOCKET: "a struct socket (in kernel memory)",
    _KSOCKADDR: "a socket address (a struct sockaddr in kernel memory)",
}
_CLASS_KIND = {
    _FILE: ARG_FD,
    _BUF: ARG_STRING,
    _SOCKADDR: ARG_SOCKADDR,
    _KFILE: ARG_FILEPTR,
    _KBINPRM: ARG_FILEPTR,
    _KSOCK: ARG_SOCK,
    _KCRED: ARG_CRED,
    _CONNSOCK: ARG_CONNSOCK,
    _FDSOCK: ARG_CONNSOCK,
    _KBPRM: ARG_BPRM,
    _KSOCKET: ARG_SOCKETPTR,
    _KSOCKADDR: ARG_KSOCKADDR,
}


@dataclass(frozen=True)
class _Variant:
    syscalls: tuple[str, ...]
    args: Mapping[int, tuple[int, str]]  # kernel arg index -> (syscall arg index, class)
    consts: Mapping[int, int] = field(default_factory=dict)  # kernel arg index -> its value on these syscalls
    guard: Guard = field(default_factory=Guard)  # when these syscalls call the function (checked in the kernel)
    at_exit: bool = False  # evaluated at the syscalls' exit (args from REG_RET / REG_CRED)


@dataclass(frozen=True)
class _Mapping:
    variants: tuple[_Variant, ...]
    misses: str  # what the realisation does not see
    missing: Mapping[int, str] = field(default_factory=dict)  # kernel arg -> why it is not available
    ret: str = ""  # return: true is realised: what the value read at return is
    ret_differs: str = ""  # the value read at return is not the function's: how (matchReturnArgs refused)
    no_ret: str = ""  # return: true is refused: why
    no_index: str = ""  # an arg index the realisation has no slot for is refused with this text
    fields: tuple[TpField, ...] | None = None  # generic tracepoints: the record's fields


_SYS_RET = "the syscall's return value, read at its exit (sys_exit)"


def _g(*checks: str, fd: int = -1, pos: int = -1, addr: int = -1) -> Guard:
    return Guard(frozenset(checks), fd, pos, addr)


# Linux 6.1 - 6.18: write(2)/pwrite64(2) call vfs_write on the fd's file (fdget refuses O_PATH files; pwrite64
# needs pos >= 0 and a seekable file, FMODE_PWRITE); writev/pwritev/pwritev2 go through vfs_writev and never
# call it. Every one of them reaches rw_verify_area -> security_file_permission(MAY_WRITE) once the file has
# FMODE_WRITE and FMODE_CAN_WRITE (pwritev2 with pos -1 writes at the current position). Reads alike.
_FD0 = {"fd": 0}
_G_RW = _g("file", **_FD0)
_G_PWRITE = _g("file", "pwrite", pos=3, **_FD0)
_G_PREAD = _g("file", "pread", pos=3, **_FD0)
_G_PERM_W = _g("file", "write", **_FD0)
_G_PERM_R = _g("file", "read", **_FD0)
_G_PERM_PW = _g("file", "write", "pwrite", pos=3, **_FD0)
_G_PERM_PR = _g("file", "read", "pread", pos=3, **_FD0)
_G_PERM_PW2 = _g("file", "write", "pwrite", "pos_opt", pos=3, **_FD0)
_G_PERM_PR2 = _g("file", "read", "pread", "pos_opt", pos=3, **_FD0)
# the open syscalls, at their exit: the new fd is the return value
_OPENS = ("open", "creat", "openat", "openat2", "open_by_handle_at")
_G_OPENED = _g("ret_ok")  # fd_install: every fd the open syscalls return, O_PATH ones included
_G_OPENED_FILE = _g("ret_ok", "file", fd=REG_RET)  # security_file_open: do_dentry_open skips it for O_PATH
_CREDS = (
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups",
    "capset", "unshare", "setns", "prctl", "keyctl", "add_key", "request_key", "execve", "execveat",
)
_AFTER = (
    "decided at the syscall's exit, after the kernel function ran: Sigkill/Signal act after the operation "
    "(a Sigkill at the entry did not prevent it either: the signal is delivered on the way back to user space)"
)
_OPEN_TEXT = (
    "only the open syscalls (open, creat, openat, openat2, open_by_handle_at) that returned a new fd; opens by "
    "the kernel, by exec, by io_uring and by other syscalls (memfd, open_tree…) not seen; an open the kernel "
    "function saw but that failed afterwards (refused by another LSM, the driver's open failing…) not seen; "
    "O_PATH opens not seen (the kernel does not call it for them); the file resolved from the returned fd to its "
    "full path; " + _AFTER
)
_OPEN_MAPPING = _Mapping(
    (_Variant(_OPENS, {0: (REG_RET, _FILE)}, guard=_G_OPENED_FILE, at_exit=True),),
    _OPEN_TEXT,
    ret=_SYS_RET,
    ret_differs="the hook returns a permission decision (0 or -errno), the open syscalls return the new fd or -errno",
)
_EXEC_MAPPING = _Mapping(
    (_Variant(("execve", "execveat"), {0: (REG_EXE, _KBINPRM)}, guard=_g("ret_ok"), at_exit=True),),
    "the execs that succeeded, at the exit of execve/execveat, before the new program runs its first instruction: "
    "the binprm is the executed file, read as its full path; a script is seen as its interpreter only (the kernel "
    "checks the script, then its interpreter); an exec the kernel checked but that failed afterwards (refused by "
    "another LSM, a bad binary format…) not seen; execs by the kernel (usermode helpers) not seen",
    ret=_SYS_RET,
    ret_differs="the hook returns a permission decision (0 or -errno), execve returns 0 to the new program",
)
_RW_TEXT = (
    "the file resolved from the fd; kernel-internal {what}s (kernel_{what}, splice, sendfile, io_uring…) not "
    "seen; {what}v/p{what}v/p{what}v2 not watched: they go through vfs_{what}v and never call vfs_{what}; "
    "p{what}64 only when the kernel calls it (pos >= 0 on a seekable file); calls on a bad or O_PATH fd not seen "
    "(the kernel fails them first)"
)
_PERM_TEXT = (
    "write-family syscalls are MAY_WRITE (2), read-family MAY_READ (4), each seen only when it reaches the check "
    "(a valid fd opened for writing / reading; positional ones: pos >= 0 on a seekable file); kernel-internal "
    "accesses and other permission checks (mmap, splice, sendfile, io_uring…) not seen; calls the kernel fails "
    "between the mode check and the permission check (a count over SSIZE_MAX, a bad buffer or iovec, a position "
    "overflow) and zero-length readv/writev (the kernel skips the check) are seen; the file resolved from the "
    "fd; the mask is implied by the syscall, not read"
)

MAPPINGS: dict[str, _Mapping] = {
    "vfs_write": _Mapping(
        (
            _Variant(("write",), {0: (0, _FILE), 1: (1, _BUF), 2: (2, _INT)}, guard=_G_RW),
            _Variant(("pwrite64",), {0: (0, _FILE), 1: (1, _BUF), 2: (2, _INT)}, guard=_G_PWRITE),
        ),
        _RW_TEXT.format(what="write"),
        ret="the syscall's return value (bytes written or -errno), read at its exit (sys_exit)",
    ),
    "vfs_read": _Mapping(
        (
            _Variant(("read",), {0: (0, _FILE), 2: (2, _INT)}, guard=_G_RW),
            _Variant(("pread64",), {0: (0, _FILE), 2: (2, _INT)}, guard=_G_PREAD),
        ),
        _RW_TEXT.format(what="read"),
        {1: "the buffer is not filled yet at syscall entry"},
        ret="the syscall's return value (bytes read or -errno), read at its exit (sys_exit)",
    ),
    "security_file_permission": _Mapping(
        (
            _Variant(("write", "writev"), {0: (0, _FILE)}, {1: 2}, guard=_G_PERM_W),
            _Variant(("pwrite64", "pwritev"), {0: (0, _FILE)}, {1: 2}, guard=_G_PERM_PW),
            _Variant(("pwritev2",), {0: (0, _FILE)}, {1: 2}, guard=_G_PERM_PW2),
            _Variant(("read", "readv"), {0: (0, _FILE)}, {1: 4}, guard=_G_PERM_R),
            _Variant(("pread64", "preadv"), {0: (0, _FILE)}, {1: 4}, guard=_G_PERM_PR),
            _Variant(("preadv2",), {0: (0, _FILE)}, {1: 4}, guard=_G_PERM_PR2),
        ),
        _PERM_TEXT,
        ret=_SYS_RET,
        ret_differs="security_file_permission returns a permission decision (0 or -errno), the read/write syscalls "
        "return a byte count or -errno",
    ),
    "fd_install": _Mapping(
        (_Variant(_OPENS, {0: (REG_RET, _INT), 1: (REG_RET, _FILE)}, guard=_G_OPENED, at_exit=True),),
        "only the fds of the open syscalls (open, creat, openat, openat2, open_by_handle_at; O_PATH ones included), "
        "not those of socket, accept, pipe, dup, memfd, pidfd…; the file resolved from the returned fd to its full "
        "path; " + _AFTER,
        no_ret="fd_install returns nothing (void)",
    ),
    "security_file_open": _OPEN_MAPPING,
    "tcp_connect": _Mapping(
        (_Variant(("connect",), {0: (1, _CONNSOCK)}, guard=_g("file", "socket", "addr", "tcp", fd=0, addr=1)),),
        "only the connect() syscall, and only when the kernel gets to the protocol's connect (an unconnected "
        "AF_INET/AF_INET6 TCP socket and a sockaddr of its family and length: UNIX, UDP and connected sockets "
        "are not seen); kernel-initiated connections, TCP Fast Open (sendto/sendmsg with MSG_FASTOPEN, "
        "TCP_FASTOPEN_CONNECT) and MPTCP subflows not seen; a connect the kernel refuses before tcp_connect for "
        "another reason (no route, no free local port, an LSM or cgroup BPF program) is seen; the socket before "
        "the connect: the source address and port are not chosen yet (unless bound) and its state is not reported; "
        "address filters take IPv4 values: an IPv6 destination (::1 included) is in none of them, so NotDAddr "
        "matches it (as in Tetragon)",
        ret=_SYS_RET,
        ret_differs="tcp_connect returns whether the SYN could be sent, connect() the outcome of the whole call "
        "(-EINPROGRESS on a non-blocking socket, -ECONNREFUSED…)",
    ),
    "security_socket_connect": _Mapping(
        (
            _Variant(
                ("connect",),
                {0: (REG_NONE, _FDSOCK), 1: (1, _SOCKADDR), 2: (2, _INT)},
                guard=_g("file", "socket", "addr", fd=0, addr=1),
            ),
        ),
        "only the connect() syscall on a socket fd with a sockaddr the kernel could copy; kernel-initiated "
        "connections not seen; the socket is the fd's, read at connect() entry",
        ret=_SYS_RET,
        ret_differs="security_socket_connect returns a permission decision (0 or -errno), connect() the outcome of "
        "the whole call",
    ),
    "commit_creds": _Mapping(
        (_Variant(_CREDS, {0: (REG_CRED, _KCRED)}, guard=_g("cred_new"), at_exit=True),),
        "at the exit of the syscalls that install credentials (set*id, setfs*id, setgroups, capset, unshare, setns, "
        "prctl, keyctl, add_key, request_key, execve, execveat) when the task's credentials are no longer those it "
        "had at the entry: the credentials then in place are what commit_creds installed; commits by the kernel "
        "outside these syscalls not seen, several commits in one syscall are one event, a multi-threaded exec by a "
        "non-leader thread not seen; " + _AFTER,
        no_ret="commit_creds always returns 0; the syscall's return value means something else",
    ),
    "security_bprm_check": _EXEC_MAPPING,
}
LSM_MAPPINGS: dict[str, _Mapping] = {"file_open": _OPEN_MAPPING, "bprm_check_security": _EXEC_MAPPING}
_KRET = "the function's return value (kretprobe)"
# where the kernel has kprobes: the function itself (pseudo-syscall names the sensor's kprobe program)
KPROBE_REAL: dict[str, _Mapping] = {
    "vfs_write": _Mapping(
        (_Variant(("__kprobe_vfs_write",), {0: (0, _KFILE), 2: (2, _INT)}),),
        "every write through vfs_write, kernel-internal ones included",
        ret=_KRET,
    ),
    "vfs_read": _Mapping(
        (_Variant(("__kprobe_vfs_read",), {0: (0, _KFILE), 2: (2, _INT)}),),
        "every read through vfs_read, kernel-internal ones included",
        ret=_KRET,
    ),
    "security_file_permission": _Mapping(
        (_Variant(("__kprobe_security_file_permission",), {0: (0, _KFILE), 1: (1, _INT)}),),
        "every permission check of a file access (reads and writes, kernel-internal ones included); the mask is "
        "read from the call",
        ret=_KRET,
    ),
    "security_file_open": _Mapping(
        (_Variant(("__kprobe_security_file_open",), {0: (0, _KFILE)}),),
        "every open of a file, by any path (also kernel-internal opens); the file's full path",
        ret=_KRET,
    ),
    "tcp_connect": _Mapping(
        (_Variant(("__kprobe_tcp_connect",), {0: (0, _KSOCK)}),),
        "every TCP connect, kernel-initiated ones included; the socket after the source address and port are chosen",
        ret=_KRET,
    ),
    "commit_creds": _Mapping(
        (_Variant(("__kprobe_commit_creds",), {0: (0, _KCRED)}),),
        "every installation of new credentials (set*id, exec of set-uid binaries, capset…); the new credentials",
        no_ret="commit_creds always returns 0",
    ),
    "override_creds": _Mapping(
        (_Variant(("__kprobe_override_creds",), {0: (0, _KCRED)}),),
        "every temporary credential override by the kernel; the credentials put in place",
        no_ret="override_creds returns the old credentials (a pointer)",
    ),
    "revert_creds": _Mapping(
        (_Variant(("__kprobe_revert_creds",), {0: (0, _KCRED)}),),
        "every revert of a temporary override; the credentials restored",
        no_ret="revert_creds returns nothing (void)",
    ),
    "security_socket_connect": _Mapping(
        (_Variant(("__kprobe_security_socket_connect",), {0: (0, _KSOCKET), 1: (1, _KSOCKADDR), 2: (2, _INT)}),),
        "every connect of a socket, before the protocol's checks (connect(), io_uring, kernel users); the socket "
        "as it is before it connects, the address as the kernel copied it",
        ret=_KRET,
    ),
    "security_bprm_check": _Mapping(
        (_Variant(("__kprobe_security_bprm_check",), {0: (0, _KBPRM)}),),
        "every exec's check, decided before the new program runs (scripts: the script, then its interpreter); the "
        "binprm is read as its file's full path",
        ret=_KRET,
    ),
    "fd_install": _Mapping(
        (_Variant(("__kprobe_fd_install",), {0: (0, _INT), 1: (1, _KFILE)}),),
        "every new fd of the process (open, accept, pipe, dup, socket…); the file's full path",
        no_ret="fd_install returns nothing (void)",
    ),
}
# where the kernel has BPF-LSM: the hook itself (the pseudo-syscall names the sensor's LSM programs)
LSM_REAL: dict[str, _Mapping] = {
    "file_open": _Mapping(
        (_Variant(("__lsm_file_open",), {0: (0, _KFILE)}),),
        "every open of the file, by any path (also kernel-internal opens), decided before it opens",
    ),
    "file_permission": _Mapping(
        (_Variant(("__lsm_file_permission",), {0: (0, _KFILE), 1: (1, _INT)}),),
        "every permission check of a file access (reads and writes, kernel-internal ones included), decided before "
        "the access",
    ),
    "bprm_check_security": _Mapping(
        (_Variant(("__lsm_bprm_check_security",), {0: (0, _KBINPRM)}),),
        "every exec (scripts: the script, then its interpreter), decided before the new program runs; the binprm is "
        "read as its file's full path",
    ),
}
KERNEL_FUNCTION_NAMES = frozenset(MAPPINGS)

_SYSCALL_RE = re.compile(r"^(__x64_|__ia32_|__arm64_|__riscv_|__s390x_)?sys_([a-z0-9_]+)$")
_ENFORCING = ("Sigkill", "Signal", "DenyConnect")
_FAMILIES = {
    "AF_UNSPEC": 0,
    "AF_UNIX": 1,
    "AF_LOCAL": 1,
    "AF_INET": 2,
    "AF_INET6": 10,
    "AF_NETLINK": 16,
    "AF_PACKET": 17,
}
_INT_OPS = {
    "Equal": "Equal",
    "NotEqual": "NotEqual",
    "GT": "GT",
    "GreaterThan": "GT",
    "LT": "LT",
    "LessThan": "LT",
    "Mask": "Mask",
    "InRange": "InRange",
    "NotInRange": "NotInRange",
    "InMap": "Equal",
    "NotInMap": "NotEqual",
}
_STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
# sock (tcp_connect): the destination ops; sockaddr: Tetragon names the sockaddr's own address SAddr/SPort
_SOCK_OPS = {
    "DAddr": "DAddr",
    "NotDAddr": "NotDAddr",
    "DPort": "DPort",
    "NotDPort": "NotDPort",
    "DPortPriv": "DPort",
    "NotDPortPriv": "NotDPort",
    "Family": "Family",
}
_SOCKADDR_OPS = {
    "SAddr": "DAddr",
    "NotSAddr": "NotDAddr",
    "SPort": "DPort",
    "NotSPort": "NotDPort",
    "SPortPriv": "DPort",
    "NotSportPriv": "NotDPort",
    "Family": "Family",
}
# a struct sock read in the kernel (kprobes): both ends and the protocol are known
_KSOCK_OPS = {
    **_SOCK_OPS,
    "SAddr": "SAddr",
    "NotSAddr": "NotSAddr",
    "SPort": "SPort",
    "NotSPort": "NotSPort",
    "SPortPriv": "SPort",
    "NotSportPriv": "NotSPort",
    "Protocol": "Protocol",
}
# connect(): the socket's protocol is read, the source is not chosen yet
_CONNSOCK_OPS = {**_SOCK_OPS, "Protocol": "Protocol"}
_PROTOCOLS = {"IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_SCTP": 132,
              "IPPROTO_RAW": 255, "IPPROTO_MPTCP": 262}
_UNSUPPORTED_SELECTOR_FIELDS = (
    ("match_data", "matchData"),
    ("match_parent_binaries", "matchParentBinaries"),
    ("match_namespace_changes", "matchNamespaceChanges"),
    ("match_capability_changes", "matchCapabilityChanges"),
    ("match_workloads", "matchWorkloads"),
    ("macros", "macros"),
)
_CAP_BITS = {name: bit for bit, name in enumerate(CAPABILITIES)}  # kernel order: CAP_CHOWN = 0 …
_UPROBE_REGS = 5  # uprobe args: the first five argument registers (gs_kprobe reads PARM1-5)
_MAX_ARG_SIZE = 255  # gs_hook.arg_size is a u8
_ARG_DETAILS = (
    ("resolve", "resolve"),
    ("btf_type", "btfType"),
    ("source", "source"),
    ("btf_type_module", "btfTypeModule"),
)


class _Refuse(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = Problem(path, reason, unsupported=True)


def _kind_of(ty: str, path: str) -> str:
    """ArgSpec kind for a Tetragon arg type read directly from a syscall argument."""
    if ty in INT_TYPES:
        return ARG_UINT if ty in UNSIGNED_TYPES else ARG_INT
    if ty in ("string", "char_buf", "filename", "path"):
        return ARG_STRING
    if ty in ("fd", "file"):
        return ARG_FD
    if ty in ("sock", "sockaddr"):
        return ARG_SOCKADDR
    if ty == "auto":
        raise _Refuse(
            path,
            "arg type auto needs BTF resolution, which apiary does not do yet: write the type "
            "(int, string, fd, sockaddr…)",
        )
    raise _Refuse(path, f"arg type {ty} not supported at syscall entry")


def _uprobe_kind(ty: str, path: str) -> str:
    """ArgSpec kind for a Tetragon arg type read from a uprobe's argument register (user-space values)."""
    if ty in INT_TYPES:
        return ARG_UINT if ty in UNSIGNED_TYPES else ARG_INT
    if ty in ("string", "char_buf"):
        return ARG_STRING
    if ty == "fd":
        return ARG_FD
    if ty == "auto":
        raise _Refuse(
            path, "arg type auto needs debug information, which apiary does not read: write the type (int, string, fd…)"
        )
    raise _Refuse(path, f"arg type {ty} not supported on uprobes (integer types, string, char_buf and fd are)")


def _kprobe_kind(ty: str, path: str) -> str:
    """ArgSpec kind for a Tetragon arg type read from a kprobed kernel function's argument register."""
    if ty in INT_TYPES:
        return ARG_UINT if ty in UNSIGNED_TYPES else ARG_INT
    kinds = {
        "string": ARG_KSTRING,
        "file": ARG_FILEPTR,
        "path": ARG_PATHPTR,
        "sock": ARG_SOCK,
        "skb": ARG_SKB,
        "cred": ARG_CRED,
        "linux_binprm": ARG_BPRM,
        "fd": ARG_FD,
    }
    if ty in kinds:
        return kinds[ty]
    if ty == "auto":
        raise _Refuse(
            path, "arg type auto needs the function's BTF, which apiary does not read yet: write the type (int, "
            "string, file, sock, cred, fd…)"
        )
    raise _Refuse(
        path,
        f"arg type {ty} is not supported on a kprobe of a kernel function (integer types, string (a kernel char *), "
        "file, path, sock, skb, cred, linux_binprm (pointers to those kernel structs) and fd are)",
    )


def _tp_arg(f: TpField, ty: str) -> tuple[str, int, str] | str:
    """(kind, size, type) of tracepoint field ``f`` read as policy type ``ty``; or the types that can read it
    ("" when none can)."""
    elem = f.element
    integer = (
        not (f.is_pointer or f.is_array or f.is_data_loc)
        and f.size in (1, 2, 4, 8)
        and not elem.startswith(("struct ", "union "))
    )
    auto = ty == "auto"
    if integer:
        if ty in INT_TYPES or auto:
            if auto:
                ty = ("long" if f.size == 8 else "int") if f.signed else ("uint64" if f.size == 8 else "uint32")
            return (ARG_INT if f.signed else ARG_UINT), f.size, ty
        return "an integer type (int, long, uint32, uint64…)"
    if f.is_data_loc and elem == "char":
        if ty in ("string", "data_loc") or auto:
            return ARG_DATALOC, f.size, "string" if auto else ty
        return "string or data_loc"
    if f.is_array and elem == "char" and f.size > 0:
        if ty in ("string", "char_buf") or auto:
            return ARG_CHARS, min(f.size, _MAX_ARG_SIZE), "string" if auto else ty
        return "string or char_buf"
    if f.is_pointer:
        char_ptr = f.type_.count("*") == 1 and elem == "char"
        if char_ptr and (ty == "string" or auto):
            return ARG_KSTRING, f.size, "string"
        if ty in INT_TYPES:
            return ARG_UINT, 8, ty
        return ("string or " if char_ptr else "") + "an integer type such as uint64 (the pointer's value)"
    return ""


@dataclass
class _Arg:
    """One declared arg of a hook, as realised by one variant."""

    pos: int  # position in the hook's args list
    spec: KProbeArg
    kind: str = ""
    sys_index: int = -1
    const: int | None = None
    why_missing: str = ""  # not available (omitted from events, not filterable)
    slot: int = -1  # position in Hook.args
    offset: int = 0  # tracepoint record field
    size: int = 0
    type_: str = ""  # the type as realised (auto resolved); "" = the policy's
    size_index: int = -1  # char_buf: the register holding its length
    at_return: bool = False  # returnCopy

    @property
    def ty(self) -> str:
        return self.type_ or self.spec.type_


class _Compiler:
    def __init__(self, policy: TracingPolicyBase, features: KernelFeatures) -> None:
        self.policy = policy
        self.f = features
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.hooks: list[Hook] = []
        self.prefix = _arch_prefix()

    # -- helpers --------------------------------------------------------------------------------------

    def refuse(self, path: str, reason: str) -> None:
        self.problems.append(Problem(path, reason, unsupported=True))

    def needs_kprobe(self) -> str:
        if not self.f.kprobes:
            return f"needs kprobe (or BPF-LSM); this kernel: {self.f.describe()}"
        return (
            "needs a kprobe on a function whose arguments apiary's sensor does not know yet (kprobes are realised "
            f"for {', '.join(KPROBE_REAL)})"
        )

    def needs_lsm(self) -> str:
        if not self.f.lsm:
            return f"needs BPF-LSM; this kernel: {self.f.describe()}"
        return f"apiary's sensor has no BPF-LSM program for this hook yet (it has {', '.join(LSM_REAL)})"

    def entry_only(self, event: str) -> str:
        if event == "process_lsm" and self.f.lsm:
            return " (this kernel has BPF-LSM, but apiary has no BPF-LSM program for this hook yet)"
        if event == "process_kprobe" and self.f.kprobes:
            return " (this kernel has kprobes, but apiary's kprobe realisation does not cover this function yet)"
        return ""

    def syscall_known(self, name: str) -> bool:
        return (
            name in self.f.syscalls
            or (name.startswith("__lsm_") and self.f.lsm)
            or (name.startswith("__kprobe_") and self.f.kprobes)
        )

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # -- the policy -----------------------------------------------------------------------------------

    def run(self) -> CompiledTracingPolicy:
        p = self.policy
        spec = p.spec
        for fld in ("usdts", "fentries", "enforcers"):
            if getattr(spec, fld):
                self.refuse(f"spec.{fld}", f"{fld} are not supported yet")
        if spec.loader:
            self.refuse("spec.loader", "loader events are not supported yet")
        if spec.container_selector is not None:
            self.refuse(
                "spec.containerSelector",
                "containerSelector is not supported yet (apiary endpoints have no "
                "container names); select endpoints with podSelector",
            )
        if spec.host_selector is not None:
            self.refuse(
                "spec.hostSelector",
                "hostSelector is not supported yet: without pod/container selectors a "
                "policy already selects every process, host ones included",
            )
        if spec.node_selector is not None and (spec.node_selector.match_labels or spec.node_selector.match_expressions):
            self.refuse("spec.nodeSelector", "nodeSelector is not supported yet (apiary has no node labels)")
        mode = self.options()
        pod = self.pod_selector()
        for i, kp in enumerate(spec.kprobes or []):
            self.kprobe(f"kprobes[{i}]", kp)
        for i, tp in enumerate(spec.tracepoints or []):
            self.tracepoint(f"tracepoints[{i}]", tp)
        for i, up in enumerate(spec.uprobes or []):
            self.uprobe(f"uprobes[{i}]", up)
        for i, lsm in enumerate(spec.lsmhooks or []):
            self.lsmhook(f"lsmhooks[{i}]", lsm)
        self.check_totals()
        return CompiledTracingPolicy(
            name=p.name,
            namespace=p.namespace,
            kind=p.kind,
            mode=mode,
            pod_selector=pod,
            hooks=self.hooks,
            notes=self.notes,
        )

    def options(self) -> str:
        mode = "enforce"
        for i, o in enumerate(self.policy.spec.options or []):
            if o.name == "policy-mode":
                mode = o.value
            elif o.name in ("disable-kprobe-multi", "disable-uprobe-multi"):
                self.notes.append(f"option {o.name} has no effect in apiary: it attaches no kprobe/uprobe multi links")
            elif o.name == "override-method":
                self.notes.append(
                    f"option {o.name} has no effect in apiary: Override is realised only on BPF-LSM hooks (by the "
                    "hook's return value)"
                )
            else:
                self.notes.append(f"option {o.name} has no effect in apiary (spec.options[{i}])")
        if mode == "monitor":
            self.notes.append("policy-mode monitor: actions are reported, not carried out")
        return mode

    def pod_selector(self) -> dict[str, object] | None:
        spec = self.policy.spec
        sel: dict[str, object] | None = None
        if spec.pod_selector is not None:
            sel = {}
            if spec.pod_selector.match_labels:
                sel["matchLabels"] = dict(spec.pod_selector.match_labels)
            if spec.pod_selector.match_expressions:
                sel["matchExpressions"] = [e.model_dump(exclude_none=True) for e in spec.pod_selector.match_expressions]
            if not sel:
                self.notes.append("podSelector {}: every process in an endpoint; host processes are not selected")
        ns = self.policy.namespace
        if ns:
            sel = dict(sel or {})
            labels = dict(sel.get("matchLabels") or {})  # type: ignore[call-overload]
            if labels.get(NAMESPACE_KEY, ns) != ns:
                self.refuse("spec.podSelector.matchLabels", f"{NAMESPACE_KEY} must be the policy's namespace {ns!r}")
            labels[NAMESPACE_KEY] = ns
            sel["matchLabels"] = labels
            self.notes.append(f"TracingPolicyNamespaced: only processes of endpoints in namespace {ns}")
        return sel

    def check_totals(self) -> None:
        if len(self.hooks) > MAX_HOOKS:
            self.refuse(
                "spec",
                f"this policy needs {len(self.hooks)} hooks; the sensor holds at most {MAX_HOOKS} across all policies",
            )
        per: dict[str, int] = {}
        for h in self.hooks:
            for s in h.syscalls:
                per[s] = per.get(s, 0) + 1
        for s, n in sorted(per.items()):
            if n > MAX_HOOKS_PER_SYSCALL:
                self.refuse("spec", f"{n} hooks watch syscall {s}; the sensor allows {MAX_HOOKS_PER_SYSCALL}")
        follow = sum(
            bool(s.binaries and s.binaries.follow_children) + bool(s.pids and s.pids.follow_forks)
            for h in self.hooks
            for s in h.selectors
        )
        if follow > MAX_FOLLOW:
            self.refuse(
                "spec",
                f"this policy needs {follow} followChildren/followForks slots (one per such filter of each hook's "
                f"selectors); the sensor holds at most {MAX_FOLLOW} across all policies",
            )
        elif follow:
            self.note(
                "followChildren/followForks: descendants are tracked in the kernel from fork and exec; processes "
                "already running when the policy is applied are found from /proc"
            )

    # -- hooks ----------------------------------------------------------------------------------------

    def kprobe(self, path: str, kp: KProbeSpec) -> None:
        hp = f"spec.{path}"
        calls: list[tuple[str, str]] = [(kp.call, "")]
        if kp.call.startswith("list:"):
            calls = self.expand_list(hp, kp)
        self.kprobe_common(hp, kp)
        for call, origin in calls:
            source = f"{path} {call}" + (f" ({origin})" if origin else "")
            try:
                self.kprobe_call(hp, source, kp, call)
            except _Refuse as r:
                self.problems.append(r.problem)

    def expand_list(self, hp: str, kp: KProbeSpec) -> list[tuple[str, str]]:
        name = kp.call.removeprefix("list:")
        ls = next((x for x in self.policy.spec.lists or [] if x.name == name), None)
        if ls is None:
            self.refuse(f"{hp}.call", f"list {name!r} is not defined")
            return []
        origin = f"list:{name}"
        if ls.type_ == "generated_ftrace":
            self.refuse(f"{hp}.call", f"list {name} (generated_ftrace) names kernel functions: {self.needs_kprobe()}")
            return []
        if ls.type_ == "generated_syscalls":
            if not self.f.syscalls:
                self.refuse(
                    f"{hp}.call", f"list {name} (generated_syscalls) is empty: this kernel lists no syscall tracepoints"
                )
                return []
            self.notes.append(f"{hp.removeprefix('spec.')} {origin}: {len(self.f.syscalls)} syscalls")
            return [(f"sys_{s}", origin) for s in sorted(self.f.syscalls)]
        return [(v, origin) for v in ls.values or []]

    def kprobe_common(self, hp: str, kp: KProbeSpec) -> None:
        if kp.data:
            self.refuse(f"{hp}.data", "data (extra values read from the task or registers) is not supported yet")
        if kp.return_arg_action:
            self.refuse(
                f"{hp}.returnArgAction",
                f"returnArgAction {kp.return_arg_action} (socket tracking) is not supported yet",
            )

    def kprobe_call(self, hp: str, source: str, kp: KProbeSpec, call: str) -> None:
        if kp.syscall:
            m = _SYSCALL_RE.match(call)
            if not m:
                hint = f"; {call} is a kernel function: set syscall: false" if call in MAPPINGS else ""
                if call.startswith("__sys_"):
                    hint = "; __sys_* helpers are kernel functions: set syscall: false"
                raise _Refuse(
                    f"{hp}.call",
                    f"{call} is not a syscall symbol: with syscall: true the call is sys_<name> (e.g. sys_write){hint}",
                )
            arch, name = m.group(1) or "", m.group(2)
            if arch == "__ia32_":
                raise _Refuse(f"{hp}.call", f"{call}: 32-bit compat syscalls are not supported yet")
            if arch and arch != self.prefix:
                raise _Refuse(f"{hp}.call", f"{call}: not a syscall of this architecture ({self.prefix}sys_{name})")
            if not self.syscall_known(name):
                if kp.ignore and kp.ignore.call_not_found:
                    self.notes.append(f"{source}: skipped (ignore.callNotFound): no syscall {name} on this kernel")
                    return
                raise _Refuse(
                    f"{hp}.call", f"no syscall {name} on this kernel (no syscalls/sys_enter_{name} tracepoint)"
                )
            variant = _Variant((name,), {i: (i, _ANY) for i in range(6)})
            mapping = _Mapping((variant,), "", ret=f"the syscall's return value, read at its exit (sys_exit_{name})")
            ret = self.return_spec(hp, source, kp, mapping)
            realisation = f"syscall entry of {name}" + (f", decided at its exit (sys_exit_{name})" if ret else "")
            self.build(hp, source, kp, "process_kprobe", f"{self.prefix}sys_{name}", mapping, realisation, ret=ret)
            return
        real = KPROBE_REAL.get(call) if self.f.kprobes else None
        if real is not None:
            ret = self.return_spec(hp, source, kp, real)
            probe = "kprobe and kretprobe" if ret else "kprobe"
            self.build(hp, source, kp, "process_kprobe", call, real, f"{probe} on {call}: {real.misses}", ret=ret)
            return
        mapping = MAPPINGS.get(call)
        if mapping is None and call.startswith("__sys_") and self.syscall_known(call.removeprefix("__sys_")):
            name = call.removeprefix("__sys_")
            mapping = _Mapping(
                (_Variant((name,), {i: (i, _ANY) for i in range(6)}),),
                f"the kernel helper's own syscall; in-kernel callers of {call} not seen",
                ret=f"the return value of syscall {name} (which is {call}'s), read at its exit",
            )
        if mapping is None and self.f.kprobes:
            # any other kernel function: a kprobe there, its args read as the types the policy gives
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", call):
                raise _Refuse(f"{hp}.call", f"{call!r} is not a kernel function name")
            generic = _Mapping(
                (_Variant((f"__kprobe_{call}",), {i: (i, _KREG) for i in range(5)}),),
                "args read from the registers as the types the policy gives (not checked against the function's "
                "BTF); a function that does not exist or cannot be probed fails the apply",
                ret=_KRET,
                no_index="arg {index}: apiary reads the first 5 arguments of a kernel function",
            )
            ret = self.return_spec(hp, source, kp, generic)
            probe = "kprobe and kretprobe" if ret else "kprobe"
            if kp.ignore and kp.ignore.call_not_found:
                self.note(f"{source}: ignore.callNotFound: a missing {call} fails the apply instead of being skipped")
            self.build(
                hp, source, kp, "process_kprobe", call, generic, f"{probe} on {call}: {generic.misses}", ret=ret
            )
            return
        if mapping is None:
            raise _Refuse(f"{hp}.call", f"{call}: {self.needs_kprobe()}")
        ret = self.return_spec(hp, source, kp, mapping)
        self.build(hp, source, kp, "process_kprobe", call, mapping, "", ret=ret)

    def return_spec(self, hp: str, source: str, spec: KProbeSpec | UProbeSpec, mapping: _Mapping) -> ArgSpec | None:
        """Hook.ret of a hook with ``return: true`` on this realisation (None without it)."""
        if not spec.return_:
            if spec.return_arg is not None:
                self.note(f"{source}: returnArg has no effect without return: true")
            return None
        if mapping.no_ret or not mapping.ret:
            raise _Refuse(f"{hp}.return", f"return: true cannot be realised: {mapping.no_ret or 'no return probe'}")
        ra = spec.return_arg
        rp = f"{hp}.returnArg"
        if ra is None:
            raise _Refuse(rp, "return: true needs returnArg (e.g. {index: 0, type: int})")
        self.arg_details(rp, ra)
        if ra.type_ not in INT_TYPES:
            raise _Refuse(
                f"{rp}.type",
                f"returnArg type {ra.type_} is not supported: the sensor reads the return value as an integer "
                "(int, long, size_t, uint64…)",
            )
        text = f"{source}: return value: {mapping.ret}"
        if mapping.ret_differs:
            text += f"; it is not the hook's own return value ({mapping.ret_differs}): matchReturnArgs is refused"
        self.note(text)
        return ArgSpec(0, ARG_UINT if ra.type_ in UNSIGNED_TYPES else ARG_INT, ra.label, ra.type_)

    def lsmhook(self, path: str, lsm: LsmHookSpec) -> None:
        hp = f"spec.{path}"
        real = LSM_REAL.get(lsm.hook) if self.f.lsm else None
        mapping = real or LSM_MAPPINGS.get(lsm.hook)
        try:
            if mapping is None:
                raise _Refuse(f"{hp}.hook", f"lsm hook {lsm.hook}: {self.needs_lsm()}")
            text = f"BPF-LSM hook {lsm.hook}: {real.misses}" if real else ""
            self.build(hp, f"{path} {lsm.hook}", lsm, "process_lsm", lsm.hook, mapping, text)
        except _Refuse as r:
            self.problems.append(r.problem)

    def tracepoint(self, path: str, tp: TracepointSpec) -> None:
        hp = f"spec.{path}"
        source = f"{path} {tp.subsystem}/{tp.event}"
        try:
            if tp.raw:
                self.raw_tracepoint(hp, source, tp)
                return
            if tp.subsystem == "raw_syscalls" and tp.event == "sys_enter":
                self.raw_syscalls(hp, source, tp)
                return
            if tp.subsystem != "syscalls" or not tp.event.startswith("sys_enter_"):
                self.generic_tracepoint(hp, source, tp)
                return
            name = tp.event.removeprefix("sys_enter_")
            if not self.syscall_known(name):
                raise _Refuse(f"{hp}.event", f"no tracepoint syscalls/{tp.event} on this kernel")
            variant = _Variant((name,), {i + 5: (i, _ANY) for i in range(6)})
            self.build(
                hp,
                source,
                tp,
                "process_tracepoint",
                f"syscalls/{tp.event}",
                _Mapping((variant,), ""),
                f"syscall entry of {name}",
                missing={
                    0: "common field",
                    1: "common field",
                    2: "common field",
                    3: "common field",
                    4: "the syscall number (__syscall_nr): the hook's syscall is fixed",
                },
                index_text="field",
            )
        except _Refuse as r:
            self.problems.append(r.problem)

    def generic_tracepoint(self, hp: str, source: str, tp: TracepointSpec) -> None:
        """Any tracepoint but syscalls/sys_enter_* and raw_syscalls/sys_enter: fields read by offset."""
        label = f"{tp.subsystem}/{tp.event}"
        for what, name in (("subsystem", tp.subsystem), ("event", tp.event)):
            if not _TP_NAME.match(name) or ".." in name:
                raise _Refuse(f"{hp}.{what}", f"{name!r} is not a tracepoint {what} name")
        if not self.f.tracefs:
            raise _Refuse(
                f"{hp}.event", f"tracepoint {label}: tracefs was not found, so the record's format cannot be read"
            )
        fields = tracepoint_fields(self.f.tracefs, tp.subsystem, tp.event)
        if fields is None:
            raise _Refuse(f"{hp}.event", f"no tracepoint {label} on this kernel")
        mapping = _Mapping((_Variant((f"__tp_{label}",), {}),), "", fields=tuple(fields))
        self.build(
            hp,
            source,
            tp,
            "process_tracepoint",
            label,
            mapping,
            f"tracepoint {label}: fields read from the record by offset",
            index_text="field",
        )

    def uprobe(self, path: str, up: UProbeSpec) -> None:
        hp = f"spec.{path}"
        for fld, name in (
            ("offsets", "offsets"),
            ("addrs", "addrs"),
            ("ref_ctr_offsets", "refCtrOffsets"),
            ("btf_path", "btfPath"),
            ("data", "data"),
            ("binary_digests", "binaryDigests"),
        ):
            if getattr(up, fld):
                self.refuse(f"{hp}.{name}", f"{name} is not supported yet")
        if up.ignore and up.ignore.digest_verification_failure and not up.binary_digests:
            self.note(f"{path}: ignore.digestVerificationFailure has no effect without binaryDigests")
        if not up.path.startswith("/"):
            self.refuse(f"{hp}.path", f"{up.path!r} is not an absolute path: a uprobe attaches to a binary by its path")
            return
        no_index = (
            f"arg {{index}} is not read: uprobe args are the first {_UPROBE_REGS} argument registers "
            f"(index 0-{_UPROBE_REGS - 1})"
        )
        for si, sym in enumerate(up.symbols or []):
            source = f"{path} {up.path}:{sym}"
            try:
                if not sym or ":" in sym or any(c.isspace() for c in sym):
                    raise _Refuse(f"{hp}.symbols[{si}]", f"{sym!r} is not a symbol name")
                variant = _Variant((f"__uprobe_{up.path}:{sym}",), {i: (i, _UREG) for i in range(_UPROBE_REGS)})
                mapping = _Mapping((variant,), "", ret="the function's return value (uretprobe)", no_index=no_index)
                ret = self.return_spec(hp, source, up, mapping)
                text = f"uprobe on {up.path}:{sym}" + (" and its return (uretprobe)" if ret else "")
                self.build(hp, source, up, "process_uprobe", sym, mapping, text, ret=ret, path=up.path)
            except _Refuse as r:
                self.problems.append(r.problem)

    def raw_tracepoint(self, hp: str, source: str, tp: TracepointSpec) -> None:
        """``raw: true``: the tracepoint's own arguments (as its TP_PROTO lists them), read by the policy's types."""
        if not self.f.raw_tp_cookie:
            raise _Refuse(
                f"{hp}.raw",
                "raw tracepoints need attach cookies for raw_tp programs (Linux 6.10+), which this kernel does not "
                "have: use raw: false (the record's fields by index)",
            )
        if not re.fullmatch(r"[A-Za-z0-9_]+", tp.event):
            raise _Refuse(f"{hp}.event", f"{tp.event!r} is not a tracepoint name")
        mapping = _Mapping(
            (_Variant((f"__rawtp_{tp.event}",), {i: (i, _KREG) for i in range(5)}),),
            "the tracepoint's own arguments read as the types the policy gives (not checked against its BTF)",
            no_index="arg {index}: apiary reads the first 5 arguments of a raw tracepoint",
        )
        self.build(
            hp,
            source,
            tp,
            "process_tracepoint",
            f"{tp.subsystem}/{tp.event}",
            mapping,
            f"raw tracepoint {tp.event}: {mapping.misses}",
        )

    def raw_syscalls(self, hp: str, source: str, tp: TracepointSpec) -> None:
        id_pos: set[int] = set()
        for i, a in enumerate(tp.args or []):
            if a.index == 4 and a.type_ in INT_TYPES:
                id_pos.add(i)
            elif a.index == 4:
                raise _Refuse(f"{hp}.args[{i}].type", f"the id field (index 4) is an integer, not {a.type_}")
            else:
                raise _Refuse(
                    f"{hp}.args[{i}].index",
                    "raw_syscalls/sys_enter: only the id (index 4) can be read; "
                    "the args array is not supported yet (use syscalls/sys_enter_<name>)",
                )
        wanted: list[frozenset[str] | None] = []
        selectors = list(tp.selectors or [])
        stripped: list[KProbeSelector] = []
        for si, sel in enumerate(selectors):
            sp = f"{hp}.selectors[{si}]"
            ids: frozenset[str] | None = None
            rest = []
            for ai, a in enumerate(sel.match_args or []):
                found = resolve_arg(tp, a)
                if isinstance(found, str) or found[0] not in id_pos:
                    rest.append(a)
                    continue
                if ids is not None:
                    raise _Refuse(f"{sp}.matchArgs[{ai}]", "one syscall-id filter per selector")
                ids = self.syscall_id_filter(f"{sp}.matchArgs[{ai}]", a)
            wanted.append(ids)
            stripped.append(sel.model_copy(update={"match_args": rest or None}))
        distinct = {w for w in wanted if w is not None}
        if len(distinct) > 1 or (distinct and None in wanted):
            raise _Refuse(
                f"{hp}.selectors",
                "selectors with different syscall-id filters are not supported yet "
                "(the filter becomes the set of syscalls watched): write one tracepoint per set",
            )
        watched = sorted(distinct.pop()) if distinct else sorted(self.f.syscalls)
        if not watched:
            raise _Refuse(f"{hp}", "no syscall to watch: this kernel lists no syscall tracepoints")
        variant = _Variant(tuple(watched), {})
        spec = tp.model_copy(update={"selectors": stripped or None, "args": None})
        what = ", ".join(watched) if len(watched) <= 8 else f"{len(watched)} syscalls"
        realisation = f"syscall entry of {what}"
        if distinct or any(w is not None for w in wanted):
            realisation += " (the id filter is the set of syscalls watched)"
        if id_pos:
            realisation += "; the id arg (index 4) is the event's syscall number"
        self.build(
            hp, source, spec, "process_tracepoint", "raw_syscalls/sys_enter", _Mapping((variant,), ""), realisation
        )

    def syscall_id_filter(self, path: str, a: ArgSelector) -> frozenset[str]:
        names: set[str] = set()
        for vi, v in enumerate(a.values or []):
            if not v.startswith("list:"):
                raise _Refuse(
                    f"{path}.values[{vi}]",
                    "syscall numbers are architecture-specific: name the syscalls "
                    "through a list (spec.lists, type: syscalls) and use list:NAME",
                )
            ls = next((x for x in self.policy.spec.lists or [] if x.name == v.removeprefix("list:")), None)
            if ls is None or ls.type_ not in ("syscalls", "generated_syscalls"):
                raise _Refuse(f"{path}.values[{vi}]", f"{v} must name a list of type syscalls")
            if ls.type_ == "generated_syscalls":
                names |= self.f.syscalls
                continue
            for s in ls.values or []:
                m = _SYSCALL_RE.match(s)
                if not m or (m.group(1) or "") == "__ia32_":
                    raise _Refuse(
                        f"{path}.values[{vi}]",
                        f"list {ls.name}: {s!r} is not a 64-bit syscall name "
                        "(sys_<name>; 32-bit compat syscalls are not supported yet)",
                    )
                if not self.syscall_known(m.group(2)):
                    raise _Refuse(f"{path}.values[{vi}]", f"list {ls.name}: no syscall {m.group(2)} on this kernel")
                names.add(m.group(2))
        if a.operator in ("Equal", "InMap"):
            return frozenset(names)
        if a.operator in ("NotEqual", "NotInMap"):
            return frozenset(self.f.syscalls - names)
        raise _Refuse(
            f"{path}.operator",
            f"the syscall id can be filtered with InMap/NotInMap (or Equal/NotEqual), not {a.operator}",
        )

    # -- building hooks -------------------------------------------------------------------------------

    def build(
        self,
        hp: str,
        source: str,
        spec: HookSpec,
        event: str,
        function_name: str,
        mapping: _Mapping,
        realisation: str,
        missing: Mapping[int, str] | None = None,
        index_text: str = "arg",
        ret: ArgSpec | None = None,
        path: str = "",
    ) -> None:
        """Realise one hook spec on each variant of ``mapping`` (identical results are merged)."""
        missing = {**(missing or {}), **mapping.missing}
        for si, sel in enumerate(spec.selectors or []):
            self.selector_unsupported(f"{hp}.selectors[{si}]", sel, ret, mapping.ret_differs)
        enforcing = any(a.action in _ENFORCING for s in spec.selectors or [] for a in s.match_actions or [])
        built: list[tuple[_Variant, tuple[ArgSpec, ...], tuple[Selector, ...] | None]] = []
        dropped: list[str] = []
        for variant in mapping.variants:
            args = self.variant_args(hp, source, spec, mapping, variant, missing, index_text)
            if isinstance(args, str):
                if enforcing:
                    raise _Refuse(
                        hp,
                        f"{args}: an enforcing policy cannot skip {'/'.join(variant.syscalls)} (that "
                        "would be a bypass)",
                    )
                dropped.append(f"{'/'.join(variant.syscalls)} not watched: {args}")
                continue
            argspecs = tuple(
                ArgSpec(
                    index=a.sys_index,
                    kind=a.kind,
                    label=a.spec.label,
                    tetragon_type=a.ty,
                    offset=a.offset,
                    size=a.size,
                    size_index=a.size_index,
                    at_return=a.at_return,
                )
                for a in args
                if a.slot >= 0
            )
            if len(argspecs) > MAX_ARGS:
                raise _Refuse(f"{hp}.args", f"at most {MAX_ARGS} arguments per hook ({len(argspecs)} given)")
            sels = self.selectors(hp, spec, args, variant, ret)
            built.append((variant, argspecs, sels))
        if not built:
            raise _Refuse(hp, "; ".join(dropped) or "no realisation")
        merged: list[tuple[list[str], tuple[ArgSpec, ...], tuple[Selector, ...] | None, _Variant]] = []
        for variant, argspecs, sels in built:
            for m in merged:
                if m[1] == argspecs and m[2] == sels and (m[3].guard, m[3].at_exit) == (
                    variant.guard,
                    variant.at_exit,
                ):
                    m[0].extend(variant.syscalls)
                    break
            else:
                merged.append((list(variant.syscalls), argspecs, sels, variant))
        for calls, argspecs, sels, variant in merged:
            text = realisation
            if not text:  # a kernel function or LSM hook approximated on syscalls
                where = "sys_exit" if variant.at_exit else "sys_enter"
                text = f"via {where}_{'/'.join(calls)}: {mapping.misses}" + self.entry_only(event)
            if sels is None:
                self.notes.append(f"{source}: no selector can match at {'/'.join(calls)}: not watched")
                continue
            self.hooks.append(
                Hook(
                    source=source,
                    event=event,
                    function_name=function_name,
                    syscalls=tuple(calls),
                    args=argspecs,
                    selectors=sels,
                    realisation=text,
                    message=spec.message,
                    tags=tuple(spec.tags or ()),
                    ret=ret,
                    path=path,
                    guard=variant.guard,
                    at_exit=variant.at_exit,
                )
            )
            self.notes.append(f"{source}: {text}")
        for d in dropped:
            self.notes.append(f"{source}: {d}")

    def arg_details(self, ap: str, a: KProbeArg) -> None:
        """Refuse the arg fields apiary does not realise."""
        for fld, what in _ARG_DETAILS:
            if getattr(a, fld):
                raise _Refuse(f"{ap}.{what}", f"{what} is not supported yet")

    def variant_args(
        self,
        hp: str,
        source: str,
        spec: HookSpec,
        mapping: _Mapping,
        variant: _Variant,
        missing: Mapping[int, str],
        index_text: str,
    ) -> list[_Arg] | str:
        out: list[_Arg] = []
        slot = 0
        for pos, a in enumerate(spec.args or []):
            ap = f"{hp}.args[{pos}]"
            arg = _Arg(pos, a)
            out.append(arg)
            if a.type_ == "nop":
                arg.why_missing = "its type is nop (not read)"
                continue
            self.arg_details(ap, a)
            if a.index in missing:
                arg.why_missing = missing[a.index]
                self.note(f"{source}: {index_text} {a.index} not reported: {arg.why_missing}")
                continue
            if a.index in variant.consts:
                arg.const = variant.consts[a.index]
                self.note(
                    f"{source}: {index_text} {a.index} not reported: a constant implied by the syscall (see the "
                    "realisation); filters on it are decided when the policy is compiled"
                )
                continue
            if mapping.fields is not None:
                self.tp_arg(ap, source, a, arg, mapping.fields, variant.syscalls[0].removeprefix("__tp_"))
            else:
                found = variant.args.get(a.index)
                if found is None:
                    if mapping.no_index:
                        raise _Refuse(f"{ap}.index", mapping.no_index.format(index=a.index))
                    if variant.args and all(c == _ANY for _, c in variant.args.values()):
                        raise _Refuse(
                            f"{ap}.index", f"{index_text} {a.index} does not exist: syscalls have at most 6 arguments"
                        )
                    return f"{index_text} {a.index} has no equivalent at the entry of {'/'.join(variant.syscalls)}"
                arg.sys_index, cls = found
                if cls == _ANY:
                    arg.kind = _kind_of(a.type_, f"{ap}.type")
                elif cls == _UREG:
                    arg.kind = _uprobe_kind(a.type_, f"{ap}.type")
                elif cls == _KREG:
                    arg.kind = _kprobe_kind(a.type_, f"{ap}.type")
                else:
                    if a.type_ not in _CLASS_TYPES[cls]:
                        raise _Refuse(
                            f"{ap}.type",
                            f"arg {a.index} is {_CLASS_TEXT[cls]} here: type {a.type_} "
                            f"cannot be realised from it (use one of {', '.join(sorted(_CLASS_TYPES[cls]))})",
                        )
                    arg.kind = _CLASS_KIND.get(cls) or _kind_of(a.type_, f"{ap}.type")
                    if cls in (_CONNSOCK, _FDSOCK):
                        arg.size_index = variant.guard.fd  # the socket is the fd's
            if a.return_copy:
                if not (
                    a.type_ == "char_buf"
                    and getattr(spec, "return_", False)
                    and arg.kind == ARG_STRING
                    and mapping.fields is None
                    and index_text == "arg"
                ):
                    raise _Refuse(
                        f"{ap}.returnCopy",
                        "returnCopy needs a char_buf arg (a user buffer) of a kprobe or uprobe with return: true "
                        "(the buffer is read when the call returns)",
                    )
                arg.kind = ARG_BUF
                arg.at_return = True
                self.note(
                    f"{source}: {index_text} {a.index} (char_buf, returnCopy): read when the call returns, as many "
                    f"bytes as it returned (up to {MAX_STRING * 2 - 1}; longer is cut and flagged); filters on it "
                    "are not supported"
                )
            elif (
                a.type_ == "char_buf"
                and a.size_arg_index
                and arg.kind == ARG_STRING
                and mapping.fields is None
                and index_text == "arg"
            ):
                # the buffer's bytes, as many as the size argument says (sizeArgIndex counts from 1)
                sized = variant.args.get(a.size_arg_index - 1)
                if sized is None or sized[1] not in (_ANY, _UREG, _INT):
                    raise _Refuse(
                        f"{ap}.sizeArgIndex",
                        f"sizeArgIndex {a.size_arg_index} (arg {a.size_arg_index - 1}) is not an integer argument "
                        f"available at {'/'.join(variant.syscalls)}",
                    )
                arg.kind = ARG_BUF
                arg.size_index = sized[0]
                self.note(
                    f"{source}: {index_text} {a.index} (char_buf): up to {MAX_STRING * 2 - 1} bytes of the buffer, "
                    f"as many as arg {a.size_arg_index - 1} says (longer is cut and flagged)"
                )
            elif a.type_ == "char_buf" or (a.size_arg_index and arg.kind == ARG_STRING):
                self.note(
                    f"{source}: {index_text} {a.index} ({a.type_}) is read as a "
                    f"NUL-terminated string (at most {MAX_STRING} bytes compared; sizeArgIndex not "
                    "used)"
                )
            if a.max_data:
                self.note(f"{source}: maxData has no effect: strings are read up to 255 bytes")
            arg.slot = slot
            slot += 1
        return out

    def tp_arg(self, ap: str, source: str, a: KProbeArg, arg: _Arg, fields: tuple[TpField, ...], label: str) -> None:
        """Realise a tracepoint arg from the record's field number ``a.index``."""
        if a.index >= len(fields):
            raise _Refuse(
                f"{ap}.index",
                f"field {a.index} does not exist: {label} has {len(fields)} fields (index 0-{len(fields) - 1}, "
                "common fields included)",
            )
        f = fields[a.index]
        got = _tp_arg(f, a.type_)
        if isinstance(got, str):
            use = f"use {got}" if got else "apiary reads integer, string and pointer fields only"
            raise _Refuse(
                f"{ap}.type",
                f"field {a.index} of {label} ({f.name}) is {f.type_}: type {a.type_} cannot be read from it ({use})",
            )
        arg.kind, arg.size, resolved = got
        arg.sys_index, arg.offset = a.index, f.offset
        if resolved != a.type_:
            arg.type_ = resolved
        if arg.kind == ARG_KSTRING:
            self.note(f"{source}: field {a.index} ({f.name}, {f.type_}) is read as a string in kernel memory")
        if arg.kind == ARG_CHARS and f.size > _MAX_ARG_SIZE:
            self.note(
                f"{source}: field {a.index} ({f.name}, {f.type_}) is read up to {_MAX_ARG_SIZE - 1} bytes (the "
                "sensor's limit)"
            )

    # -- selectors ------------------------------------------------------------------------------------

    def selector_unsupported(self, sp: str, sel: KProbeSelector, ret: ArgSpec | None, ret_differs: str = "") -> None:
        for attr, name in _UNSUPPORTED_SELECTOR_FIELDS:
            if getattr(sel, attr):
                self.refuse(f"{sp}.{name}", f"{name} is not supported yet")
        rets = sel.match_return_args or []
        if rets and ret is None:
            self.refuse(f"{sp}.matchReturnArgs", "matchReturnArgs applies only on hooks with return: true")
        elif rets and ret_differs:
            self.refuse(
                f"{sp}.matchReturnArgs",
                f"the return value read is the syscall's, not the hook's own ({ret_differs}): a filter on it would not "
                "mean what it says",
            )
        elif len(rets) > 1:
            self.refuse(
                f"{sp}.matchReturnArgs",
                f"at most one matchReturnArgs filter per selector ({len(rets)} given): the sensor compares the "
                "return value with one filter",
            )
        actions = sel.match_return_actions or []
        if actions and ret is None:
            self.refuse(f"{sp}.matchReturnActions", "matchReturnActions applies only on hooks with return: true")
            return
        ok = True
        for ai, act in enumerate(actions):
            ap = f"{sp}.matchReturnActions[{ai}]"
            if act.action != "Post":
                ok = False
                self.refuse(
                    f"{ap}.action",
                    f"matchReturnActions {act.action} is not supported yet: on a return hook the matchActions are "
                    "taken when the call returns (only Post is accepted here)",
                )
            elif act.rate_limit or act.kernel_stack_trace or act.user_stack_trace or act.ima_hash:
                ok = False
                self.refuse(ap, "options of a Post in matchReturnActions are not supported yet (use matchActions)")
        if actions and ok:
            self.note(
                f"{sp.removeprefix('spec.')}.matchReturnActions: Post has no extra effect (the event is posted when "
                "the call returns)"
            )

    def selectors(
        self, hp: str, spec: HookSpec, args: list[_Arg], variant: _Variant, ret: ArgSpec | None = None
    ) -> tuple[Selector, ...] | None:
        """Selectors for one variant; None when there were selectors but none can ever match here."""
        given = list(spec.selectors or [])
        if len(given) > MAX_SELECTORS:
            raise _Refuse(f"{hp}.selectors", f"at most {MAX_SELECTORS} selectors per hook ({len(given)} given)")
        out: list[Selector] = []
        failed = False
        for si, sel in enumerate(given):
            try:
                s = self.selector(f"{hp}.selectors[{si}]", spec, sel, args, variant, ret)
            except _Refuse as r:  # keep going: every selector's problem is reported
                self.problems.append(r.problem)
                failed = True
                continue
            if s is not None:
                out.append(s)
        if given and not out and not failed:
            return None
        return tuple(out)

    def selector(
        self,
        sp: str,
        spec: HookSpec,
        sel: KProbeSelector,
        args: list[_Arg],
        variant: _Variant,
        ret: ArgSpec | None = None,
    ) -> Selector | None:
        filters: list[ArgFilter] = []
        for ai, a in enumerate(sel.match_args or []):
            fp = f"{sp}.matchArgs[{ai}]"
            found = resolve_arg(spec, a)
            if isinstance(found, str):
                raise _Refuse(f"{fp}.index", found)
            arg = args[found[0]]
            if arg.why_missing:
                raise _Refuse(fp, f"filter on arg {arg.spec.index}, which is not available: {arg.why_missing}")
            if arg.const is not None:
                if not self.const_matches(fp, a, arg.const):
                    return None  # can never match on these syscalls
                continue
            filters.append(self.arg_filter(fp, a, arg))
        if len(filters) > MAX_ARG_FILTERS:
            raise _Refuse(f"{sp}.matchArgs", f"at most {MAX_ARG_FILTERS} arg filters per selector")
        binaries = self.binaries(sp, sel)
        pids = self.pids(sp, sel)
        namespaces = self.namespaces(sp, sel)
        capabilities = self.capabilities(sp, sel)
        ret_filter = self.return_filter(sp, spec, sel, ret)
        action, signal, rate, post = self.actions(sp, sel, variant, ret)
        return Selector(
            args=tuple(filters),
            binaries=binaries,
            pids=pids,
            action=action,
            signal=signal,
            rate_limit_ns=rate,
            rate_scope=next(
                (a.rate_limit_scope for a in sel.match_actions or [] if a.action == "Post" and a.rate_limit_scope),
                "thread",
            ),
            post=post,
            namespaces=namespaces,
            capabilities=capabilities,
            ret=ret_filter,
        )

    def return_filter(self, sp: str, spec: HookSpec, sel: KProbeSelector, ret: ArgSpec | None) -> ArgFilter | None:
        """matchReturnArgs as Selector.ret (selector_unsupported refused it on other hooks, and more than one)."""
        ra = getattr(spec, "return_arg", None)
        if ret is None or ra is None or not sel.match_return_args:
            return None
        a = sel.match_return_args[0]
        rp = f"{sp}.matchReturnArgs[0]"
        if a.args:
            raise _Refuse(f"{rp}.args", "a matchReturnArgs filter compares the return value: args is not used there")
        if a.index != 0:
            raise _Refuse(f"{rp}.index", f"index {a.index}: the return value is index 0")
        return self.arg_filter(rp, a, _Arg(-1, ra, kind=ret.kind, slot=0))

    def const_matches(self, fp: str, a: ArgSelector, c: int) -> bool:
        op = a.operator
        try:
            vals = [v for v in a.values or []]
            if op in ("InRange", "NotInRange"):
                hit = any(parse_int(v.split(":")[0]) <= c <= parse_int(v.split(":")[1]) for v in vals)
                return hit if op == "InRange" else not hit
            ints = [parse_int(v) for v in vals]
        except (ValueError, IndexError):
            raise _Refuse(f"{fp}.values", "values must be integers") from None
        if op in ("Equal", "InMap"):
            return c in ints
        if op in ("NotEqual", "NotInMap"):
            return c not in ints
        if op in ("GT", "GreaterThan"):
            return any(c > v for v in ints)
        if op in ("LT", "LessThan"):
            return any(c < v for v in ints)
        if op == "Mask":
            return any(c & v for v in ints)
        raise _Refuse(f"{fp}.operator", f"operator {op} does not apply to an integer")

    def arg_filter(self, fp: str, a: ArgSelector, arg: _Arg) -> ArgFilter:
        if arg.at_return:
            raise _Refuse(fp, "filters on a returnCopy buffer are not supported: it is read when the call returns, "
                          "after the selectors ran")
        op, values, kind, ty = a.operator, list(a.values or []), arg.kind, arg.ty
        if len(values) > MAX_VALUES:
            raise _Refuse(
                f"{fp}.values",
                f"at most {MAX_VALUES} values per filter ({len(values)} given): the sensor compares at most 4",
            )
        if kind in (ARG_INT, ARG_UINT):
            if op not in _INT_OPS:
                raise _Refuse(
                    f"{fp}.operator",
                    f"operator {op} is not supported on an integer arg (use Equal, "
                    "NotEqual, GT, LT, Mask, InRange or NotInRange)",
                )
            out: list[int | str] = []
            for vi, v in enumerate(values):
                vp = f"{fp}.values[{vi}]"
                if v.startswith("list:"):
                    raise _Refuse(vp, "list values are only supported for the raw_syscalls id")
                try:
                    if op in ("InRange", "NotInRange") or ":" in v:
                        lo, _, hi = v.partition(":")
                        a_, b_ = parse_int(lo), parse_int(hi or lo)
                        nums = [a_, b_]
                        item: int | str = f"{min(a_, b_)}:{max(a_, b_)}"
                    else:
                        nums = [parse_int(v)]
                        item = nums[0]
                except ValueError:
                    raise _Refuse(vp, f"{v!r} is not an integer") from None
                if kind == ARG_UINT and any(n < 0 for n in nums):
                    what = f"arg type {ty}" if ty in UNSIGNED_TYPES else "the field read"
                    raise _Refuse(vp, f"{v!r} is negative but {what} is unsigned")
                if any(not -(2**63) <= n < 2**64 for n in nums):
                    raise _Refuse(vp, f"{v!r} does not fit in 64 bits")
                out.append(item)
            mop = _INT_OPS[op]
            if ":" in "".join(str(x) for x in out) and mop in ("Equal", "NotEqual"):
                mop = "InRange" if mop == "Equal" else "NotInRange"
                out = [x if isinstance(x, str) else f"{x}:{x}" for x in out]
            return ArgFilter(arg.slot, mop, tuple(out))
        if kind in STRING_KINDS:
            if op not in _STRING_OPS:
                raise _Refuse(
                    f"{fp}.operator",
                    f"operator {op} is not supported on a {ty} arg (use Equal, NotEqual, "
                    "Prefix, NotPrefix, Postfix or NotPostfix)",
                )
            strs: list[int | str] = []
            for vi, v in enumerate(values):
                s = v.rstrip("\x00") if ty == "string" else v
                n = len(s.encode())
                if n > MAX_STRING:
                    raise _Refuse(
                        f"{fp}.values[{vi}]", f"string values are compared on at most {MAX_STRING} bytes ({n} given)"
                    )
                strs.append(s)
            return ArgFilter(arg.slot, op, tuple(strs))
        if kind in (ARG_SOCKADDR, ARG_KSOCKADDR, ARG_SOCK, ARG_SKB, ARG_CONNSOCK, ARG_SOCKETPTR):
            table = (
                _KSOCK_OPS
                if kind in (ARG_SOCK, ARG_SKB)
                else _CONNSOCK_OPS
                if kind in (ARG_CONNSOCK, ARG_SOCKETPTR)
                else _SOCKADDR_OPS
                if ty == "sockaddr"
                else _SOCK_OPS
            )
            if op not in table:
                if op in ("SAddr", "NotSAddr", "SPort", "NotSPort", "SPortPriv", "NotSportPriv"):
                    why = "the source address and port are not known at connect() entry"
                elif op in ("Protocol", "State"):
                    why = f"{op} is not known from the user's sockaddr at connect() entry"
                else:
                    why = f"operator {op} does not apply to a socket address"
                raise _Refuse(f"{fp}.operator", f"{op} not supported: {why}")
            mop = table[op]
            if op.endswith("Priv"):
                return ArgFilter(arg.slot, mop, ("0:1023",))
            items: list[int | str] = []
            for vi, v in enumerate(values):
                vp = f"{fp}.values[{vi}]"
                if mop in ("DAddr", "NotDAddr", "SAddr", "NotSAddr"):
                    try:
                        net = ipaddress.ip_network(v.strip(), strict=False)
                    except ValueError:
                        raise _Refuse(vp, f"{v!r} is not an IP address or CIDR") from None
                    if net.version != 4:
                        raise _Refuse(vp, f"IPv6 address {v}: not supported yet (the sensor reads IPv4 sockaddrs)")
                    items.append(str(net))
                elif mop == "Protocol":
                    proto = _PROTOCOLS.get(v.strip().upper()) if not v.strip().isdigit() else int(v)
                    if proto is None:
                        raise _Refuse(vp, f"unknown protocol {v!r} (IPPROTO_TCP, IPPROTO_UDP, … or a number)")
                    items.append(proto)
                elif mop in ("DPort", "NotDPort", "SPort", "NotSPort"):
                    try:
                        lo, hi = parse_port_range(v)
                    except ValueError:
                        raise _Refuse(vp, f"{v!r} is not a port or a min:max port range") from None
                    items.append(lo if lo == hi else f"{lo}:{hi}")
                else:
                    fam = _FAMILIES.get(v.strip().upper()) if not v.strip().isdigit() else int(v)
                    if fam is None:
                        raise _Refuse(vp, f"unknown address family {v!r} (AF_INET, AF_INET6, AF_UNIX or a number)")
                    items.append(fam)
            return ArgFilter(arg.slot, mop, tuple(items))
        raise _Refuse(f"{fp}.index", f"filters on a {ty} arg are not supported")

    def binaries(self, sp: str, sel: KProbeSelector) -> BinaryFilter | None:
        if not sel.match_binaries:
            return None
        b = sel.match_binaries[0]
        bp = f"{sp}.matchBinaries[0]"
        if b.operator not in ("In", "NotIn", "Prefix", "NotPrefix"):
            raise _Refuse(
                f"{bp}.operator", f"matchBinaries {b.operator} is not supported yet (In, NotIn, Prefix, NotPrefix)"
            )
        if len(b.values) > MAX_VALUES:
            raise _Refuse(f"{bp}.values", f"at most {MAX_VALUES} binaries per selector ({len(b.values)} given)")
        for vi, v in enumerate(b.values):
            if len(v.encode()) > MAX_BINARY - 1:
                raise _Refuse(f"{bp}.values[{vi}]", f"binary paths are compared on at most {MAX_BINARY - 1} bytes")
        if not b.values:
            return None
        return BinaryFilter(b.operator, tuple(b.values), b.follow_children)

    def pids(self, sp: str, sel: KProbeSelector) -> PidFilter | None:
        entries = sel.match_pids or []
        if not entries:
            return None
        if len(entries) > 1:
            if any(
                p.operator != "NotIn"
                or p.follow_forks != entries[0].follow_forks
                or p.is_namespace_pid != entries[0].is_namespace_pid
                for p in entries
            ):
                raise _Refuse(
                    f"{sp}.matchPIDs",
                    "only one matchPIDs filter per selector (several NotIn filters with "
                    "the same followForks are merged)",
                )
        values: list[int] = []
        for p in entries:
            values += [v for v in p.values if v not in values]
        if len(values) > MAX_VALUES:
            raise _Refuse(f"{sp}.matchPIDs", f"at most {MAX_VALUES} PIDs per selector ({len(values)} given)")
        return PidFilter(entries[0].operator, tuple(values), entries[0].follow_forks, entries[0].is_namespace_pid)

    def namespaces(self, sp: str, sel: KProbeSelector) -> tuple[NamespaceFilter, ...]:
        entries = sel.match_namespaces or []
        if len(entries) > MAX_NAMESPACE_FILTERS:
            raise _Refuse(
                f"{sp}.matchNamespaces",
                f"at most {MAX_NAMESPACE_FILTERS} matchNamespaces entries per selector ({len(entries)} given)",
            )
        out: list[NamespaceFilter] = []
        for i, e in enumerate(entries):
            np_ = f"{sp}.matchNamespaces[{i}]"
            if not e.values:
                raise _Refuse(f"{np_}.values", "matchNamespaces needs at least one value (an inode number or host_ns)")
            if len(e.values) > MAX_VALUES:
                raise _Refuse(f"{np_}.values", f"at most {MAX_VALUES} namespaces per entry ({len(e.values)} given)")
            if "host_ns" in e.values:
                self.note(
                    "matchNamespaces host_ns: the namespace of pid 1 on the node, resolved when the policy is applied"
                )
            out.append(NamespaceFilter(e.namespace, e.operator, tuple(e.values)))
        return tuple(out)

    def capabilities(self, sp: str, sel: KProbeSelector) -> CapabilityFilter | None:
        entries = sel.match_capabilities or []
        if not entries:
            return None
        if len(entries) > 1:
            raise _Refuse(
                f"{sp}.matchCapabilities", f"at most one matchCapabilities entry per selector ({len(entries)} given)"
            )
        c = entries[0]
        cp = f"{sp}.matchCapabilities[0]"
        if c.is_namespace_capability:
            raise _Refuse(
                f"{cp}.isNamespaceCapability",
                "isNamespaceCapability is not supported yet (the sensor checks the capability set, not whether the "
                "process is in the host user namespace)",
            )
        if not c.values:
            raise _Refuse(f"{cp}.values", "matchCapabilities needs at least one capability")
        mask = 0
        for v in c.values:
            mask |= 1 << _CAP_BITS[v.strip().upper()]
        return CapabilityFilter(c.type_, c.operator, mask)

    def actions(
        self, sp: str, sel: KProbeSelector, variant: _Variant, ret: ArgSpec | None = None
    ) -> tuple[str, int, int, bool]:
        action, signal, rate, post = "Post", 0, 0, True
        where = variant.syscalls[0]
        for ai, act in enumerate(sel.match_actions or []):
            ap = f"{sp}.matchActions[{ai}]"
            name = act.action
            if name == "Post":
                self.post_options(ap, act)
                rate = max(rate, act.rate_limit_seconds() * 1_000_000_000)
                continue
            if name == "NoPost":
                post = False
                continue
            if name == "Override":
                self.override_possible(ap, where, ret)
                err = abs(int(act.arg_error or 1))
                if action != "Post":
                    raise _Refuse(f"{ap}.action", f"only one enforcement action per selector ({action} already)")
                action, signal = "Override", err  # for Override, `signal` carries the errno returned
                continue
            if name in ("Sigkill", "Signal", "DenyConnect"):
                if name == "DenyConnect" and ret is not None:
                    raise _Refuse(
                        f"{ap}.action",
                        "DenyConnect is not possible on a return hook: the hook decides when the call has returned, "
                        "after the connection was attempted",
                    )
                if name == "DenyConnect" and variant.syscalls != ("connect",):
                    raise _Refuse(
                        f"{ap}.action",
                        "DenyConnect applies only to hooks realised on connect() (it fails "
                        "the call with EPERM through the endpoint's cgroup hook)",
                    )
                sig = 9 if name == "Sigkill" else act.arg_sig if name == "Signal" else 0
                if name == "Signal" and not 1 <= sig <= 64:
                    raise _Refuse(f"{ap}.argSig", f"Signal needs argSig, a signal number 1-64 (not {act.arg_sig})")
                if action != "Post" and (action, signal) != (name, sig):
                    raise _Refuse(f"{ap}.action", f"only one enforcement action per selector ({action} already)")
                if ret is not None:
                    self.note(
                        f"{ap.removeprefix('spec.')}: {name} acts when the call returns: its effect has already "
                        "happened"
                    )
                action, signal = name, sig
                continue
            raise _Refuse(f"{ap}.action", f"action {name} is not supported yet")
        if not post and action == "Post":
            action = "NoPost"
        return action, signal, rate, post

    def override_possible(self, ap: str, where: str, ret: ArgSpec | None) -> None:
        """Refuse an Override the realisation ``where`` (an attach name) cannot carry out."""
        if ret is not None:
            raise _Refuse(
                f"{ap}.action",
                "Override is not possible on a return hook: the call has already returned (use Sigkill, or Override "
                "on a BPF-LSM hook)",
            )
        if where.startswith("__uprobe_"):
            raise _Refuse(f"{ap}.action", "Override on uprobes (register rewrite) is not supported")
        if where.startswith("__tp_"):
            raise _Refuse(f"{ap}.action", "Override is not available on tracepoints")
        if not (self.f.lsm or self.f.override):
            raise _Refuse(
                f"{ap}.action",
                "Override needs BPF-LSM or kernel error injection; this kernel has neither: use Sigkill",
            )
        if where.startswith("__kprobe_"):
            raise _Refuse(
                f"{ap}.action",
                f"Override is supported on BPF-LSM hooks (lsmhooks file_open, file_permission, bprm_check_security) "
                f"in this version; this hook is realised by a kprobe on {where.removeprefix('__kprobe_')}, where "
                "apiary does not inject errors (use Sigkill)",
            )
        if not where.startswith("__lsm_"):
            raise _Refuse(
                f"{ap}.action",
                "Override is supported on BPF-LSM hooks (lsmhooks file_open, file_permission, bprm_check_security) "
                "in this version; this hook is realised at syscall entry (use Sigkill)",
            )

    def post_options(self, ap: str, act: ActionSelector) -> None:
        for fld, name in (
            ("kernel_stack_trace", "kernelStackTrace"),
            ("user_stack_trace", "userStackTrace"),
            ("ima_hash", "imaHash"),
        ):
            if getattr(act, fld):
                raise _Refuse(f"{ap}.{name}", f"{name} is not supported yet")
        if act.rate_limit_scope and not act.rate_limit:
            self.note(f"{ap}.rateLimitScope has no effect without rateLimit")


def compile_tracing_policy(policy: TracingPolicyBase, features: KernelFeatures) -> CompiledTracingPolicy:
    """Realise a loaded policy on a kernel with ``features``; raise :class:`PolicyError` (the whole policy is
    refused) listing every hook or field that has no faithful realisation, each with its field path."""
    c = _Compiler(policy, features)
    result = c.run()
    if c.problems:
        raise PolicyError(list(dict.fromkeys(c.problems)))  # a problem found on several variants is listed once
    return result
