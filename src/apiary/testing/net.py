"""Network test harness on a real agent: endpoints, servers inside them, probes, policies, flows."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from typing import Any

from .agent import AgentProcess

# backend (app=backend in test-namespace) admits nobody: a policy that makes a connection to it drop
DENY_ALL_INGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockdown, namespace: test-namespace}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
"""


class Net:
    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.servers: list[subprocess.Popen[str]] = []

    def cli_ok(self, *args: str) -> str:
        r = self.agent.cli(*args)
        if r.returncode != 0:
            log = self.agent.log()[-4000:]
            raise AssertionError(f"apiary {' '.join(args)} failed ({r.returncode}): {r.stderr}\nagent log:\n{log}")
        return r.stdout

    def endpoint(self, name: str, namespace: str = "test-namespace", *, ports: tuple[str, ...] = (),
                 **labels: str) -> dict[str, Any]:
        """``ports``: ``--port`` values, e.g. ("http=8080/TCP",)."""
        args = ["endpoint", "create", name, "-n", namespace, "-o", "json"]
        for p in ports:
            args += ["--port", p]
        for k, v in labels.items():
            args += ["--labels", f"{k}={v}"]
        return json.loads(self.cli_ok(*args))

    def _exec(self, ep: str, *argv: str) -> list[str]:
        return endpoint_exec_cmd(self.agent.socket, ep, sys.executable, "-m", "apiary.testing.netprobe", *argv)

    def serve(self, ep: str, *argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(self._exec(ep, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if "ready" not in line:
            raise AssertionError(f"server {argv} in {ep} did not start: {line} {p.stderr.read() if p.stderr else ''}")
        return p

    def ask(self, ep: str | None, host: str, port: int, n: int, udp: bool = False) -> dict[str, dict[str, int]]:
        """N new connections (or UDP sockets) to HOST:PORT from an endpoint, or from the host (``ep`` None):
        the answers, the peer each socket saw and the errors, counted (netprobe's ``ask``)."""
        args = ["ask", host, str(port), str(n)] + (["udp"] if udp else [])
        cmd = self._exec(ep, *args) if ep else [sys.executable, "-m", "apiary.testing.netprobe", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out: dict[str, dict[str, int]] = json.loads(r.stdout.strip().splitlines()[-1])
        return out

    def probe(self, ep: str, *argv: str) -> bool:
        r = subprocess.run(self._exec(ep, *argv), capture_output=True, text=True, timeout=60)
        return r.returncode == 0

    def start(self, ep: str, *argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(self._exec(ep, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.servers.append(p)
        return p

    def ping(self, ep: str, ip: str) -> bool:
        row = json.loads(self.cli_ok("endpoint", "get", ep))
        import os

        ns = os.path.basename(row["netns"])
        r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip], capture_output=True)
        return r.returncode == 0

    def apply(self, yaml_text: str) -> subprocess.CompletedProcess[str]:
        return self.agent.cli("policy", "apply", "-f", "-", input=textwrap.dedent(yaml_text))

    def apply_ok(self, yaml_text: str) -> None:
        r = self.apply(yaml_text)
        if r.returncode != 0:
            raise AssertionError(f"policy apply failed: {r.stderr}")

    def delete_policies(self) -> None:
        """Delete every network policy in force (between tests)."""
        for p in json.loads(self.cli_ok("policy", "list", "-o", "json"))["policies"]:
            self.cli_ok("policy", "delete", p["name"], "-n", p["namespace"])

    def flows(self, *filters: str, last: int = 4095, wait: float = 0.4) -> list[dict[str, Any]]:
        time.sleep(wait)  # the agent drains the ring every 50 ms
        out = self.cli_ok("observe", "-o", "json", "--last", str(last), *filters)
        return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]

    def l7_requests(self, path: str) -> list[dict[str, Any]]:
        """The L7 REQUEST flows whose URL ends with ``path``, waited for (up to 10 s): the access log is read
        shortly after the response."""
        for _ in range(50):
            hits = [f for f in self.flows("--type", "l7") if f.get("Type") == "L7" and f["l7"]["type"] == "REQUEST"
                    and f["l7"]["http"]["url"].endswith(path)]
            if hits:
                return hits
            time.sleep(0.2)
        return []

    def close(self) -> None:
        for p in self.servers:
            if p.poll() is None:
                p.kill()
            p.wait()


def endpoint_exec_cmd(socket: str, ep: str, *argv: str) -> list[str]:
    """The command line that runs ``argv`` inside endpoint ``ep`` of the agent on ``socket``."""
    return [sys.executable, "-m", "apiary", "--socket", socket, "endpoint", "exec", ep, "--", *argv]


@contextlib.contextmanager
def running_net() -> Iterator[Net]:
    """A started agent and its Net; the servers, endpoints and the agent are removed afterwards, also on failure."""
    agent = AgentProcess()
    n = Net(agent)
    try:
        agent.start()
        yield n
    finally:
        n.close()
        agent.cleanup()


@contextlib.contextmanager
def http_bodies_net(ns: str, port: int, policy: str, prefix: str) -> Iterator[Net]:
    """A started agent with endpoints ``server`` (app=server, running ``apiary.testing.httpbodies serve`` on
    ``port``) and ``client`` (app=client) in ``ns``, ``policy`` applied; ``net.shared`` is the directory the
    two coordinate through. Everything is removed afterwards, also on failure."""

    shared = tempfile.mkdtemp(prefix=prefix)
    try:
        with running_net() as n:
            n.eps = {  # type: ignore[attr-defined]
                "server": n.endpoint("server", ns, app="server"),
                "client": n.endpoint("client", ns, app="client"),
            }
            n.shared = shared  # type: ignore[attr-defined]
            srv = subprocess.Popen(
                endpoint_exec_cmd(n.agent.socket, f"{ns}/server", sys.executable, "-m", "apiary.testing.httpbodies",
                                  "serve", str(port), shared),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            n.servers.append(srv)
            assert srv.stdout is not None and "ready" in srv.stdout.readline()
            n.apply_ok(policy)
            yield n
    finally:
        shutil.rmtree(shared, ignore_errors=True)
