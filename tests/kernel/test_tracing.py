"""TracingPolicy decided in the kernel: real processes do the forbidden thing, the test checks the outcome
(killed before the write lands, connect() refused with EPERM, events with pod and policy)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import IN_VM, AgentProcess
from apiary.testing.net import Net

NS = "tp-test"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProcess, Net, Path]]:
    agent = AgentProcess()
    net = Net(agent)
    # tmpfs: its write path checks for a pending fatal signal before copying (a 9p share, such as the VM's
    # temp dir, may complete the write before the kill lands)
    prot = Path(tempfile.mkdtemp(prefix="apiary-prot-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    prot.chmod(0o755)
    try:
        agent.start()
        net.eps = {
            "labelled": net.endpoint("labelled", NS, app="writer", **{"security-test": "true"}),
            "plain": net.endpoint("plain", NS, app="writer"),
            "server": net.endpoint("server", NS, app="server"),
        }
        net.serve(f"{NS}/server", "serve-tcp", "5678")
        yield agent, net, prot
    finally:
        net.close()
        agent.cleanup()
        shutil.rmtree(prot, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_tracing_policies_after(env: tuple[AgentProcess, Net, Path]) -> Iterator[None]:
    yield
    _, net, _ = env
    for p in json.loads(net.cli_ok("tp", "list", "-o", "json")):
        net.cli_ok("tp", "delete", p["name"], "-n", p["namespace"])


def apply(net: Net, yaml_text: str) -> str:
    r = net.agent.cli("tp", "apply", "-f", "-", input=textwrap.dedent(yaml_text))
    if r.returncode != 0:
        raise AssertionError(f"tp apply failed: {r.stderr}")
    return r.stdout


def run_in(net: Net, ep: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "apiary",
            "--socket",
            net.agent.socket,
            "endpoint",
            "exec",
            ep,
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def events(net: Net, kind: str = "kprobe", wait: float = 0.5) -> list[dict[str, Any]]:
    time.sleep(wait)  # the agent drains the ring every 50 ms
    c = net.agent.client()  # history replay without following: what the agent has, then stop
    out = []
    with c.http.stream("GET", "/v1/events", params=[("since", "10m"), ("follow", "0"), ("type", kind)]) as resp:
        for line in resp.iter_lines():
            if line:
                out.append(json.loads(line))
    return out


def deny_write(prot: Path, selector: str = "podSelector: {matchLabels: {security-test: 'true'}}") -> str:
    return f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: deny-write-prot}}
        spec:
          {selector}
          kprobes:
          - call: sys_write
            syscall: true
            args:
            - {{index: 0, type: fd}}
            - {{index: 2, type: size_t}}
            selectors:
            - matchArgs:
              - {{index: 0, operator: Prefix, values: ["{prot}/"]}}
              matchActions:
              - {{action: Sigkill}}
    """


