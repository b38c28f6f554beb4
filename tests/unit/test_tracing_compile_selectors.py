"""The TracingPolicy compiler: arg types, selectors (matchArgs, matchBinaries, matchPIDs, actions, return
values), policy-level fields, and refusals."""

from __future__ import annotations

import pytest
from tracing_compile_helpers import build, refusal, refused

from apiary.tracing.types import (
    ARG_FD,
    ARG_INT,
    ARG_SOCKADDR,
    ARG_STRING,
    ARG_UINT,
    ArgFilter,
    ArgSpec,
    BinaryFilter,
    PidFilter,
    Selector,
)

# --- arg types -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ty, kind", [("int", ARG_INT), ("sint16", ARG_INT), ("int64", ARG_INT), ("long", ARG_INT),
                                      ("size_t", ARG_INT), ("uint32", ARG_UINT), ("ulong", ARG_UINT),
                                      ("uint64", ARG_UINT), ("string", ARG_STRING), ("char_buf", ARG_STRING),
                                      ("filename", ARG_STRING), ("path", ARG_STRING), ("fd", ARG_FD),
                                      ("file", ARG_FD), ("sockaddr", ARG_SOCKADDR), ("sock", ARG_SOCKADDR)])
def test_arg_type_kinds(ty: str, kind: str) -> None:
    [h] = build(f"kprobes: [{{call: sys_write, args: [{{index: 1, type: {ty}}}]}}]").hooks
    assert h.args == (ArgSpec(1, kind, "", ty),)


def test_unsupported_arg_types() -> None:
    assert refusal("kprobes: [{call: sys_write, args: [{index: 0, type: skb}]}]") == \
        "unsupported: spec.kprobes[0].args[0].type (arg type skb not supported at syscall entry)"
    assert "type auto needs BTF resolution" in refusal("kprobes: [{call: sys_write, args: [{index: 0}]}]")
    assert refusal("kprobes: [{call: sys_write, args: [{index: 6, type: int}]}]") == \
        "unsupported: spec.kprobes[0].args[0].index (arg 6 does not exist: syscalls have at most 6 arguments)"
    assert "type int cannot be realised from it" in refusal(
        "kprobes: [{call: vfs_write, syscall: false, args: [{index: 0, type: int}]}]")
    assert refusal("kprobes: [{call: sys_write, args: [{index: 0, type: string, resolve: f_path}]}]") == \
        "unsupported: spec.kprobes[0].args[0].resolve (resolve is not supported yet)"
    [h] = build("kprobes: [{call: sys_write, args: [{index: 0, type: nop}, {index: 1, type: int}]}]").hooks
    assert h.args == (ArgSpec(1, ARG_INT, "", "int"),)


# --- selectors -------------------------------------------------------------------------------------


def one_selector(selector: str, args: str = "[{index: 0, type: int}, {index: 1, type: string}]") -> Selector:
    [h] = build(f"kprobes:\n- call: sys_openat\n  args: {args}\n  selectors:\n  - {selector}").hooks
    [s] = h.selectors
    return s


def test_match_args_index_maps_to_the_declared_arg_position() -> None:
    s = one_selector("matchArgs: [{index: 2, operator: Mask, values: ['64', '0x1']}]",
                     "[{index: 1, type: string}, {index: 2, type: int}]")
    assert s.args == (ArgFilter(1, "Mask", (64, 1)),)


@pytest.mark.parametrize("op, values, expect", [
    ("GreaterThan", "['5']", ArgFilter(0, "GT", (5,))),
    ("LT", "['-1']", ArgFilter(0, "LT", (-1,))),
    ("InRange", "['1:5', '10:20']", ArgFilter(0, "InRange", ("1:5", "10:20"))),
    ("NotInRange", "['7:3']", ArgFilter(0, "NotInRange", ("3:7",))),
    ("NotEqual", "['1', '2']", ArgFilter(0, "NotEqual", (1, 2))),
    ("InMap", "['1', '2', '3']", ArgFilter(0, "Equal", (1, 2, 3))),
])
def test_int_operators(op: str, values: str, expect: ArgFilter) -> None:
    assert one_selector(f"matchArgs: [{{index: 0, operator: {op}, values: {values}}}]").args == (expect,)


@pytest.mark.parametrize("op", ["Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix"])
def test_string_operators(op: str) -> None:
    assert one_selector(f"matchArgs: [{{index: 1, operator: {op}, values: [/etc/]}}]").args == \
        (ArgFilter(1, op, ("/etc/",)),)


