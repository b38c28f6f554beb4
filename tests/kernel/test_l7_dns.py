"""toFQDNs and rules.dns through the agent's DNS proxy, for real: an endpoint resolves names through a
dnspython server in a test-host namespace of this test's own; the datapath redirects its DNS packets to the
proxy (bpf_sk_assign), which refuses names the policy does not allow and makes the IPs of allowed answers
allowed destinations for their TTL. Every query is a Hubble L7 DNS flow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.dnsserver import dns_host
from apiary.testing.net import Net, endpoint_exec_cmd

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (the DNS proxy uses its routing)"),
]

NS = "dnstest"


NAMES = '[{matchName: allowed.example.com}, {matchName: short.example.com}, {matchPattern: "*.wild.example.com"}]'


def policy(net: str) -> str:
    return f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: fqdn, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toCIDR: [{net}.53/32]
    toPorts:
    - ports: [{{port: "53", protocol: ANY}}]
      rules:
        dns: {NAMES}
  - toFQDNs: {NAMES}
    toPorts: [{{ports: [{{port: "7000", protocol: TCP}}]}}]
"""


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    agent = AgentProcess()
    n = Net(agent)
    with dns_host() as th:
        try:
            agent.start()
            n.endpoint("client", NS, app="client")
            n.apply_ok(policy(th["net"]))
            yield {"net": n, "host": th["net"]}
        finally:
            n.close()
            agent.cleanup()


def run(env: dict[str, Any], *steps: tuple[str, ...]) -> list[Any]:
    """Queries ("ask", name[, "tcp"]) and TCP probes ("tcp", ip) from the client, in one process."""
    host = env["host"]
    full = [["ask", f"{host}.53", s[1], s[2] if len(s) > 2 else "udp"] if s[0] == "ask" else ["tcp", s[1], "7000"]
            for s in steps]
    n: Net = env["net"]
    argv = endpoint_exec_cmd(n.agent.socket, f"{NS}/client", sys.executable, "-m", "apiary.testing.dnsserver",
                             "run", json.dumps(full))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout.strip().splitlines()[-1]))


def dns_flows(env: dict[str, Any], query: str, *more: str) -> list[dict[str, Any]]:
    for _ in range(50):
        flows = [f for f in env["net"].flows("--protocol", "dns", *more, wait=0.1)
                 if f.get("l7", {}).get("dns", {}).get("query") == query]
        if flows:
            return flows
        time.sleep(0.2)
    return []


def cache(env: dict[str, Any]) -> list[dict[str, Any]]:
    return list(json.loads(env["net"].cli_ok("fqdn", "cache", "list", "-o", "json")))


def test_allowed_name_resolves_and_its_ip_becomes_reachable(env: dict[str, Any]) -> None:
    host = env["host"]
    before, out, after, never = run(env, ("tcp", f"{host}.10"), ("ask", "allowed.example.com"),
                                    ("tcp", f"{host}.10"), ("tcp", f"{host}.12"))
    assert not before  # not resolved yet: no identity allows it
    assert out["rcode"] == 0 and out["ips"] == [f"{host}.10"], out
    assert after  # allowed right after the answer: the maps were written before it was released
    assert not never  # never resolved: dropped
    drops = env["net"].flows("--to-ip", f"{host}.12", "--verdict", "DROPPED")
    assert drops and drops[-1]["drop_reason_desc"] == "POLICY_DENIED", drops
    rows = [r for r in cache(env) if r["fqdn"] == "allowed.example.com."]
    assert rows and rows[0]["ips"] == [f"{host}.10"] and rows[0]["source"] == "lookup"
    assert 0 < rows[0]["ttl"] <= 300
    flows = dns_flows(env, "allowed.example.com.")
    req = [f for f in flows if f["l7"]["type"] == "REQUEST"]
    resp = [f for f in flows if f["l7"]["type"] == "RESPONSE"]
    assert req and resp, flows
    assert req[-1]["verdict"] == "FORWARDED" and req[-1]["l7"]["dns"]["qtypes"] == ["A"]
    assert req[-1]["Summary"] == "DNS Query allowed.example.com. A"
    assert "rules.dns[0]" in req[-1]["extensions"]["apiary"]["decided_by"]
    d = resp[-1]["l7"]["dns"]
    assert d["ips"] == [f"{host}.10"] and d["ttl"] == 300 and d["rrtypes"] == ["A"] and "rcode" not in d
    assert resp[-1]["Summary"] == f'DNS Answer "{host}.10" TTL: 300 (Proxy allowed.example.com. A)'
    assert resp[-1]["Type"] == "L7" and resp[-1]["l4"]["UDP"]["source_port"] == 53
    named = env["net"].flows("--to-fqdn", "*.example.com", "--to-port", "7000", wait=0)
    assert named and all(f["destination_names"] == ["allowed.example.com"] for f in named), named
    table = env["net"].cli_ok("fqdn", "cache", "list")
    assert table.split("\n")[0].split() == ["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"]


