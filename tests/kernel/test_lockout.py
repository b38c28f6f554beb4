"""No lock-out, and a way back: a real agent, real Sigkill policies on apiary's own interpreter.

Every policy here targets a private copy of the Python binary (interpreter_copy), never the machine's
Python: a Sigkill on "the interpreter" must not hit the test runner or anything else on the machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess, interpreter_copy

START = 120.0  # seconds an agent may take to come up (the machine is shared)


@pytest.fixture
def pycopy() -> Iterator[tuple[str, dict[str, str]]]:
    d = tempfile.mkdtemp(prefix="apiary-pycopy-")
    try:
        yield interpreter_copy(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def kill_policy(name: str, binary: str, calls: tuple[str, ...], follow: bool = False) -> str:
    hooks = "".join(
        f"""
          - call: {call}
            syscall: true
            selectors:
            - matchBinaries:
              - {{operator: In, values: ["{binary}"]{", followChildren: true" if follow else ""}}}
              matchActions:
              - {{action: Sigkill}}"""
        for call in calls
    )
    return (
        textwrap.dedent(
            f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: {name}}}
        spec:
          kprobes:"""
        )
        + hooks
        + "\n"
    )


def apply(agent: AgentProcess, text: str) -> str:
    r = agent.cli("tp", "apply", "-f", "-", input=text)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


def tp_rows(agent: AgentProcess, **kw: Any) -> list[dict[str, Any]]:
    r = agent.cli("tp", "list", "-o", "json", **kw)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return json.loads(r.stdout)


def kprobe_events(agent: AgentProcess, wait: float = 0.5) -> list[dict[str, Any]]:
    time.sleep(wait)  # the agent drains its ring every 50 ms
    out = []
    with agent.client().http.stream(
        "GET", "/v1/events", params=[("since", "10m"), ("follow", "0"), ("type", "kprobe")]
    ) as resp:
        for line in resp.iter_lines():
            if line:
                out.append(json.loads(line)["process_kprobe"])
    return out


def exempt_events(agent: AgentProcess, policy: str) -> list[dict[str, Any]]:
    assert agent.proc is not None
    pid = agent.proc.pid
    deadline = time.monotonic() + 10
    while True:
        agent.cli("status")  # the agent opens, reads and writes while it answers
        evs = [e for e in kprobe_events(agent) if e.get("policy_name") == policy and e["process"]["pid"] == pid]
        if evs or time.monotonic() > deadline:
            return evs


def wait_dead(agent: AgentProcess, timeout: float = 10) -> int | None:
    assert agent.proc is not None
    try:
        return agent.proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - still alive: the caller's assertion says so
        return None


def test_sigkill_on_the_agents_interpreter_with_follow_children_spares_the_agent(
    pycopy: tuple[str, dict[str, str]],
) -> None:
    python, env = pycopy
    agent = AgentProcess(python=python, env=env)
    try:
        agent.start(timeout=START)
        out = apply(agent, kill_policy("kill-agent-interp", python, ("sys_openat", "sys_write"), follow=True))
        # apply says the enforcement targets the agent's own interpreter
        assert "warning:" in out and python in out and "--offline" in out, out
        evs = exempt_events(agent, "kill-agent-interp")
        assert agent.proc is not None and agent.proc.poll() is None, agent.log()
        assert evs, "the agent's own calls matched no event"
        assert all(e["message"].startswith("[agent exempt: would Sigkill]") for e in evs), evs
        assert all(e["action"] == "KPROBE_ACTION_SIGKILL" for e in evs)
        (row,) = tp_rows(agent)
        assert row["agent_exempt"] >= len(evs) and row["enforced"] == 0, row
        # restart with the policy stored: the new agent (another pid) comes up and is exempt too
        first = agent.proc.pid
        assert agent.stop() == 0, agent.log()
        agent.start(timeout=START)
        assert agent.proc.pid != first
        (row,) = tp_rows(agent)
        assert row["name"] == "kill-agent-interp" and row["state"] == "enabled"
        assert exempt_events(agent, "kill-agent-interp"), agent.log()
        assert agent.proc.poll() is None, agent.log()
    finally:
        agent.cleanup()


def test_without_the_exemption_the_same_policy_kills_the_agent(pycopy: tuple[str, dict[str, str]]) -> None:
    python, env = pycopy
    agent = AgentProcess("--no-agent-exemption", python=python, env=env)
    state = str(agent.dir / "state")
    try:
        agent.start(timeout=START)
        assert "agent exemption OFF" in agent.log()
        policy = kill_policy("kill-agent-interp", python, ("sys_openat", "sys_write"), follow=True)
        agent.cli("tp", "apply", "-f", "-", input=policy)  # the agent may die before it answers
        rc = wait_dead(agent)
        assert rc == -9, (rc, agent.log())
    finally:
        # the policy may have been saved before the kill: never leave it for a later agent to restore
        agent.cli("tp", "delete", "--offline", "kill-agent-interp", "--state-dir", state, "--pin-root", agent.pin_root)
        agent.cleanup()  # state dir and pin root removed
    assert not Path(state).exists() and not Path(agent.pin_root).exists()