def test_string_value_nul_suffix_is_trimmed() -> None:
    s = one_selector('matchArgs: [{index: 1, operator: Equal, values: ["security.capability\\0"]}]')
    assert s.args[0].values == ("security.capability",)


def test_values_beyond_the_sensor_limits_are_refused_never_truncated() -> None:
    spec = ("kprobes: [{call: sys_openat, args: [{index: 1, type: string}], selectors: [{matchArgs: [{index: 1, "
            "operator: Prefix, values: [/a, /b, /c, /d, /e]}]}]}]")
    assert refusal(spec) == ("unsupported: spec.kprobes[0].selectors[0].matchArgs[0].values (at most 4 values per "
                             "filter (5 given): the sensor compares at most 4)")
    long = "/" + "x" * 128
    spec = (f"kprobes: [{{call: sys_openat, args: [{{index: 1, type: string}}], selectors: [{{matchArgs: [{{index: "
            f"1, operator: Equal, values: [{long}]}}]}}]}}]")
    assert refusal(spec) == ("unsupported: spec.kprobes[0].selectors[0].matchArgs[0].values[0] (string values are "
                             "compared on at most 128 bytes (129 given))")
    assert "is negative but arg type uint32 is unsigned" in refusal(
        "kprobes: [{call: sys_write, args: [{index: 0, type: uint32}], selectors: [{matchArgs: [{index: 0, "
        "operator: Equal, values: ['-1']}]}]}]")


def test_match_binaries_and_pids() -> None:
    s = one_selector("matchBinaries: [{operator: NotIn, values: [/bin/sh, /bin/bash], followChildren: true}]")
    assert s.binaries == BinaryFilter("NotIn", ("/bin/sh", "/bin/bash"), True)
    s = one_selector("matchBinaries: [{operator: Prefix, values: [/usr/]}]")
    assert s.binaries == BinaryFilter("Prefix", ("/usr/",), False)
    s = one_selector("matchPIDs: [{operator: NotIn, values: [1], followForks: true}, "
                     "{operator: NotIn, values: [2], followForks: true}]")
    assert s.pids == PidFilter("NotIn", (1, 2), True)
    assert "matchBinaries Postfix is not supported yet" in refusal(
        "kprobes: [{call: sys_write, selectors: [{matchBinaries: [{operator: Postfix, values: [sh]}]}]}]")
    ns = build("kprobes: [{call: sys_write, selectors: [{matchPIDs: [{operator: NotIn, values: [1], "
               "isNamespacePID: true, followForks: true}]}]}]")
    assert ns.hooks[0].selectors[0].pids == PidFilter("NotIn", (1,), True, True)


@pytest.mark.parametrize("actions, expect", [
    ("[]", Selector()),
    ("[{action: Post, rateLimit: 1m}]", Selector(rate_limit_ns=60_000_000_000)),
    ("[{action: Post, rateLimit: '5'}]", Selector(rate_limit_ns=5_000_000_000)),
    ("[{action: NoPost}]", Selector(action="NoPost", post=False)),
    ("[{action: Sigkill}]", Selector(action="Sigkill", signal=9)),
    ("[{action: Signal, argSig: 10}]", Selector(action="Signal", signal=10)),
    ("[{action: Sigkill}, {action: NoPost}]", Selector(action="Sigkill", signal=9, post=False)),
])
def test_actions(actions: str, expect: Selector) -> None:
    assert one_selector(f"matchActions: {actions}") == expect


def test_refused_actions() -> None:
    sel = "kprobes: [{{call: sys_write, selectors: [{{matchActions: [{act}]}}]}}]"
    assert refusal(sel.format(act="{action: Override, argError: -1}")) == (
        "unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (Override needs BPF-LSM or kernel error "
        "injection; this kernel has neither: use Sigkill)")
    assert refusal(sel.format(act="{action: GetUrl, argUrl: http://x}")) == \
        "unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (action GetUrl is not supported yet)"
    assert refusal(sel.format(act="{action: DenyConnect}")) == (
        "unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (DenyConnect applies only to hooks realised "
        "on connect() (it fails the call with EPERM through the endpoint's cgroup hook))")
    assert "argSig, a signal number" in refusal(sel.format(act="{action: Signal}"))
    assert "only one enforcement action" in refusal(sel.format(act="{action: Sigkill}, {action: Signal, argSig: 1}"))
    assert "kernelStackTrace is not supported yet" in refusal(sel.format(act="{action: Post, kernelStackTrace: true}"))


