"""Every policy in examples/tracing/ loads and compiles, on a kernel like this one (no kprobes, no BPF-LSM)
and on one with both (Debian's 6.1), and each is realised the way the README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tracing"
TASK_RENAME = """name: task_rename
ID: 204
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char oldcomm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:char newcomm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:short oom_score_adj;\toffset:44;\tsize:2;\tsigned:1;

print fmt: "pid=%d", REC->pid
"""


@pytest.fixture
def tracefs(tmp_path: Path) -> str:
    d = tmp_path / "events" / "task" / "task_rename"
    d.mkdir(parents=True)
    (d / "format").write_text(TASK_RENAME)
    return str(tmp_path)


def _features(root: str, vm: bool) -> KernelFeatures:
    return KernelFeatures(kprobes=vm, fentry=vm, lsm=vm, override=False, syscalls=X86_64_SYSCALLS, tracefs=root)


@pytest.mark.parametrize("vm", [False, True], ids=["this-kernel", "kprobes-and-lsm"])
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_compiles(path: Path, vm: bool, tracefs: str) -> None:
    (pol,) = load_tracing_policies(path.read_text())
    c = compile_tracing_policy(pol, _features(tracefs, vm))
    assert c.hooks and all(h.realisation for h in c.hooks)


def test_examples_are_realised_as_documented(tracefs: str) -> None:
    def hooks(name: str, vm: bool = False):  # noqa: ANN202
        (pol,) = load_tracing_policies((EXAMPLES / f"{name}.yaml").read_text())
        return compile_tracing_policy(pol, _features(tracefs, vm)).hooks

    (up,) = hooks("bash-commands-uprobe")
    assert (up.event, up.path, up.function_name) == ("process_uprobe", "/usr/bin/bash", "shell_execve")
    (ret,) = hooks("failed-opens")
    assert ret.ret is not None and ret.selectors[0].ret is not None and ret.selectors[0].ret.op == "LT"
    (tp,) = hooks("process-rename-tracepoint")
    assert tp.attach_points == ("__tp_task/task_rename",) and [a.offset for a in tp.args] == [8, 12, 28]
    (follow,) = hooks("shell-children-read-secrets")
    binaries = follow.selectors[0].binaries
    assert binaries is not None and binaries.follow_children
    (mount,) = hooks("mount-in-container-as-admin")
    sel = mount.selectors[0]
    assert sel.namespaces[0].namespace == "Mnt" and sel.capabilities is not None and sel.action == "Sigkill"
    # the seed's suspicious connect is on sys_connect: the same syscall tracepoint on both kernels
    assert [h.attach_points for h in hooks("suspicious-connect")] == [("connect",)]
    assert [h.attach_points for h in hooks("suspicious-connect", vm=True)] == [("connect",)]
