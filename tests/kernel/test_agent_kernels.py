"""The agent picks the hooks the running kernel offers: the same policies through `apiary tp apply` on this
kernel (no kprobes, no BPF-LSM) and in the 6.1 VM (both), each checked against what really happens."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import IN_VM, AgentProcess


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess("--no-network")
    try:
        a.start(timeout=600 if IN_VM else 60)  # QEMU without KVM runs the agent's start-up ~30x slower
        yield a
    finally:
        a.cleanup()


def _features(agent: AgentProcess) -> dict[str, bool]:
    r = agent.cli("preflight", "-o", "json", timeout=600)
    checks = {c["name"]: c["ok"] for c in json.loads(r.stdout)["checks"]}
    return {"lsm": checks.get("lsm", False) and checks.get("lsm_active", False), "kprobes": checks.get("kprobe", False)}


def _events(agent: AgentProcess, kind: str) -> list[dict[str, Any]]:
    time.sleep(1.0 if IN_VM else 0.3)
    c = agent.client()
    out = []
    with c.http.stream("GET", "/v1/events", params=[("since", "10m"), ("follow", "0"), ("type", kind)]) as resp:
        for line in resp.iter_lines():
            if line:
                out.append(json.loads(line))
    return out


def _apply(agent: AgentProcess, text: str) -> subprocess.CompletedProcess[str]:
    return agent.cli("tp", "apply", "-f", "-", input=textwrap.dedent(text), timeout=600)


def test_lsm_override_through_the_agent_or_a_clear_refusal(agent: AgentProcess, workdir: str) -> None:
    target = Path(workdir, "protected.conf")
    target.write_text("original\n")
    r = _apply(agent, f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: lsm-deny}}
        spec:
          lsmhooks:
          - hook: file_open
            args: [{{index: 0, type: file}}]
            selectors:
            - matchArgs: [{{index: 0, operator: Prefix, values: ["{workdir}/"]}}]
              matchActions: [{{action: Override, argError: -1}}]
        """)
    if not _features(agent)["lsm"]:
        assert r.returncode != 0 and "Override needs BPF-LSM" in r.stderr, r
        return
    assert r.returncode == 0 and "BPF-LSM hook file_open" in r.stdout, r
    try:
        sh = subprocess.run(["/bin/sh", "-c", f"echo x > {target}; echo alive"], capture_output=True, text=True)
        assert "Operation not permitted" in sh.stderr and "alive" in sh.stdout and sh.returncode == 0
        evs = [e["process_lsm"] for e in _events(agent, "lsm") if e["process_lsm"]["policy_name"] == "lsm-deny"]
        assert evs and evs[-1]["function_name"] == "file_open"
        assert evs[-1]["args"] == [{"file_arg": {"path": str(target)}}]
        assert evs[-1]["action"] == "KPROBE_ACTION_OVERRIDE"
    finally:
        agent.cli("tp", "delete", "lsm-deny", timeout=600)
    assert target.read_text() == "original\n"


def test_vfs_write_is_a_kprobe_where_the_kernel_has_them_else_the_write_syscalls(
    agent: AgentProcess, workdir: str
) -> None:
    target = Path(workdir, "log.txt")
    r = _apply(agent, f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: writes}}
        spec:
          kprobes:
          - call: vfs_write
            syscall: false
            args: [{{index: 0, type: file}}, {{index: 2, type: size_t}}]
            selectors:
            - matchArgs: [{{index: 0, operator: Prefix, values: ["{workdir}/"]}}]
        """)
    assert r.returncode == 0, r
    kprobes = _features(agent)["kprobes"]
    assert ("kprobe on vfs_write" in r.stdout) == kprobes, r.stdout
    try:
        subprocess.run(["/bin/sh", "-c", f"printf 12345 > {target}"], check=True)
        evs = [e["process_kprobe"] for e in _events(agent, "kprobe") if e["process_kprobe"]["policy_name"] == "writes"]
        mine = [e for e in evs if e["args"][0] == {"file_arg": {"path": str(target)}}]
        assert mine and mine[-1]["args"][1] == {"size_arg": "5"}
        assert mine[-1]["function_name"] == "vfs_write"
    finally:
        agent.cli("tp", "delete", "writes", timeout=600)
