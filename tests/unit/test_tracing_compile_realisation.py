"""The TracingPolicy compiler: how each hook is realised at syscall entry (the realisation table), and the
kernel features it is compiled for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tracing_compile_helpers import HERE, NO_KPROBE, VM, build, refusal, refused

from apiary.kernel.features import KernelFeatures, features_from_tracefs, syscalls_from_tracefs
from apiary.tracing.types import (
    ARG_CONNSOCK,
    ARG_CRED,
    ARG_FD,
    ARG_FILEPTR,
    ARG_INT,
    ARG_KSOCKADDR,
    ARG_SOCKADDR,
    ARG_SOCKETPTR,
    ARG_STRING,
    MAX_HOOKS_PER_SYSCALL,
    REG_CRED,
    REG_EXE,
    REG_NONE,
    REG_RET,
    ArgFilter,
    ArgSpec,
    BinaryFilter,
    Guard,
    Selector,
)

# --- realisation table -----------------------------------------------------------------------------


def test_syscall_kprobe_at_syscall_entry() -> None:
    c = build("""
        kprobes:
        - call: sys_write
          args: [{index: 0, type: fd}, {index: 2, type: size_t, label: count}]
        """)
    [h] = c.hooks
    assert (h.source, h.event, h.function_name, h.attach_points) == (
        "kprobes[0] sys_write", "process_kprobe", "__x64_sys_write", ("write",))
    assert h.args == (ArgSpec(0, ARG_FD, "", "fd"), ArgSpec(2, ARG_INT, "count", "size_t"))
    assert h.selectors == ()
    assert c.notes == ["kprobes[0] sys_write: syscall entry of write"]
    assert (c.name, c.namespace, c.kind, c.mode, c.pod_selector) == ("test", "", "TracingPolicy", "enforce", None)


def test_a_kill_at_syscall_entry_says_the_syscall_may_complete() -> None:
    c = build("""
        kprobes:
        - call: sys_mkdirat
          selectors: [{matchActions: [{action: Sigkill}]}]
        """)
    assert c.notes[0] == "kprobes[0] sys_mkdirat: syscall entry of mkdirat"
    assert any(n.startswith("kprobes[0] sys_mkdirat: Sigkill/Signal are sent at the entry of mkdirat") and
               "may have done its work" in n for n in c.notes), c.notes
    assert len(build("kprobes: [{call: sys_mkdirat}]").notes) == 1  # a Post says nothing of it


def test_arch_prefixed_syscall_and_missing_syscall() -> None:
    [h] = build("kprobes: [{call: __x64_sys_openat}]").hooks
    assert h.attach_points == ("openat",) and h.function_name == "__x64_sys_openat"
    assert refusal("kprobes: [{call: sys_nosuch}]") == \
        "unsupported: spec.kprobes[0].call (no syscall nosuch on this kernel (no syscalls/sys_enter_nosuch tracepoint))"
    assert refusal("kprobes: [{call: __ia32_sys_dup}]") == \
        "unsupported: spec.kprobes[0].call (__ia32_sys_dup: 32-bit compat syscalls are not supported yet)"
    c = build("kprobes: [{call: sys_nosuch, ignore: {callNotFound: true}}]")
    assert c.hooks == [] and "skipped (ignore.callNotFound)" in c.notes[0]


def test_syscall_true_needs_a_syscall_symbol() -> None:
    assert refusal("kprobes: [{call: vfs_write}]") == (
        "unsupported: spec.kprobes[0].call (vfs_write is not a syscall symbol: with syscall: true the call is "
        "sys_<name> (e.g. sys_write); vfs_write is a kernel function: set syscall: false)")


VFS_WRITE = """
kprobes:
- call: vfs_write
  syscall: false
  args: [{index: 0, type: file}]
