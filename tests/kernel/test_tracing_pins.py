"""Tracing enforcement survives the agent: matchBinaries sees processes older than the agent (the binary map
is seeded from /proc), a killed agent leaves its hooks pinned and enforcing, the next agent adopts them
without attaching anything twice, and a clean stop removes every pin."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess

START_TIMEOUT = 180.0  # the test machine is shared: start-up can take half a minute


@pytest.fixture
def copied_shell() -> Iterator[Path]:
    """A copy of dash under a unique path: the binary a matchBinaries selector names."""
    d = Path("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp") / f"apiary-pins-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir(mode=0o755)
    copy = d / "dash-copy"
    shutil.copy2("/usr/bin/dash", copy)
    try:
        yield copy
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:  # only the processes this test started, by their Popen handle
        if p.poll() is None:
            p.kill()
            p.wait()


def policy(binary: Path, name: str = "kill-copied-chdir") -> str:
    return textwrap.dedent(
        f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: {name}}}
        spec:
          kprobes:
          - call: sys_chdir
            syscall: true
            args:
            - {{index: 0, type: string}}
            selectors:
            - matchBinaries:
              - {{operator: In, values: ["{binary}"]}}
              matchActions:
              - {{action: Sigkill}}
        """
    )


def apply(agent: AgentProcess, text: str) -> None:
    r = agent.cli("tp", "apply", "-f", "-", input=text)
    assert r.returncode == 0, r.stderr


