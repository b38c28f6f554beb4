"""Run a real `apiary agent` in a subprocess with its own socket, pins and state (unique names)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from apiary.cli.client import AgentUnreachable, Client

# the tests run inside one of the VM's kernels: "vm61" or "vm612" (scripts/vm.sh sets this), else ""
VM_KERNEL = os.environ.get("APIARY_TEST_KERNEL", "")
VM_KERNEL = VM_KERNEL if VM_KERNEL.startswith("vm") else ""
IN_VM = bool(VM_KERNEL)


def interpreter_copy(dest_dir: str | Path) -> tuple[str, dict[str, str]]:
    """A private copy of the running Python binary, and the environment that makes it import what we import.

    A policy can then target "apiary's interpreter" by binary path without hitting every other Python
    process on the machine (the test runner included)."""
    path = Path(dest_dir) / "python3"
    shutil.copy2(os.path.realpath(sys.executable), path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
    return str(path), env


def _cidrs(tag: str) -> tuple[str, str]:
    h = int(tag, 16)
    return (f"10.{210 + h % 40}.{(h >> 8) % 256}.0/24",  # pod CIDR: unique per test agent
            f"10.{160 + h % 40}.{(h >> 16) % 256}.0/24")  # ClusterIPs: unique per test agent too


def _free_tag() -> str:
    """A fresh tag whose two ranges overlap no route of the host's main table.

    Another agent on the machine (an operator's, or one started by hand with a /16 in 10.160-249) would
    otherwise make a test agent refuse to start ("pod CIDR overlaps the host's unreachable route")."""
    try:
        dump = subprocess.run(["ip", "-4", "route", "show", "table", "main"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        dump = ""
    taken = []
    for line in dump.splitlines():
        words = line.split()
        if not words:
            continue
        dst = words[1] if words[0] in ("unreachable", "blackhole", "prohibit", "throw") and len(words) > 1 else words[0]
        if dst == "default":
            continue
        try:
            taken.append(ipaddress.ip_network(dst, strict=False))
        except ValueError:
            continue
    tag = uuid.uuid4().hex[:10]
    for _ in range(200):
        mine = [ipaddress.ip_network(c) for c in _cidrs(tag)]
        if not any(m.overlaps(t) for m in mine for t in taken):
            return tag
        tag = uuid.uuid4().hex[:10]
    return tag


class AgentProcess:
    def __init__(
        self, *extra: str, node_name: str = "testnode", python: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.python = python or sys.executable  # the interpreter the agent runs on
        self.env = env
        self.tag = _free_tag()
        # in the VM the temp dir is a 9p share, where unix sockets cannot be bound: use its tmpfs
        local = "/dev/shm" if IN_VM and os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix=f"apiary-{self.tag}-", dir=local))
        self.socket = str(self.dir / "apiary.sock")
        self.pin_root = f"/sys/fs/bpf/apiary-test-{self.tag}"
        self.node_name = node_name
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = self.dir / "agent.log"
        self.instance = self.tag
        self.pod_cidr, self.service_cidr = _cidrs(self.tag)

    def cli(self, *args: str, python: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        timeout = kw.pop("timeout", 600 if IN_VM else 60)
        env = kw.pop("env", None) or {**os.environ, "APIARY_TIMEOUT": str(timeout)}  # the CLI's own bound
        return subprocess.run(
            [python or sys.executable, "-m", "apiary", "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            **kw,
        )

    def start(self, timeout: float = 120.0) -> AgentProcess:
        if IN_VM:  # QEMU without KVM runs the agent's start-up ~30x slower
            timeout = max(timeout, 600.0)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "apiary",
                "--socket",
                self.socket,
                "agent",
                "--pin-root",
                self.pin_root,
                "--state-dir",
                str(self.dir / "state"),
                "--node-name",
                self.node_name,
                "--instance",
                self.instance,
                "--pod-cidr",
                self.pod_cidr,
                *([] if "--service-cidr" in self.extra else ["--service-cidr", self.service_cidr]),
                *self.extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        client = Client(self.socket, timeout=2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                client.get("/v1/health")
                return self
            except AgentUnreachable:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"agent did not come up in {timeout}s:\n{self.log()}")

    def client(self) -> Client:
        return Client(self.socket, timeout=600 if IN_VM else 300)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        elif self.proc:
            rc = self.proc.returncode
        if hasattr(self, "_log"):
            self._log.close()
        return rc

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:  # endpoints outlive the agent by design: delete them through the API first
                c = Client(self.socket, timeout=20)
                for ep in c.get("/v1/endpoints"):
                    c.http.delete(f"/v1/endpoints/{ep['namespace']}/{ep['name']}")
            except Exception:  # noqa: BLE001 - the fallback below still removes the kernel objects
                pass
        self.stop()
        remove_instance_objects(self.instance, self.pod_cidr, self.service_cidr)
        shutil.rmtree(self.pin_root, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def pinned_maps(pin_root: str, sub: str, names: tuple[str, ...]) -> dict[str, dict[bytes, bytes]]:
    """What the maps ``names`` pinned under ``pin_root/sub`` hold (read from the kernel, not the agent)."""
    from apiary.loader import Map

    out = {}
    for n in names:
        m = Map.from_pin(f"{pin_root}/{sub}/{n}")
        try:
            out[n] = dict(m.items())
        finally:
            m.close()
    return out


def remove_instance_objects(instance: str, pod_cidr: str, service_cidr: str | None = None) -> None:
    """Whatever an agent instance left in the kernel: its netns (veths go with them), cgroups, route."""
    prefix = f"apiary-{instance}-"
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    from apiary.loader.fs import cgroup2_root
    from apiary.sensors.l7proxy.leftovers import proxy_cgroup, unroute

    root = cgroup2_root()
    unroute(instance)  # a killed agent's L7 proxy rule
    # and its HAProxy and DNS socket holder (only ever in that cgroup: ended with it, never found by name)
    if root and proxy_cgroup(root, instance).is_dir():
        _kill_rmdir(proxy_cgroup(root, instance))
    if root:
        base = Path(root) / "apiary" / instance
        if base.is_dir():
            for child in base.iterdir():
                if child.is_dir():
                    _kill_rmdir(child)
            for d in (base, base.parent):
                try:
                    d.rmdir()
                except OSError:
                    pass
    for cidr in (pod_cidr, service_cidr):
        if cidr:
            subprocess.run(["ip", "route", "del", "unreachable", cidr], capture_output=True)


def _kill_rmdir(d: Path) -> None:
    """End a cgroup's processes (the test's own: endpoints' or the proxy's) and remove it."""
    kill = d / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for _ in range(100):
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.02)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error for a failed call: exactly one line, `apiary: …`, never a traceback."""
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apiary: "), r.stderr
    return lines[0]


def is_root() -> bool:
    return os.geteuid() == 0
