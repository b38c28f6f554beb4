"""The tracing path of a real agent: all-or-nothing apply of multi-document files, hooks on syscalls without
arguments, the ring's accounting per message type, events whose process the agent does not know."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess

MISSING = "apiary_no_such_symbol_in_true"
START = 180.0  # seconds: agents start slowly on a loaded 2-core machine


def _policy(name: str, spec: str) -> str:
    head = f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: {name}}}\nspec:\n"
    return head + textwrap.indent(textwrap.dedent(spec), "  ")


def _doc(name: str, call: str = "sys_getppid", action: str = "Post") -> str:
    return _policy(
        name,
        f"""\
        kprobes:
        - call: {call}
          syscall: true
          selectors:
          - matchActions: [{{action: {action}}}]
        """,
    )


def _bad_uprobe(name: str) -> str:
    return _policy(name, f"uprobes:\n- path: /usr/bin/true\n  symbols: [{MISSING}]\n")


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess()
    try:
        a.start(START)
        yield a
    finally:
        a.cleanup()


@pytest.fixture(autouse=True)
def no_policies_after(agent: AgentProcess) -> Iterator[None]:
    yield
    for p in _list(agent):
        agent.cli("tp", "delete", p["name"], "-n", p["namespace"])


def _list(agent: AgentProcess) -> list[dict[str, Any]]:
    r = agent.cli("tp", "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _apply(agent: AgentProcess, text: str) -> subprocess.CompletedProcess[str]:
    return agent.cli("tp", "apply", "-f", "-", input=text)


def _attached(agent: AgentProcess) -> list[str]:
    """The attach points of the tracing sensor's links, as the agent lists its kernel objects."""
    data = agent.client().get("/v1/bpf")
    return [lk["attach"] for lk in data["links"] if lk["program"].startswith("gs_") and lk["program"] != "gs_connect4"]


def _events(agent: AgentProcess, policy: str) -> list[dict[str, Any]]:
    time.sleep(0.5)  # the agent drains the ring every 50 ms
    c = agent.client()
    out = []
    with c.http.stream("GET", "/v1/events", params=[("since", "10m"), ("follow", "0"), ("type", "kprobe")]) as resp:
        for line in resp.iter_lines():
            if line:
                ev = json.loads(line)["process_kprobe"]
                if ev.get("policy_name") == policy:
                    out.append(ev)
    return out


def _getppid_child(n: int = 1) -> int:
    """A child that calls getppid() n times; returns its pid."""
    p = subprocess.run(
        [sys.executable, "-c", f"import os\nfor _ in range({n}): os.getppid()\nprint(os.getpid())"],
        capture_output=True, text=True, check=True,
    )
    return int(p.stdout)


def test_a_file_whose_second_document_cannot_attach_applies_nothing(agent: AgentProcess) -> None:
    r = _apply(agent, _doc("ta-first") + "---\n" + _bad_uprobe("ta-second"))
    assert r.returncode != 0
    assert MISSING in r.stderr and "nothing of the file was applied" in r.stderr, r.stderr
    assert _list(agent) == []
    assert not any("getppid" in a or MISSING in a for a in _attached(agent)), _attached(agent)
    # the first document's hook is not live: a getppid() posts nothing
    pid = _getppid_child()
    assert not [e for e in _events(agent, "ta-first") if e["process"]["pid"] == pid]
    # and nothing comes back at the next start: it was never saved
    agent.stop()
    agent.start(START)
    assert _list(agent) == []


def test_a_file_replacing_a_policy_that_fails_leaves_the_old_version_in_force(agent: AgentProcess) -> None:
    assert _apply(agent, _doc("ta-keep", call="sys_getppid")).returncode == 0
    r = _apply(agent, _doc("ta-keep", call="sys_getuid") + "---\n" + _bad_uprobe("ta-bad"))
    assert r.returncode != 0 and "ta-keep restored" in r.stderr, r.stderr
    rows = _list(agent)
    assert [row["name"] for row in rows] == ["ta-keep"]
    assert rows[0]["hooks"][0]["source"] == "kprobes[0] sys_getppid", rows[0]["hooks"]
    attached = _attached(agent)
    assert any("sys_enter_getppid" in a for a in attached) and not any("getuid" in a for a in attached), attached
    pid = _getppid_child()  # the old version still posts
    assert [e for e in _events(agent, "ta-keep") if e["process"]["pid"] == pid]
    agent.stop()  # and it is the version saved
    agent.start(START)
    assert _list(agent)[0]["hooks"][0]["source"] == "kprobes[0] sys_getppid"


