"""Rule changes without a reload (issue 11: rule changes never drop established connections): an edit that
fits the running HAProxy's layout is loaded through its runtime API and one flip of the judging buffer; a
client's keep-alive connection stays open and its next request is judged by the new rules."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import IN_VM, is_root
from apiary.testing.net import Net, endpoint_exec_cmd, http_bodies_net

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "hot"
PORT = 8080
POLICY = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: hot, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "{PORT}", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/api/v1/.*"}}
"""
V2 = POLICY.replace("/api/v1/", "/api/v2/")
WITH_HOST = POLICY.replace('path: "/api/v1/.*"}', 'path: "/api/v1/.*", host: "server"}')


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with http_bodies_net(NS, PORT, POLICY, "apiary-hot-") as n:
        yield n


def proxy(net: Net) -> dict[str, Any]:
    return dict(json.loads(net.cli_ok("status", "-o", "json"))["network"]["l7_proxy"])


def keep_alive(net: Net, paths: list[str], between: list[str]) -> dict[str, Any]:
    """GET each path on one connection from the client endpoint; before request i (i >= 1) apply between[i-1]."""
    d = Path(net.shared)  # type: ignore[attr-defined]
    for f in d.glob("*-*"):
        f.unlink()
    server = str(net.eps["server"]["ipv4"])  # type: ignore[attr-defined]
    p = subprocess.Popen(
        endpoint_exec_cmd(net.agent.socket, f"{NS}/client", sys.executable, "-m", "apiary.testing.httpbodies",
                          "keep", server, str(PORT), str(d), *paths),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i, doc in enumerate(between, 1):
            deadline = time.monotonic() + (600 if IN_VM else 30)  # an apply takes minutes under QEMU/TCG
            while not (d / f"ready-{i}").exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (d / f"ready-{i}").exists(), p.communicate(timeout=5)
            net.apply_ok(doc)
            (d / f"go-{i}").touch()
        out, err = p.communicate(timeout=600 if IN_VM else 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_an_edit_keeps_the_connection_and_judges_its_next_request(net: Net) -> None:
    before = proxy(net)
    out = keep_alive(net, ["/api/v1/a", "/api/v1/b", "/api/v2/c", "/api/v1/d"], [V2, V2, POLICY])
    # the same connection all along: allowed, then denied by the edit (v1 no longer), then allowed by it (v2),
    # then allowed again by the original rule, applied back
    assert out == {"statuses": [200, 403, 200, 200], "error": None}, out
    after = proxy(net)
    assert after["reloads"] == before["reloads"] and after["hot_updates"] == before["hot_updates"] + 2, after
    assert after["pid"] == before["pid"] and after["alive"] and after["http_rules"] == 1


def test_a_rule_of_a_new_shape_reloads_and_is_enforced(net: Net) -> None:
    before = proxy(net)
    try:
        out = keep_alive(net, ["/api/v1/a", "/api/v1/b"], [WITH_HOST])
        # the reload lets the old worker finish: the idle connection is closed (or its request judged by the
        # rules it was opened under); a new connection is judged by the new rule (Host "bodies" != "server")
        assert out["statuses"][0] == 200 and out["statuses"][1] in (None, 200), out
        after = proxy(net)
        assert after["reloads"] == before["reloads"] + 1 and after["hot_updates"] == before["hot_updates"]
        fresh = keep_alive(net, ["/api/v1/x"], [])
        assert fresh["statuses"] == [403], fresh
    finally:
        net.apply_ok(POLICY)


def test_a_rule_for_any_peer_fits_too_and_matches_every_identity(net: Net) -> None:
    """The peer is a pattern file as well: an L3-wildcard rule (any identity: a range) replaces the client's own."""
    anyone = POLICY.replace("  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:", "  - toPorts:") \
        .replace("/api/v1/", "/api/v3/")
    assert anyone != POLICY
    before = proxy(net)
    try:
        out = keep_alive(net, ["/api/v1/a", "/api/v3/b", "/api/v1/c"], [anyone, anyone])
        assert out == {"statuses": [200, 200, 403], "error": None}, out
        assert proxy(net)["hot_updates"] == before["hot_updates"] + 1
    finally:
        net.apply_ok(POLICY)


def test_edits_under_load_close_no_connection_and_deny_nothing_allowed(net: Net) -> None:
    """Four keep-alive connections request an allowed path in a loop while the policy is edited ten times (each
    edit keeps that path allowed, changing another rule): every response is a 200 and no connection closes."""
    other = POLICY + '        - {method: GET, path: "/healthz"}\n'
    server = str(net.eps["server"]["ipv4"])  # type: ignore[attr-defined]
    before = proxy(net)
    p = subprocess.Popen(
        endpoint_exec_cmd(net.agent.socket, f"{NS}/client", sys.executable, "-m", "apiary.testing.httpbodies",
                          "hammer", server, str(PORT), "6", "4", "/api/v1/loop"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        for i in range(10):
            net.apply_ok(other.replace("/healthz", f"/healthz{i}"))
        out, err = p.communicate(timeout=600 if IN_VM else 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        net.apply_ok(POLICY)
    assert p.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["requests"] > 100 and got["statuses"] == {"200": got["requests"]} and got["closed"] == 0, got
    assert proxy(net)["hot_updates"] >= before["hot_updates"] + 10
