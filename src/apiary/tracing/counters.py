"""Tetragon's per-policy action counters (``TracingPolicyActionCounters`` of ListTracingPolicies) from the
kernel's per-hook counts (matched, posted, enforced, exempted) and what the policy's selectors do."""

from __future__ import annotations

from collections.abc import Mapping

from .types import CompiledTracingPolicy

SIGNALS, OVERRIDES = frozenset({"Sigkill", "Signal"}), frozenset({"Override"})


def action_counters(policy: CompiledTracingPolicy, counts: Mapping[str, int]) -> dict[str, int]:
    """``post``: events posted; ``signal`` / ``override``: actions taken (the kernel counts them together, so a
    policy that both signals and overrides puts them under ``signal``); ``monitor_signal`` /
    ``monitor_override``: actions not taken in monitor mode, known when every selector of the policy enforces
    (then every match not enforced, nor exempt as the agent's own, was one); apiary's DenyConnect has no
    Tetragon counter and is in none."""
    actions = [sel.action for hook in policy.hooks for sel in hook.selectors]
    out = {"post": counts.get("posted", 0)}
    kind = "signal" if SIGNALS & set(actions) else "override" if OVERRIDES & set(actions) else ""
    if not kind:
        return out
    out[kind] = counts.get("enforced", 0)
    every_selector_enforces = all(h.selectors for h in policy.hooks) and all(
        a in (SIGNALS if kind == "signal" else OVERRIDES) for a in actions)
    if every_selector_enforces:
        held = counts.get("matched", 0) - counts.get("enforced", 0) - counts.get("exempted", 0)
        out["monitor_" + kind] = max(0, held)
    return out
