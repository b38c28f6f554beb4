"""The realisation table: which kernel function or LSM hook is realised by which attach points, with which guards.

A :class:`Realisation` is one way to watch a kernel function or LSM hook: one or more :class:`Variant` rows, each
a set of attach points (syscalls, or a pseudo name such as ``__kprobe_<function>`` / ``__lsm_<hook>``), which
kernel argument each syscall argument stands for (its class: a file from an fd, a user buffer, a kernel struct…),
the constants a syscall implies, and the :class:`~apiary.tracing.types.Guard` the sensor checks so that a hook
fires only where the kernel calls the function. The tables: kernel functions and LSM hooks approximated on the
syscalls that call them (used on kernels without kprobes / BPF-LSM), and the direct kprobe and BPF-LSM
realisations. Pure data; docs/tracing.md explains each row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from apiary.kernel.features import TpField

from .crd import INT_TYPES
from .models import KProbeArg
from .types import (
    ARG_BPRM,
    ARG_CONNSOCK,
    ARG_CRED,
    ARG_FD,
    ARG_FILEPTR,
    ARG_KSOCKADDR,
    ARG_SOCK,
    ARG_SOCKADDR,
    ARG_SOCKETPTR,
    ARG_STRING,
    REG_CRED,
    REG_EXE,
    REG_NONE,
    REG_RET,
    Guard,
)

# classes of kernel arguments a mapped function has at the syscall, and the Tetragon types each accepts
AC_FILE = "file"  # an fd resolved to its file path in the kernel
AC_BUF = "buf"  # a user buffer
AC_INT = "int"
AC_KFILE = "kfile"  # a struct file in kernel memory (the argument of an LSM hook or kprobed function)
AC_KBINPRM = "kbinprm"  # a struct linux_binprm, resolved to its file's path (the sensor reads bprm->file)
AC_SOCKADDR = "sockaddr"  # the user's struct sockaddr
AC_KSOCK = "ksock"  # a struct sock in kernel memory (a kprobed function's argument)
AC_KCRED = "kcred"  # a struct cred in kernel memory
AC_CONNSOCK = "connsock"  # connect(): the fd's socket with the destination of the user's sockaddr
AC_FDSOCK = "fdsock"  # connect(): the fd's struct socket as it is (not connected yet)
AC_KBPRM = "kbprm"  # a struct linux_binprm in kernel memory (a kprobed function's argument)
AC_KSOCKET = "ksocket"  # a struct socket in kernel memory (a kprobed function's argument)
AC_KSOCKADDR = "ksockaddr"  # a struct sockaddr in kernel memory (a kprobed function's argument)
AC_ANY = "any"  # direct syscall arguments: the policy's type decides
AC_UREG = "ureg"  # a uprobe's argument register: the policy's type decides (user-space values)
AC_KREG = "kreg"  # a kprobed function's argument register: the policy's type decides (kernel values)

ARG_CLASS_TYPES: dict[str, frozenset[str]] = {
    AC_FILE: frozenset({"file", "fd"}),
    AC_KFILE: frozenset({"file"}),
    AC_KBINPRM: frozenset({"linux_binprm", "file"}),
    AC_BUF: frozenset({"char_buf", "string"}),
    AC_INT: frozenset(INT_TYPES),
    AC_SOCKADDR: frozenset({"sock", "sockaddr"}),
    AC_KSOCK: frozenset({"sock"}),
    AC_CONNSOCK: frozenset({"sock"}),
    AC_FDSOCK: frozenset({"socket"}),
    AC_KBPRM: frozenset({"linux_binprm"}),
    AC_KSOCKET: frozenset({"socket"}),
    AC_KSOCKADDR: frozenset({"sockaddr"}),
    AC_KCRED: frozenset({"cred"}),
}
ARG_CLASS_TEXT = {
    AC_KFILE: "a file (a struct file in kernel memory)",
    AC_KBINPRM: "the program being executed (struct linux_binprm, read as its file's path)",
    AC_FILE: "a file (its fd at the syscall)",
    AC_BUF: "a user buffer",
    AC_INT: "an integer",
    AC_SOCKADDR: "a socket address (the user's sockaddr)",
    AC_KSOCK: "a socket (struct sock in kernel memory)",
    AC_KCRED: "credentials (struct cred in kernel memory)",
    AC_CONNSOCK: "a socket (the connect() fd's socket, with the destination of the user's sockaddr)",
    AC_FDSOCK: "a struct socket (the connect() fd's socket, before it connects)",
    AC_KBPRM: "the program being executed (struct linux_binprm in kernel memory, read as its file's path)",
    AC_KSOCKET: "a struct socket (in kernel memory)",
    AC_KSOCKADDR: "a socket address (a struct sockaddr in kernel memory)",
}
ARG_CLASS_KIND = {
    AC_FILE: ARG_FD,
    AC_BUF: ARG_STRING,
    AC_SOCKADDR: ARG_SOCKADDR,
    AC_KFILE: ARG_FILEPTR,
    AC_KBINPRM: ARG_FILEPTR,
    AC_KSOCK: ARG_SOCK,
    AC_KCRED: ARG_CRED,
    AC_CONNSOCK: ARG_CONNSOCK,
    AC_FDSOCK: ARG_CONNSOCK,
    AC_KBPRM: ARG_BPRM,
    AC_KSOCKET: ARG_SOCKETPTR,
    AC_KSOCKADDR: ARG_KSOCKADDR,
}


@dataclass(frozen=True)
class Variant:
    """The attach points on which a realisation reads the same args under the same guard."""

    attach_points: tuple[str, ...]  # syscall names, or __kprobe_/__lsm_/__tp_/__rawtp_/__uprobe_ pseudo names
    args: Mapping[int, tuple[int, str]]  # kernel arg index -> (syscall arg index, class)
    consts: Mapping[int, int] = field(default_factory=dict)  # kernel arg index -> its value on these syscalls
    guard: Guard = field(default_factory=Guard)  # when these syscalls call the function (checked in the kernel)
    at_exit: bool = False  # evaluated at the syscalls' exit (args from REG_RET / REG_CRED)


@dataclass(frozen=True)
class Realisation:
    """One way to watch a kernel function, LSM hook, syscall or tracepoint, and what it misses."""

    variants: tuple[Variant, ...]
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
_OPEN_MAPPING = Realisation(
    (Variant(_OPENS, {0: (REG_RET, AC_FILE)}, guard=_G_OPENED_FILE, at_exit=True),),
    _OPEN_TEXT,
    ret=_SYS_RET,
    ret_differs="the hook returns a permission decision (0 or -errno), the open syscalls return the new fd or -errno",
)
_EXEC_MAPPING = Realisation(
    (Variant(("execve", "execveat"), {0: (REG_EXE, AC_KBINPRM)}, guard=_g("ret_ok"), at_exit=True),),
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

SYSCALL_REALISATIONS: dict[str, Realisation] = {
    "vfs_write": Realisation(
        (
            Variant(("write",), {0: (0, AC_FILE), 1: (1, AC_BUF), 2: (2, AC_INT)}, guard=_G_RW),
            Variant(("pwrite64",), {0: (0, AC_FILE), 1: (1, AC_BUF), 2: (2, AC_INT)}, guard=_G_PWRITE),
        ),
        _RW_TEXT.format(what="write"),
        ret="the syscall's return value (bytes written or -errno), read at its exit (sys_exit)",
    ),
    "vfs_read": Realisation(
        (
            Variant(("read",), {0: (0, AC_FILE), 2: (2, AC_INT)}, guard=_G_RW),
            Variant(("pread64",), {0: (0, AC_FILE), 2: (2, AC_INT)}, guard=_G_PREAD),
        ),
        _RW_TEXT.format(what="read"),
        {1: "the buffer is not filled yet at syscall entry"},
        ret="the syscall's return value (bytes read or -errno), read at its exit (sys_exit)",
    ),
    "security_file_permission": Realisation(
        (
            Variant(("write", "writev"), {0: (0, AC_FILE)}, {1: 2}, guard=_G_PERM_W),
            Variant(("pwrite64", "pwritev"), {0: (0, AC_FILE)}, {1: 2}, guard=_G_PERM_PW),
            Variant(("pwritev2",), {0: (0, AC_FILE)}, {1: 2}, guard=_G_PERM_PW2),
            Variant(("read", "readv"), {0: (0, AC_FILE)}, {1: 4}, guard=_G_PERM_R),
            Variant(("pread64", "preadv"), {0: (0, AC_FILE)}, {1: 4}, guard=_G_PERM_PR),
            Variant(("preadv2",), {0: (0, AC_FILE)}, {1: 4}, guard=_G_PERM_PR2),
        ),
        _PERM_TEXT,
        ret=_SYS_RET,
        ret_differs="security_file_permission returns a permission decision (0 or -errno), the read/write syscalls "
        "return a byte count or -errno",
    ),
    "fd_install": Realisation(
        (Variant(_OPENS, {0: (REG_RET, AC_INT), 1: (REG_RET, AC_FILE)}, guard=_G_OPENED, at_exit=True),),
        "only the fds of the open syscalls (open, creat, openat, openat2, open_by_handle_at; O_PATH ones included), "
        "not those of socket, accept, pipe, dup, memfd, pidfd…; the file resolved from the returned fd to its full "
        "path; " + _AFTER,
        no_ret="fd_install returns nothing (void)",
    ),
    "security_file_open": _OPEN_MAPPING,
    "tcp_connect": Realisation(
        (Variant(("connect",), {0: (1, AC_CONNSOCK)}, guard=_g("file", "socket", "addr", "tcp", fd=0, addr=1)),),
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
    "security_socket_connect": Realisation(
        (
            Variant(
                ("connect",),
                {0: (REG_NONE, AC_FDSOCK), 1: (1, AC_SOCKADDR), 2: (2, AC_INT)},
                guard=_g("file", "socket", "addr", fd=0, addr=1),
            ),
        ),
        "only the connect() syscall on a socket fd with a sockaddr the kernel could copy; kernel-initiated "
        "connections not seen; the socket is the fd's, read at connect() entry",
        ret=_SYS_RET,
        ret_differs="security_socket_connect returns a permission decision (0 or -errno), connect() the outcome of "
        "the whole call",
    ),
    "commit_creds": Realisation(
        (Variant(_CREDS, {0: (REG_CRED, AC_KCRED)}, guard=_g("cred_new"), at_exit=True),),
        "at the exit of the syscalls that install credentials (set*id, setfs*id, setgroups, capset, unshare, setns, "
        "prctl, keyctl, add_key, request_key, execve, execveat) when the task's credentials are no longer those it "
        "had at the entry: the credentials then in place are what commit_creds installed; commits by the kernel "
        "outside these syscalls not seen, several commits in one syscall are one event, a multi-threaded exec by a "
        "non-leader thread not seen; " + _AFTER,
        no_ret="commit_creds always returns 0; the syscall's return value means something else",
    ),
    "security_bprm_check": _EXEC_MAPPING,
}
LSM_SYSCALL_REALISATIONS: dict[str, Realisation] = {"file_open": _OPEN_MAPPING, "bprm_check_security": _EXEC_MAPPING}
_KRET = "the function's return value (kretprobe)"
# where the kernel has kprobes: the function itself (pseudo-syscall names the sensor's kprobe program)
KPROBE_REALISATIONS: dict[str, Realisation] = {
    "vfs_write": Realisation(
        (Variant(("__kprobe_vfs_write",), {0: (0, AC_KFILE), 2: (2, AC_INT)}),),
        "every write through vfs_write, kernel-internal ones included",
        ret=_KRET,
    ),
    "vfs_read": Realisation(
        (Variant(("__kprobe_vfs_read",), {0: (0, AC_KFILE), 2: (2, AC_INT)}),),
        "every read through vfs_read, kernel-internal ones included",
        ret=_KRET,
    ),
    "security_file_permission": Realisation(
        (Variant(("__kprobe_security_file_permission",), {0: (0, AC_KFILE), 1: (1, AC_INT)}),),
        "every permission check of a file access (reads and writes, kernel-internal ones included); the mask is "
        "read from the call",
        ret=_KRET,
    ),
    "security_file_open": Realisation(
        (Variant(("__kprobe_security_file_open",), {0: (0, AC_KFILE)}),),
        "every open of a file, by any path (also kernel-internal opens); the file's full path",
        ret=_KRET,
    ),
    "tcp_connect": Realisation(
        (Variant(("__kprobe_tcp_connect",), {0: (0, AC_KSOCK)}),),
        "every TCP connect, kernel-initiated ones included; the socket after the source address and port are chosen",
        ret=_KRET,
    ),
    "commit_creds": Realisation(
        (Variant(("__kprobe_commit_creds",), {0: (0, AC_KCRED)}),),
        "every installation of new credentials (set*id, exec of set-uid binaries, capset…); the new credentials",
        no_ret="commit_creds always returns 0",
    ),
    "override_creds": Realisation(
        (Variant(("__kprobe_override_creds",), {0: (0, AC_KCRED)}),),
        "every temporary credential override by the kernel; the credentials put in place",
        no_ret="override_creds returns the old credentials (a pointer)",
    ),
    "revert_creds": Realisation(
        (Variant(("__kprobe_revert_creds",), {0: (0, AC_KCRED)}),),
        "every revert of a temporary override; the credentials restored",
        no_ret="revert_creds returns nothing (void)",
    ),
    "security_socket_connect": Realisation(
        (Variant(("__kprobe_security_socket_connect",), {0: (0, AC_KSOCKET), 1: (1, AC_KSOCKADDR), 2: (2, AC_INT)}),),
        "every connect of a socket, before the protocol's checks (connect(), io_uring, kernel users); the socket "
        "as it is before it connects, the address as the kernel copied it",
        ret=_KRET,
    ),
    "security_bprm_check": Realisation(
        (Variant(("__kprobe_security_bprm_check",), {0: (0, AC_KBPRM)}),),
        "every exec's check, decided before the new program runs (scripts: the script, then its interpreter); the "
        "binprm is read as its file's full path",
        ret=_KRET,
    ),
    "fd_install": Realisation(
        (Variant(("__kprobe_fd_install",), {0: (0, AC_INT), 1: (1, AC_KFILE)}),),
        "every new fd of the process (open, accept, pipe, dup, socket…); the file's full path",
        no_ret="fd_install returns nothing (void)",
    ),
}
# where the kernel has BPF-LSM: the hook itself (the pseudo-syscall names the sensor's LSM programs)
LSM_REALISATIONS: dict[str, Realisation] = {
    "file_open": Realisation(
        (Variant(("__lsm_file_open",), {0: (0, AC_KFILE)}),),
        "every open of the file, by any path (also kernel-internal opens), decided before it opens",
    ),
    "file_permission": Realisation(
        (Variant(("__lsm_file_permission",), {0: (0, AC_KFILE), 1: (1, AC_INT)}),),
        "every permission check of a file access (reads and writes, kernel-internal ones included), decided before "
        "the access",
    ),
    "bprm_check_security": Realisation(
        (Variant(("__lsm_bprm_check_security",), {0: (0, AC_KBINPRM)}),),
        "every exec (scripts: the script, then its interpreter), decided before the new program runs; the binprm is "
        "read as its file's full path",
    ),
}
KERNEL_FUNCTION_NAMES = frozenset(SYSCALL_REALISATIONS)


@dataclass
class RealisedArg:
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