def test_a_policy_that_kills_the_cli_is_removed_offline(pycopy: tuple[str, dict[str, str]]) -> None:
    python, env = pycopy  # the CLI runs on the copy here; the agent on the test's own interpreter
    agent = AgentProcess()
    state = str(agent.dir / "state")
    try:
        agent.start(timeout=START)
        apply(agent, kill_policy("kill-cli", python, ("sys_connect",)))
        r = agent.cli("tp", "list", python=python, env=env)
        assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
        r = agent.cli("tp", "delete", "kill-cli", python=python, env=env)
        assert r.returncode == -9  # locked out: the CLI cannot delete it through the agent
        # offline while the agent runs on that state dir: refused, nothing changed
        r = agent.cli("tp", "delete", "--offline", "kill-cli", "--state-dir", state, "--pin-root", agent.pin_root)
        assert r.returncode == 1 and "in use by pid" in r.stderr and "stop the agent" in r.stderr, r.stderr
        assert [p["name"] for p in tp_rows(agent)] == ["kill-cli"]
        assert agent.stop() == 0
        r = agent.cli(
            "tp",
            "delete",
            "--offline",
            "kill-cli",
            "--state-dir",
            state,
            "--pin-root",
            agent.pin_root,
            python=python,
            env=env,
        )
        assert r.returncode == 0 and "kill-cli deleted" in r.stdout, (r.returncode, r.stderr)
        r = agent.cli("tp", "delete", "--offline", "kill-cli", "--state-dir", state, "--pin-root", agent.pin_root)
        assert r.returncode == 1 and "no stored tracing policy 'kill-cli'" in r.stderr
        agent.start(timeout=START)
        assert tp_rows(agent, python=python, env=env) == []  # not restored: the CLI on the copy works again
    finally:
        agent.cleanup()


def test_no_restore_starts_with_stored_policies_listed_disabled(pycopy: tuple[str, dict[str, str]]) -> None:
    python, env = pycopy
    agent = AgentProcess()
    try:
        agent.start(timeout=START)
        apply(agent, kill_policy("kill-cli", python, ("sys_connect",)))
        assert agent.stop() == 0
        # a record this kernel cannot load stays on disk (disabled), never silently dropped by the rewrite
        stored = agent.dir / "state" / "tracingpolicies.json"
        broken = {"key": "/broken", "source": "kind: NotAPolicy", "mode": None, "enabled": True}
        stored.write_text(json.dumps([*json.loads(stored.read_text()), broken]))
        agent.extra = ("--no-restore",)
        agent.start(timeout=START)
        assert "--no-restore: 1 stored tracing policies loaded disabled" in agent.log()
        assert "tracing policy /broken could not be restored" in agent.log()
        on_disk = {r["key"]: r["enabled"] for r in json.loads(stored.read_text())}
        assert on_disk == {"/kill-cli": False, "/broken": False}, on_disk
        rows = tp_rows(agent, python=python, env=env)  # the CLI on the copy is not killed
        assert [(r["name"], r["state"]) for r in rows] == [("kill-cli", "disabled")]
        # it stays disabled across a normal restart, until enabled
        assert agent.stop() == 0
        agent.extra = ()
        agent.start(timeout=START)
        assert [r["state"] for r in tp_rows(agent, python=python, env=env)] == ["disabled"]
        r = agent.cli("tp", "enable", "kill-cli")
        assert r.returncode == 0, r.stderr
        assert agent.cli("tp", "list", python=python, env=env).returncode == -9
    finally:
        agent.cleanup()


