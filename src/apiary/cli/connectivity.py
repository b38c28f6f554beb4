"""`apiary connectivity test`: temporary endpoints, services and policies of its own, a matrix of scenarios
(src/apiary/connectivity/scenarios.py), ✅/❌ per scenario, Cilium's summary line, and everything it made
removed again (also on Ctrl-C, SIGTERM and failure). Exit 0 only when every scenario that ran passed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import click

from apiary.connectivity.probe import tcp_reason
from apiary.connectivity.scenarios import (
    Action,
    Result,
    Scenario,
    SelectionError,
    dns_missing,
    l7_missing,
    select,
)

from .client import AgentUnreachable, ApiError, Client
from .network_cmds import _client, _fail, seg

ECHO_PORTS = (8080, 8081)
ECHO_HTTP_PORT = 8082  # the echo endpoint's HTTP server (started by the L7 scenario)
PROBE_TIMEOUT = 3.0  # seconds a probe connection may take (a drop shows as a timeout)
DNS_TOOL = "apiary.testing.dnsserver"  # dnspython server and client (python -m), run in the test's own places


class Skip(Exception):
    """The scenario cannot run on this agent: the reason is printed."""


class Run:
    """One run: what it created (for the clean-up) and the helpers the scenarios use."""

    def __init__(self, client: Client, socket_path: str | None, namespace: str, run_id: str) -> None:
        self.c = client
        self.socket_path = socket_path or client.socket_path
        self.ns = namespace
        self.id = run_id
        self.client_ep = f"client-{run_id}"
        self.echo_ep = f"echo-{run_id}"
        self.endpoints: list[str] = []
        self.policies: list[str] = []
        self.services: list[str] = []
        self.tracing: list[str] = []
        self.prefilter_cidrs: list[str] = []
        self.prefilter_devices: list[str] = []
        self.netns: list[str] = []
        self.links: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.host_server: socket.socket | None = None
        self.scratch = tempfile.mkdtemp(prefix=f"apiary-conntest-{run_id}-", dir="/dev/shm" if os.path.isdir(
            "/dev/shm") else None)
        self.echo_ip = ""
        self.router = ""
        self._service: tuple[str, int] | None = None
        self._http_server = False

    # ------------------------------------------------------------------ building blocks
    def labels(self, kind: str) -> dict[str, str]:
        return {"apiary-conntest": self.id, "kind": kind}

    def selector(self, kind: str) -> str:
        return f"{{matchLabels: {{apiary-conntest: '{self.id}', kind: {kind}}}}}"

    def create_endpoint(self, name: str, kind: str) -> dict[str, Any]:
        row: dict[str, Any] = self.c.request(
            "POST", "/v1/endpoints", json={"name": name, "namespace": self.ns, "labels": self.labels(kind), "ports": {}}
        )
        self.endpoints.append(f"{self.ns}/{name}")
        return row

    def exec_argv(self, ep: str, *argv: str) -> list[str]:
        """`apiary endpoint exec` of the command in the endpoint (its netns and cgroup)."""
        return [sys.executable, "-m", "apiary", "--socket", self.socket_path, "endpoint", "exec", f"{self.ns}/{ep}",
                "--", *argv]

    def probe_argv(self, ep: str, *argv: str) -> list[str]:
        return self.exec_argv(ep, sys.executable, "-m", "apiary.connectivity.probe", *argv)

    def connect(self, ep: str, host: str, port: int) -> str | None:
        """None when ep reaches host:port (echo checked), else the reason."""
        r = subprocess.run(self.probe_argv(ep, "tcp", host, str(port), str(PROBE_TIMEOUT)), capture_output=True,
                           text=True, timeout=120)
        if r.returncode == 0:
            return None
        out = (r.stdout.strip() or r.stderr.strip() or f"exit {r.returncode}").splitlines()[-1]
        return out.removeprefix("error ")

    def expect(self, ep: str, host: str, port: int, ok: bool, label: str) -> Action:
        why = self.connect(ep, host, port)
        what = f"{ep} -> {label} {host}:{port} (expect {'success' if ok else 'drop'})"
        if ok:
            return Action(what, why is None, f"connection failed: {why}" if why else "")
        return Action(what, why is not None, "" if why else "connection succeeded")

    def start_http_server(self) -> None:
        """The echo endpoint's HTTP server on ECHO_HTTP_PORT (once)."""
        if not self._http_server:
            self.start_server("HTTP server", "serve-http", str(ECHO_HTTP_PORT))
            self._http_server = True

    def start_server(self, what: str, *argv: str) -> None:
        """A probe server in the echo endpoint (stopped by the clean-up); returns once it listens."""
        self.start_process(f"the {what} in {self.ns}/{self.echo_ep}", self.probe_argv(self.echo_ep, *argv))

    def start_process(self, what: str, argv: list[str]) -> None:
        """A server process (stopped by the clean-up); returns once it printed "ready"."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if "ready" not in line:
            err = p.stderr.read() if p.stderr and p.poll() is not None else ""
            raise RuntimeError(f"{what} did not start: {(line + err).strip()}")

    def own_host(self, tag: str, base: int, far: int) -> tuple[str, str, str, list[str]]:
        """A veth pair of the run's own, its far end in a netns of its own, on 198.18.N.base/29 (RFC 2544's
        benchmarking range): the near end gets .base+1, the far end the next ``far`` addresses. Returns (netns,
        near link, near address, far addresses); removed by the clean-up."""
        n = int(self.id, 16) % 250 + 1
        host = f"198.18.{n}.{base + 1}"
        addrs = [f"198.18.{n}.{base + 2 + i}" for i in range(far)]
        ns, h_if, t_if = f"apiary-ct-{self.id}{tag}", f"ct{self.id}{tag}h", f"ct{self.id}{tag}t"
        taken = subprocess.run(["ip", "-j", "route", "show", "match", host], capture_output=True, text=True,
                               timeout=30)
        if any(not x.get("dst", "").startswith("default") for x in json.loads(taken.stdout or "[]")):
            raise Skip(f"{host} is already routed on this node: the test does not send there")
        self.netns.append(ns)
        _sh("ip", "netns", "add", ns)
        self.links.append(h_if)
        _sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
        _sh("ip", "addr", "add", f"{host}/29", "dev", h_if)
        _sh("ip", "link", "set", h_if, "up")
        cmds = [("link", "set", "lo", "up"), *(("addr", "add", f"{a}/29", "dev", t_if) for a in addrs),
                ("link", "set", t_if, "up")]
        for cmd in cmds:
            _sh("ip", "-n", ns, *cmd)
        got = _sh("ip", "-n", ns, "route", "get", host)
        if f"dev {t_if}" not in got:  # traffic only over the test's own link
            raise RuntimeError(f"{host} does not route over the test veth ({got.strip()}): refusing to send")
        return ns, h_if, host, addrs

    def expect_http(self, ep: str, host: str, port: int, path: str, status: int, body: str) -> Action:
        """GET http://host:port/path from ep: the answer must have ``status`` and a body starting with ``body``."""
        what = f"{ep} -> GET http://{host}:{port}{path} (expect {status})"
        r = subprocess.run(self.probe_argv(ep, "http", host, str(port), path, str(PROBE_TIMEOUT)),
                           capture_output=True, text=True, timeout=120)
        out = (r.stdout.strip() or r.stderr.strip() or f"exit {r.returncode}").splitlines()[-1]
        if r.returncode != 0:
            return Action(what, False, out.removeprefix("error "))
        got = json.loads(out)
        ok = got["status"] == status and str(got["body"]).startswith(body)
        return Action(what, ok, "" if ok else f"got {got['status']} {str(got['body'])[:60]!r}")

    def apply_policy(self, name: str, spec: str) -> None:
        text = f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: " \
               f"{self.ns}}}\nspec:\n{textwrap.indent(textwrap.dedent(spec), '  ')}"
        self.c.request("POST", "/v1/policies", content=text.encode(), headers={"Content-Type": "application/yaml"})
        self.policies.append(name)

    def delete_policy(self, name: str) -> None:
        if name in self.policies:
            self.c.request("DELETE", f"/v1/policies/{seg(name)}", params={"namespace": self.ns})
            self.policies.remove(name)

    @contextlib.contextmanager
    def policy(self, name: str, spec: str) -> Iterator[None]:
        self.apply_policy(name, spec)
        try:
            yield
        finally:
            self.delete_policy(name)

    def service(self) -> tuple[str, int]:
        """(ClusterIP, nodePort) of the run's NodePort Service in front of the echo endpoint (made once)."""
        if self._service is None:
            name = f"echo-{self.id}"
            text = (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {self.ns}}}\nspec:\n"
                    f"  type: NodePort\n  selector: {{apiary-conntest: '{self.id}', kind: echo}}\n"
                    f"  ports: [{{name: tcp, port: 80, targetPort: {ECHO_PORTS[0]}, protocol: TCP}}]\n")
            self.c.request("POST", "/v1/services", content=text.encode(), headers={"Content-Type": "application/yaml"})
            self.services.append(name)
            spec = self.c.get(f"/v1/services/{seg(self.ns)}/{seg(name)}")["service"]["spec"]
            self._service = (spec["clusterIP"], int(spec["ports"][0]["nodePort"]))
        return self._service

    def start_host_server(self) -> int:
        """An echo server on the node at the endpoints' router address (a thread of this process)."""
        s = socket.socket()
        s.bind((self.router, 0))
        s.listen(16)
        s.settimeout(0.5)
        self.host_server = s

        def loop() -> None:
            while self.host_server is s:
                try:
                    c, _ = s.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with c:
                    c.settimeout(5)
                    with contextlib.suppress(OSError):
                        while data := c.recv(4096):
                            c.sendall(data)

        threading.Thread(target=loop, daemon=True).start()
        port: int = s.getsockname()[1]
        return port

    # ------------------------------------------------------------------ set-up and clean-up
    def setup(self) -> None:
        self.create_endpoint(self.client_ep, "client")
        echo = self.create_endpoint(self.echo_ep, "echo")
        self.echo_ip = echo["ipv4"]
        self.start_server("echo server", "serve-tcp", *map(str, ECHO_PORTS))
        ns = os.path.basename(echo["netns"])
        r = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "default"], capture_output=True, text=True,
                           timeout=30)
        routes = json.loads(r.stdout or "[]")
        if not routes or "gateway" not in routes[0]:
            raise RuntimeError(f"no default route in {ns}: {r.stderr.strip()}")
        self.router = routes[0]["gateway"]

    def cleanup(self) -> list[str]:
        """Remove everything the run made; returns what could not be removed (each with the reason)."""
        problems: list[str] = []

        def attempt(what: str, fn: Callable[..., object], *args: Any, **kw: Any) -> None:
            try:
                fn(*args, **kw)
            except (AgentUnreachable, ApiError, OSError, RuntimeError, subprocess.SubprocessError) as e:
                if not (isinstance(e, ApiError) and e.status == 404):
                    problems.append(f"{what}: {e}")

        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.SubprocessError):
                p.wait(timeout=20)
        if self.host_server is not None:
            s, self.host_server = self.host_server, None
            s.close()
        req = self.c.request
        for name in list(self.tracing):
            attempt(f"tracingpolicy {name}", req, "DELETE", f"/v1/tracingpolicies/{seg(name)}",
                    params={"namespace": ""})  # its own, cluster-scoped: never a namespaced one of that name
        if self.prefilter_cidrs:
            attempt("prefilter CIDRs " + ", ".join(self.prefilter_cidrs), req, "POST", "/v1/prefilter/delete",
                    json={"cidrs": self.prefilter_cidrs})
        for dev in self.prefilter_devices:
            attempt(f"prefilter device {dev}", req, "DELETE", f"/v1/prefilter/devices/{seg(dev)}")
        for link in self.links:
            attempt(f"link {link}", _sh, "ip", "link", "del", link)
        for ns in self.netns:
            attempt(f"netns {ns}", _sh, "ip", "netns", "del", ns)
        for name in list(self.policies):
            attempt(f"policy {self.ns}/{name}", self.delete_policy, name)
        for name in self.services:
            attempt(f"service {self.ns}/{name}", req, "DELETE", f"/v1/services/{seg(self.ns)}/{seg(name)}",
                    params={"kind": "Service"})
        for ref in self.endpoints:
            attempt(f"endpoint {ref}", req, "DELETE", f"/v1/endpoints/{seg(ref)}")
        shutil.rmtree(self.scratch, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------- the scenarios
def pod_to_pod(r: Run) -> list[Action]:
    return [r.expect(r.client_ep, r.echo_ip, ECHO_PORTS[0], True, r.echo_ep)]


def pod_to_host(r: Run) -> list[Action]:
    port = r.start_host_server()
    return [r.expect(r.client_ep, r.router, port, True, "node")]


def pod_to_service(r: Run) -> list[Action]:
    vip, _ = r.service()
    return [r.expect(r.client_ep, vip, 80, True, "ClusterIP")]


def host_to_nodeport(r: Run) -> list[Action]:
    _, node_port = r.service()
    why = tcp_reason("127.0.0.1", node_port, PROBE_TIMEOUT)
    return [Action(f"node -> NodePort 127.0.0.1:{node_port} (expect success)", why is None,
                   f"connection failed: {why}" if why else "")]


def _allow_8080(r: Run) -> str:
    return textwrap.dedent(f"""\
        endpointSelector: {r.selector('echo')}
        ingress:
        - fromEndpoints: [{r.selector('client')}]
          toPorts: [{{ports: [{{port: "{ECHO_PORTS[0]}", protocol: TCP}}]}}]
        """)


def allow_l3_l4(r: Run) -> list[Action]:
    with r.policy(f"conntest-allow-{r.id}", _allow_8080(r)):
        return [r.expect(r.client_ep, r.echo_ip, ECHO_PORTS[0], True, r.echo_ep),
                r.expect(r.client_ep, r.echo_ip, ECHO_PORTS[1], False, r.echo_ep)]


def deny_precedence(r: Run) -> list[Action]:
    spec = _allow_8080(r) + textwrap.dedent(f"""\
        ingressDeny:
        - fromEndpoints: [{r.selector('client')}]
          toPorts: [{{ports: [{{port: "{ECHO_PORTS[0]}", protocol: TCP}}]}}]
        """)
    with r.policy(f"conntest-deny-{r.id}", spec):
        return [r.expect(r.client_ep, r.echo_ip, ECHO_PORTS[0], False, r.echo_ep)]


def drop_flow(r: Run) -> list[Action]:
    with r.policy(f"conntest-drop-{r.id}", _allow_8080(r)):
        act = r.expect(r.client_ep, r.echo_ip, ECHO_PORTS[1], False, r.echo_ep)
    if not act.ok:
        return [act]
    what = f"flows: DROPPED {r.echo_ip}:{ECHO_PORTS[1]} with drop_reason_desc POLICY_DENIED"
    params = [("filter", f"--to-ip={r.echo_ip}"), ("filter", f"--to-port={ECHO_PORTS[1]}"),
              ("filter", "--verdict=DROPPED"), ("last", "50"), ("follow", "0")]
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the agent drains the flow ring every 50 ms
        flows = [f["flow"] for f in r.c.stream("/v1/flows", params) if "flow" in f]
        seen = [str(f.get("drop_reason_desc")) for f in flows]
        if "POLICY_DENIED" in seen:
            return [act, Action(what, True)]
        time.sleep(0.2)
    return [act, Action(what, False, f"no such flow (drop reasons seen: {', '.join(seen) or 'none'})")]


def l7_http(r: Run) -> list[Action]:
    """An ingress rule with rules.http on the echo endpoint's HTTP port: the datapath hands the connection to
    the agent's proxy, which lets GET /allowed through to the server and answers 403 itself for the rest."""
    r.start_http_server()
    spec = textwrap.dedent(f"""\
        endpointSelector: {r.selector('echo')}
        ingress:
        - fromEndpoints: [{r.selector('client')}]
          toPorts:
          - ports: [{{port: "{ECHO_HTTP_PORT}", protocol: TCP}}]
            rules: {{http: [{{method: GET, path: /allowed}}]}}
        """)
    with r.policy(f"conntest-l7-{r.id}", spec):
        return [r.expect_http(r.client_ep, r.echo_ip, ECHO_HTTP_PORT, "/allowed", 200, "ok GET /allowed"),
                r.expect_http(r.client_ep, r.echo_ip, ECHO_HTTP_PORT, "/denied", 403, "Access denied")]


def prefilter(r: Run) -> list[Action]:
    """A veth pair of the run's own (the far end in a netns of its own, addresses in 198.18.N.0/29, RFC 2544's
    benchmarking range): the prefilter attached to the near end, one far address denied; removed afterwards."""
    ns, h_if, host, (bad, good) = r.own_host("", 0, 2)
    cidr = f"{bad}/32"
    res = r.c.request("POST", "/v1/prefilter", json={"cidrs": [cidr], "devices": [h_if], "mode": "auto"})
    r.prefilter_devices.append(h_if)
    if cidr in res.get("added", ()):
        r.prefilter_cidrs.append(cidr)
    mode = next((d["mode"] for d in res.get("devices", ()) if d["device"] == h_if), "?")
    acts = [Action(f"UDP {good} -> {host} over {h_if} (XDP {mode}; expect delivered)",
                   _udp_arrives(ns, good, host), "datagram not delivered"),
            Action(f"UDP {bad} -> {host} over {h_if} (source denied; expect dropped)",
                   not _udp_arrives(ns, bad, host), "datagram delivered")]
    drops = {e["cidr"]: e["drops"] for e in r.c.get("/v1/prefilter")["entries"]}
    acts.append(Action(f"prefilter drop counter of {cidr} (expect > 0)", drops.get(cidr, 0) > 0,
                       f"drops {drops.get(cidr)}"))
    return acts


def _sh(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


def _udp_arrives(ns: str, src: str, dst: str) -> bool:
    """A datagram from ``src`` (inside the test's netns) to a socket of this process on ``dst``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind((dst, 0))
        rx.settimeout(2.0)
        port = rx.getsockname()[1]
        code = f"import socket;s=socket.socket(2,2);s.bind(({src!r},0));s.sendto(b'pf',({dst!r},{port}))"
        _sh("ip", "netns", "exec", ns, sys.executable, "-c", code)
        try:
            return rx.recv(16) == b"pf"
        except TimeoutError:
            return False


def dns(r: Run) -> list[Action]:
    """A DNS server of the run's own (dnspython, in a netns of its own on 198.18.N.8/29) knows two names; an
    egress rule with rules.dns lets the client ask it for one of them only. The datapath hands the client's
    queries to the agent's DNS proxy, which forwards the allowed one and answers REFUSED itself for the other
    (the server would answer it: a refusal can only come from the proxy)."""
    ns, _, _, (server,) = r.own_host("d", 8, 1)
    allowed, other = f"allowed.{r.id}.apiary-conntest.test", f"other.{r.id}.apiary-conntest.test"
    r.start_process(f"the DNS server in netns {ns}", [
        "ip", "netns", "exec", ns, sys.executable, "-m", DNS_TOOL, "serve", server, f"{allowed}={server}@60",
        f"{other}={server}@60"])
    spec = textwrap.dedent(f"""\
        endpointSelector: {r.selector('client')}
        egress:
        - toCIDR: [{server}/32]
          toPorts:
          - ports: [{{port: "53", protocol: ANY}}]
            rules: {{dns: [{{matchName: "{allowed}"}}]}}
        """)
    steps = [["ask", server, allowed, "udp"], ["ask", server, other, "udp"]]
    with r.policy(f"conntest-dns-{r.id}", spec):
        p = subprocess.run(r.exec_argv(r.client_ep, sys.executable, "-m", DNS_TOOL, "run", json.dumps(steps)),
                           capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"the DNS client in {r.ns}/{r.client_ep} failed: {p.stderr.strip()[-300:]}")
    got, refused = json.loads(p.stdout.strip().splitlines()[-1])
    where = f"{r.client_ep} -> DNS {server}:53 A"

    def seen(x: dict[str, Any]) -> str:
        return f"rcode {x['rcode']} ({x.get('error') or 'ips ' + (','.join(x['ips']) or 'none')})"

    answered = got["rcode"] == 0 and got["ips"] == [server]
    # REFUSED, or NXDOMAIN under --tofqdns-dns-reject-response-code nameError: the server knows the name
    was_refused = refused["rcode"] in (3, 5) and not refused["ips"]
    return [Action(f"{where} {allowed} (expect answer {server})", answered, "" if answered else seen(got)),
            Action(f"{where} {other} (expect the proxy's refusal)", was_refused, "" if was_refused else seen(refused))]


def tracing_kill(r: Run) -> list[Action]:
    name = f"conntest-kill-{r.id}"
    victim = os.path.join(r.scratch, "victim")
    with open(victim, "w") as f:
        f.write("v1\n")
    text = textwrap.dedent(f"""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata: {{name: {name}}}
        spec:
          podSelector: {r.selector('client')}
          kprobes:
          - call: sys_write
            syscall: true
            args: [{{index: 0, type: fd}}, {{index: 2, type: size_t}}]
            selectors:
            - matchArgs: [{{index: 0, operator: Prefix, values: ["{r.scratch}/"]}}]
              matchActions: [{{action: Sigkill}}]
        """)
    r.c.request("POST", "/v1/tracingpolicies", content=text.encode(), headers={"Content-Type": "application/yaml"})
    r.tracing.append(name)
    try:
        p = subprocess.run(r.exec_argv(r.client_ep, "/bin/sh", "-c", f"echo v2 >> {victim}"), capture_output=True,
                           text=True, timeout=120)
        with open(victim) as f:
            content = f.read()
        killed = Action(f"{r.client_ep}: sh writing {victim} (expect SIGKILL, file unchanged)",
                        p.returncode == -signal.SIGKILL and content == "v1\n",
                        f"exit {p.returncode}, file now {content!r}")
        what = f"event of policy {name} with action Sigkill"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for ev in r.c.stream("/v1/events", [("follow", "0")]):
                body = next((v for v in ev.values() if isinstance(v, dict) and v.get("policy_name") == name), None)
                if body is not None:
                    return [killed, Action(what, "SIGKILL" in str(body.get("action", "")),
                                           f"action {body.get('action')}")]
            time.sleep(0.2)
        return [killed, Action(what, False, "no such event in the agent's events")]
    finally:
        r.c.request("DELETE", f"/v1/tracingpolicies/{seg(name)}", params={"namespace": ""})
        r.tracing.remove(name)


RUNNERS: dict[str, Callable[[Run], list[Action]]] = {
    "pod-to-pod": pod_to_pod,
    "pod-to-host": pod_to_host,
    "pod-to-service": pod_to_service,
    "host-to-nodeport": host_to_nodeport,
    "allow-l3-l4": allow_l3_l4,
    "deny-precedence": deny_precedence,
    "drop-flow": drop_flow,
    "prefilter": prefilter,
    "tracing-kill": tracing_kill,
    "l7-http": l7_http,
    "dns": dns,
}


def run_one(r: Run, s: Scenario, l7_skip: str, dns_skip: str = "") -> Result:
    """``l7_skip``/``dns_skip``: why the L7/DNS scenarios cannot run on this agent (empty when its proxy is up)."""
    fn = RUNNERS.get(s.name)
    if fn is None:
        return Result(s, skipped="not implemented in this version of the connectivity test")
    if s.l7 and l7_skip:
        return Result(s, skipped=l7_skip)
    if s.dns and dns_skip:
        return Result(s, skipped=dns_skip)
    try:
        return Result(s, fn(r))
    except Skip as e:
        return Result(s, skipped=str(e))
    except ApiError as e:
        return Result(s, error=f"the agent refused a step: {e.text()}".replace("\n", "; "))
    except (OSError, subprocess.SubprocessError, RuntimeError, KeyError) as e:
        return Result(s, error=f"{type(e).__name__}: {e}")


def _sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------- the command
@click.group("connectivity")
def connectivity() -> None:
    """Check that this node's networking and security work end to end (as `cilium connectivity test`)."""


@connectivity.command("test")
@click.option("--test", "tests", multiple=True, metavar="PATTERN",
              help="Run only scenarios matching this regular expression; a leading ! excludes (repeatable, or "
                   "comma-separated).")
@click.option("--test-namespace", default=None,
              help="Namespace of the test's endpoints, services and policies [default: apiary-test-RUNID].")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.pass_context
def connectivity_test(ctx: click.Context, tests: tuple[str, ...], test_namespace: str | None, output: str,
                      list_only: bool) -> None:
    """Create temporary endpoints, a Service and policies, run the scenario matrix, print ✅/❌ per scenario
    and a summary, remove everything it created. Exit 0 only when every scenario that ran passed."""
    try:
        chosen = select(tests)
    except SelectionError as e:
        _fail(str(e), 2)
        return
    if list_only:
        for s in chosen:
            click.echo(f"{s.name:18} {s.what}")
        return
    run_id = uuid.uuid4().hex[:6]
    namespace = test_namespace or f"apiary-test-{run_id}"
    c = _client(ctx)
    text = output == "text"
    try:
        st = c.get("/v1/status")
    except (AgentUnreachable, ApiError) as e:
        _fail(str(e))
        return
    l7_skip, dns_skip = l7_missing(st), dns_missing(st)
    r = Run(c, (ctx.find_root().obj or {}).get("socket"), namespace, run_id)
    results: list[Result] = []
    old = signal.signal(signal.SIGTERM, _sigterm)
    interrupted = False
    setup_error = ""
    leftovers: list[str] = []
    try:
        if text:
            click.echo(f"✨ [{namespace}] Creating endpoints {r.client_ep} and {r.echo_ep}...")
        r.setup()
        for s in chosen:
            res = run_one(r, s, l7_skip, dns_skip)
            results.append(res)
            if text:
                click.echo(res.line())
    except KeyboardInterrupt:
        interrupted = True
    except (AgentUnreachable, ApiError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        setup_error = (e.text() if isinstance(e, ApiError) else str(e)).replace("\n", "; ")
    finally:
        if text:
            click.echo(f"🧹 [{namespace}] Removing everything the test created...")
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            leftovers = r.cleanup()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old)
    for line in leftovers:
        click.echo(f"⚠️  could not remove {line}", err=True)
    if output == "json":
        click.echo(json.dumps({"namespace": namespace, "results": [x.as_dict() for x in results],
                               "complete": not (interrupted or setup_error)}, indent=2))
    else:
        from apiary.connectivity.scenarios import SCENARIOS, summary

        click.echo("📋 Test Report")
        for line in summary(results, deselected=len(SCENARIOS) - len(chosen)):
            click.echo(line)
    if setup_error:
        _fail(f"connectivity test: set-up failed after {len(results)} scenarios: {setup_error}", 1)
    if interrupted:
        _fail("connectivity test interrupted: not every scenario ran", 130)
    if leftovers or not all(x.ok or x.skipped for x in results):
        sys.exit(1)
