"""Every upstream policy of ../shared/conformance applied LIVE to a real agent, not only compiled.

TracingPolicy corpus: each file is applied unchanged, in enforce and in monitor mode, while a standard
workload runs (execs, file reads/writes, unix/TCP/UDP connects, a failing set*id); then the agent, the CLI,
a unix-socket client and a loopback TCP client must still be alive (none of the corpus files targets them on
Tetragon), and deleting the policy must leave exactly the kernel objects that were there before.

CiliumNetworkPolicy corpus: each file that loads is applied to real endpoints with real traffic between
them; the agent and CLI survive, flows are produced, and deleting the policy restores connectivity and the
policy map to where they were.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

SHARED = next(
    (p for p in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared")) if (p / "conformance").is_dir()),
    Path("/work/shared"),
)
TETRAGON = SHARED / "conformance" / "tetragon-policies"
CILIUM = SHARED / "conformance" / "cilium-policies"
TP_FILES = sorted(p for p in TETRAGON.rglob("*") if p.suffix in (".yaml", ".yml") and "invalid" not in p.parts)
CNP_FILES = sorted(CILIUM.rglob("*.yaml"))
pytestmark = pytest.mark.skipif(not TP_FILES, reason=f"{TETRAGON} not available")

# the workload: what a node does all day, in one child process (so a Sigkill lands on it, not on pytest)
WORKLOAD = r"""
import os, socket, subprocess, sys, tempfile
d = tempfile.mkdtemp(prefix="apiary-corpus-")
p = os.path.join(d, "f.txt")
with open(p, "w") as f:
    f.write("hello\n")
with open(p) as f:
    f.read()
os.chdir(d)
fd = os.open("f.txt", os.O_RDONLY); os.close(fd)
try:
    os.open("missing", os.O_RDONLY)
except OSError:
    pass
r, w = os.pipe(); os.write(w, b"x"); os.read(r, 1); os.close(r); os.close(w)
subprocess.run(["/bin/true"])
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.bind(os.path.join(d, "s")); u.listen(1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(os.path.join(d, "s")); c.close(); u.close()
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(1)
c = socket.create_connection(t.getsockname(), timeout=2); c.close(); t.close()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("127.0.0.1", 9)); s.close()
pid = os.fork()
if pid == 0:
    try:
        os.setgid(65534); os.setuid(65534); os.setuid(0)
    except OSError:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print("workload-done")
"""

# a unix-socket and a loopback TCP client that stay connected and keep talking during the policy's life
SURVIVOR = r"""
import os, socket, sys, time
kind, addr = sys.argv[1], sys.argv[2]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(addr)
else:
    host, port = addr.rsplit(":", 1); s = socket.create_connection((host, int(port)), timeout=5)
print("connected", flush=True)
for line in sys.stdin:
    s.sendall(b"ping\n"); s.recv(16)
    # a fresh connect each round too: connect() is what the network hooks watch
    if kind == "unix":
        t = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); t.connect(addr); t.close()
    else:
        t = socket.create_connection((host, int(port)), timeout=5); t.close()
    print("pong", flush=True)
