"""Beyond Cilium (cilium#30984): the DNS proxy keeps answering across a kill -9 of the agent, and toFQDNs
enforcement survives it. The proxy's sockets stay open in their holder while no agent runs, so a query sent
then waits in the socket and the next agent answers it; the learned names are restored from the state
directory, so the reconciled maps keep the IPs an endpoint was told until their TTL runs out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.dnsserver import dns_host
from apiary.testing.net import Net, endpoint_exec_cmd

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (the DNS proxy uses its routing)"),
]

NS = "dnsrestart"
NAMES = '[{matchName: allowed.example.com}, {matchPattern: "*.wild.example.com"}]'

# in the client endpoint: resolve, connect; (agent killed) send one UDP query, wait up to 10 s for its answer;
# then the established connection, a new one to the IP learned before the kill, and a refused name
CLIENT = textwrap.dedent("""
    import json, socket, sys
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
    u.settimeout(10)
    u.sendto(dns.message.make_query(later, "A").to_wire(), (server, 53))
    print("sent", flush=True)
    try:
        a = dns.message.from_wire(u.recv(65535))
        got = {"rcode": a.rcode(), "ips": [rd.to_text() for rr in a.answer for rd in rr]}
    except OSError as e:
        got = {"rcode": -1, "error": str(e)}
    print(json.dumps({"later": got, "established": echo(), "new": tcp(ip, 7000, 3),
                      "blocked": ask(server, blocked, False)}), flush=True)
""")


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


def test_dns_answers_and_tofqdns_hold_across_kill_9() -> None:
    agent = AgentProcess()
    n = Net(agent)
    p: subprocess.Popen[str] | None = None
    with dns_host() as th:
        host = th["net"]
        try:
            agent.start()
            n.endpoint("client", NS, app="client")
            n.apply_ok(policy(host))
            held = agent.client().get("/v1/status")["network"]["dns_proxy"]["holder_pid"]
            assert held, "no DNS socket holder"
            argv = endpoint_exec_cmd(agent.socket, f"{NS}/client", sys.executable, "-c", CLIENT, f"{host}.53",
                                     "allowed.example.com", "a.wild.example.com", "blocked.example.com")
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
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
            assert "fqdn cache: restored 1 unexpired entries" in log, log[-3000:]
            rows = {r["fqdn"]: r["ips"] for r in json.loads(n.cli_ok("fqdn", "cache", "list", "-o", "json"))}
            assert rows == {"allowed.example.com.": [f"{host}.10"], "a.wild.example.com.": [f"{host}.21"]}, rows
        finally:
            if p is not None:
                p.kill()
                p.wait()
            if agent.proc is not None and agent.proc.poll() is not None:
                agent.start()  # back up, so the endpoints are deleted through the API
            n.close()
            agent.cleanup()