def test_disallowed_name_is_refused_and_wildcards_match_one_label(env: dict[str, Any]) -> None:
    host = env["host"]
    blocked, blocked_tcp, wild, wild_tcp, deep = run(
        env, ("ask", "blocked.example.com"), ("tcp", f"{host}.11"), ("ask", "a.wild.example.com", "tcp"),
        ("tcp", f"{host}.21"), ("ask", "x.y.wild.example.com"))
    assert blocked["rcode"] == 5 and not blocked["ips"], blocked  # REFUSED
    assert not blocked_tcp
    assert wild["rcode"] == 0 and wild["ips"] == [f"{host}.21"], wild  # one label under *, over TCP
    assert wild_tcp
    assert deep["rcode"] == 5  # two labels: * is one label only
    flows = dns_flows(env, "blocked.example.com.", "--verdict", "DROPPED")
    assert flows and flows[-1]["l7"]["type"] == "REQUEST", flows
    assert "no DNS rule matched" in flows[-1]["extensions"]["apiary"]["decided_by"]
    assert not [r for r in cache(env) if r["fqdn"] == "blocked.example.com."]


def test_ttl_expiry_revokes(env: dict[str, Any]) -> None:
    host = env["host"]
    out, ok = run(env, ("ask", "short.example.com"), ("tcp", f"{host}.20"))
    assert out["rcode"] == 0 and out["ttl"] == 2 and ok, out
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(r["fqdn"] == "short.example.com." for r in cache(env)):
        time.sleep(0.3)
    assert not any(r["fqdn"] == "short.example.com." for r in cache(env))
    assert run(env, ("tcp", f"{host}.20")) == [False]  # a new connection after expiry is dropped


# in the client endpoint: resolve, connect; (agent killed) send one UDP query and wait for its answer (generous
# 60 s: the answer comes once the next agent is up, which takes ~6-13 s on a loaded 2-core CI machine); then the
# established connection, a new one to the IP learned before the kill, and a refused name
CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    import dns.message
    from apiary.connectivity.probe import tcp
    from apiary.testing.dnsserver import ask
    server, first, later, blocked = sys.argv[1:5]
    r = ask(server, first, False)
    ip = r["ips"][0]
    c = socket.create_connection((ip, 7000), timeout=5)
    def echo():
        try:
            c.sendall(b"x")
            return c.recv(1) == b"x"
        except OSError:
            return False
    print(json.dumps({"first": r, "echo": echo()}), flush=True)
    sys.stdin.readline()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(60)
    u.sendto(dns.message.make_query(later, "A").to_wire(), (server, 53))
    print("sent", flush=True)
    t = time.monotonic()
    try:
        a = dns.message.from_wire(u.recv(65535))
        got = {"rcode": a.rcode(), "ips": [rd.to_text() for rr in a.answer for rd in rr]}
        sys.stderr.write(f"answered after {time.monotonic() - t:.1f} s\\n")
    except OSError as e:
        got = {"rcode": -1, "error": str(e)}
    print(json.dumps({"later": got, "established": echo(), "new": tcp(ip, 7000, 3),
                      "blocked": ask(server, blocked, False)}), flush=True)
