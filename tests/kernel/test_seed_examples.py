"""The seed's two teaching examples (examples/seed/), run for real: hello_ebpf.py (BCC, Debian's python3-bpfcc
under the system Python) and packet_counter (libbpf skeleton + C loader, XDP on a veth between two network
namespaces this test creates and removes)."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
OUT = ROOT / "build" / "seed"
SYSTEM_PY = "/usr/bin/python3"  # python3-bpfcc lives in the system Python, not in the venv


class Lines:
    """A child's stdout, read by a thread so waits can be bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if m := re.search(pattern, line):
                    return m
            got: str | None
            try:
                got = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                got = None
            if got is None:
                err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
                raise AssertionError(f"no line matching {pattern!r}; got {self.seen[-20:]}; stderr: {err}")
            self.seen.append(got)

    def rest(self, timeout: float = 30.0) -> list[str]:
        """Every line until the child closes stdout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return self.seen


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_hello_ebpf_prints_each_exec() -> None:
    probe = subprocess.run([SYSTEM_PY, "-c", "import bcc"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"python3-bpfcc missing from {SYSTEM_PY} (scripts/setup.sh installs it): {probe.stderr.strip()}")
    hello = subprocess.Popen(
        [SYSTEM_PY, str(SEED / "hello_ebpf.py"), "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = Lines(hello)
        try:
            how = out.expect(r"^listening for execve via (.*)$", timeout=120).group(1)
        except AssertionError:
            try:
                rc = hello.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise
            if rc == 3:  # the script's "no kernel headers" exit
                pytest.skip(f"no kernel headers for BCC: {hello.stderr.read() if hello.stderr else ''}")
            raise
        if not any(Path(d, "kprobe_events").exists() for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")):
            assert how == "tracepoint syscalls:sys_enter_execve"
            assert any("kprobe on" in line and "using the tracepoint" in line for line in out.seen), out.seen
        else:
            assert how.startswith("kprobe ")
        pids = []
        for _ in range(3):
            p = subprocess.Popen(["/bin/true"])
            p.wait()
            pids.append(p.pid)
        for pid in pids:
            out.expect(rf"^Hello eBPF: pid={pid} uid=0 comm=\S+ filename=/bin/true$", timeout=30)
    finally:
        rc = stop(hello)
    assert rc == 0, hello.stderr.read() if hello.stderr else ""
    assert re.match(r"^\d+ exec events$", out.rest()[-1]), out.seen[-3:]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def xdp_attached(ns: str, dev: str) -> bool:
    r = subprocess.run(["ip", "-n", ns, "-d", "link", "show", "dev", dev], check=True, capture_output=True, text=True)
    return bool(re.search(r"\bxdp(generic|drv|offload)?\b", r.stdout))


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str, str]]:
    """(ns_a, dev_a, ns_b): a veth from namespace a to namespace b, 192.0.2.1/30 on a's end and .2 on b's.
    Both namespaces are this test's own, so the pings never leave them; deleting them removes the veth."""
    tag = uuid.uuid4().hex[:8]
    ns_a, ns_b = f"apiary-seed-a-{tag}", f"apiary-seed-b-{tag}"
    dev_a, dev_b = f"sda{tag}", f"sdb{tag}"
    made: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        ip("-n", ns_a, "addr", "add", "192.0.2.1/30", "dev", dev_a)
        ip("-n", ns_b, "addr", "add", "192.0.2.2/30", "dev", dev_b)
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield ns_a, dev_a, ns_b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_packet_counter_counts_pings_and_detaches(veth_pair: tuple[str, str, str]) -> None:
    loader = OUT / "packet_counter"
    if not loader.exists():
        pytest.skip("examples not built (run `make build`)")
    ns_a, dev_a, ns_b = veth_pair
    counter = subprocess.Popen(
        ["ip", "netns", "exec", ns_a, str(loader), dev_a, "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = Lines(counter)
        out.expect(rf"^attached XDP program packet_counter to {dev_a} ")
        assert xdp_attached(ns_a, dev_a)
        sent = 5
        ping = subprocess.run(
            ["ip", "netns", "exec", ns_b, "ping", "-c", str(sent), "-i", "0.2", "-W", "2", "192.0.2.1"],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr  # XDP_PASS: the echo requests got through
    finally:
        rc = stop(counter)
    lines = out.rest()
    assert rc == 0, (lines, counter.stderr.read() if counter.stderr else "")
    assert lines[-1] == f"detached from {dev_a}"
    last = [line for line in lines if line.startswith("t=")][-1]
    counts = dict(kv.split("=") for kv in last.split()[1:])
    # each echo request crosses dev_a's ingress once; ARP for the first one lands in "other"
    assert int(counts.get("icmp", "0")) >= sent, last
    assert int(counts["total"]) >= int(counts.get("icmp", "0")) + int(counts.get("other", "0")), last
    assert not xdp_attached(ns_a, dev_a)
