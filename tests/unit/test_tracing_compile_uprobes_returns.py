"""The TracingPolicy compiler on uprobes and return probes (syscall returns, kretprobes, uretprobes)."""

from __future__ import annotations

import pytest
from tracing_compile_helpers import HERE, build, features, refusal, refused

from apiary.kernel.features import KernelFeatures
from apiary.tracing.types import ARG_FD, ARG_FILEPTR, ARG_INT, ARG_STRING, ARG_UINT, ArgFilter, ArgSpec, Selector

# the kernel these tests assume where it matters: kprobes and BPF-LSM (no fentry)
VM = features(kprobes=True, lsm=True)


# --- uprobes -----------------------------------------------------------------------------------------


def test_uprobe_one_hook_per_symbol() -> None:
    c = build("""
        uprobes:
        - path: /usr/bin/bash
          symbols: [readline, main]
          message: shell
          args: [{index: 0, type: string}, {index: 1, type: int}, {index: 2, type: fd}, {index: 4, type: uint64},
                 {index: 3, type: char_buf}]
          selectors:
          - matchArgs: [{index: 0, operator: Prefix, values: ['rm ']}, {index: 2, operator: Equal, values: [/etc/x]}]
            matchActions: [{action: Signal, argSig: 19}]
        """)
    readline, main = c.hooks
    assert (readline.event, readline.function_name, readline.path, readline.attach_points) == (
        "process_uprobe", "readline", "/usr/bin/bash", ("__uprobe_/usr/bin/bash:readline",))
    assert main.attach_points == ("__uprobe_/usr/bin/bash:main",) and main.function_name == "main"
    assert readline.args == (ArgSpec(0, ARG_STRING, "", "string"), ArgSpec(1, ARG_INT, "", "int"),
                             ArgSpec(2, ARG_FD, "", "fd"), ArgSpec(4, ARG_UINT, "", "uint64"),
                             ArgSpec(3, ARG_STRING, "", "char_buf"))
    assert readline.selectors == (Selector(args=(ArgFilter(0, "Prefix", ("rm ",)), ArgFilter(2, "Equal", ("/etc/x",))),
                                           action="Signal", signal=19),)
    assert readline.message == "shell" and readline.ret is None
    assert "uprobes[0] /usr/bin/bash:readline: uprobe on /usr/bin/bash:readline" in c.notes
    assert any("arg 3 (char_buf) is read as a NUL-terminated string" in n for n in c.notes)


def test_uprobe_return() -> None:
    c = build("""
        uprobes:
        - path: /usr/lib/libc.so.6
          symbols: [malloc]
          args: [{index: 0, type: size_t}]
          return: true
          returnArg: {index: 0, type: uint64, label: ptr}
          selectors: [{matchReturnArgs: [{index: 0, operator: Equal, values: ["0"]}]}]
        """)
    [h] = c.hooks
    assert h.ret == ArgSpec(0, ARG_UINT, "ptr", "uint64")
    assert h.selectors == (Selector(ret=ArgFilter(0, "Equal", (0,))),)
    assert h.realisation == "uprobe on /usr/lib/libc.so.6:malloc and its return (uretprobe)"
    assert "uprobes[0] /usr/lib/libc.so.6:malloc: return value: the function's return value (uretprobe)" in c.notes


def test_uprobe_refusals() -> None:
    assert refused("uprobes: [{path: /bin/bash, offsets: [16], refCtrOffsets: [4], btfPath: /x.btf, "
                   "binaryDigests: [sha256:00]}]") == [
        "unsupported: spec.uprobes[0].offsets (offsets is not supported yet)",
        "unsupported: spec.uprobes[0].refCtrOffsets (refCtrOffsets is not supported yet)",
        "unsupported: spec.uprobes[0].btfPath (btfPath is not supported yet)",
        "unsupported: spec.uprobes[0].binaryDigests (binaryDigests is not supported yet)"]
    assert refusal("uprobes: [{path: /bin/bash, addrs: [4096]}]") == \
        "unsupported: spec.uprobes[0].addrs (addrs is not supported yet)"
    assert refusal("uprobes: [{path: /bin/bash, symbols: [readline], data: [{index: 0, type: int}]}]") == \
        "unsupported: spec.uprobes[0].data (data is not supported yet)"
    assert refusal("uprobes: [{path: bin/bash, symbols: [readline]}]") == (
        "unsupported: spec.uprobes[0].path ('bin/bash' is not an absolute path: a uprobe attaches to a binary by its "
        "path)")
    assert refusal("uprobes: [{path: /bin/bash, symbols: [readline], args: [{index: 5, type: int}]}]") == (
        "unsupported: spec.uprobes[0].args[0].index (arg 5 is not read: uprobe args are the first 5 argument "
        "registers (index 0-4))")
    assert refusal("uprobes: [{path: /bin/bash, symbols: [readline], args: [{index: 0, type: sock}]}]") == (
        "unsupported: spec.uprobes[0].args[0].type (arg type sock not supported on uprobes (integer types, string, "
        "char_buf and fd are))")
    assert refusal("uprobes: [{path: /bin/bash, symbols: ['a:b']}]") == \
        "unsupported: spec.uprobes[0].symbols[0] ('a:b' is not a symbol name)"
    assert refusal("uprobes: [{path: /bin/bash, symbols: [readline], return: true}]") == \
        "unsupported: spec.uprobes[0].returnArg (return: true needs returnArg (e.g. {index: 0, type: int}))"
    assert refusal("""
        uprobes:
        - path: /bin/bash
          symbols: [readline]
          selectors: [{matchActions: [{action: Override, argError: -1}]}]
        """, VM) == ("unsupported: spec.uprobes[0].selectors[0].matchActions[0].action (Override on uprobes (register "
                     "rewrite) is not supported)")


