"""The TracingPolicy compiler on the sensor's newer attach points: generic tracepoints (read from a format file),
uprobes, return probes, matchNamespaces/matchCapabilities, followChildren/followForks, kprobe and BPF-LSM hooks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures, TpField, features_from_tracefs, tracepoint_fields
from apiary.policy.models import PolicyError
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.crd import CAPABILITIES
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.types import (
    ARG_BPRM,
    ARG_BUF,
    ARG_CHARS,
    ARG_DATALOC,
    ARG_FD,
    ARG_FILEPTR,
    ARG_INT,
    ARG_KSTRING,
    ARG_SOCK,
    ARG_STRING,
    ARG_UINT,
    MAX_FOLLOW,
    ArgFilter,
    ArgSpec,
    BinaryFilter,
    CapabilityFilter,
    CompiledTracingPolicy,
    NamespaceFilter,
    PidFilter,
    Selector,
)

# formats as this machine's tracefs writes them (Linux 6.18), plus an invented event with the other field shapes
FORMATS = {
    "sched/sched_process_exec": """name: sched_process_exec
ID: 365
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;

print fmt: "filename=%s pid=%d old_pid=%d", __get_str(filename), REC->pid, REC->old_pid
""",
    "syscalls/sys_exit_openat": """name: sys_exit_openat
ID: 781
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: "0x%lx", REC->ret
""",
    "sched/sched_switch": """name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;

print fmt: "prev_comm=%s prev_pid=%d", REC->prev_comm, REC->prev_pid
""",
    "test/shapes": """name: shapes
ID: 9999
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const char * name;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * ptr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const struct cred * cred;\toffset:24;\tsize:8;\tsigned:0;
\tfield:__data_loc u8[] blob;\toffset:32;\tsize:4;\tsigned:0;
\tfield:unsigned char mac[6];\toffset:36;\tsize:6;\tsigned:0;
\tfield:u64 bytes;\toffset:48;\tsize:8;\tsigned:0;
\tfield:char long_name[300];\toffset:56;\tsize:300;\tsigned:0;

