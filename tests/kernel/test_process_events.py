"""Real processes, real BPF, a real agent: exec/exit events as Tetragon prints them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess


class Collector:
    """Streams events from the agent API in a thread until ``count`` arrived or timeout."""

    def __init__(self, agent: AgentProcess, params: list[tuple[str, str]], count: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.params = params + [("count", str(count))]
        self.thread = threading.Thread(target=self._run, args=(agent,), daemon=True)
        self.thread.start()
        time.sleep(0.3)  # let the stream subscribe before the workload starts

    def _run(self, agent: AgentProcess) -> None:
        for ev in agent.client().stream("/v1/events", self.params):
            self.events.append(ev)

    def wait(self, timeout: float = 20) -> list[dict[str, Any]]:
        self.thread.join(timeout)
        return self.events


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    d = Path(f"/tmp/apiary-bin-{uuid.uuid4().hex[:8]}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _copy(bindir: Path, src: str, name: str) -> str:
    dst = bindir / name
    shutil.copy2(shutil.which(src) or src, dst)
    return str(dst)


def _exec_id_pid(exec_id: str) -> tuple[str, int, int]:
    node, ktime, pid = base64.b64decode(exec_id).decode().rsplit(":", 2)
    return node, int(ktime), int(pid)


def test_child_exec_and_exit_events(agent: AgentProcess, bindir: Path) -> None:
    sleeper = _copy(bindir, "sleep", "probe-sleep")
    falser = _copy(bindir, "false", "probe-false")
    col = Collector(agent, [("binary", f"^{bindir}/")], count=6)
    ok = subprocess.run([sleeper, "0.01", "0.02"], cwd=bindir)
    bad = subprocess.run([falser, "with space", "x"], cwd="/")
    killed = subprocess.Popen([sleeper, "30"])
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    evs = col.wait()
    assert len(evs) == 6, evs
    by = {}
    for e in evs:
        kind = "process_exec" if "process_exec" in e else "process_exit"
        by[(kind, e[kind]["process"]["pid"])] = e

    # 1. exec of the sleeper: binary, arguments (argv[0] left out), cwd, pid, parent = this test process
    assert ok.returncode == 0
    ex = by[("process_exec", _pid_of(evs, sleeper, "0.01 0.02"))]["process_exec"]
    p = ex["process"]
    assert p["binary"] == sleeper and p["arguments"] == "0.01 0.02" and p["cwd"] == str(bindir)
    assert p["uid"] == os.getuid() and "execve" in p["flags"] and "clone" in p["flags"]
    node, _, pid = _exec_id_pid(p["exec_id"])
    assert node == agent.node_name and pid == p["pid"] == p["tid"]
    parent = ex["parent"]
    assert parent["pid"] == os.getpid()
    assert p["parent_exec_id"] == parent["exec_id"]
    assert os.path.realpath(parent["binary"]) == os.path.realpath(sys.executable)
    assert "procFS" in parent["flags"]  # this test process existed before the agent
    assert by[("process_exec", p["pid"])]["node_name"] == agent.node_name

    # 2. exit of the sleeper: status 0 is omitted (Tetragon's zero-value rule), same exec_id
    xt = by[("process_exit", p["pid"])]["process_exit"]
    assert xt["process"]["exec_id"] == p["exec_id"] and "status" not in xt and "signal" not in xt

    # 3. false: status 1, quoted argument with a space, cwd "/" gives rootcwd
    bad_pid = _pid_of(evs, falser, None)
    fe = by[("process_exec", bad_pid)]["process_exec"]["process"]
    assert fe["arguments"].strip() == '"with space" x' and fe["cwd"] == "/" and "rootcwd" in fe["flags"]
    assert by[("process_exit", bad_pid)]["process_exit"]["status"] == 1
    assert bad.returncode == 1

    # 4. killed: the signal by name
    kx = by[("process_exit", killed.pid)]["process_exit"]
    assert kx["signal"] == "SIGKILL" and "status" not in kx


def _pid_of(evs: list[dict[str, Any]], binary: str, args: str | None) -> int:
    for e in evs:
        body = e.get("process_exec")
        if body and body["process"]["binary"] == binary and (args is None or body["process"].get("arguments") == args):
            return body["process"]["pid"]
    raise AssertionError(f"no exec of {binary} {args} in {evs}")


def test_reexec_parent_is_previous_image_and_preexisting_shell_from_proc(bindir: Path) -> None:
    """A shell started before the agent execs a program: its parent comes from /proc."""
    marker = _copy(bindir, "true", "probe-true")
    # started BEFORE the agent; waits for a line, then `exec`s the marker (same pid, new image)
    shell = subprocess.Popen(["/bin/sh", "-c", f"read x; exec {marker} after-read"], stdin=subprocess.PIPE, text=True)
    with AgentProcess() as agent:
        col = Collector(agent, [("binary", f"^{bindir}/"), ("type", "exec")], count=1)
        assert shell.stdin is not None
        shell.stdin.write("go\n")
        shell.stdin.flush()
        shell.wait(timeout=10)
        (ev,) = col.wait()
    p = ev["process_exec"]["process"]
    parent = ev["process_exec"]["parent"]
    assert p["pid"] == shell.pid and p["arguments"] == "after-read"
    # re-exec: the parent is the previous image of the same pid (the shell), found in /proc
    assert parent["pid"] == shell.pid and parent["binary"] in ("/usr/bin/dash", "/bin/dash", "/bin/sh")
    assert "procFS" in parent["flags"] and "clone" not in p["flags"]
    # and its ancestors go up through this test process
    anc_pids = [a["pid"] for a in ev["process_exec"].get("ancestors", [])]
    assert os.getpid() in anc_pids


def test_cli_compact_json_and_filters(agent: AgentProcess, bindir: Path) -> None:
    echo = _copy(bindir, "echo", "probe-echo")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apiary",
            "--socket",
            agent.socket,
            "events",
            "--binary",
            f"^{bindir}/",
            "--count",
            "2",
            "--color",
            "never",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60  # the CLI is subscribed once the agent counts it (a slow start misses events)
    while agent.client().get("/v1/status")["subscribers"] < 1 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    subprocess.run([echo, "hello", "world"], stdout=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=20)
    lines = out.splitlines()
    assert lines == [
        f"🚀 process {agent.node_name} {echo} hello world",
        f"💥 exit    {agent.node_name} {echo} hello world 0",
    ], (out, err)
    assert "\x1b[" not in out
    # history replay with --since, JSON output, event-type and pid filters
    r = agent.cli(
        "events", "-o", "json", "--since", "1m", "--binary", "probe-echo", "--event-type", "exit", "--count", "1"
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.splitlines()[0])
    assert set(ev) == {"process_exit", "node_name", "time"}
    assert ev["process_exit"]["process"]["binary"] == echo and ev["time"].endswith("Z")


def test_status_reconciles_and_counts_loss_with_tiny_ring(bindir: Path) -> None:
    """A 4 KiB ring cannot hold an exec with 4 KiB of arguments: the loss must show in status."""
    marker = _copy(bindir, "true", "probe-big")
    with AgentProcess("--ringbuf-size", "4096", "--bpf-stats") as agent:
        for _ in range(5):
            subprocess.run([marker, "A" * 3000, "B" * 1000])
        subprocess.run([marker, "small"])
        time.sleep(0.5)
        r = agent.cli("status", "-o", "json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        ev = st["events"]
        assert ev["kernel_lost"]["exec"] >= 5, ev
        assert ev["lost"] >= 5 and ev["reconciled"], ev
        assert ev["produced"] == ev["received"] + ev["lost"] + ev["in_ring"]
        names = {p["name"]: p for p in st["programs"]}
        assert set(names) == {
            "on_exec",
            "on_fork",
            "on_exit",
            "from_container",
            "to_container",
        }  # the tracing sensor's gs_* programs load with the first TracingPolicy
        assert names["on_exec"]["run_count"] >= 6 and names["on_exec"]["avg_ns"] > 0
        procs = next(m for m in st["maps"] if m["name"] == "procs")
        assert procs["entries"] > 0 and 0 < procs["fill_pct"] < 100
        table = agent.cli("status", "--verbose")
        assert "lost" in table.stdout and "on_exec" in table.stdout and table.returncode == 0