def test_offline_delete_switches_off_the_policys_pinned_hooks(tmp_path: Path) -> None:
    """The pin layout runtime/tracing.py documents: a manifest naming each policy's gs_hooks indexes."""
    from apiary.agent import statedir
    from apiary.loader import Map
    from apiary.sensors.pins import MANIFEST_BYTES

    root = Path(f"/sys/fs/bpf/apiary-test-{uuid.uuid4().hex[:10]}")
    (root / "tracing").mkdir(parents=True)
    maps = []
    try:
        manifest = Map.create(2, "t_manifest", 4, MANIFEST_BYTES, 1)  # BPF_MAP_TYPE_ARRAY
        hooks = Map.create(2, "t_hooks", 4, 64, 8)
        follow = Map.create(2, "t_follow", 4, 16, 8)
        maps += [manifest, hooks, follow]
        pols = {"/kill-cli": {"hooks": [1, 3]}, "/other": {"hooks": [2]}}
        manifest.update(b"\0" * 4, json.dumps({"policies": pols}).encode().ljust(MANIFEST_BYTES, b"\0"))
        for i in range(8):
            hooks.update(i.to_bytes(4, "little"), b"\x01" * 64)
        manifest.pin(str(root / "tracing" / "manifest"))
        hooks.pin(str(root / "tracing" / "gs_hooks"))
        follow.pin(str(root / "tracing" / "gs_follow"))
        state = tmp_path / "state"
        state.mkdir()
        (state / statedir.TRACING_FILE).write_text(json.dumps([{"key": "/kill-cli", "source": ""}]))
        out = statedir.delete_tracing_policy(state, "kill-cli", pin_root=root)
        assert out.endswith("its 2 pinned hooks switched off"), out
        live = {i: hooks.lookup(i.to_bytes(4, "little")) for i in range(8)}
        assert [i for i, v in live.items() if v == b"\0" * 64] == [1, 3]  # the other policy's hook 2 is untouched
    finally:
        for m in maps:
            m.close()
        shutil.rmtree(root, ignore_errors=True)


def test_the_kernel_knows_the_exempt_process_by_pid_and_start_time(tmp_path: Path) -> None:
    """The sensor alone: a Sigkill on writes by a private copy of sh; the exempt entry names one process."""
    import contextlib
    import os
    import struct
    import subprocess

    from apiary.loader.fs import cgroup2_root
    from apiary.observe.procfs import process_start_ticks
    from apiary.sensors.process.sensor import ProcessSensor
    from apiary.sensors.tracing import abi as tabi
    from apiary.sensors.tracing.sensor import TracingSensor
    from apiary.testing.sensors import tracing_events
    from apiary.tracing.types import BinaryFilter, CompiledTracingPolicy, Hook, Selector

    sh = tmp_path / "sh"
    shutil.copy2(os.path.realpath("/bin/sh"), sh)
    hook = Hook(
        source="kprobes[0] sys_write",
        event="process_kprobe",
        function_name="__x64_sys_write",
        attach_points=("write",),
        args=(),
        selectors=(Selector(binaries=BinaryFilter("In", (str(sh),)), action="Sigkill"),),
        realisation="syscall entry of write",
    )
    root = cgroup2_root()
    assert root is not None
    helpers = Path(root) / f"apiary-test-helpers-{uuid.uuid4().hex[:8]}"
    helpers.mkdir()
    ps = ProcessSensor()
    ps.load()
    ts = TracingSensor(ps)
    try:
        ts.load()
        ts.apply("/kill-sh", CompiledTracingPolicy("kill-sh", "", "TracingPolicy", "enforce", None, [hook]), None)
        (hid,) = ts.policies["/kill-sh"].hook_ids

        def join_helpers() -> None:
            (helpers / "cgroup.procs").write_text(str(os.getpid()))

        def run(exempt: str) -> tuple[int, int]:
            p = subprocess.Popen([str(sh), "-c", "read x; echo hi"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 preexec_fn=join_helpers if exempt == "its cgroup" else None)
            if exempt == "this process":
                ts.exempt_agent(p.pid)
            elif exempt == "its pid, another start time":  # what a later process reusing the pid looks like
                tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
                ts.agent_map.update(
                    b"\0" * 4, struct.pack("<IIQQQ", p.pid, 0, process_start_ticks(f"/proc/{p.pid}") + 1, tick_ns, 0)
                )
            elif exempt == "its cgroup":  # the agent's helpers (its HAProxy, the DNS socket holder)
                ts.exempt_agent(os.getpid(), os.stat(helpers).st_ino)
            else:
                ts.exempt_agent(None)
            p.communicate(b"go\n", timeout=10)
            return p.returncode, p.pid

        rc, pid = run("this process")
        assert rc == 0
        evs = [e for e in tracing_events(ps) if e.pid == pid]
        assert evs and all(e.flags & tabi.EV_EXEMPT and not e.flags & tabi.EV_ENFORCED for e in evs), evs
        assert ts.hook_counters(hid)["exempted"] >= 1 and ts.hook_counters(hid)["enforced"] == 0
        assert run("its pid, another start time")[0] == -9
        assert run("nobody")[0] == -9
        assert ts.hook_counters(hid)["enforced"] == 2
        assert run("its cgroup")[0] == 0  # a process in the agent's helpers cgroup is exempt too
        assert ts.hook_counters(hid)["enforced"] == 2
    finally:
        ts.close()
        ps.close()
        with contextlib.suppress(OSError):
            helpers.rmdir()