print fmt: "name=%s", REC->name
""",
}


@pytest.fixture
def tracefs(tmp_path: Path) -> Path:
    for name, text in FORMATS.items():
        d = tmp_path / "events" / name
        d.mkdir(parents=True)
        (d / "format").write_text(text)
    return tmp_path


def features(root: Path | str = "", *, kprobes: bool = False, lsm: bool = False) -> KernelFeatures:
    return KernelFeatures(kprobes=kprobes, fentry=False, lsm=lsm, override=False, syscalls=X86_64_SYSCALLS,
                          tracefs=str(root))


HERE = features()
VM = features(kprobes=True, lsm=True)


def policy(spec: str) -> str:
    return ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: test\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")


def build(spec: str, f: KernelFeatures = HERE) -> CompiledTracingPolicy:
    [p] = load_tracing_policies(policy(spec))
    return compile_tracing_policy(p, f)


def refused(spec: str, f: KernelFeatures = HERE) -> list[str]:
    [p] = load_tracing_policies(policy(spec))
    with pytest.raises(PolicyError) as e:
        compile_tracing_policy(p, f)
    return e.value.messages


def refusal(spec: str, f: KernelFeatures = HERE) -> str:
    found = refused(spec, f)
    assert len(found) == 1, found
    return found[0]


# --- tracefs format files ----------------------------------------------------------------------------


def test_tracepoint_fields_parses_a_format_file(tracefs: Path) -> None:
    fields = tracepoint_fields(str(tracefs), "sched", "sched_process_exec")
    assert fields is not None
    assert [f.name for f in fields] == ["common_type", "common_flags", "common_preempt_count", "common_pid",
                                       "filename", "pid", "old_pid"]
    assert fields[0] == TpField("common_type", "unsigned short", 0, 2, False)
    assert fields[4] == TpField("filename", "__data_loc char[]", 8, 4, False, is_data_loc=True)
    assert fields[5] == TpField("pid", "pid_t", 12, 4, True)
    shapes = tracepoint_fields(str(tracefs), "test", "shapes")
    assert shapes is not None
    assert shapes[4] == TpField("name", "const char *", 8, 8, False, is_pointer=True)
    assert shapes[8] == TpField("mac", "unsigned char[6]", 36, 6, False, is_array=True, array_len=6)
    assert (shapes[4].element, shapes[6].element, shapes[7].element) == ("char", "struct cred", "u8")
    [comm] = [f for f in tracepoint_fields(str(tracefs), "sched", "sched_switch") or [] if f.name == "prev_comm"]
    assert comm == TpField("prev_comm", "char[16]", 8, 16, False, is_array=True, array_len=16)


def test_tracepoint_fields_missing_or_unsafe(tracefs: Path) -> None:
    assert tracepoint_fields(str(tracefs), "sched", "nosuch") is None
    assert tracepoint_fields("", "sched", "sched_process_exec") is None
    assert tracepoint_fields(str(tracefs), "..", "sched") is None
    assert tracepoint_fields(str(tracefs), "sched/../sched", "sched_switch") is None


def test_features_from_tracefs_sets_the_root(tracefs: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert features_from_tracefs(str(tracefs)).tracefs == str(tracefs)
    empty = tmp_path_factory.mktemp("notracefs")
    assert features_from_tracefs(str(empty)).tracefs == ""
    assert HERE.tracefs == "" and KernelFeatures(False, False, False, False).tracefs == ""


# --- generic tracepoints -----------------------------------------------------------------------------


def test_generic_tracepoint_reads_fields_by_offset(tracefs: Path) -> None:
    c = build("""
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
          args: [{index: 4, type: string, label: filename}, {index: 5, type: int}, {index: 3, type: int}]
          selectors:
          - matchArgs:
            - {index: 0, operator: Prefix, values: [/usr/bin/]}
            - {index: 1, operator: GT, values: ["100"]}
            matchActions: [{action: Sigkill}]
        """, features(tracefs))
    [h] = c.hooks
    assert (h.event, h.function_name, h.attach_points) == (
        "process_tracepoint", "sched/sched_process_exec", ("__tp_sched/sched_process_exec",))
    assert h.args == (ArgSpec(4, ARG_DATALOC, "filename", "string", offset=8, size=4),
                      ArgSpec(5, ARG_INT, "", "int", offset=12, size=4),
                      ArgSpec(3, ARG_INT, "", "int", offset=4, size=4))
    assert h.selectors == (Selector(args=(ArgFilter(0, "Prefix", ("/usr/bin/",)), ArgFilter(1, "GT", (100,))),
                                    action="Sigkill", signal=9),)
    assert h.ret is None
    assert c.notes == ["tracepoints[0] sched/sched_process_exec: tracepoint sched/sched_process_exec: fields read "
                       "from the record by offset"]


def test_syscall_exit_tracepoint_is_a_generic_tracepoint(tracefs: Path) -> None:
    [h] = build("""
        tracepoints:
        - subsystem: syscalls
          event: sys_exit_openat
          args: [{index: 5, type: long}, {index: 4, type: int}]
          selectors: [{matchArgs: [{index: 0, operator: LT, values: ["0"]}]}]
        """, features(tracefs)).hooks
    assert h.attach_points == ("__tp_syscalls/sys_exit_openat",) and h.function_name == "syscalls/sys_exit_openat"
    assert h.args == (ArgSpec(5, ARG_INT, "", "long", offset=16, size=8), ArgSpec(4, ARG_INT, "", "int", offset=8,
                                                                                 size=4))
    assert h.selectors[0].args == (ArgFilter(0, "LT", (0,)),)


def test_tracepoint_char_arrays_pointers_and_auto(tracefs: Path) -> None:
    c = build("""
        tracepoints:
        - subsystem: sched
          event: sched_switch
          args: [{index: 4, type: char_buf}, {index: 7}, {index: 0}]
          selectors: [{matchArgs: [{index: 0, operator: Equal, values: [bash]}]}]
        - subsystem: test
          event: shapes
          args: [{index: 4, type: string}, {index: 5, type: uint64}, {index: 6, type: ulong}, {index: 9, type: auto},
                 {index: 10, type: string}]
          selectors: [{matchArgs: [{index: 0, operator: Postfix, values: [.so]}, {index: 4, operator: Prefix,
                                                                                   values: [eth]}]}]
        """, features(tracefs))
    switch, shapes = c.hooks
    assert switch.args == (ArgSpec(4, ARG_CHARS, "", "char_buf", offset=8, size=16),
                           ArgSpec(7, ARG_INT, "", "long", offset=32, size=8),  # auto: a signed 8-byte field
                           ArgSpec(0, ARG_UINT, "", "uint32", offset=0, size=2))  # auto: unsigned short
    assert switch.selectors[0].args == (ArgFilter(0, "Equal", ("bash",)),)
    assert shapes.args == (ArgSpec(4, ARG_KSTRING, "", "string", offset=8, size=8),
                           ArgSpec(5, ARG_UINT, "", "uint64", offset=16, size=8),  # a pointer's value
                           ArgSpec(6, ARG_UINT, "", "ulong", offset=24, size=8),
                           ArgSpec(9, ARG_UINT, "", "uint64", offset=48, size=8),
                           ArgSpec(10, ARG_CHARS, "", "string", offset=56, size=255))  # gs_hook.arg_size is a u8
    assert shapes.selectors[0].args == (ArgFilter(0, "Postfix", (".so",)), ArgFilter(4, "Prefix", ("eth",)))
    assert "tracepoints[1] test/shapes: field 4 (name, const char *) is read as a string in kernel memory" in c.notes
    assert "tracepoints[1] test/shapes: field 10 (long_name, char[300]) is read up to 254 bytes (the sensor's limit)" \
        in c.notes


@pytest.mark.parametrize("index, ty, expect", [
    (6, "string", "field 6 of test/shapes (cred) is const struct cred *: type string cannot be read from it (use an "
                  "integer type such as uint64 (the pointer's value))"),
    (7, "string", "field 7 of test/shapes (blob) is __data_loc u8[]: type string cannot be read from it (apiary "
                  "reads integer, string and pointer fields only)"),
    (8, "string", "field 8 of test/shapes (mac) is unsigned char[6]: type string cannot be read from it (apiary "
                  "reads integer, string and pointer fields only)"),
    (9, "fd", "field 9 of test/shapes (bytes) is u64: type fd cannot be read from it (use an integer type (int, long, "
              "uint32, uint64…))"),
    (4, "file", "field 4 of test/shapes (name) is const char *: type file cannot be read from it (use string or an "
                "integer type such as uint64 (the pointer's value))"),
    (10, "int", "field 10 of test/shapes (long_name) is char[300]: type int cannot be read from it (use string or "
                "char_buf)"),
])
def test_tracepoint_field_type_refusals(tracefs: Path, index: int, ty: str, expect: str) -> None:
    spec = f"tracepoints: [{{subsystem: test, event: shapes, args: [{{index: 4, type: string}}, " \
           f"{{index: {index}, type: {ty}}}]}}]"
    assert refusal(spec, features(tracefs)) == f"unsupported: spec.tracepoints[0].args[1].type ({expect})"


def test_tracepoint_refusals(tracefs: Path) -> None:
    f = features(tracefs)
    assert refusal("tracepoints: [{subsystem: sched, event: nosuch}]", f) == \
        "unsupported: spec.tracepoints[0].event (no tracepoint sched/nosuch on this kernel)"
    assert refusal("tracepoints: [{subsystem: sched, event: sched_process_exec, args: [{index: 7, type: int}]}]",
                   f) == ("unsupported: spec.tracepoints[0].args[0].index (field 7 does not exist: "
                          "sched/sched_process_exec has 7 fields (index 0-6, common fields included))")
    assert refusal("tracepoints: [{subsystem: sched, event: sched_switch, raw: true}]", f).startswith(
        "unsupported: spec.tracepoints[0].raw (raw tracepoints need attach cookies for raw_tp programs (Linux 6.10+)")
    assert refusal("tracepoints: [{subsystem: '..', event: sched_switch}]", f) == \
        "unsupported: spec.tracepoints[0].subsystem ('..' is not a tracepoint subsystem name)"
    assert refusal("""
        tracepoints:
        - subsystem: sched
          event: sched_switch
          selectors: [{matchActions: [{action: DenyConnect}]}]
        """, f).startswith("unsupported: spec.tracepoints[0].selectors[0].matchActions[0].action (DenyConnect "
                           "applies only to hooks realised on connect()")
    assert refusal("""
        tracepoints:
        - subsystem: test
          event: shapes
          args: [{index: 9, type: int}]
          selectors: [{matchArgs: [{index: 0, operator: Equal, values: ["-1"]}]}]
        """, f) == ("unsupported: spec.tracepoints[0].selectors[0].matchArgs[0].values[0] ('-1' is negative but the "
                    "field read is unsigned)")


def test_tracepoint_override_refused(tracefs: Path) -> None:
    # the model refuses Override on tracepoints at load time; the compiler refuses it too (with the attach point)
    from apiary.tracing.actions import override_possible
    from apiary.tracing.compilation import Refuse

    with pytest.raises(Refuse) as e:
        override_possible(features(tracefs, lsm=True), "spec.tracepoints[0].selectors[0].matchActions[0]",
                          "__tp_sched/sched_switch", None)
    assert e.value.problem.reason == "Override is not available on tracepoints"


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


# --- matchNamespaces / matchCapabilities -------------------------------------------------------------


def one_selector(selector: str, f: KernelFeatures = HERE) -> Selector:
    [h] = build(f"kprobes:\n- call: sys_write\n  selectors:\n  - {selector}", f).hooks
    [s] = h.selectors
    return s


def test_match_namespaces() -> None:
    s = one_selector("matchNamespaces: [{namespace: Pid, operator: NotIn, values: [host_ns]}, "
                     "{namespace: Mnt, operator: In, values: ['4026531841', '4026531840']}]")
    assert s.namespaces == (NamespaceFilter("Pid", "NotIn", ("host_ns",)),
                            NamespaceFilter("Mnt", "In", ("4026531841", "4026531840")))
    entries = ", ".join(f"{{namespace: {n}, operator: In, values: ['1']}}" for n in ("Uts", "Ipc", "Mnt", "Pid", "Net"))
    assert refusal(f"kprobes: [{{call: sys_write, selectors: [{{matchNamespaces: [{entries}]}}]}}]") == (
        "unsupported: spec.kprobes[0].selectors[0].matchNamespaces (at most 4 matchNamespaces entries per selector "
        "(5 given))")
    assert refusal("kprobes: [{call: sys_write, selectors: [{matchNamespaces: [{namespace: Net, operator: In, "
                   "values: []}]}]}]") == ("unsupported: spec.kprobes[0].selectors[0].matchNamespaces[0].values "
                                           "(matchNamespaces needs at least one value (an inode number or host_ns))")


def test_capability_bits_are_the_kernels() -> None:
    # include/uapi/linux/capability.h
    assert (CAPABILITIES.index("CAP_CHOWN"), CAPABILITIES.index("CAP_NET_RAW"), CAPABILITIES.index("CAP_SYS_ADMIN"),
            CAPABILITIES.index("CAP_BPF"), CAPABILITIES.index("CAP_CHECKPOINT_RESTORE")) == (0, 13, 21, 39, 40)


def test_match_capabilities() -> None:
    s = one_selector("matchCapabilities: [{operator: In, values: [CAP_SYS_ADMIN, CAP_CHOWN]}]")
    assert s.capabilities == CapabilityFilter("Effective", "In", (1 << 21) | 1)
    s = one_selector("matchCapabilities: [{type: Permitted, operator: NotIn, values: [cap_net_raw]}]")
    assert s.capabilities == CapabilityFilter("Permitted", "NotIn", 1 << 13)
    assert refusal("kprobes: [{call: sys_write, selectors: [{matchCapabilities: [{operator: In, values: [CAP_BPF]}, "
                   "{operator: In, values: [CAP_KILL]}]}]}]") == (
        "unsupported: spec.kprobes[0].selectors[0].matchCapabilities (at most one matchCapabilities entry per "
        "selector (2 given))")
    assert refusal("kprobes: [{call: sys_write, selectors: [{matchCapabilities: [{operator: In, values: [CAP_BPF], "
                   "isNamespaceCapability: true}]}]}]").startswith(
        "unsupported: spec.kprobes[0].selectors[0].matchCapabilities[0].isNamespaceCapability (isNamespaceCapability "
        "is not supported yet")


# --- followChildren / followForks --------------------------------------------------------------------


def test_follow_children_and_forks_reach_the_filters() -> None:
    c = build("""
        kprobes:
        - call: sys_write
          selectors:
          - matchBinaries: [{operator: In, values: [/usr/sbin/sshd], followChildren: true}]
            matchPIDs: [{operator: NotIn, values: [1], followForks: true}]
        """)
    [s] = c.hooks[0].selectors
    assert s.binaries == BinaryFilter("In", ("/usr/sbin/sshd",), True)
    assert s.pids == PidFilter("NotIn", (1,), True)
    assert any(n.startswith("followChildren/followForks: descendants are tracked in the kernel") for n in c.notes)


def test_follow_slots_are_counted() -> None:
    sel = "{matchBinaries: [{operator: In, values: [/bin/sh], followChildren: true}]}"
    hooks = "\n".join(f"- {{call: sys_{s}, selectors: [{sel}, {sel}, {sel}]}}" for s in sorted(X86_64_SYSCALLS)[:22])
    assert 22 * 3 > MAX_FOLLOW
    assert refusal(f"kprobes:\n{hooks}") == (
        "unsupported: spec (this policy needs 66 followChildren/followForks slots (one per such filter of each "
        "hook's selectors); the sensor holds at most 64 across all policies)")
    hooks = "\n".join(f"- {{call: sys_{s}, selectors: [{sel}, {sel}]}}" for s in sorted(X86_64_SYSCALLS)[:32])
    assert len(build(f"kprobes:\n{hooks}").hooks) == 32


# --- kprobes and BPF-LSM programs where the kernel has them -------------------------------------------


def test_security_bprm_check_is_a_kprobe_where_the_kernel_has_them() -> None:
    spec = "kprobes: [{call: security_bprm_check, syscall: false, args: [{index: 0, type: linux_binprm}]}]"
    [h] = build(spec, VM).hooks
    assert (h.attach_points, h.args) == (("__kprobe_security_bprm_check",), (ArgSpec(0, ARG_BPRM, "", "linux_binprm"),))
    assert refusal(spec.replace("linux_binprm", "file"), VM).startswith(
        "unsupported: spec.kprobes[0].args[0].type (arg 0 is the program being executed (struct linux_binprm in "
        "kernel memory")


def test_lsm_file_permission_and_bprm_check_security() -> None:
    c = build("""
        lsmhooks:
        - hook: file_permission
          args: [{index: 0, type: file}, {index: 1, type: int}]
          selectors:
          - matchArgs: [{index: 0, operator: Prefix, values: [/etc/]}, {index: 1, operator: Mask, values: ["2"]}]
            matchActions: [{action: Override, argError: -13}]
        - hook: bprm_check_security
          args: [{index: 0, type: linux_binprm}]
          selectors: [{matchArgs: [{index: 0, operator: Postfix, values: [/nc]}]}]
        - hook: bprm_check_security
          args: [{index: 0, type: file}]
        """, VM)
    perm, bprm, bprm_file = c.hooks
    assert (perm.event, perm.function_name, perm.attach_points) == (
        "process_lsm", "file_permission", ("__lsm_file_permission",))
    assert perm.args == (ArgSpec(0, ARG_FILEPTR, "", "file"), ArgSpec(1, ARG_INT, "", "int"))
    assert perm.selectors == (Selector(args=(ArgFilter(0, "Prefix", ("/etc/",)), ArgFilter(1, "Mask", (2,))),
                                       action="Override", signal=13),)
    assert bprm.attach_points == ("__lsm_bprm_check_security",)
    assert bprm.args == (ArgSpec(0, ARG_FILEPTR, "", "linux_binprm"),)
    assert bprm.selectors[0].args == (ArgFilter(0, "Postfix", ("/nc",)),)
    assert bprm_file.args == (ArgSpec(0, ARG_FILEPTR, "", "file"),)
    assert c.notes[0].startswith("lsmhooks[0] file_permission: BPF-LSM hook file_permission: every permission check")
    assert refusal("lsmhooks: [{hook: bprm_check_security, args: [{index: 0, type: int}]}]", VM) == (
        "unsupported: spec.lsmhooks[0].args[0].type (arg 0 is the program being executed (struct linux_binprm, read "
        "as its file's path) here: type int cannot be realised from it (use one of file, linux_binprm))")
    # without BPF-LSM there is no realisation of file_permission
    assert refusal("lsmhooks: [{hook: file_permission}]").startswith(
        "unsupported: spec.lsmhooks[0].hook (lsm hook file_permission: needs BPF-LSM;")
    assert refusal("lsmhooks: [{hook: path_mkdir}]", VM) == (
        "unsupported: spec.lsmhooks[0].hook (lsm hook path_mkdir: apiary's sensor has no BPF-LSM program for this "
        "hook yet (it has file_open, file_permission, bprm_check_security))")


def test_kprobes_on_file_functions() -> None:
    c = build("""
        kprobes:
        - call: security_file_permission
          syscall: false
          args: [{index: 0, type: file}, {index: 1, type: int}]
          selectors: [{matchArgs: [{index: 1, operator: Equal, values: ["4"]}]}]
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}]
        - call: fd_install
          syscall: false
          args: [{index: 0, type: int}, {index: 1, type: file}]
          selectors: [{matchArgs: [{index: 0, operator: Equal, values: ["3"]}]}]
        """, VM)
    perm, opn, fdi = c.hooks
    assert perm.attach_points == ("__kprobe_security_file_permission",)
    assert perm.args == (ArgSpec(0, ARG_FILEPTR, "", "file"), ArgSpec(1, ARG_INT, "", "int"))
    assert perm.selectors == (Selector(args=(ArgFilter(1, "Equal", (4,)),)),)  # the mask is read, not implied
    assert (opn.attach_points, opn.args) == (("__kprobe_security_file_open",), (ArgSpec(0, ARG_FILEPTR, "", "file"),))
    assert (fdi.attach_points, fdi.args) == (("__kprobe_fd_install",), (ArgSpec(0, ARG_INT, "", "int"),
                                                                   ArgSpec(1, ARG_FILEPTR, "", "file")))
    assert fdi.selectors[0].args == (ArgFilter(0, "Equal", (3,)),)  # the fd is known at fd_install
    assert "kprobes[2] fd_install: kprobe on fd_install: every new fd of the process (open, accept, pipe, dup, " \
        "socket…); the file's full path" in c.notes
    assert refusal("""
        kprobes:
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}]
          selectors: [{matchActions: [{action: Override, argError: -1}]}]
        """, VM) == ("unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (Override is supported on "
                     "BPF-LSM hooks (lsmhooks file_open, file_permission, bprm_check_security) in this version; this "
                     "hook is realised by a kprobe on security_file_open, where apiary does not inject errors (use "
                     "Sigkill))")
    assert refusal("kprobes: [{call: security_file_open, syscall: false, args: [{index: 0, type: string}]}]", VM) \
        .startswith("unsupported: spec.kprobes[0].args[0].type (arg 0 is a file (a struct file in kernel memory) "
                    "here: type string cannot be realised from it")


def test_tcp_connect_kprobe_reads_the_socket_where_the_kernel_has_kprobes() -> None:
    c = build("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchArgs:
            - {index: 0, operator: SAddr, values: ["10.0.0.0/8"]}
            - {index: 0, operator: Protocol, values: [IPPROTO_TCP]}
            - {index: 0, operator: NotDPort, values: ["443"]}
        """, VM)
    (hook,) = c.hooks
    assert hook.attach_points == ("__kprobe_tcp_connect",) and hook.args[0].kind == ARG_SOCK
    assert [(f.op, f.values) for f in hook.selectors[0].args] == [
        ("SAddr", ("10.0.0.0/8",)), ("Protocol", (6,)), ("NotDPort", (443,))]
    # without kprobes: the connect() syscall, where the source is not known yet
    assert refusal("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors: [{matchArgs: [{index: 0, operator: SAddr, values: ["10.0.0.0/8"]}]}]
        """).startswith("unsupported: spec.kprobes[0].selectors[0].matchArgs[0].operator (SAddr not supported: the "
                        "source address and port are not known at connect() entry")


def test_char_buf_with_size_arg_index() -> None:
    c = build("""
        kprobes:
        - call: sys_write
          args: [{index: 1, type: char_buf, sizeArgIndex: 3}]
        """)
    (a,) = c.hooks[0].args
    assert (a.kind, a.index, a.size_index) == (ARG_BUF, 1, 2)
    assert refusal("""
        kprobes:
        - call: sys_write
          args: [{index: 1, type: char_buf, sizeArgIndex: 9}]
        """).startswith("unsupported: spec.kprobes[0].args[0].sizeArgIndex (sizeArgIndex 9 (arg 8) is not an integer")


def test_return_copy_reads_the_buffer_at_return() -> None:
    c = build("""
        kprobes:
        - call: sys_read
          return: true
          args: [{index: 0, type: fd}, {index: 1, type: char_buf, returnCopy: true}]
          returnArg: {index: 0, type: int}
        """)
    buf = c.hooks[0].args[1]
    assert (buf.kind, buf.at_return) == (ARG_BUF, True) and c.hooks[0].ret is not None
    assert refusal("""
        kprobes:
        - call: sys_read
          args: [{index: 1, type: char_buf, returnCopy: true}]
        """).startswith("unsupported: spec.kprobes[0].args[0].returnCopy (returnCopy needs a char_buf arg")
    assert refusal("""
        kprobes:
        - call: sys_read
          return: true
          args: [{index: 1, type: char_buf, returnCopy: true}]
          returnArg: {index: 0, type: int}
          selectors: [{matchArgs: [{index: 1, operator: Prefix, values: [x]}]}]
        """).startswith("unsupported: spec.kprobes[0].selectors[0].matchArgs[0] (filters on a returnCopy buffer")


def test_raw_tracepoint_reads_the_tracepoints_own_arguments() -> None:
    import dataclasses

    c = build("""
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
          raw: true
          args: [{index: 1, type: int32}, {index: 2, type: linux_binprm}]
        """, dataclasses.replace(HERE, raw_tp_cookie=True))
    (hook,) = c.hooks
    assert hook.attach_points == ("__rawtp_sched_process_exec",) and hook.function_name == "sched/sched_process_exec"
    assert [(a.index, a.kind) for a in hook.args] == [(1, "int"), (2, "bprm_ptr")]