"""


def test_vfs_write_on_write_and_pwrite64_only_where_the_kernel_calls_it() -> None:
    c = build(VFS_WRITE)
    write, pwrite = c.hooks
    assert write.attach_points == ("write",) and pwrite.attach_points == ("pwrite64",)
    assert write.function_name == "vfs_write" and write.args == (ArgSpec(0, ARG_FD, "", "file"),)
    # write: any fd fdget() accepts; pwrite64: also pos (arg 3) >= 0 on a seekable file (FMODE_PWRITE)
    assert write.guard == Guard(frozenset({"file"}), fd=0)
    assert pwrite.guard == Guard(frozenset({"file", "pwrite"}), fd=0, pos=3)
    assert not write.at_exit and not pwrite.at_exit
    assert c.notes[0].startswith("kprobes[0] vfs_write: via sys_enter_write: the file resolved from the fd; "
                                 "kernel-internal writes")
    assert "writev/pwritev/pwritev2 not watched: they go through vfs_writev and never call vfs_write" in c.notes[0]


def test_vfs_write_count_on_both_variants() -> None:
    spec = "kprobes: [{call: vfs_write, syscall: false, args: [{index: 0, type: file}, {index: 2, type: size_t}]%s}]"
    c = build(spec % "")
    assert [(h.attach_points, h.args[1]) for h in c.hooks] == [
        (("write",), ArgSpec(2, ARG_INT, "", "size_t")), (("pwrite64",), ArgSpec(2, ARG_INT, "", "size_t"))]
    assert [h.selectors[0].action for h in build(spec % ", selectors: [{matchActions: [{action: Sigkill}]}]").hooks] \
        == ["Sigkill", "Sigkill"]


def test_vfs_read_buffer_not_available() -> None:
    c = build("""
        kprobes:
        - call: vfs_read
          syscall: false
          args: [{index: 0, type: file}, {index: 1, type: char_buf}]
        """)
    read, pread = c.hooks
    assert read.attach_points == ("read",) and pread.attach_points == ("pread64",) and len(read.args) == 1
    assert pread.guard == Guard(frozenset({"file", "pread"}), fd=0, pos=3)
    assert "kprobes[0] vfs_read: arg 1 not reported: the buffer is not filled yet at syscall entry" in c.notes


SFP = """
kprobes:
- call: security_file_permission
  syscall: false
  args: [{index: 0, type: file}, {index: 1, type: int}]