def test_labelled_writer_is_killed_before_the_write_lands(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, prot = env
    target = prot / "protected.conf"
    target.write_text("original\n")
    out = apply(net, deny_write(prot))
    assert "sys_write" in out and "write" in out  # the apply output says how the hook is realised
    r = run_in(net, f"{NS}/labelled", f"echo appended >> {target}; echo survived")
    assert r.returncode == -9 or r.returncode == 137, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout
    assert target.read_text() == "original\n"  # the write never landed
    # the same write from an endpoint without the label is not in the policy's scope
    r = run_in(net, f"{NS}/plain", f"echo appended >> {target}; echo survived")
    assert r.returncode == 0 and "survived" in r.stdout
    assert target.read_text() == "original\nappended\n"
    evs = [e["process_kprobe"] for e in events(net) if e["process_kprobe"].get("policy_name") == "deny-write-prot"]
    killed = [e for e in evs if e["action"] == "KPROBE_ACTION_SIGKILL"]
    assert killed, evs
    k = killed[-1]
    assert k["function_name"] == "__x64_sys_write"
    assert k["args"][0] == {"file_arg": {"path": str(target)}}
    assert k["process"]["pod"]["name"] == "labelled" and k["process"]["pod"]["namespace"] == NS
    assert all(e["process"].get("pod", {}).get("name") != "plain" for e in evs)
    metrics = net.agent.client().http.get("/metrics").text
    assert 'tetragon_policy_events_total{binary="/usr/bin/dash",hook="__x64_sys_write"' in metrics
    assert 'pod="labelled",policy="deny-write-prot"' in metrics
    assert (f'tetragon_events_total{{binary="/usr/bin/dash",namespace="{NS}",node_name="{net.agent.node_name}",'
            'pod="labelled",type="PROCESS_KPROBE",workload="labelled"}') in metrics
    rows = json.loads(net.cli_ok("tp", "list", "-o", "json"))
    row = next(r for r in rows if r["name"] == "deny-write-prot")
    assert row["enforced"] >= 1 and row["mode"] == "enforce" and row["kernel_memory"] > 0


def test_monitor_mode_reports_without_acting(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, prot = env
    target = prot / "monitored.conf"
    target.write_text("original\n")
    apply(net, deny_write(prot))
    net.cli_ok("tp", "set-mode", "deny-write-prot", "monitor")
    r = run_in(net, f"{NS}/labelled", f"echo appended >> {target}; echo survived")
    assert r.returncode == 0 and "survived" in r.stdout
    assert target.read_text() == "original\nappended\n"
    evs = [
        e["process_kprobe"]
        for e in events(net)
        if e["process_kprobe"]["args"][0].get("file_arg", {}).get("path") == str(target)
    ]
    assert evs and "would Sigkill" in evs[-1].get("message", "")


def test_setuid_zero_from_non_root_is_reported(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, _ = env
    apply(net, (REPO / "examples" / "tracing" / "privilege-escalation.yaml").read_text())
    code = "import os\ntry:\n    os.setuid(0)\nexcept PermissionError:\n    print('denied by the kernel')\n"
    p = subprocess.run(
        ["/usr/bin/python3", "-c", code],
        capture_output=True,
        text=True,  # readable by nobody
        preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)),
    )
    assert "denied by the kernel" in p.stdout
    evs = [e["process_kprobe"] for e in events(net) if e["process_kprobe"]["policy_name"] == "privilege-escalation"]
    mine = [e for e in evs if e["process"]["uid"] == 65534]
    assert mine and mine[-1]["args"] == [{"int_arg": 0}] and mine[-1]["function_name"] == "__x64_sys_setuid"


def test_deny_connect_fails_with_eperm_and_names_the_policy(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, _ = env
    server_ip = net.eps["server"]["ipv4"]
    apply(
        net,
        f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: no-server}}
        spec:
          podSelector: {{matchLabels: {{security-test: "true"}}}}
          kprobes:
          - call: sys_connect
            syscall: true
            args:
            - {{index: 1, type: sockaddr}}
            selectors:
            - matchArgs:
              - {{index: 1, operator: SAddr, values: ["{server_ip}/32"]}}
              matchActions:
              - {{action: DenyConnect}}
    """,
    )
    probe = f"{sys.executable} -m apiary.testing.netprobe connect {server_ip} 5678"
    r = run_in(net, f"{NS}/labelled", probe)
    assert "error EPERM" in r.stdout, (r.stdout, r.stderr)
    r = run_in(net, f"{NS}/plain", probe)
    assert "connected" in r.stdout, (r.stdout, r.stderr)
    evs = [e["process_kprobe"] for e in events(net) if e["process_kprobe"]["policy_name"] == "no-server"]
    assert evs and evs[-1]["args"][0]["sockaddr_arg"]["addr"] == server_ip
    assert evs[-1]["args"][0]["sockaddr_arg"]["port"] == 5678 and "EPERM" in evs[-1].get("message", "")


def test_first_matching_selector_wins_and_binaries_filter(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, prot = env
    (prot / "a.log").write_text("")
    (prot / "b.conf").write_text("")
    apply(
        net,
        f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: order}}
        spec:
          kprobes:
          - call: sys_write
            syscall: true
            args:
            - {{index: 0, type: fd}}
            selectors:
            - matchArgs:
              - {{index: 0, operator: Postfix, values: [".log"]}}
              matchActions:
              - {{action: Post}}
            - matchArgs:
              - {{index: 0, operator: Prefix, values: ["{prot}/"]}}
              matchBinaries:
              - {{operator: In, values: ["/usr/bin/dash"]}}
              matchActions:
              - {{action: Sigkill}}
    """,
    )
    assert run_in(net, f"{NS}/plain", f"echo x >> {prot}/a.log").returncode == 0  # first selector: Post
    assert run_in(net, f"{NS}/plain", f"echo x >> {prot}/b.conf").returncode in (-9, 137)  # second: dash killed
    py = f"{sys.executable} -c \"open('{prot}/b.conf','a').write('py')\""
    assert run_in(net, f"{NS}/plain", py).returncode == 0  # python is not /usr/bin/dash
    assert (prot / "b.conf").read_text() == "py"