# --- return probes -----------------------------------------------------------------------------------


def test_syscall_return_hook() -> None:
    c = build("""
        kprobes:
        - call: sys_openat
          return: true
          args: [{index: 1, type: string}]
          returnArg: {index: 0, type: int, label: fd}
          selectors:
          - matchArgs: [{index: 1, operator: Equal, values: [/etc/shadow]}]
            matchReturnArgs: [{index: 0, operator: InRange, values: ["0:1024"]}]
            matchActions: [{action: Sigkill}]
            matchReturnActions: [{action: Post}]
          - matchReturnArgs: [{index: 0, operator: LT, values: ["0"]}]
            matchActions: [{action: NoPost}]
        """)
    [h] = c.hooks
    assert h.attach_points == ("openat",) and h.ret == ArgSpec(0, ARG_INT, "fd", "int")
    assert h.selectors == (
        Selector(args=(ArgFilter(0, "Equal", ("/etc/shadow",)),), action="Sigkill", signal=9,
                 ret=ArgFilter(0, "InRange", ("0:1024",))),
        Selector(action="NoPost", post=False, ret=ArgFilter(0, "LT", (0,))))
    assert h.realisation == "syscall entry of openat, decided at its exit (sys_exit_openat)"
    assert "kprobes[0].selectors[0].matchActions[0]: Sigkill acts when the call returns: its effect has already " \
        "happened" in c.notes
    assert "kprobes[0].selectors[0].matchReturnActions: Post has no extra effect (the event is posted when the call " \
        "returns)" in c.notes
    assert not any("not reported" in n for n in c.notes)


def test_kretprobe_where_the_kernel_has_kprobes() -> None:
    c = build("""
        kprobes:
        - call: vfs_read
          syscall: false
          args: [{index: 0, type: file}, {index: 2, type: size_t}]
          return: true
          returnArg: {index: 0, type: long}
          selectors: [{matchReturnArgs: [{index: 0, operator: GT, values: ["4096"]}]}]
        """, VM)
    [h] = c.hooks
    assert h.attach_points == ("__kprobe_vfs_read",) and h.ret == ArgSpec(0, ARG_INT, "", "long")
    assert h.args == (ArgSpec(0, ARG_FILEPTR, "", "file"), ArgSpec(2, ARG_INT, "", "size_t"))
    assert h.realisation.startswith("kprobe and kretprobe on vfs_read: ")
    assert "kprobes[0] vfs_read: return value: the function's return value (kretprobe)" in c.notes


def test_mapped_function_return_is_the_syscalls() -> None:
    c = build("""
        kprobes:
        - call: vfs_write
          syscall: false
          args: [{index: 0, type: file}]
          return: true
          returnArg: {index: 0, type: int}
          selectors: [{matchReturnArgs: [{index: 0, operator: LT, values: ["0"]}]}]
        """)
    [h, _] = c.hooks
    assert h.attach_points == ("write",)
    assert h.ret == ArgSpec(0, ARG_INT, "", "int") and h.selectors[0].ret == ArgFilter(0, "LT", (0,))
    assert "kprobes[0] vfs_write: return value: the syscall's return value (bytes written or -errno), read at its " \
        "exit (sys_exit)" in c.notes
    # a value of another meaning is reported (noted) but cannot be filtered on
    c = build("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          return: true
          returnArg: {index: 0, type: int}
        """)
    assert c.hooks[0].ret == ArgSpec(0, ARG_INT, "", "int")
    assert any(n.startswith("kprobes[0] tcp_connect: return value: the syscall's return value, read at its exit "
                            "(sys_exit); it is not the hook's own return value (tcp_connect returns") for n in c.notes)
    assert refusal("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          return: true
          returnArg: {index: 0, type: int}
          selectors: [{matchReturnArgs: [{index: 0, operator: Equal, values: ["0"]}]}]
        """).startswith("unsupported: spec.kprobes[0].selectors[0].matchReturnArgs (the return value read is the "
                        "syscall's, not the hook's own (tcp_connect returns")


