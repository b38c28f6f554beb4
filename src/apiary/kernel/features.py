"""What the running kernel offers the tracing sensor, found once at start-up and passed to the compiler as a value.

:class:`KernelFeatures` says which attach points apiary may use (kprobes, BPF-LSM, error injection, attach
cookies on raw tracepoints, the architecture's syscall symbol prefix), which syscalls have a
``syscalls/sys_enter_<name>`` tracepoint, and where tracefs is, so that the TracingPolicy compiler
(:mod:`apiary.tracing.compile`) does no I/O of its own: every read of ``/sys/kernel/tracing``, ``uname`` or the
preflight probes happens here. Imports nothing from apiary at module level (the preflight probes are imported
only when :func:`kernel_features` runs them).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apiary.kernel.preflight import Report

__all__ = [
    "X86_64_SYSCALLS",
    "KernelFeatures",
    "TP_NAME",
    "TpField",
    "features_from_tracefs",
    "kernel_at_least",
    "kernel_features",
    "parse_tracepoint_format",
    "syscalls_from_tracefs",
    "syscall_prefix",
    "tracepoint_fields",
]

TRACEFS = "/sys/kernel/tracing"

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
    arch_prefix: str = "__x64_"  # the prefix of the syscall symbols (__x64_sys_write, __arm64_sys_write)

    def describe(self) -> str:
        """E.g. ``no kprobes (CONFIG_KPROBES off), fentry/BPF-LSM refused``."""
        parts = ["kprobes" if self.kprobes else "no kprobes (CONFIG_KPROBES off)"]
        refused = [n for n, ok in (("fentry", self.fentry), ("BPF-LSM", self.lsm)) if not ok]
        if refused:
            parts.append("/".join(refused) + " refused")
        else:
            parts.append("fentry and BPF-LSM")
        return ", ".join(parts)

    def tracepoint_fields(self, subsys: str, event: str) -> list[TpField] | None:
        """The record fields of tracepoint ``subsys/event`` as this kernel's tracefs describes them (read when
        asked: a policy names few of the thousands of tracepoints); None when there is no such tracepoint."""
        return tracepoint_fields(self.tracefs, subsys, event)


def syscall_prefix(machine: str | None = None) -> str:
    """The prefix of syscall symbols on this machine's architecture (or ``machine``, as ``uname -m`` says)."""
    return {"aarch64": "__arm64_", "arm64": "__arm64_"}.get(machine or platform.machine(), "__x64_")


def syscalls_from_tracefs(root: str = TRACEFS) -> frozenset[str]:
    """Syscall names that have a ``syscalls/sys_enter_<name>`` tracepoint; empty when tracefs is unreadable."""
    try:
        names = os.listdir(os.path.join(root, "events", "syscalls"))
    except OSError:
        return frozenset()
    return frozenset(n.removeprefix("sys_enter_") for n in names if n.startswith("sys_enter_"))


def features_from_tracefs(
    root: str = TRACEFS,
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
        arch_prefix=syscall_prefix(),
    )


def kernel_features(preflight: Report | None = None) -> KernelFeatures:
    """What the running kernel offers, found by trying (apiary preflight's probes; run now when not given)."""
    if preflight is None:
        from apiary.kernel.preflight import run_preflight

        preflight = run_preflight()
    rep = preflight

    def ok(name: str) -> bool:
        c = rep.get(name)
        return bool(c and c.ok)

    base = features_from_tracefs()
    return KernelFeatures(
        kprobes=ok("kprobe"),
        fentry=ok("fentry"),
        lsm=ok("lsm") and ok("lsm_active"),
        override=False,
        syscalls=base.syscalls,
        tracefs=base.tracefs,
        raw_tp_cookie=base.raw_tp_cookie,
        arch_prefix=base.arch_prefix,
    )


def kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether the running kernel (or ``release``, e.g. ``6.18.44-fc``) is at least major.minor."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (major, minor)


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
TP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def parse_tracepoint_format(text: str) -> list[TpField]:
    """The fields of a tracefs ``format`` file, in record order."""
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
    if not root or not TP_NAME.match(subsys) or not TP_NAME.match(event) or ".." in subsys + event:
        return None
    try:
        with open(os.path.join(root, "events", subsys, event, "format")) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    return parse_tracepoint_format(text)