""")



def test_a_dead_socket_holder_is_replaced_and_said_in_status(env: dict[str, Any]) -> None:
    """The holder that keeps DNS answered across agent restarts dies while the agent runs: the agent starts
    another, and `apiary status` says so (DNS proxy degraded within the rate window) instead of finding out at
    the next restart."""
    n: Net = env["net"]
    dns = n.agent.client().get("/v1/status")["network"]["dns_proxy"]
    old, restarts = dns["holder_pid"], dns["holder_restarts"]
    assert old, dns
    os.kill(old, signal.SIGKILL)  # the agent's own helper, by the PID its status gives
    deadline = time.monotonic() + 15
    while True:
        dns = n.agent.client().get("/v1/status")["network"]["dns_proxy"]
        if dns["holder_pid"] not in (None, old):
            break
        assert time.monotonic() < deadline, dns
        time.sleep(0.2)
    assert dns["holder_restarts"] == restarts + 1, dns
    st = json.loads(n.cli_ok("status", "-o", "json"))
    sub = next(s for s in st["subsystems"] if s["name"] == "DNS proxy")
    assert sub["state"] == "degraded" and "socket holder died and was restarted once" in sub["reason"], sub
    assert "DNS proxy:         degraded   " in n.cli_ok("status")
    # and the new holder holds: names still resolve through the proxy
    (first,) = run(env, ("ask", "allowed.example.com"))
    assert first["rcode"] == 0 and first["ips"], first


def test_dns_answers_and_tofqdns_hold_across_kill_9(env: dict[str, Any]) -> None:
    """Beyond Cilium (cilium#30984): while no agent runs, the DNS proxy's sockets stay open in their holder
    and queries wait there for the next agent, which restores the learned names (the reconciled maps keep
    their IPs until the TTL). Last in this module: it restarts the module's agent."""
    n: Net = env["net"]
    agent, host = n.agent, env["host"]
    p: subprocess.Popen[str] | None = None
    try:
        held = agent.client().get("/v1/status")["network"]["dns_proxy"]["holder_pid"]
        assert held, "no DNS socket holder"
        argv = endpoint_exec_cmd(agent.socket, f"{NS}/client", sys.executable, "-c", CLIENT, f"{host}.53",
                                 "allowed.example.com", "a.wild.example.com", "blocked.example.com")
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        before = json.loads(p.stdout.readline() or "null")
        assert before and before["first"]["ips"] == [f"{host}.10"] and before["echo"], before

        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "sent"  # sent while no agent runs
        agent.start()
        after = json.loads(p.stdout.readline() or "null")
        assert after, p.stderr.read() if p.stderr else ""
        # the query sent while no agent ran was answered (not timed out), by the new agent's rules
        assert after["later"] == {"rcode": 0, "ips": [f"{host}.21"]}, after
        assert after["established"], after  # the connection to the IP learned before the kill still works
        assert after["new"], after  # and a new one to it (never re-resolved): the learned IP was restored
        assert after["blocked"]["rcode"] == 5 and not after["blocked"]["ips"], after  # REFUSED
        log = agent.log()
        assert f"took its sockets back from holder pid {held}" in log, log[-3000:]
        assert re.search(r"fqdn cache: restored [1-9]\d* unexpired entries", log), log[-3000:]
        rows = {r["fqdn"]: r["ips"] for r in cache(env)}
        assert rows["allowed.example.com."] == [f"{host}.10"] and rows["a.wild.example.com."] == [f"{host}.21"]
    finally:
        if p is not None:
            p.kill()
            p.wait()
        if agent.proc is not None and agent.proc.poll() is not None:
            agent.start()  # back up, so the endpoints are deleted through the API