def chdir_loop(binary: Path) -> subprocess.Popen[str]:
    """A process of ``binary`` that calls chdir() once per line on its stdin (and nothing else meanwhile)."""
    return subprocess.Popen(
        [str(binary), "-c", "while read x; do cd /; echo ok; done"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def poke(p: subprocess.Popen[str]) -> int | None:
    """One chdir(): the process's exit status if that killed it, None if it answered."""
    assert p.stdin is not None and p.stdout is not None
    try:
        p.stdin.write("x\n")
        p.stdin.flush()
    except BrokenPipeError:
        pass
    line = p.stdout.readline()
    if line == "ok\n":
        return None
    return p.wait(timeout=10)


def run_once(binary: Path) -> int:
    return subprocess.run([str(binary), "-c", "cd /; echo survived"], capture_output=True, timeout=30).returncode


def tp_rows(agent: AgentProcess) -> list[dict[str, Any]]:
    r = agent.cli("tp", "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def bpf_list(agent: AgentProcess) -> dict[str, Any]:
    r = agent.cli("bpf", "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def kernel_links() -> dict[int, int]:
    """link id -> program id of every bpf_link in the kernel (bpftool's view, not apiary's)."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {lk["id"]: lk["prog_id"] for lk in json.loads(out or "[]")}


def kill_events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    c = agent.client()
    evs = []
    with c.http.stream("GET", "/v1/events", params=[("since", "10m"), ("follow", "0"), ("type", "kprobe")]) as resp:
        for line in resp.iter_lines():
            if line.strip():
                ev = json.loads(line)["process_kprobe"]
                if ev.get("policy_name") == name and ev["action"] == "KPROBE_ACTION_SIGKILL":
                    evs.append(ev)
    return evs


def wait_for(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.1)


needs_bpftool = pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool counts the kernel's links")


def test_matchbinaries_kills_a_process_started_before_the_agent(copied_shell: Path, procs: list) -> None:
    early = chdir_loop(copied_shell)
    procs.append(early)
    assert poke(early) is None  # alive and answering before any agent runs
    a = AgentProcess()
    try:
        a.start(timeout=START_TIMEOUT)
        apply(a, policy(copied_shell))
        assert run_once(Path("/usr/bin/dash")) == 0  # another binary's chdir is not the policy's
        assert poke(early) == -signal.SIGKILL  # its exec happened before the agent: seeded from /proc
        assert wait_for(lambda: kill_events(a, "kill-copied-chdir"))
    finally:
        a.cleanup()


@needs_bpftool
def test_enforcement_survives_kill_9_and_the_next_agent_adopts_it(copied_shell: Path, procs: list) -> None:
    a = AgentProcess()
    try:
        a.start(timeout=START_TIMEOUT)
        apply(a, policy(copied_shell))
        assert run_once(copied_shell) == -signal.SIGKILL
        across = chdir_loop(copied_shell)  # runs across the agent's death and restart
        procs.append(across)
        time.sleep(0.2)
        before = bpf_list(a)
        enforced_before = tp_rows(a)[0]["enforced"]
        assert enforced_before >= 1
        execs_before = a.client().get("/v1/status")["events"]["kernel_written"]["exec"]
        links_before = {lk["id"]: lk["attach"] for lk in before["links"]}

        assert a.stop(signal.SIGKILL) is not None  # no clean shutdown at all
        assert run_once(copied_shell) == -signal.SIGKILL  # still enforced with no agent running
        assert run_once(Path("/usr/bin/dash")) == 0

        a.start(timeout=START_TIMEOUT)
        assert "adopted" in a.log()
        # nothing changed while it was down: the reconcile's diff is empty, and says so
        assert "tracing: reconciled: hooks, follow bits, scope entries and links already matched" in a.log()
        rows = tp_rows(a)
        assert [r["name"] for r in rows] == ["kill-copied-chdir"]  # listed once
        assert rows[0]["enforced_while_agent_down"] is True
        assert "enforced while the agent is down: yes" in a.cli("tp", "list").stdout
        # the kernel's counters (ring-buffer losses among them) were kept, and counted while no agent ran
        assert a.client().get("/v1/status")["events"]["kernel_written"]["exec"] >= execs_before + 2
        assert rows[0]["enforced"] >= enforced_before + 1  # the kernel's counters survived, the kill while down too
        assert poke(across) == -signal.SIGKILL  # its binary entry survived the restart
        assert run_once(copied_shell) == -signal.SIGKILL
        assert wait_for(lambda: kill_events(a, "kill-copied-chdir"))  # events flow again
        # the adopted ring's counters include what the killed agent read: counted as read before, so the
        # accounting (produced = received + lost + in ring) holds for the new agent too
        assert re.search(r"event ring: [\d,]+ records read by earlier agents, the rest are read now", a.log()), \
            a.log()[-3000:]
        assert wait_for(lambda: a.client().get("/v1/status")["events"]["reconciled"]), \
            a.client().get("/v1/status")["events"]

        after = bpf_list(a)
        links_after = {lk["id"]: lk["attach"] for lk in after["links"]}
        # the same number of attachments, none twice: the adopted links are the previous agent's
        assert len(links_after) == len(links_before)
        kept = set(links_before) & set(links_after)
        assert kept, (links_before, links_after)
        kernel = kernel_links()
        ours = {kernel[i] for i in set(links_before) | set(links_after) if i in kernel}
        assert {i for i, p in kernel.items() if p in ours} == set(links_after)  # nothing else runs our programs

        pins = [lk["pin"] for lk in after["links"] if lk["pin"]]
        assert pins and all(p.startswith(a.pin_root) and os.path.exists(p) for p in pins)

        assert a.stop() == 0  # a clean stop of the adopting agent removes the adopted links and pins too
        assert not os.path.exists(a.pin_root)
        assert wait_for(lambda: not (set(links_after) & set(kernel_links())), timeout=5)
        assert run_once(copied_shell) == 0  # nothing enforces any more
    finally:
        a.cleanup()


@needs_bpftool
def test_clean_stop_removes_every_tracing_pin_and_link(copied_shell: Path) -> None:
    a = AgentProcess()
    try:
        a.start(timeout=START_TIMEOUT)
        apply(a, policy(copied_shell))
        data = bpf_list(a)
        link_ids = {lk["id"] for lk in data["links"] if lk["id"]}
        assert any("sys_enter_chdir" in lk["attach"] for lk in data["links"]), data["links"]
        assert os.listdir(f"{a.pin_root}/tracing/links")
        assert a.stop() == 0
        assert not os.path.exists(a.pin_root)
        gone = wait_for(lambda: not (link_ids & set(kernel_links())), timeout=5)
        assert gone, link_ids & set(kernel_links())
        assert run_once(copied_shell) == 0  # nothing enforces after a clean stop
    finally:
        a.cleanup()


def test_a_policy_removed_while_the_agent_was_down_is_removed_from_the_kernel(copied_shell: Path) -> None:
    """The stored state is what the next agent enforces: a policy dropped from it offline (as `tp delete
    --offline` does) is detached at start, and nothing of it stays pinned."""
    from apiary.sensors.tracing.sensor import disable_pinned_policy

    a = AgentProcess()
    try:
        a.start(timeout=START_TIMEOUT)
        apply(a, policy(copied_shell, "dropped"))
        apply(a, policy(Path("/nonexistent/other-binary"), "kept"))
        assert a.stop(signal.SIGKILL) is not None
        assert run_once(copied_shell) == -signal.SIGKILL
        assert not disable_pinned_policy(f"{a.pin_root}/tracing", "/no-such-policy")
        assert disable_pinned_policy(f"{a.pin_root}/tracing", "/dropped")  # the offline way back
        assert run_once(copied_shell) == 0  # at once, with no agent running
        state = a.dir / "state" / "tracingpolicies.json"
        recs = json.loads(state.read_text())
        state.write_text(json.dumps([r for r in recs if "dropped" not in r["key"]]))
        a.start(timeout=START_TIMEOUT)
        assert "removed policy /dropped" not in a.log()  # forgotten in the manifest already
        assert [r["name"] for r in tp_rows(a)] == ["kept"]
        assert run_once(copied_shell) == 0
        links = os.listdir(f"{a.pin_root}/tracing/links")
        assert sorted(links) == sorted(["%40connect4", "%40connect6", "chdir"]), links  # kept's hook only
        a.cli("tp", "delete", "kept")
        assert sorted(os.listdir(f"{a.pin_root}/tracing/links")) == ["%40connect4", "%40connect6"]
    finally:
        a.cleanup()


def pinned_lost(pin_root: str) -> int:
    """Records the process sensor's programs could not write, summed over CPUs, read from the pinned map."""
    from apiary.loader import Map, TypedMap
    from apiary.sensors.process import abi as process_abi

    m = Map.from_pin(f"{pin_root}/process/counters")
    try:
        tm = TypedMap(m, "<I", "<Q")
        return sum(tm.sum_percpu(i) or 0 for i, n in enumerate(process_abi.CNT_NAMES) if n.startswith("lost_"))
    finally:
        m.close()


def test_ring_buffer_losses_while_the_agent_is_down_are_counted_after_restart() -> None:
    """Nobody reads the ring while the agent is down: it fills, the programs count what they could not
    write (per CPU, in pinned counters), and the next agent reports those losses."""
    a = AgentProcess("--ringbuf-size", "4096")
    try:
        a.start(timeout=START_TIMEOUT)
        assert a.stop(signal.SIGKILL) is not None
        lost_at_kill = pinned_lost(a.pin_root)
        for _ in range(60):  # ~ 3 records each, far more than 4 KiB
            subprocess.run(["/bin/true"], check=True)
        lost_down = pinned_lost(a.pin_root)
        assert lost_down > lost_at_kill  # the programs ran on, and counted what the full ring refused
        a.start(timeout=START_TIMEOUT)
        lost = a.client().get("/v1/status")["events"]["kernel_lost"]
        assert sum(lost.values()) >= lost_down, (lost_down, lost)  # the counters survived the restart
        # what the full ring still held is read by this agent, what the killed one read is counted as read
        assert wait_for(lambda: a.client().get("/v1/status")["events"]["reconciled"]), \
            a.client().get("/v1/status")["events"]
    finally:
        a.cleanup()


def test_a_policy_changed_while_the_agent_was_down_is_replaced_whole(copied_shell: Path) -> None:
    other = copied_shell.with_name("dash-other")
    shutil.copy2(copied_shell, other)
    a = AgentProcess()
    try:
        a.start(timeout=START_TIMEOUT)
        apply(a, policy(copied_shell, "changed"))
        assert a.stop(signal.SIGKILL) is not None
        state = a.dir / "state" / "tracingpolicies.json"
        state.write_text(state.read_text().replace(str(copied_shell), str(other)))  # edited offline
        a.start(timeout=START_TIMEOUT)
        assert [r["name"] for r in tp_rows(a)] == ["changed"]
        assert run_once(copied_shell) == 0  # the old selector is gone from the kernel
        assert run_once(other) == -signal.SIGKILL  # the stored one enforces
        assert sorted(os.listdir(f"{a.pin_root}/tracing/links")) == ["%40connect4", "%40connect6", "chdir"]
        hooks = [lk for lk in bpf_list(a)["links"] if "chdir" in lk["attach"]]
        assert len(hooks) == 1, hooks
        # disabled stays disabled across kill -9 and restart (kept in the kernel, never re-enabled meanwhile)
        assert a.cli("tp", "disable", "changed").returncode == 0
        assert a.stop(signal.SIGKILL) is not None
        assert run_once(other) == 0
        a.start(timeout=START_TIMEOUT)
        assert [r["state"] for r in tp_rows(a)] == ["disabled"]
        assert run_once(other) == 0
        assert a.cli("tp", "enable", "changed").returncode == 0
        assert run_once(other) == -signal.SIGKILL
    finally:
        a.cleanup()


def pids_with(marker: str) -> list[int]:
    """The processes whose command line holds this test's unique marker (only ones this test started)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
            except OSError:
                pass
    return out


def test_followchildren_survives_a_restart_for_an_orphaned_child(copied_shell: Path) -> None:
    """The child of a followed binary keeps its bit in the kernel across kill -9 and restart, even after its
    parent exited (so /proc no longer shows the ancestry the agent could re-seed it from)."""
    marker = f"apiary-pins-follow-{os.getpid()}-{time.monotonic_ns()}"
    text = policy(copied_shell, "follow").replace(
        f'values: ["{copied_shell}"]}}', f'values: ["{copied_shell}"], followChildren: true}}'
    )
    assert "followChildren" in text
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    a = AgentProcess()
    try:
        a.start(timeout=START_TIMEOUT)
        apply(a, text)
        # the copy starts a /usr/bin/dash child in the background (stdin/stdout: our pipes) and exits
        script = f'exec 3<&0; /usr/bin/dash -c ": {marker}; while read x; do cd /; echo ok; done" <&3 3<&- &'
        launcher = subprocess.run([str(copied_shell), "-c", script], stdin=r_in, stdout=w_out, timeout=30)
        os.close(r_in)
        os.close(w_out)
        r_in = w_out = -1
        assert launcher.returncode == 0
        assert pids_with(marker)
        assert a.stop(signal.SIGKILL) is not None
        a.start(timeout=START_TIMEOUT)
        os.write(w_in, b"x\n")
        ready, _, _ = select.select([r_out], [], [], 20)
        assert ready and os.read(r_out, 16) == b"", "the followed child answered: it was not killed"
        assert wait_for(lambda: not pids_with(marker), timeout=5)
    finally:
        for pid in pids_with(marker):
            os.kill(pid, signal.SIGKILL)
        for fd in (r_in, w_in, r_out, w_out):
            if fd >= 0:
                os.close(fd)
        a.cleanup()