def test_unsupported_selector_fields_are_named() -> None:
    found = refused("""
        kprobes:
        - call: sys_write
          selectors:
          - matchNamespaceChanges: [{operator: In, values: [Mnt]}]
            matchCapabilityChanges: [{operator: In, values: [CAP_SYS_ADMIN]}]
          - matchParentBinaries: [{operator: In, values: [/bin/sh]}]
        """)
    assert found == [
        "unsupported: spec.kprobes[0].selectors[0].matchNamespaceChanges (matchNamespaceChanges is not supported yet)",
        "unsupported: spec.kprobes[0].selectors[0].matchCapabilityChanges (matchCapabilityChanges is not supported "
        "yet)",
        "unsupported: spec.kprobes[0].selectors[1].matchParentBinaries (matchParentBinaries is not supported yet)"]


def test_return_values() -> None:
    c = build("kprobes: [{call: sys_openat, return: true, returnArg: {index: 0, type: int}}]")
    assert c.notes[0] == "kprobes[0] sys_openat: return value: the syscall's return value, read at its exit " \
        "(sys_exit_openat)"
    assert c.hooks[0].ret == ArgSpec(0, ARG_INT, "", "int")
    [h] = build("kprobes: [{call: sys_openat, return: true, returnArg: {index: 0, type: int}, selectors: "
                "[{matchReturnArgs: [{index: 0, operator: GT, values: ['0']}]}]}]").hooks
    assert h.selectors[0].ret == ArgFilter(0, "GT", (0,))


def test_selector_order_is_kept() -> None:
    [h] = build("""
        kprobes:
        - call: sys_write
          args: [{index: 0, type: int}]
          selectors:
          - {matchArgs: [{index: 0, operator: Equal, values: ['1']}], matchActions: [{action: NoPost}]}
          - {matchArgs: [{index: 0, operator: Equal, values: ['2']}], matchActions: [{action: Sigkill}]}
          - {matchActions: [{action: Post}]}
        """).hooks
    assert [s.action for s in h.selectors] == ["NoPost", "Sigkill", "Post"]


# --- policy-level ----------------------------------------------------------------------------------


def test_options_and_mode() -> None:
    c = build("""
        options: [{name: policy-mode, value: monitor}, {name: disable-kprobe-multi, value: "1"}]
        kprobes: [{call: sys_write}]
        """)
    assert c.mode == "monitor"
    assert "option disable-kprobe-multi has no effect in apiary: it attaches no kprobe/uprobe multi links" in c.notes
    assert "policy-mode monitor: actions are reported, not carried out" in c.notes
    assert build("options: [{name: policy-mode, value: enforce}]").mode == "enforce"


def test_pod_selector_and_namespace_scope() -> None:
    c = build("""
        podSelector:
          matchLabels: {app: web}
          matchExpressions: [{key: tier, operator: In, values: [front]}]
        kprobes: [{call: sys_write}]
        """)
    assert c.pod_selector == {"matchLabels": {"app": "web"},
                              "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}
    c = build("podSelector: {matchLabels: {app: web}}", kind="TracingPolicyNamespaced",
              meta="name: t\n  namespace: prod")
    assert c.namespace == "prod" and c.kind == "TracingPolicyNamespaced"
    assert c.pod_selector == {"matchLabels": {"app": "web", "io.kubernetes.pod.namespace": "prod"}}
    c = build("kprobes: []", kind="TracingPolicyNamespaced")
    assert c.pod_selector == {"matchLabels": {"io.kubernetes.pod.namespace": "default"}}
    assert build("podSelector: {}").pod_selector == {}


def test_workload_selectors_not_supported_yet() -> None:
    assert refused("containerSelector: {matchLabels: {name: c}}")[0].startswith(
        "unsupported: spec.containerSelector (containerSelector is not supported yet")
    assert refused("hostSelector: {}")[0].startswith("unsupported: spec.hostSelector")


def test_every_selector_problem_is_listed_once() -> None:
    found = refused("""
        kprobes:
        - call: vfs_read
          syscall: false
          args: [{index: 0, type: file}, {index: 1, type: char_buf}]
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: [x]}]
          - matchActions: [{action: GetUrl, argUrl: http://x}]
        """)
    assert found == [
        "unsupported: spec.kprobes[0].selectors[0].matchArgs[0] (filter on arg 1, which is not available: the buffer "
        "is not filled yet at syscall entry)",
        "unsupported: spec.kprobes[0].selectors[1].matchActions[0].action (action GetUrl is not supported yet)"]
