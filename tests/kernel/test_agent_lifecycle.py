"""Agent start-up, API guard rails and clean shutdown, against real processes and BPF."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from apiary.loader import _libbpf as L
from apiary.testing.agent import AgentProcess


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apiary", *args], capture_output=True, text=True, timeout=60)


def test_cli_against_stopped_agent_prints_one_clear_line(tmp_path: Path) -> None:
    for cmd in (["status"], ["events"], ["bpf", "list"]):
        r = _run("--socket", str(tmp_path / "none.sock"), *cmd)
        assert r.returncode == 1
        assert r.stderr.strip().count("\n") == 0, r.stderr
        assert "agent not running: start it with" in r.stderr and "Traceback" not in r.stderr


def test_unknown_flag_and_bad_values_fail_cleanly(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    r = _run("--socket", sock, "events", "--no-such-flag")
    assert (
        r.returncode == 2
        and "No such option" in r.stderr
        and "--no-such-flag" in r.stderr
        and "Traceback" not in r.stderr
    )
    r = _run("--socket", sock, "events", "--binary", "(unclosed")
    assert r.returncode == 2 and "--binary" in r.stderr and "Traceback" not in r.stderr
    r = _run("--socket", sock, "events", "--since", "yesterday-ish")
    assert r.returncode == 2 and "--since" in r.stderr and "Traceback" not in r.stderr
    r = _run("agent", "--ringbuf-size", "5000")
    assert r.returncode == 2 and "--ringbuf-size" in r.stderr


def test_second_agent_on_same_socket_is_refused(agent: AgentProcess) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "apiary", "--socket", agent.socket, "agent", "--pin-root", agent.pin_root + "-2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "another apiary agent" in r.stderr and str(agent.proc.pid) in r.stderr and "Traceback" not in r.stderr
    # the first one is unharmed
    assert agent.client().get("/v1/health")["ok"] is True


def test_socket_is_root_only_and_openapi_served(agent: AgentProcess) -> None:
    mode = stat.S_IMODE(os.stat(agent.socket).st_mode)
    assert mode == 0o600
    spec = agent.client().get("/openapi.json")
    assert "/v1/events" in spec["paths"] and spec["openapi"].startswith("3.")
    r = agent.client().http.get("/v1/events", params={"count": "0"})
    assert r.status_code == 400 and "count" in r.json()["error"]


def test_bpf_list_and_clean_shutdown_detaches_everything() -> None:
    a = AgentProcess()
    try:
        a.start()
        r = a.cli("bpf", "list", "-o", "json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        progs = {p["name"]: p["id"] for p in data["programs"]}
        # no TracingPolicy yet: the tracing sensor's programs are not loaded (they load with the first one)
        assert set(progs) == {"on_exec", "on_fork", "on_exit", "from_container", "to_container"}
        assert len(data["links"]) == 3 and all(lk["id"] > 0 for lk in data["links"])  # no endpoints: no TC links
        tp = (
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: lifecycle-ppid}\nspec:\n"
            "  kprobes:\n  - call: sys_getppid\n    syscall: true\n"
        )
        r = a.cli("tp", "apply", "-f", "-", input=tp)
        assert r.returncode == 0, r.stderr
        data = json.loads(a.cli("bpf", "list", "-o", "json").stdout)
        progs = {p["name"]: p["id"] for p in data["programs"]}
        assert {"gs_sys_enter", "gs_connect4", "gs_connect6"} <= set(progs)
        assert len(data["links"]) == 6  # + the two connect hooks at the cgroup root and getppid's tracepoint
        pins = [m["pin"] for m in data["maps"] if m["pin"]]
        assert pins and all(p.startswith(a.pin_root) and os.path.exists(p) for p in pins)
        assert a.stop() == 0
        assert "everything it attached is detached" in a.log()
        deadline = time.monotonic() + 5  # the kernel frees programs after an RCU grace period
        alive = set(progs.values())
        while alive and time.monotonic() < deadline:
            for pid in list(alive):
                fd = L.lib.bpf_prog_get_fd_by_id(pid)
                if fd >= 0:
                    os.close(fd)
                else:
                    alive.discard(pid)
            time.sleep(0.05)
        assert not alive, f"programs {alive} still loaded after shutdown"
        assert not os.path.exists(a.pin_root)
        assert not os.path.exists(a.socket)
    finally:
        a.cleanup()


def test_startup_summary_lists_what_was_loaded(agent: AgentProcess) -> None:
    log = agent.log()
    for name in ("on_exec", "on_fork", "on_exit"):
        assert f"✓ program {name}" in log
    assert "seeded from /proc" in log