def test_rate_limit_and_unsupported_hook(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, prot = env
    apply(
        net,
        f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: ratelimited}}
        spec:
          kprobes:
          - call: sys_write
            syscall: true
            args:
            - {{index: 0, type: fd}}
            selectors:
            - matchArgs:
              - {{index: 0, operator: Prefix, values: ["{prot}/rl"]}}
              matchActions:
              - {{action: Post, rateLimit: "1m"}}
    """,
    )
    assert run_in(net, f"{NS}/plain", f"for i in 1 2 3 4 5; do echo $i >> {prot}/rl.txt; done").returncode == 0
    evs = [e for e in events(net) if e["process_kprobe"]["policy_name"] == "ratelimited"]
    assert len(evs) == 1
    r = net.agent.cli(
        "tp",
        "apply",
        "-f",
        "-",
        input=textwrap.dedent("""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {name: xmit}
        spec:
          kprobes:
          - call: apiary_no_such_function
            syscall: false
            args: [{index: 0, type: int}]
    """),
    )
    # without kprobes: refused at compile time; with kprobes (the VM): the attach fails and nothing stays
    why = "no probeable function apiary_no_such_function" if IN_VM else "needs kprobe"
    assert r.returncode != 0 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert all(p["name"] != "xmit" for p in json.loads(net.cli_ok("tp", "list", "-o", "json")))


def test_syscall_tracepoint_policy_gives_process_tracepoint_events(env: tuple[AgentProcess, Net, Path]) -> None:
    _, net, prot = env
    out = apply(net, f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: mkdirs}}
        spec:
          tracepoints:
          - subsystem: syscalls
            event: sys_enter_mkdir
            args:
            - {{index: 5, type: string}}
            selectors:
            - matchArgs:
              - {{index: 0, operator: Prefix, values: ["{prot}/"]}}
    """)
    assert "mkdir" in out
    assert run_in(net, f"{NS}/plain", f"mkdir {prot}/made-by-test").returncode == 0
    evs = [e["process_tracepoint"] for e in events(net, kind="tracepoint")
           if e["process_tracepoint"]["policy_name"] == "mkdirs"]
    assert evs, "no process_tracepoint event"
    ev = evs[-1]
    assert ev["subsys"] == "syscalls" and ev["event"] == "sys_enter_mkdir"
    assert ev["args"] == [{"string_arg": f"{prot}/made-by-test"}]
    assert ev["process"]["binary"].endswith("mkdir") and ev["process"]["pod"]["name"] == "plain"


def test_uprobe_tracepoint_and_return_examples_through_the_agent(env: tuple[AgentProcess, Net, Path]) -> None:
    """Three example policies as a user applies them: a uprobe in bash, a task tracepoint read by field
    offsets, and a return probe filtered on the return value; events in Tetragon's JSON with the pod."""
    _, net, _ = env
    ex = REPO / "examples" / "tracing"
    out = apply(net, (ex / "bash-commands-uprobe.yaml").read_text())
    assert "uprobe" in out and "shell_execve" in out
    apply(net, (ex / "process-rename-tracepoint.yaml").read_text())
    apply(net, (ex / "failed-opens.yaml").read_text())
    missing = f"/etc/apiary-missing-{os.getpid()}"
    script = f"bash -c '/bin/true; printf apiary-rn > /proc/$$/comm; cat {missing}; exit 0'"
    assert run_in(net, f"{NS}/plain", script).returncode == 0

    ups = [e["process_uprobe"] for e in events(net, kind="uprobe")
           if e["process_uprobe"]["policy_name"] == "bash-commands"]
    mine = [u for u in ups if u["args"][0].get("string_arg") == "/bin/true"]
    assert mine, ups
    u = mine[-1]
    assert u["path"] == "/usr/bin/bash" and u["symbol"] == "shell_execve"
    assert u["args"] == [{"string_arg": "/bin/true", "label": "command"}] and u["message"] == "bash executes a command"
    assert u["process"]["pod"]["name"] == "plain"

    tps = [e["process_tracepoint"] for e in events(net, kind="tracepoint")
           if e["process_tracepoint"]["policy_name"] == "process-rename"]
    ren = [t for t in tps if t["args"][2].get("string_arg") == "apiary-rn"]
    assert ren, tps
    t = ren[-1]
    assert (t["subsys"], t["event"]) == ("task", "task_rename")
    assert t["args"][0]["label"] == "pid" and t["args"][0]["int_arg"] == int(t["process"]["pid"])
    assert t["args"][1] == {"string_arg": "bash", "label": "oldcomm"}

    kps = [e["process_kprobe"] for e in events(net) if e["process_kprobe"]["policy_name"] == "failed-opens-etc"]
    fails = [k for k in kps if k["args"][0].get("string_arg") == missing]
    assert fails and fails[-1]["return"] == {"int_arg": -2}  # ENOENT
    assert all(k["return"]["int_arg"] < 0 for k in kps)  # successful opens of /etc/ files are not reported
