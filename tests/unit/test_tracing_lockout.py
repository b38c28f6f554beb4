"""apply's lock-out warnings: enforcement that can hit the apiary CLI or agent (pure)."""

from __future__ import annotations

import textwrap

import pytest

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.lockout import call_name, lockout_warnings

FEATURES = KernelFeatures(kprobes=True, fentry=True, lsm=True, override=False, syscalls=X86_64_SYSCALLS)
PY = "/opt/py/bin/python3.11"
TOOLS = {PY: "the interpreter the apiary agent and CLI run on"}


def warnings(call: str, selector: str, extra: str = "", exempt: bool = True, spec: str = "") -> list[str]:
    text = textwrap.dedent(
        f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: lock}}
        spec:
          {spec}
          kprobes:
          - call: {call}
            syscall: {str(call.startswith("sys_")).lower()}
            selectors:
            - {selector}
              {extra}
        """
    )
    (p,) = load_tracing_policies(text)
    return lockout_warnings(compile_tracing_policy(p, FEATURES), TOOLS, exempt)


KILL = "matchActions: [{action: Sigkill}]"


def test_matchbinaries_on_the_interpreter_warns_on_any_hook() -> None:
    (w,) = warnings("sys_getuid", KILL, f'matchBinaries: [{{operator: In, values: ["{PY}"], followChildren: true}}]')
    assert "kprobes[0] sys_getuid selector 0 (Sigkill) can hit the apiary CLI:" in w
    assert f"matchBinaries (In {PY} with followChildren) matches {PY}" in w
    assert "apiary tp delete --offline lock" in w and "--no-restore" in w


@pytest.mark.parametrize(
    ("binaries", "hit"),
    [
        ('{operator: Prefix, values: ["/opt/py/"]}', True),
        ('{operator: NotIn, values: ["/usr/bin/curl"]}', True),
        ('{operator: NotIn, values: ["' + PY + '"]}', False),
        ('{operator: NotPrefix, values: ["/opt/"]}', False),
        ('{operator: In, values: ["/usr/bin/curl"]}', False),
    ],
)
def test_binary_operators(binaries: str, hit: bool) -> None:
    assert bool(warnings("sys_getuid", KILL, f"matchBinaries: [{binaries}]")) == hit


@pytest.mark.parametrize("call", ["sys_openat", "sys_write", "sys_connect", "sys_read", "security_file_open"])
def test_unscoped_enforcement_on_a_call_the_cli_makes_warns(call: str) -> None:
    (w,) = warnings(call, KILL)
    assert "no process scoping" in w


@pytest.mark.parametrize(
    ("call", "selector", "extra", "spec"),
    [
        ("sys_getuid", KILL, "", ""),  # the CLI never calls it unscoped
        ("sys_openat", "matchActions: [{action: Post}]", "", ""),  # not enforcing
        ("sys_openat", KILL, "matchPIDs: [{operator: In, values: [4242]}]", ""),  # named processes only
        ("sys_openat", KILL, "matchNamespaces: [{namespace: Pid, operator: NotIn, values: [host_ns]}]", ""),
        ("sys_openat", KILL, "", "podSelector: {matchLabels: {app: x}}"),  # endpoint cgroups only
    ],
)
def test_no_warning_when_the_tools_cannot_be_hit(call: str, selector: str, extra: str, spec: str) -> None:
    assert warnings(call, selector, extra, spec=spec) == []


def test_namespace_in_host_or_pid_notin_do_not_scope_away() -> None:
    assert warnings("sys_openat", KILL, "matchNamespaces: [{namespace: Pid, operator: In, values: [host_ns]}]")
    assert warnings("sys_openat", KILL, "matchPIDs: [{operator: NotIn, values: [1]}]")


def test_the_warning_says_whether_the_agent_is_exempt_and_when_monitor_mode_applies() -> None:
    (w,) = warnings("sys_write", KILL, exempt=False)
    assert "can hit the apiary CLI and agent (agent exemption is off)" in w
    (w,) = warnings("sys_write", KILL, spec="options: [{name: policy-mode, value: monitor}]")
    assert "(monitor mode now: once enforced)" in w


def test_call_names_lose_their_prefixes() -> None:
    assert call_name("__kprobe_security_file_open") == "file_open"
    assert call_name("syscalls/sys_enter_openat") == "openat"
    assert call_name("__x64_sys_write") == "write"
    assert call_name("__lsm_file_permission") == "file_permission"