@pytest.mark.parametrize("call", ["sys_getppid", "sys_getpid", "sys_getuid", "sys_sync"])
def test_hooks_on_syscalls_without_arguments_attach(agent: AgentProcess, call: str) -> None:
    r = _apply(agent, _doc(f"ta-noargs-{call.removeprefix('sys_')}", call=call))
    assert r.returncode == 0, r.stderr


def test_a_getppid_policy_posts_the_childs_call(agent: AgentProcess) -> None:
    assert _apply(agent, _doc("ta-getppid")).returncode == 0
    pid = _getppid_child()
    mine = [e for e in _events(agent, "ta-getppid") if e["process"]["pid"] == pid]
    assert mine, "no event for the child's getppid()"
    ev = mine[-1]
    assert ev["function_name"] == "__x64_sys_getppid" and ev["process"]["binary"] == os.path.realpath(sys.executable)
    assert "miss" not in ev["process"].get("flags", "")


def test_status_reconciles_every_message_type_with_tracing_events_lost_to_a_small_ring() -> None:
    agent = AgentProcess("--ringbuf-size", "16384")
    try:
        agent.start(START)
        assert _apply(agent, _doc("ta-storm")).returncode == 0
        _getppid_child(20_000)  # far more events than a 16 KiB ring holds between two drains
        st = json.loads(agent.cli("status", "-o", "json").stdout)
        ev = st["events"]
        rows = ev["by_type"]
        assert set(rows) >= {"exec", "fork", "exit", "tracing"}
        for name, row in rows.items():
            assert row["produced"] == row["received"] + row["lost"] + row["in_ring"], (name, row)
            assert row["reconciled"], (name, row)
        t = rows["tracing"]
        assert t["lost"] > 0 and t["received"] > 0, t
        assert t["produced"] >= 20_000
        assert ev["reconciled"] and ev["produced"] == ev["received"] + ev["lost"] + ev["in_ring"]
        tp = next(r for r in _list(agent) if r["name"] == "ta-storm")
        # the same kernel counters, read a moment later (other processes call getppid() too)
        assert tp["lost"] >= t["lost"] and tp["events"] >= t["written"]
        text = agent.cli("status").stdout
        assert "tracing: produced" in text and "(reconciled)" in text and "NOT reconciled" not in text, text
    finally:
        agent.cleanup()


def test_an_event_of_a_process_the_cache_no_longer_holds_is_emitted_and_counted() -> None:
    """A 64-entry process cache: 100 newer processes push the target out, then it calls getppid()."""
    agent = AgentProcess("--process-cache-size", "64")
    sleepers: list[subprocess.Popen[bytes]] = []
    target = None
    try:
        agent.start(START)
        assert _apply(agent, _doc("ta-miss")).returncode == 0
        target = subprocess.Popen(
            [sys.executable, "-c", "import os, sys\nsys.stdin.read(1)\nos.getppid()\nprint(os.getpid())"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        sleepers = [subprocess.Popen(["sleep", "120"]) for _ in range(100)]
        time.sleep(1.0)  # the agent has read their exec records: the target was evicted
        out, _ = target.communicate("x", timeout=60)
        pid = int(out)
        mine = [e for e in _events(agent, "ta-miss") if e["process"]["pid"] == pid]
        assert mine, "the event of a process the agent does not know was dropped"
        proc = mine[-1]["process"]
        assert proc["flags"] == "miss" and "binary" not in proc and "uid" not in proc, proc
        st = json.loads(agent.cli("status", "-o", "json").stdout)
        assert st["events"]["events_missing_process_info"] >= 1
        assert "unattributed" not in st["events"]["emitted"]
        assert "events_missing_process_info" in agent.cli("status").stdout
        metrics = agent.client().http.get("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("tetragon_events_missing_process_info_total "))
        assert float(line.split()[-1]) >= 1
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
        if target is not None and target.poll() is None:
            target.kill()
            target.wait()
        agent.cleanup()


def test_counts_survive_set_mode_and_a_new_policy_starts_from_zero(agent: AgentProcess) -> None:
    assert _apply(agent, _doc("ta-count")).returncode == 0
    _getppid_child(50)
    before = next(r for r in _list(agent) if r["name"] == "ta-count")["events"]
    assert before >= 50
    assert agent.cli("tp", "set-mode", "ta-count", "monitor").returncode == 0  # a new version, new hook slots
    assert next(r for r in _list(agent) if r["name"] == "ta-count")["events"] >= before
    assert agent.cli("tp", "delete", "ta-count").returncode == 0
    assert _apply(agent, _doc("ta-count-2", call="sys_sync")).returncode == 0
    assert next(r for r in _list(agent) if r["name"] == "ta-count-2")["events"] < 50
