"""ListTracingPolicies' action counters from the kernel's per-hook counts (pure logic)."""

from __future__ import annotations

from tracing_compile_helpers import build

from apiary.tracing.counters import action_counters

KILL = """
    kprobes:
    - call: sys_write
      selectors: [{matchActions: [{action: Sigkill}]}]
    """


def test_kills_are_signals_and_monitor_matches_are_monitor_signals() -> None:
    # 3 matches: 1 killed, 1 held in monitor mode, 1 exempt (the agent's own)
    counts = {"matched": 3, "posted": 3, "enforced": 1, "exempted": 1, "lost": 0}
    assert action_counters(build(KILL), counts) == {"post": 3, "signal": 1, "monitor_signal": 1}


def test_a_post_selector_beside_the_kill_leaves_monitor_counts_unknown() -> None:
    mixed = KILL.replace("[{matchActions: [{action: Sigkill}]}]",
                         "[{matchActions: [{action: Sigkill}]}, {matchActions: [{action: Post}]}]")
    counts = {"matched": 5, "posted": 5, "enforced": 2, "exempted": 0}
    assert action_counters(build(mixed), counts) == {"post": 5, "signal": 2}


def test_post_only_policy_has_only_post() -> None:
    assert action_counters(build("kprobes: [{call: sys_write}]"), {"posted": 7, "matched": 7}) == {"post": 7}
