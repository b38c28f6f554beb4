"""Shared by the test_tracing_compile_* files: a TracingPolicy from a spec, compiled (or refused) for a
kernel's features."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.policy.models import PolicyError
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.types import CompiledTracingPolicy

HERE = KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS)
VM = KernelFeatures(kprobes=True, fentry=True, lsm=True, override=False, syscalls=X86_64_SYSCALLS)
NO_KPROBE = "needs kprobe (or BPF-LSM); this kernel: no kprobes (CONFIG_KPROBES off), fentry/BPF-LSM refused"


def policy(spec: str, kind: str = "TracingPolicy", meta: str = "name: test") -> str:
    return (f"apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  {meta}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")


def build(spec: str, features: KernelFeatures = HERE, **kw: str) -> CompiledTracingPolicy:
    [p] = load_tracing_policies(policy(spec, **kw))
    return compile_tracing_policy(p, features)


def refused(spec: str, features: KernelFeatures = HERE, **kw: str) -> list[str]:
    [p] = load_tracing_policies(policy(spec, **kw))
    with pytest.raises(PolicyError) as e:
        compile_tracing_policy(p, features)
    return e.value.messages


def refusal(spec: str, features: KernelFeatures = HERE) -> str:
    found = refused(spec, features)
    assert len(found) == 1, found
    return found[0]


def features(root: Path | str = "", *, kprobes: bool = False, lsm: bool = False) -> KernelFeatures:
    return KernelFeatures(kprobes=kprobes, fentry=False, lsm=lsm, override=False, syscalls=X86_64_SYSCALLS,
                          tracefs=str(root))
