"""The TracingPolicy compiler on tracepoints: format files read from tracefs, generic tracepoints, raw
tracepoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from tracing_compile_helpers import HERE, build, features, refusal

from apiary.kernel.features import KernelFeatures, TpField, features_from_tracefs, tracepoint_fields
from apiary.tracing.types import ARG_CHARS, ARG_DATALOC, ARG_INT, ARG_KSTRING, ARG_UINT, ArgFilter, ArgSpec, Selector

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
