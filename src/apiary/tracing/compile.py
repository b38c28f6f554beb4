"""Compile a loaded TracingPolicy into the hooks the generic sensor realises (pure: no kernel, no I/O, no root).

:func:`compile_tracing_policy` realises a policy on a kernel described by a
:class:`~apiary.kernel.features.KernelFeatures` value: the policy-level fields here (options, podSelector,
the sensor's totals), each hook by its kind (:mod:`apiary.tracing.hook_kinds`) on a row of the realisation
table (:mod:`apiary.tracing.realisations`), its args and selectors by :mod:`apiary.tracing.build`,
:mod:`apiary.tracing.selectors` and :mod:`apiary.tracing.actions`. Every realisation is reported in
``CompiledTracingPolicy.notes``; a hook or field with no faithful realisation refuses the whole policy with a
:class:`PolicyError` naming every such field. How each hook kind is realised: docs/tracing.md.
"""

from __future__ import annotations

from apiary.kernel.features import KernelFeatures
from apiary.policy.models import PolicyError
from apiary.policy.selectors import NAMESPACE_KEY

from .compilation import Compilation
from .hook_kinds import kprobe, lsmhook, tracepoint, uprobe
from .models import TracingPolicyBase
from .types import MAX_FOLLOW, MAX_HOOKS, MAX_HOOKS_PER_SYSCALL, CompiledTracingPolicy

__all__ = ["compile_tracing_policy"]


def run(comp: Compilation) -> CompiledTracingPolicy:
    """Compile the whole policy; problems are collected in ``comp.problems``."""
    p = comp.policy
    spec = p.spec
    for fld in ("usdts", "fentries", "enforcers"):
        if getattr(spec, fld):
            comp.refuse(f"spec.{fld}", f"{fld} are not supported yet")
    if spec.loader:
        comp.refuse("spec.loader", "loader events are not supported yet")
    if spec.container_selector is not None:
        comp.refuse(
            "spec.containerSelector",
            "containerSelector is not supported yet (apiary endpoints have no "
            "container names); select endpoints with podSelector",
        )
    if spec.host_selector is not None:
        comp.refuse(
            "spec.hostSelector",
            "hostSelector is not supported yet: without pod/container selectors a "
            "policy already selects every process, host ones included",
        )
    if spec.node_selector is not None and (spec.node_selector.match_labels or spec.node_selector.match_expressions):
        comp.refuse("spec.nodeSelector", "nodeSelector is not supported yet (apiary has no node labels)")
    mode = options(comp)
    pod = pod_selector(comp)
    for i, kp in enumerate(spec.kprobes or []):
        kprobe(comp, f"kprobes[{i}]", kp)
    for i, tp in enumerate(spec.tracepoints or []):
        tracepoint(comp, f"tracepoints[{i}]", tp)
    for i, up in enumerate(spec.uprobes or []):
        uprobe(comp, f"uprobes[{i}]", up)
    for i, lsm in enumerate(spec.lsmhooks or []):
        lsmhook(comp, f"lsmhooks[{i}]", lsm)
    check_totals(comp)
    return CompiledTracingPolicy(
        name=p.name,
        namespace=p.namespace,
        kind=p.kind,
        mode=mode,
        pod_selector=pod,
        hooks=comp.hooks,
        notes=comp.notes,
    )


def options(comp: Compilation) -> str:
    """spec.options: the policy mode (enforce | monitor); the others are noted as without effect."""
    mode = "enforce"
    for i, o in enumerate(comp.policy.spec.options or []):
        if o.name == "policy-mode":
            mode = o.value
        elif o.name in ("disable-kprobe-multi", "disable-uprobe-multi"):
            comp.notes.append(f"option {o.name} has no effect in apiary: it attaches no kprobe/uprobe multi links")
        elif o.name == "override-method":
            comp.notes.append(
                f"option {o.name} has no effect in apiary: Override is realised only on BPF-LSM hooks (by the "
                "hook's return value)"
            )
        else:
            comp.notes.append(f"option {o.name} has no effect in apiary (spec.options[{i}])")
    if mode == "monitor":
        comp.notes.append("policy-mode monitor: actions are reported, not carried out")
    return mode


def pod_selector(comp: Compilation) -> dict[str, object] | None:
    """spec.podSelector as a label selector on endpoint labels (a namespaced policy: its namespace only)."""
    spec = comp.policy.spec
    sel: dict[str, object] | None = None
    if spec.pod_selector is not None:
        sel = {}
        if spec.pod_selector.match_labels:
            sel["matchLabels"] = dict(spec.pod_selector.match_labels)
        if spec.pod_selector.match_expressions:
            sel["matchExpressions"] = [e.model_dump(exclude_none=True) for e in spec.pod_selector.match_expressions]
        if not sel:
            comp.notes.append("podSelector {}: every process in an endpoint; host processes are not selected")
    ns = comp.policy.namespace
    if ns:
        sel = dict(sel or {})
        labels = dict(sel.get("matchLabels") or {})  # type: ignore[call-overload]
        if labels.get(NAMESPACE_KEY, ns) != ns:
            comp.refuse("spec.podSelector.matchLabels", f"{NAMESPACE_KEY} must be the policy's namespace {ns!r}")
        labels[NAMESPACE_KEY] = ns
        sel["matchLabels"] = labels
        comp.notes.append(f"TracingPolicyNamespaced: only processes of endpoints in namespace {ns}")
    return sel


def check_totals(comp: Compilation) -> None:
    """Refuse a policy beyond the sensor's totals (hooks, hooks per syscall, follow slots)."""
    if len(comp.hooks) > MAX_HOOKS:
        comp.refuse(
            "spec",
            f"this policy needs {len(comp.hooks)} hooks; the sensor holds at most {MAX_HOOKS} across all policies",
        )
    per: dict[str, int] = {}
    for h in comp.hooks:
        for s in h.attach_points:
            per[s] = per.get(s, 0) + 1
    for s, n in sorted(per.items()):
        if n > MAX_HOOKS_PER_SYSCALL:
            comp.refuse("spec", f"{n} hooks watch syscall {s}; the sensor allows {MAX_HOOKS_PER_SYSCALL}")
    follow = sum(
        bool(s.binaries and s.binaries.follow_children) + bool(s.pids and s.pids.follow_forks)
        for h in comp.hooks
        for s in h.selectors
    )
    if follow > MAX_FOLLOW:
        comp.refuse(
            "spec",
            f"this policy needs {follow} followChildren/followForks slots (one per such filter of each hook's "
            f"selectors); the sensor holds at most {MAX_FOLLOW} across all policies",
        )
    elif follow:
        comp.note(
            "followChildren/followForks: descendants are tracked in the kernel from fork and exec; processes "
            "already running when the policy is applied are found from /proc"
        )


def compile_tracing_policy(policy: TracingPolicyBase, features: KernelFeatures) -> CompiledTracingPolicy:
    """Realise a loaded policy on a kernel with ``features``; raise :class:`PolicyError` (the whole policy is
    refused) listing every hook or field that has no faithful realisation, each with its field path."""
    comp = Compilation(policy, features)
    result = run(comp)
    if comp.problems:
        raise PolicyError(list(dict.fromkeys(comp.problems)))  # a problem found on several variants is listed once
    return result