"""


def test_security_file_permission_mask_decides_the_family() -> None:
    write = build(SFP + "  selectors:\n  - matchArgs: [{index: 1, operator: Equal, values: ['2']}, "
                  "{index: 0, operator: Prefix, values: [/etc/]}]")
    plain, positional, v2 = write.hooks
    assert [h.attach_points for h in write.hooks] == [("write", "writev"), ("pwrite64", "pwritev"), ("pwritev2",)]
    # the check is reached only on a file opened for writing; positional calls need pos >= 0 on a seekable file
    assert plain.guard == Guard(frozenset({"file", "write"}), fd=0)
    assert positional.guard == Guard(frozenset({"file", "write", "pwrite"}), fd=0, pos=3)
    assert v2.guard == Guard(frozenset({"file", "write", "pwrite", "pos_opt"}), fd=0, pos=3)
    assert plain.args == (ArgSpec(0, ARG_FD, "", "file"),)
    assert plain.selectors == (Selector(args=(ArgFilter(0, "Prefix", ("/etc/",)),)),)  # the mask filter is decided
    assert "no selector can match at preadv2: not watched" in write.notes[-1]
    assert ("kprobes[0] security_file_permission: arg 1 not reported: a constant implied by the syscall (see the "
            "realisation); filters on it are decided when the policy is compiled") in write.notes
    read = build(SFP + "  selectors: [{matchArgs: [{index: 1, operator: Mask, values: ['4']}]}]").hooks
    assert read[0].attach_points == ("read", "readv") and read[0].selectors == (Selector(),)
    assert read[0].guard == Guard(frozenset({"file", "read"}), fd=0)
    assert [h.attach_points for h in build(SFP).hooks] == [
        ("write", "writev"), ("pwrite64", "pwritev"), ("pwritev2",), ("read", "readv"), ("pread64", "preadv"),
        ("preadv2",)]


OPENS = ("open", "creat", "openat", "openat2", "open_by_handle_at")


def test_fd_install_and_file_open_at_the_exit_of_the_open_family() -> None:
    c = build("""
        kprobes:
        - call: fd_install
          syscall: false
          args: [{index: 0, type: int}, {index: 1, type: file}]
          selectors:
          - matchArgs: [{index: 1, operator: Equal, values: [/etc/passwd]}, {index: 0, operator: Equal, values: ['3']}]
        lsmhooks:
        - hook: file_open
          args: [{index: 0, type: file}]
        """)
    fd, lsm = c.hooks
    # the new fd is the return value; the file is the fd's, resolved in the kernel to its full path
    assert (fd.attach_points, fd.at_exit) == (OPENS, True)
    assert fd.args == (ArgSpec(REG_RET, ARG_INT, "", "int"), ArgSpec(REG_RET, ARG_FD, "", "file"))
    assert fd.guard == Guard(frozenset({"ret_ok"}))  # O_PATH fds are installed too
    assert fd.selectors[0].args == (ArgFilter(1, "Equal", ("/etc/passwd",)), ArgFilter(0, "Equal", (3,)))
    assert (lsm.event, lsm.function_name, lsm.attach_points, lsm.at_exit) == ("process_lsm", "file_open", OPENS, True)
    # security_file_open is not called for O_PATH opens: the returned fd must be one fdget() accepts
    assert lsm.guard == Guard(frozenset({"ret_ok", "file"}), fd=REG_RET)
    assert c.notes[0].startswith("kprobes[0] fd_install: via sys_exit_open/creat/openat/openat2/open_by_handle_at: ")
    assert "Sigkill/Signal act after the operation" in c.notes[0]
    [h] = build("kprobes: [{call: security_file_open, syscall: false, args: [{index: 0, type: file}]}]").hooks
    assert (h.attach_points, h.guard, h.args) == (OPENS, lsm.guard, (ArgSpec(REG_RET, ARG_FD, "", "file"),))


def test_filter_on_an_unavailable_arg_is_refused() -> None:
    msg = refusal("""
        kprobes:
        - call: vfs_read
          syscall: false
          args: [{index: 0, type: file}, {index: 1, type: char_buf}]
          selectors: [{matchArgs: [{index: 1, operator: Prefix, values: [x]}]}]
        """)
    assert msg == ("unsupported: spec.kprobes[0].selectors[0].matchArgs[0] (filter on arg 1, which is not available: "
                   "the buffer is not filled yet at syscall entry)")


def test_security_socket_connect_reads_the_fds_socket() -> None:
    [h] = build("""
        kprobes:
        - call: security_socket_connect
          syscall: false
          args: [{index: 0, type: socket}, {index: 1, type: sockaddr}, {index: 2, type: int}]
          selectors: [{matchArgs: [{index: 0, operator: Protocol, values: [IPPROTO_TCP]},
                                   {index: 1, operator: Family, values: [AF_INET, AF_INET6]}]}]
        """).hooks
    # arg 0: the connect() fd's socket as it is (no sockaddr register: its own, unconnected destination)
    assert h.args[0] == ArgSpec(REG_NONE, ARG_CONNSOCK, "", "socket", size_index=0)
    assert h.args[1:] == (ArgSpec(1, ARG_SOCKADDR, "", "sockaddr"), ArgSpec(2, ARG_INT, "", "int"))
    assert h.selectors[0].args == (ArgFilter(0, "Protocol", (6,)), ArgFilter(1, "Family", (2, 10)))
    assert h.guard == Guard(frozenset({"file", "socket", "addr"}), fd=0, addr=1)


def test_tcp_connect_on_connect() -> None:
    c = build("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchArgs:
            - {index: 0, operator: NotDAddr, values: [127.0.0.1, 10.0.0.0/8]}
            - {index: 0, operator: DPort, values: ["443", "8000:8080"]}
            - {index: 0, operator: Family, values: [AF_INET]}
            matchActions: [{action: DenyConnect}]
        """)
    [h] = c.hooks
    # the fd's socket (register 0) with the destination of the sockaddr (register 1)
    assert (h.attach_points, h.function_name, h.args) == (
        ("connect",), "tcp_connect", (ArgSpec(1, ARG_CONNSOCK, "", "sock", size_index=0),))
    # only where the kernel gets to tcp_connect: an unconnected TCP socket and a sockaddr of its family
    assert h.guard == Guard(frozenset({"file", "socket", "addr", "tcp"}), fd=0, addr=1)
    assert h.selectors == (Selector(args=(ArgFilter(0, "NotDAddr", ("127.0.0.1/32", "10.0.0.0/8")),
                                          ArgFilter(0, "DPort", (443, "8000:8080")), ArgFilter(0, "Family", (2,))),
                                    action="DenyConnect"),)
    assert "UNIX, UDP and connected sockets are not seen" in c.notes[0]
    msg = refusal("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors: [{matchArgs: [{index: 0, operator: SAddr, values: [10.0.0.1]}]}]
        """)
    assert msg.endswith("(SAddr not supported: the source address and port are not known at connect() entry)")


def test_sockaddr_addresses_are_the_destination() -> None:
    [h] = build("""
        kprobes:
        - call: security_socket_connect
          syscall: false
          args: [{index: 1, type: sockaddr}]
          selectors:
          - matchArgs:
            - {index: 1, operator: SAddr, values: [192.168.1.1]}
            - {index: 1, operator: NotSportPriv}
        """).hooks
    assert h.selectors[0].args == (ArgFilter(0, "DAddr", ("192.168.1.1/32",)), ArgFilter(0, "NotDPort", ("0:1023",)))


def test_commit_creds_bprm_and_sys_helpers() -> None:
    c = build("""
        kprobes:
        - {call: commit_creds, syscall: false, args: [{index: 0, type: cred}]}
        - {call: security_bprm_check, syscall: false, args: [{index: 0, type: linux_binprm}]}
        - {call: __sys_setuid, syscall: false, args: [{index: 0, type: int}]}
        lsmhooks:
        - {hook: bprm_check_security, args: [{index: 0, type: linux_binprm}]}
        """)
    creds, bprm, setuid, lsm_bprm = c.hooks
    # at the exit of the syscalls that commit credentials, when the task's credentials changed; arg 0 is them
    assert creds.attach_points[:8] == ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
                                  "setfsgid")
    assert {"capset", "execve", "unshare", "setns"} <= set(creds.attach_points) and creds.at_exit
    assert creds.args == (ArgSpec(REG_CRED, ARG_CRED, "", "cred"),)
    assert creds.guard == Guard(frozenset({"cred_new"}))
    # the execs that succeeded, at their exit: the executed file's full path (what bprm->file is)
    assert (bprm.attach_points, bprm.at_exit, bprm.guard) == (
        ("execve", "execveat"), True, Guard(frozenset({"ret_ok"})))
    assert bprm.args == (ArgSpec(REG_EXE, ARG_FILEPTR, "", "linux_binprm"),)
    assert (setuid.attach_points, setuid.function_name) == (("setuid",), "__sys_setuid")
    assert (lsm_bprm.event, lsm_bprm.attach_points) == ("process_lsm", ("execve", "execveat"))
    assert "a script is seen as its interpreter only" in bprm.realisation


def test_unmapped_kernel_function_refused_from_the_features() -> None:
    spec = "kprobes: [{call: dev_queue_xmit, syscall: false, args: [{index: 0, type: skb}]}]"
    assert refusal(spec) == f"unsupported: spec.kprobes[0].call (dev_queue_xmit: {NO_KPROBE})"
    # where kprobes exist, any kernel function is probed; an arg type the sensor cannot read is refused
    skb = build(spec, VM)
    assert skb.hooks[0].attach_points == ("__kprobe_dev_queue_xmit",) and skb.hooks[0].args[0].kind == "skb_ptr"
    assert refusal("kprobes: [{call: bpf_check, syscall: false, args: [{index: 0, type: bpf_attr}]}]", VM) == (
        "unsupported: spec.kprobes[0].args[0].type (arg type bpf_attr is not supported on a kprobe of a kernel "
        "function (integer types, string (a kernel char *), file, path, sock, skb, cred, linux_binprm (pointers to "
        "those kernel structs) and fd are))")
    generic = build("kprobes: [{call: do_unlinkat, syscall: false, args: [{index: 0, type: int}]}]", VM)
    assert generic.hooks[0].attach_points == ("__kprobe_do_unlinkat",) and generic.hooks[0].args[0].kind == "int"
    assert refusal("lsmhooks: [{hook: path_mkdir}]") == ("unsupported: spec.lsmhooks[0].hook (lsm hook path_mkdir: "
                                                         "needs BPF-LSM; this kernel: no kprobes (CONFIG_KPROBES off), "
                                                         "fentry/BPF-LSM refused)")


def test_kernel_with_kprobes_realises_vfs_write_as_a_kprobe() -> None:
    c = build(VFS_WRITE, VM)
    (hook,) = c.hooks
    assert hook.attach_points == ("__kprobe_vfs_write",) and hook.function_name == "vfs_write"
    assert hook.args[0].kind == "file_ptr" and hook.realisation.startswith("kprobe on vfs_write")


def test_security_socket_connect_is_a_kprobe_where_the_kernel_has_them() -> None:
    c = build("""
        kprobes:
        - call: security_socket_connect
          syscall: false
          args: [{index: 0, type: socket}, {index: 1, type: sockaddr}, {index: 2, type: int}]
          selectors: [{matchArgs: [{index: 0, operator: Protocol, values: [IPPROTO_TCP]},
                                   {index: 1, operator: SAddr, values: [10.0.0.0/8]}]}]
        """, VM)
    [h] = c.hooks
    assert h.attach_points == ("__kprobe_security_socket_connect",)
    assert h.args == (ArgSpec(0, ARG_SOCKETPTR, "", "socket"), ArgSpec(1, ARG_KSOCKADDR, "", "sockaddr"),
                      ArgSpec(2, ARG_INT, "", "int"))
    # the sockaddr's own address is its destination (Tetragon's SAddr on a sockaddr)
    assert h.selectors[0].args == (ArgFilter(0, "Protocol", (6,)), ArgFilter(1, "DAddr", ("10.0.0.0/8",)))
    assert c.notes[-1].startswith("kprobes[0] security_socket_connect: kprobe on security_socket_connect: every")


def test_other_sensors_refused() -> None:
    found = refused("""
        uprobes: [{path: /bin/bash, symbols: [readline]}]
        usdts: [{path: /bin/x, provider: p, name: n}]
        fentries: [{call: vfs_write}]
        loader: true
        enforcers: [{calls: [sys_dup]}]
        """)
    assert found == ["unsupported: spec.usdts (usdts are not supported yet)",
                     "unsupported: spec.fentries (fentries are not supported yet)",
                     "unsupported: spec.enforcers (enforcers are not supported yet)",
                     "unsupported: spec.loader (loader events are not supported yet)"]


def test_syscall_tracepoints() -> None:
    c = build("""
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          args: [{index: 6, type: string}, {index: 7, type: int}]
          selectors: [{matchArgs: [{index: 0, operator: Prefix, values: [/etc]}]}]
        """)
    [h] = c.hooks
    assert (h.event, h.function_name, h.attach_points) == (
        "process_tracepoint", "syscalls/sys_enter_openat", ("openat",))
    assert h.args == (ArgSpec(1, ARG_STRING, "", "string"), ArgSpec(2, ARG_INT, "", "int"))
    assert h.selectors[0].args == (ArgFilter(0, "Prefix", ("/etc",)),)
    # other tracepoints are read through their format file: without a known tracefs they are refused
    assert refusal("tracepoints: [{subsystem: sched, event: sched_process_exec}]") == (
        "unsupported: spec.tracepoints[0].event (tracepoint sched/sched_process_exec: tracefs was not found, so the "
        "record's format cannot be read)")
    assert "tracepoint syscalls/sys_exit_openat: tracefs was not found" in refusal(
        "tracepoints: [{subsystem: syscalls, event: sys_exit_openat}]")


def test_raw_syscalls_id_filter_becomes_the_watched_set() -> None:
    c = build("""
        lists: [{name: dups, type: syscalls, values: [sys_dup, sys_dup2]}]
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: uint64}]
          selectors:
          - matchArgs: [{index: 0, operator: InMap, values: ["list:dups"]}]
            matchBinaries: [{operator: In, values: [/usr/bin/bash]}]
        """)
    [h] = c.hooks
    assert h.attach_points == ("dup", "dup2") and h.args == ()
    assert h.selectors == (Selector(binaries=BinaryFilter("In", ("/usr/bin/bash",))),)
    assert "syscall numbers are architecture-specific" in refusal("""
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: uint64}]
          selectors: [{matchArgs: [{index: 0, operator: Equal, values: ["32"]}]}]
        """)
    assert "only the id (index 4) can be read" in refusal(
        "tracepoints: [{subsystem: raw_syscalls, event: sys_enter, args: [{index: 5, type: uint64}]}]")


def test_lists_expand() -> None:
    c = build("""
        lists: [{name: dups, type: syscalls, values: [sys_dup, sys_dup2]}]
        kprobes: [{call: "list:dups"}]
        """)
    assert [(h.source, h.attach_points) for h in c.hooks] == [
        ("kprobes[0] sys_dup (list:dups)", ("dup",)), ("kprobes[0] sys_dup2 (list:dups)", ("dup2",))]
    assert "generated_ftrace) names kernel functions" in refusal("""
        lists: [{name: k, type: generated_ftrace, pattern: "^ksys_"}]
        kprobes: [{call: "list:k"}]
        """)
    assert "this policy needs 360 hooks; the sensor holds at most 64" in refusal("""
        lists: [{name: all, type: generated_syscalls}]
        kprobes: [{call: "list:all"}]
        """)


def test_hooks_per_syscall_limit() -> None:
    hooks = "\n".join("- {call: sys_write}" for _ in range(MAX_HOOKS_PER_SYSCALL + 1))
    assert refusal(f"kprobes:\n{hooks}") == "unsupported: spec (8 hooks watch syscall write; the sensor allows 7)"


# --- kernel features -------------------------------------------------------------------------------


def test_features_describe() -> None:
    assert HERE.describe() == "no kprobes (CONFIG_KPROBES off), fentry/BPF-LSM refused"
    assert VM.describe() == "kprobes, fentry and BPF-LSM"
    assert KernelFeatures(True, True, False, False).describe() == "kprobes, BPF-LSM refused"


def test_features_from_tracefs(tmp_path: Path) -> None:
    for name in ("sys_enter_write", "sys_exit_write", "sys_enter_openat", "enable"):
        (tmp_path / "events" / "syscalls" / name).mkdir(parents=True)
    assert syscalls_from_tracefs(str(tmp_path)) == frozenset({"write", "openat"})
    f = features_from_tracefs(str(tmp_path))
    assert f.syscalls == frozenset({"write", "openat"}) and f.kprobes is False
    (tmp_path / "kprobe_events").write_text("")
    assert features_from_tracefs(str(tmp_path), lsm=True).kprobes is True
    assert syscalls_from_tracefs(str(tmp_path / "missing")) == frozenset()


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/tracing/events/syscalls"), reason="tracefs not mounted")
def test_features_from_this_machine() -> None:
    assert {"write", "openat", "connect", "setuid"} <= features_from_tracefs().syscalls


def test_every_syscall_this_kernel_may_trace_has_a_number() -> None:
    """raw_syscalls/sys_enter attaches at every syscall: each needs its number, also those newer than the
    distribution's UAPI header (cachestat is 451 on 6.5+) and those whose tracepoint has another name."""
    from apiary.kernel.features import X86_64_SYSCALLS
    from apiary.sensors.tracing.abi import syscall_numbers

    nums = syscall_numbers()
    assert sorted(n for n in X86_64_SYSCALLS if n not in nums) == []
    assert (nums["cachestat"], nums["mseal"], nums["newfstat"], nums["umount"]) == (451, 462, nums["fstat"], 166)