@pytest.mark.parametrize("call, f, why", [
    ("fd_install", HERE, "fd_install returns nothing (void)"),
    ("fd_install", VM, "fd_install returns nothing (void)"),
    ("commit_creds", HERE, "commit_creds always returns 0; the syscall's return value means something else"),
])
def test_return_refused_where_it_means_something_else(call: str, f: KernelFeatures, why: str) -> None:
    spec = f"kprobes: [{{call: {call}, syscall: false, return: true, returnArg: {{index: 0, type: int}}}}]"
    assert refusal(spec, f) == f"unsupported: spec.kprobes[0].return (return: true cannot be realised: {why})"


def test_return_refusals() -> None:
    base = "kprobes: [{{call: sys_openat, {ret}selectors: [{{{sel}}}]}}]"
    ret = "return: true, returnArg: {index: 0, type: int}, "
    assert refusal("kprobes: [{call: sys_openat, return: true, returnArg: {index: 0, type: string}}]") == (
        "unsupported: spec.kprobes[0].returnArg.type (returnArg type string is not supported: the sensor reads the "
        "return value as an integer (int, long, size_t, uint64…))")
    assert refusal(base.format(ret="returnArg: {index: 0, type: int}, ",
                               sel="matchReturnArgs: [{index: 0, operator: GT, values: ['0']}]")) == \
        "unsupported: spec.kprobes[0].selectors[0].matchReturnArgs (matchReturnArgs applies only on hooks with " \
        "return: true)"
    assert refusal(base.format(ret="", sel="matchReturnActions: [{action: Post}]")) == \
        "unsupported: spec.kprobes[0].selectors[0].matchReturnActions (matchReturnActions applies only on hooks " \
        "with return: true)"
    assert refusal(base.format(ret=ret, sel="matchReturnArgs: [{index: 0, operator: GT, values: ['0']}, "
                                            "{index: 0, operator: LT, values: ['9']}]")) == (
        "unsupported: spec.kprobes[0].selectors[0].matchReturnArgs (at most one matchReturnArgs filter per selector "
        "(2 given): the sensor compares the return value with one filter)")
    assert refusal(base.format(ret=ret, sel="matchReturnArgs: [{index: 1, operator: GT, values: ['0']}]")) == \
        "unsupported: spec.kprobes[0].selectors[0].matchReturnArgs[0].index (index 1: the return value is index 0)"
    big = "0x1" + "0" * 16
    assert refusal(base.format(ret=ret, sel=f"matchReturnArgs: [{{index: 0, operator: GT, values: ['{big}']}}]")) \
        == f"unsupported: spec.kprobes[0].selectors[0].matchReturnArgs[0].values[0] ('{big}' does not fit in 64 bits)"
    assert refusal(base.format(ret=ret, sel="matchReturnActions: [{action: Sigkill}]")) == (
        "unsupported: spec.kprobes[0].selectors[0].matchReturnActions[0].action (matchReturnActions Sigkill is not "
        "supported yet: on a return hook the matchActions are taken when the call returns (only Post is accepted "
        "here))")
    assert refusal(base.format(ret=ret, sel="matchActions: [{action: DenyConnect}]")) == (
        "unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (DenyConnect is not possible on a return "
        "hook: the hook decides when the call has returned, after the connection was attempted)")
    assert refusal(base.format(ret=ret, sel="matchActions: [{action: Override, argError: -1}]"), VM) == (
        "unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (Override is not possible on a return "
        "hook: the call has already returned (use Sigkill, or Override on a BPF-LSM hook))")


def test_return_arg_without_return_is_noted() -> None:
    c = build("kprobes: [{call: sys_openat, returnArg: {index: 0, type: int}}]")
    assert c.hooks[0].ret is None
    assert "kprobes[0] sys_openat: returnArg has no effect without return: true" in c.notes
