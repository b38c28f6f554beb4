"""Tracing events find their process by (pid, start ktime), or are emitted with what is known; the ring's
accounting per message type, and how `apiary status` words it."""

from __future__ import annotations

from typing import Any

import pytest

from apiary.agent import accounting
from apiary.agent.tracing import Tracing
from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache, make_exec_id
from apiary.observe.raw import EXEC_F_CLONE, ExecMsg, ExitMsg
from apiary.sensors.tracing import abi
from apiary.store import FileStore
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies

NODE = "n1"
POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: watch-getppid}
spec:
  kprobes:
  - call: sys_getppid
    syscall: true
"""


def _exec(pid: int, ktime: int, binary: str) -> ExecMsg:
    return ExecMsg(
        ktime=ktime, pid=pid, tid=pid, ppid=0, parent_ktime=0, flags=EXEC_F_CLONE, uid=1000, euid=1000, gid=1000,
        egid=1000, auid=4294967295, cgroup_id=42, binary=binary, cwd="/", argv=[binary],
    )


@pytest.fixture
def tracing() -> Tracing:
    features = KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS)
    t = Tracing(FileStore("/nonexistent"), None, features)  # type: ignore[arg-type] - the sensor is never loaded here
    compiled = compile_tracing_policy(load_tracing_policies(POLICY)[0], features)
    from apiary.sensors.tracing.sensor import LoadedPolicy

    lp = LoadedPolicy(compiled, 1, [3])
    t.sensor.hooks[3] = (lp, compiled.hooks[0])
    return t


def _event(pid: int, proc_ktime: int, hook_id: int = 3) -> abi.Event:
    return abi.Event(type=abi.MSG_GENERIC, ktime=proc_ktime + 500, pid=pid, tid=pid + 1, proc_ktime=proc_ktime,
                     cgroup_id=42, hook_id=hook_id, action=abi.ACTIONS["Post"])


def test_event_of_a_reused_pid_names_the_process_that_ran_it(tracing: Tracing) -> None:
    cache = ProcessCache(NODE, KtimeClock(0))
    cache.on_exec(_exec(500, 1_000, "/usr/bin/old"))
    cache.on_exit(ExitMsg(ktime=1_500, pid=500, tid=500, proc_ktime=1_000, status=0, signal=0))
    cache.on_exec(_exec(500, 9_000, "/usr/bin/new"))
    res = tracing.event(_event(500, 1_000), cache, NODE, "t")  # posted by the old process, read late
    assert res is not None
    out, known = res
    assert known and out["process_kprobe"]["process"]["binary"] == "/usr/bin/old"
    out, known = tracing.event(_event(500, 9_000), cache, NODE, "t") or ({}, False)
    assert known and out["process_kprobe"]["process"]["binary"] == "/usr/bin/new"


def test_event_of_an_unknown_process_is_emitted_with_what_the_record_says(tracing: Tracing) -> None:
    cache = ProcessCache(NODE, KtimeClock(0))
    cache.on_exec(_exec(600, 1_000, "/usr/bin/other"))  # the pid's current image is another process
    res = tracing.event(_event(600, 7_000), cache, NODE, "t")
    assert res is not None
    out, known = res
    assert not known
    body = out["process_kprobe"]
    assert body["process"] == {
        "exec_id": make_exec_id(NODE, 7_000, 600),
        "pid": 600,
        "flags": "miss",
        "start_time": KtimeClock(0).to_rfc3339(7_000),
        "tid": 601,
    }
    assert "uid" not in body["process"] and "parent" not in body and "ancestors" not in body
    assert body["policy_name"] == "watch-getppid" and body["function_name"] == "__x64_sys_getppid"


def test_event_of_a_deleted_policy_still_names_it(tracing: Tracing) -> None:
    cache = ProcessCache(NODE, KtimeClock(0))
    tracing.sensor.retired[3] = tracing.sensor.hooks.pop(3)
    res = tracing.event(_event(1, 0), cache, NODE, "t")
    assert res is not None and res[0]["process_kprobe"]["policy_name"] == "watch-getppid"
    assert tracing.event(_event(1, 0, hook_id=9), cache, NODE, "t") is None  # a hook id never given out


def _acc(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "written_before": {"exec": 10, "tracing": 100},
        "written_after": {"exec": 10, "tracing": 100},
        "lost": {"exec": 0, "tracing": 7},
        "received": {"exec": 10, "tracing": 95},
        "pending": {"tracing": 5},
    }
    base.update(kw)
    return accounting.reconcile(**base)


def test_reconciled_per_type_when_the_ring_holds_what_the_counters_say() -> None:
    acc = _acc()
    assert acc["reconciled"]
    t = acc["by_type"]["tracing"]
    assert (t["produced"], t["received"], t["lost"], t["in_ring"]) == (107, 95, 7, 5)
    assert acc["produced"] == acc["received"] + acc["lost"] + acc["in_ring"] == 117
    # a record written after the first read of the counters: still reconciled
    assert _acc(written_after={"exec": 10, "tracing": 101}, pending={"tracing": 6})["reconciled"]


def test_the_old_status_numbers_are_not_reconciled() -> None:
    # the report: tracing records read, but only the process sensor's counted as produced
    acc = accounting.reconcile({"exec": 60_677}, {"exec": 60_677}, {"exec": 19}, {"exec": 60_677, "tracing": 100_503},
                               {})
    assert not acc["reconciled"] and not acc["by_type"]["tracing"]["reconciled"]
    assert acc["by_type"]["exec"]["reconciled"]
    # received more than the kernel wrote, records missing from the ring, a type no producer has
    assert not _acc(received={"exec": 11, "tracing": 95})["by_type"]["exec"]["reconciled"]
    assert not _acc(pending={})["by_type"]["tracing"]["reconciled"]
    odd = _acc(received={"exec": 10, "tracing": 95, "unknown type 7": 1})
    assert not odd["reconciled"] and not odd["by_type"]["unknown type 7"]["reconciled"]


def test_status_text_says_reconciled_or_not_per_type() -> None:
    good = accounting.text_lines(_acc())
    assert good[0] == "events: produced 117 = received 105 + lost 7 + in ring 5  (reconciled)"
    assert "  tracing: produced 107 = received 95 + lost 7 + in ring 5  (reconciled)" in good
    assert not any("NOT" in line for line in good)
    bad = accounting.text_lines(_acc(pending={}))
    assert bad[0].endswith("(NOT reconciled)")
    assert "  exec: produced 10 = received 10 + lost 0 + in ring 0  (reconciled)" in bad
    assert "  tracing: produced 107 = received 95 + lost 7 + in ring 5  (NOT reconciled)" in bad
    assert bad[-1] == "  not reconciled: tracing (read 95, in the ring 0)"
