"""`apiary sysdump` against a real agent, and with that agent stopped: the tarball's members and their contents."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (loads BPF programs)")

AGENT_MEMBERS = {"summary.txt", "status.json", "config.json", "bpf.json", "endpoints.json", "policies.json",
                 "services.json", "tracingpolicies.json", "prefilter.json", "metrics.txt", "flows.jsonl",
                 "events.jsonl"}
NODE_MEMBERS = {"pins.json", "kernel.json", "preflight.json", "bpftool-prog.json", "bpftool-map.json"}


def _open(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        tops = {n.split("/", 1)[0] for n in names}
        assert len(tops) == 1 and next(iter(tops)).startswith("apiary-sysdump-"), names  # one top directory
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
        return out


def _sysdump(a: AgentProcess, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return a.cli("sysdump", "--output", str(out), "--state-dir", str(a.dir / "state"), "--pin-root", a.pin_root,
                 *extra, timeout=300)


def test_sysdump_with_agent_running_then_stopped() -> None:
    a = AgentProcess().start()
    try:
        subprocess.run(["/bin/true", "sysdump-marker"], check=True)
        out = a.dir / "dump.tar.gz"
        r = _sysdump(a, out, "--agent-log", str(a.log_path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(out)  # the path is printed
        got = _open(out)
        assert AGENT_MEMBERS | NODE_MEMBERS | {"agent.log"} <= set(got), sorted(got)
        st = json.loads(got["status.json"])
        assert st["node_name"] == "testnode" and {s["name"] for s in st["subsystems"]} >= {"process sensor", "API"}
        assert json.loads(got["config.json"])["pin_root"] == a.pin_root
        pins: list[dict[str, Any]] = json.loads(got["pins.json"])
        assert pins and all(p["pin"].startswith(a.pin_root + "/") for p in pins)
        procs = [p for p in pins if p.get("name") == "procs"]
        assert procs and procs[0]["entries"] > 0 and procs[0]["kind"] == "map"
        events = [json.loads(ln) for ln in got["events.jsonl"].splitlines()]
        assert any("sysdump-marker" in e.get("process_exec", {}).get("process", {}).get("arguments", "")
                   for e in events)
        assert "tetragon_events_total" in got["metrics.txt"].decode()
        assert json.loads(got["kernel.json"])["uname"]["system"] == "Linux"
        assert "apiary agent" in got["agent.log"].decode()
        assert "(nothing)" in got["summary.txt"].decode()  # nothing failed

        a.stop()
        out2 = a.dir / "down.tar.gz"
        r = _sysdump(a, out2)
        assert r.returncode == 0, r.stderr
        assert "the agent is not running" in r.stderr
        got = _open(out2)
        assert NODE_MEMBERS <= set(got) and "config.json" not in got
        assert json.loads(got["status.json"])["agent_running"] is False
        assert "agent: NOT running" in got["summary.txt"].decode()
    finally:
        a.cleanup()


def test_sysdump_unwritable_output_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output's directory should be
    r = subprocess.run(
        [sys.executable, "-m", "apiary", "--socket", str(tmp_path / "none.sock"), "sysdump", "--output",
         str(blocker / "d.tgz"), "--state-dir", str(tmp_path), "--pin-root", str(tmp_path / "nopins")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
