"""kill -9 of the agent under load: enforcement and load balancing never stop, and the next agent adopts the
pinned maps and reconciles them to its desired state (issue 12, "Restart and state"). A planned restart
(SIGTERM) keeps them too: endpoints' programs and the LB while endpoints and services exist, and with
--keep-sensors-on-exit the TracingPolicy kills; without endpoints, services or the flag a clean stop removes every
pin."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.loader import Map
from apiary.testing.agent import AgentProcess, pinned_maps
from apiary.testing.net import Net

pytestmark = pytest.mark.kernel

NS = "restart"
POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web-in, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{{port: "5678", protocol: TCP}}, {{port: "8080", protocol: TCP}}]}}]
"""
SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""
KEEP = "--keep-sensors-on-exit"


def kill_policy(binary: Path) -> str:
    """A TracingPolicy that kills ``binary`` at its chdir()."""
    return textwrap.dedent(f"""
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: kill-chdir-{NS}}}
        spec:
          kprobes:
          - call: sys_chdir
            syscall: true
            args: [{{index: 0, type: string}}]
            selectors:
            - matchBinaries: [{{operator: In, values: ["{binary}"]}}]
              matchActions: [{{action: Sigkill}}]
        """)


def chdir_rc(binary: Path) -> int:
    return subprocess.run([str(binary), "-c", "cd /; echo survived"], capture_output=True, timeout=30).returncode


DP_MAPS = ("endpoints", "policy", "policy_ranges", "ipcache", "ep_ifindex")
LB_MAPS = ("lb4_services", "lb4_backends", "lb4_reverse_nat", "lb_affinity_match", "lb4_maglev", "lb4_local_netns")


def dump(a: AgentProcess) -> dict[str, dict[bytes, bytes]]:
    """The enforcement maps, read from the agent's pins (what the kernel holds). The ipcache's host entries
    (identity 1, the node's own addresses) are left out: other agents' veths on this machine come and go."""
    maps = pinned_maps(a.pin_root, "datapath", DP_MAPS) | pinned_maps(a.pin_root, "lb", LB_MAPS)
    maps["ipcache"] = {k: v for k, v in maps["ipcache"].items() if int.from_bytes(v[:4], "little") != 1}
    return maps


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProcess, Net, dict[str, str]]]:
    a = AgentProcess(KEEP).start()  # the flag changes nothing about kill -9 (the first test)
    net = Net(a)
    try:
        ips = {n: net.endpoint(n, NS, app="client" if n == "client" else "web")["ipv4"]
               for n in ("client", "web1", "web2")}
        for port in ("5678", "5679", "8080"):
            net.serve(f"{NS}/web1", "serve-id", port, "web1")
        net.serve(f"{NS}/web2", "serve-id", "8080", "web2")
        net.apply_ok(POLICY)
        r = a.cli("service", "apply", "-f", "-", input=textwrap.dedent(SERVICE))
        assert r.returncode == 0, r.stderr
        ips["vip"] = a.client().get(f"/v1/services/{NS}/web")["service"]["spec"]["clusterIP"]
        yield a, net, ips
    finally:
        net.close()
        if a.proc and a.proc.poll() is not None and os.path.exists(a.pin_root):
            a.start()  # back up, so the endpoints are deleted through the API
        a.cleanup()


def test_kill_9_under_load_keeps_enforcing_and_the_next_agent_reconciles(
        env: tuple[AgentProcess, Net, dict[str, str]]) -> None:
    a, net, ips = env
    allowed, denied, vip = f"{ips['web1']}:5678:3", f"{ips['web1']}:5679:0.3", f"{ips['vip']}:80:3"
    out, stop = a.dir / "loop.out", a.dir / "loop.stop"
    net.serve(f"{NS}/client", "loop", str(out), str(stop), allowed, denied, vip)
    try:
        def rows() -> list[tuple[float, str, str, str]]:
            lines = [ln.split(" ", 3) for ln in out.read_text().splitlines()]
            return [(float(t), s, r, x) for t, s, r, x in lines if t]

        def wait_rounds(n: int, since: float) -> None:
            deadline = time.monotonic() + 120
            while sum(1 for t, s, *_ in rows() if s == vip and t > since) < n:
                assert time.monotonic() < deadline, rows()[-5:]
                time.sleep(0.05)

        wait_rounds(10, 0)
        before = dump(a)
        killed = time.time()
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        wait_rounds(20, killed)  # no agent at all: the kernel keeps enforcing and balancing
        restarted = time.time()
        # a leftover of some earlier agent in the pinned maps, harmless but stale: reconcile removes it
        stale = Map.from_pin(f"{a.pin_root}/lb/lb4_backends")
        stale.update((65000).to_bytes(4, "little"), next(iter(before["lb4_backends"].values())))
        stale.close()
        # and a netns cookie no endpoint has (a netns gone while no agent ran): the next agent's full write drops it
        stale = Map.from_pin(f"{a.pin_root}/lb/lb4_local_netns")
        stale.update((0xDEAD).to_bytes(8, "little"), b"\x01")
        stale.close()
        # and in the endpoint id -> host ifindex map: a stale key and a wrong value, both put right
        ep_if = Map.from_pin(f"{a.pin_root}/datapath/ep_ifindex")
        real = next(iter(dict(ep_if.items())))  # an endpoint's own key, taken before the stale one goes in
        ep_if.update(real, (999).to_bytes(4, "little"))
        ep_if.update((99).to_bytes(4, "little"), (999).to_bytes(4, "little"))
        ep_if.close()
        a.start()
        up = time.time()
        wait_rounds(10, up)
        after = dump(a)
    finally:
        stop.touch()
    log = a.log()
    got = rows()
    fails = [r for r in got if r[1] != denied and r[2] != "ok"]
    leaks = [r for r in got if r[1] == denied and r[2] == "ok"]
    assert not fails, (fails[:5], log[-3000:])
    assert not leaks, leaks[:5]
    assert sum(1 for r in got if r[1] == denied) >= 20
    down = {x for t, s, r, x in got if s == vip and killed < t < restarted}
    assert down == {"web1", "web2"}, got[-10:]  # balanced across both backends while no agent ran
    assert {x for t, s, r, x in got if s == vip and t > up} == {"web1", "web2"}
    assert after == before  # the same entries, same slots: nothing stale, duplicate or missing
    assert len(before["lb4_local_netns"]) == 3  # the three endpoints' netns
    assert "adopted pinned datapath maps, reconciled: policy maps of 3/3 endpoints already matched" in log, log
    assert "adopted pinned LB maps and hooks, reconciled: lb4_backends: +0 ~0 -1 entries" in log, log
    assert "adopted pinned datapath maps, reconciled: ep_ifindex: +0 ~1 -1 entries" in log, log
    assert os.path.exists(Path(a.pin_root) / "lb" / "links")
    # the flows ring is pinned too: the drops the kernel reported while no agent ran reach the next agent
    down_drops = [f for f in flows_since(a, killed) if f["time"] < iso(restarted)]
    assert down_drops, a.client().get("/v1/status").get("network", {}).get("losses")