"""


class EchoServers:
    """A unix and a loopback TCP echo server in this process (threads), for the survivor clients."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="apiary-corpus-srv-")
        self.unix_path = os.path.join(self.dir, "echo.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp_addr = f"127.0.0.1:{self.tcp.getsockname()[1]}"
        for s in (self.unix, self.tcp):
            s.listen(64)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            while data := c.recv(64):
                c.sendall(data)

    def close(self) -> None:
        for s in (self.unix, self.tcp):
            s.close()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


class Survivor:
    def __init__(self, kind: str, addr: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", SURVIVOR, kind, addr],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None
        assert self.p.stdout.readline().strip() == "connected", self.p.stderr.read() if self.p.stderr else ""

    def alive(self) -> bool:
        """One more round trip (and a fresh connect) works."""
        if self.p.poll() is not None:
            return False
        assert self.p.stdin is not None and self.p.stdout is not None
        try:
            self.p.stdin.write("go\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            return False
        return self.p.stdout.readline().strip() == "pong"

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def run_workload() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WORKLOAD], capture_output=True, text=True, timeout=60)


# Each file is applied with the CLI, as a user would; the checks around it ask the agent's API directly
# (what `apiary bpf list`, `tp list`, `tp set-mode`, `status` ask): a CLI process per check cost most of this
# module's time (~160 files).


def api(agent: AgentProcess, method: str, path: str, **params: str) -> Any:
    return agent.client().request(method, path, params=params)


def seg(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def tp_list(agent: AgentProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = api(agent, "GET", "/v1/tracingpolicies")
    return rows


def tp_delete(agent: AgentProcess, name: str, ns: str) -> None:
    api(agent, "DELETE", f"/v1/tracingpolicies/{seg(name)}", namespace=ns)


def kernel_objects(agent: AgentProcess) -> tuple[set[str], set[str]]:
    """The agent's programs and links as (name, attach) pairs: what a policy adds must go with it."""
    data = api(agent, "GET", "/v1/bpf")
    progs = {f"{p['name']}@{p['attach']}" for p in data["programs"]}
    links = {f"{lk['program']}@{lk['attach']}" for lk in data["links"]}
    return progs, links


def policy_names(text: str) -> list[tuple[str, str]]:
    import yaml

    out = []
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
            out.append((str(doc["metadata"].get("name")), str(doc["metadata"].get("namespace") or "")))
    return out


@pytest.fixture(scope="module")
def tp_agent() -> Iterator[tuple[AgentProcess, EchoServers]]:
    agent = AgentProcess("--no-network")
    servers = EchoServers()
    try:
        agent.start()
        # the tracing sensor loads with the first policy: load it now, so each file's before/after kernel
        # objects compare what that file added
        warm = "apiary-corpus-warm"
        tp = f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: {warm}}}\nspec:\n"
        tp += "  kprobes:\n  - call: sys_getppid\n    syscall: true\n"
        agent.client().request("POST", "/v1/tracingpolicies", content=tp.encode(),
                               headers={"Content-Type": "application/yaml"})
        tp_delete(agent, warm, "")
        yield agent, servers
    finally:
        agent.cleanup()
        servers.close()


def _rel(p: Path, root: Path) -> str:
    return str(p.relative_to(root))


@pytest.mark.parametrize("path", TP_FILES, ids=lambda p: _rel(p, TETRAGON))
def test_tp_corpus_applied_live(tp_agent: tuple[AgentProcess, EchoServers], path: Path) -> None:
    agent, servers = tp_agent
    before = kernel_objects(agent)
    survivors = [Survivor("unix", servers.unix_path), Survivor("tcp", servers.tcp_addr)]
    try:
        r = agent.cli("tp", "apply", "-f", str(path))
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode != 0:
            # refused (unsupported here, or a target that does not exist on this machine): said clearly,
            # nothing left behind
            assert r.returncode == 1 and r.stderr.strip(), r
            assert tp_list(agent) == [], r.stderr
            assert kernel_objects(agent) == before, r.stderr
            pytest.skip(f"refused: {' / '.join(r.stderr.strip().splitlines()[:3])[:240]}")
        names = policy_names(path.read_text())
        for mode in ("enforce", "monitor"):
            for n, ns in names:
                assert api(agent, "POST", f"/v1/tracingpolicies/{seg(n)}/mode", namespace=ns, mode=mode)["mode"] == mode
            w = run_workload()
            # the workload is not a target of any corpus file here either: it finishes
            assert w.returncode == 0 and "workload-done" in w.stdout, (mode, w.returncode, w.stderr[-400:])
            assert all(s.alive() for s in survivors), (mode, [s.p.returncode for s in survivors])
            assert api(agent, "GET", "/v1/status")["events"], (mode, agent.log()[-2000:])
        listed = tp_list(agent)
        assert sorted(p["name"] for p in listed) == sorted(n for n, _ in names)
        for n, ns in names:
            tp_delete(agent, n, ns)
        assert tp_list(agent) == []
        assert kernel_objects(agent) == before
    finally:
        for s in survivors:
            s.close()
        for row in tp_list(agent):  # never leave a policy for the next file
            tp_delete(agent, row["name"], row["namespace"])
    assert agent.proc is not None and agent.proc.poll() is None, agent.log()[-3000:]


# --- CiliumNetworkPolicy corpus with real endpoints ------------------------------------------------------------

NS = "cilium-test"
TEMPLATE_VALUES = {
    "TestNamespace": NS,
    "ClusterNameLocal": "default",
    "ClusterNameRemote": "default",
    "ExternalTarget": "one.one.one.one.",
    "ExternalCIDRv4": "198.51.100.0/24",
    "ExternalCIDRv6": "2001:db8::/64",
    "ExternalIPv4": "198.51.100.1",
    "ExternalIPv6": "2001:db8::1",
    "ExternalOtherIPv4": "198.51.100.2",
    "ExternalOtherIPv6": "2001:db8::2",
}


def render(text: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = re.search(r"\.(\w+)", m.group(1))
        return TEMPLATE_VALUES[name.group(1)] if name and name.group(1) in TEMPLATE_VALUES else m.group(0)

    return re.sub(r"\{\{(.*?)\}\}", value, text)


@pytest.fixture(scope="module")
def cnp_net() -> Iterator[Net]:
    agent = AgentProcess()
    net = Net(agent)
    try:
        agent.start()
        net.eps = {  # type: ignore[attr-defined]
            "client": net.endpoint("client", NS, kind="client"),
            "client2": net.endpoint("client2", NS, kind="client", other="client"),
            "echo": net.endpoint("echo-same-node", NS, kind="echo"),
        }
        net.serve(f"{NS}/echo-same-node", "serve-tcp", "8080")
        yield net
    finally:
        net.close()
        agent.cleanup()


def _reach(net: Net) -> dict[str, bool]:
    echo = net.eps["echo"]["ipv4"]  # type: ignore[attr-defined]
    return {
        ep: net.probe(f"{NS}/{ep}", "tcp", echo, "8080", "1") for ep in ("client", "client2")
    }


def _policy_map_entries(net: Net) -> int:
    return int(api(net.agent, "GET", "/v1/status")["network"]["policy_map"]["entries"])


def _policies(net: Net) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = api(net.agent, "GET", "/v1/policies")["policies"]
    return rows


@pytest.mark.parametrize("path", CNP_FILES, ids=lambda p: _rel(p, CILIUM))
def test_cnp_corpus_applied_live(cnp_net: Net, path: Path) -> None:
    net = cnp_net
    baseline = {"client": True, "client2": True}  # no policy: everything reaches echo (checked after each file)
    entries = _policy_map_entries(net)
    text = render(path.read_text())
    r = net.agent.cli("policy", "apply", "-f", "-", input=text)
    assert "Traceback" not in r.stderr, r.stderr
    if r.returncode != 0:
        assert r.stderr.strip(), r
        assert _policies(net) == []
        assert _policy_map_entries(net) == entries
        pytest.skip(f"refused: {' / '.join(r.stderr.strip().splitlines()[:3])[:240]}")
    try:
        _reach(net)  # whatever the verdicts, real packets cross the datapath under this policy
        flows = net.flows("--to-pod", f"{NS}/echo-same-node", "--port", "8080", last=200)
        assert flows, "no flow for traffic under the policy"
        assert all(f.get("verdict") in ("FORWARDED", "DROPPED", "AUDIT") for f in flows)
        assert net.agent.proc is not None and net.agent.proc.poll() is None
    finally:
        for p in _policies(net):
            api(net.agent, "DELETE", f"/v1/policies/{seg(p['name'])}", namespace=p.get("namespace") or "")
    assert _policies(net) == []
    assert _policy_map_entries(net) == entries
    assert _reach(net) == baseline