def iso(t: float) -> str:
    """A wall-clock time as the flows' RFC 3339 text (comparable as a string: same format, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def flows_since(a: AgentProcess, t: float) -> list[dict[str, Any]]:
    """The DROPPED flows to the denied port that the agent holds, newer than ``t``."""
    got = a.client().stream("/v1/flows", [("last", "100000"), ("filter", "--verdict=DROPPED"),
                                          ("filter", "--port=5679")])
    return [f for f in got if str(f["time"]) > iso(t)]


def test_sigterm_restart_keeps_balancing_and_killing_then_a_bare_clean_stop_removes_every_pin(
        env: tuple[AgentProcess, Net, dict[str, str]]) -> None:
    a, net, ips = env
    binary = a.dir / "dash-copy"  # the binary the TracingPolicy names (a copy: no other test runs it)
    shutil.copy2("/usr/bin/dash", binary)
    r = a.cli("tp", "apply", "-f", "-", input=kill_policy(binary))
    assert r.returncode == 0, r.stderr
    assert chdir_rc(binary) == -signal.SIGKILL
    vip = f"{ips['vip']}:80:3"
    out, stop = a.dir / "term.out", a.dir / "term.stop"
    net.serve(f"{NS}/client", "loop", str(out), str(stop), vip)

    def vip_rows(since: float) -> list[tuple[float, str, str]]:
        rows = [ln.split(" ", 3) for ln in out.read_text().splitlines()]
        return [(float(t), r, x) for t, s, r, x in rows if t and s == vip and float(t) > since]

    def wait_rounds(n: int, since: float) -> None:
        deadline = time.monotonic() + 120
        while len(vip_rows(since)) < n:
            assert time.monotonic() < deadline, vip_rows(0)[-5:]
            time.sleep(0.05)

    try:
        wait_rounds(3, 0)
        stopped = time.time()
        assert a.stop() == 0  # SIGTERM: a planned restart
        wait_rounds(20, stopped)  # no agent: the service still balances (both backends: 1 - 2^-19)
        down = vip_rows(stopped)
        said = a.log()
        assert chdir_rc(binary) == -signal.SIGKILL  # and the policy still kills
        assert chdir_rc(Path("/usr/bin/dash")) == 0
        a.extra = ()  # the next agent runs without --keep-sensors-on-exit
        a.start()
        up = time.time()
        wait_rounds(3, up)
    finally:
        stop.touch()
    assert {r for _, r, _ in down} == {"ok"}, down[:5]
    assert "kept pinned for the next agent (enforcing meanwhile): datapath, lb, process, tracing" in said, said[-800:]
    assert {x for _, _, x in down} == {"web1", "web2"}, down[-10:]
    log = a.log()
    for line in ("adopted pinned datapath maps, reconciled:", "adopted pinned LB maps and hooks, reconciled:",
                 "process sensor: adopted the previous agent's pinned maps and links",
                 "policies kept enforcing while the agent was down"):
        assert line in log, (line, log[-3000:])
    assert chdir_rc(binary) == -signal.SIGKILL  # the adopting agent enforces it

    # no services, no endpoints and no --keep-sensors-on-exit: a clean stop leaves nothing pinned
    r = a.cli("service", "delete", f"{NS}/web")
    assert r.returncode == 0, r.stderr
    c = a.client()
    for ep in c.get("/v1/endpoints"):
        assert c.http.delete(f"/v1/endpoints/{ep['namespace']}/{ep['name']}").status_code < 300
    assert a.stop() == 0
    assert not os.path.exists(a.pin_root), [str(p) for p in Path(a.pin_root).rglob("*")]
    assert "apiary agent stopped; everything it attached is detached." in a.log()
    assert chdir_rc(binary) == 0  # nothing enforces any more
