"""The agent's API under user mistakes and abuse, through a real agent and real sockets:
every user mistake is a 400 naming the field (never a 500) and the agent keeps answering; a YAML alias bomb is
refused at once; a flood of idle connections never locks out the CLI nor floods the log; SIGTERM stops the
agent even while its worker is busy; the CLI says why it failed in one line (no traceback), also when the agent
dies under it or the user may not use the API."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiary.sensors.network.endpoints import PAUSE_ENV
from apiary.testing.agent import AgentProcess, one_line_error

START = 180.0  # the agent starts slowly on a loaded 2-core machine
TP = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: t1}\nspec:\n"
CNP = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c1, namespace: default}\nspec:\n"
BOMB = "kind: TracingPolicy\nmetadata: {name: lol}\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def big_cnp(n: int, name: str = "big") -> str:
    cidrs = "".join(f"    - 172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}/32\n" for i in range(n))
    return CNP.replace("c1", name) + "  endpointSelector: {}\n  egress:\n  - toCIDR:\n" + cidrs


def started(*extra: str) -> AgentProcess:
    a = AgentProcess(*extra)
    try:
        return a.start(START)
    except BaseException:
        a.cleanup()
        raise


@pytest.fixture(scope="module")
def shared() -> Iterator[AgentProcess]:
    a = started()
    yield a
    a.cleanup()


# (id, method, path, request kwargs, text the answer must contain: the field at fault)
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("non-UTF-8 YAML", "POST", "/v1/tracingpolicies", {"content": b"kind: \xff\n"}, "body: not UTF-8"),
    ("non-UTF-8 CNP", "POST", "/v1/policies", {"content": b"kind: CiliumNetworkPolicy\n\xfe"}, "body: not UTF-8"),
    ("unhashable key", "POST", "/v1/tracingpolicies", {"content": b"? [a, b]\n: 1\n"}, "line 1, column 3"),
    ("unhashable key CNP", "POST", "/v1/policies", {"content": b"? [a, b]\n: 1\n"}, "mapping key must be a scalar"),
    ("!!set of sequences", "POST", "/v1/tracingpolicies", {"content": b"!!set {? [a]: null}\n"}, "mapping key"),
    ("!!set document", "POST", "/v1/tracingpolicies", {"content": b"!!set {a, b}\n"}, "must be a mapping"),
    ("lone surrogate", "POST", "/v1/policies", {"content": b'kind: "\\udc80"\n'}, "(line 1, column 7)"),
    ("kprobes not a list", "POST", "/v1/tracingpolicies", {"content": (TP + "  kprobes: 18446744073709551616\n")},
     "spec.kprobes"),
    ("arg index too big", "POST", "/v1/tracingpolicies",
     {"content": TP + "  kprobes:\n  - call: sys_openat\n    syscall: true\n    args: [{index: 99999999999999999999, "
      "type: int}]\n"}, "spec.kprobes[0].args[0].index"),
    ("missing uprobe file", "POST", "/v1/tracingpolicies",
     {"content": TP + "  uprobes:\n  - path: /nonexistent/apiary-bin\n    symbols: [main]\n"}, "spec.uprobes[0]"),
    ("missing uprobe symbol", "POST", "/v1/tracingpolicies",
     {"content": TP + "  uprobes:\n  - path: /usr/bin/bash\n    symbols: [apiary_no_such_symbol]\n"},
     "spec.uprobes[0]"),
    ("syscall not on this arch", "POST", "/v1/tracingpolicies",
     {"content": TP + "  kprobes:\n  - call: sys_socketcall\n    syscall: true\n"}, "spec.kprobes[0].call"),
    ("bad charset", "POST", "/v1/tracingpolicies",
     {"content": b"kind: TracingPolicy\n", "headers": {"Content-Type": "application/yaml; charset=foo"}},
     "Content-Type: charset foo"),
    ("utf-16 charset", "POST", "/v1/policies",
     {"content": b"kind: x\n", "headers": {"Content-Type": "application/yaml; charset=utf-16"}}, "Content-Type"),
    ("JSON list", "POST", "/v1/endpoints", {"content": b"[]"}, "body: expected a JSON object, not list"),
    ("JSON string", "POST", "/v1/endpoints", {"content": b'"x"'}, "body: expected a JSON object"),
    ("JSON syntax", "POST", "/v1/endpoints", {"content": b'{"name": '}, "body: invalid JSON"),
    ("JSON nesting", "POST", "/v1/endpoints", {"content": b"[" * 100_000}, "body: JSON nested too deeply"),
    ("non-UTF-8 JSON", "POST", "/v1/endpoints", {"content": b'{"name": "\xff"}'}, "body: not UTF-8"),
    ("name not a string", "POST", "/v1/endpoints", {"json": {"name": 5}}, "name: must be a string"),
    ("name missing", "POST", "/v1/endpoints", {"json": {"labels": {}}}, "name: required"),
    ("namespace a list", "POST", "/v1/endpoints", {"json": {"name": "a", "namespace": ["x"]}}, "namespace:"),
    ("labels a list", "POST", "/v1/endpoints", {"json": {"name": "a", "labels": []}}, "labels:"),
    ("label value a number", "POST", "/v1/endpoints", {"json": {"name": "a", "labels": {"k": 1}}}, "labels:"),
    ("ports a list", "POST", "/v1/endpoints", {"json": {"name": "a", "ports": [["http", 80]]}}, "ports: must be"),
    ("port name", "POST", "/v1/endpoints", {"json": {"name": "a", "ports": {"Http": [80, "TCP"]}}}, "ports: port name"),
    ("port number", "POST", "/v1/endpoints", {"json": {"name": "a", "ports": {"h": ["80", "TCP"]}}}, "an integer"),
    ("surrogate in JSON", "POST", "/v1/endpoints", {"content": b'{"name": "\\udc80"}'}, "name: holds a lone"),
    ("since overflow", "GET", "/v1/events", {"params": {"since": "99999999999h", "follow": "0"}}, "--since"),
    ("pid out of range", "GET", "/v1/events", {"params": {"pid": "99999999999", "follow": "0"}}, "--pid"),
    ("pid not a number", "GET", "/v1/events", {"params": {"pid": "x", "follow": "0"}}, "pid: must be an integer"),
    ("bad regex", "GET", "/v1/events", {"params": {"binary": "(", "follow": "0"}}, "--binary"),
    ("port too big", "GET", "/v1/flows", {"params": {"filter": "--port=99999999999999999999"}}, "--port"),
    ("mode", "POST", "/v1/tracingpolicies/t1/mode", {"params": {"mode": "zz"}}, "mode"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_mistake_is_400_naming_the_field(shared: AgentProcess, case: tuple[Any, ...]) -> None:
    _id, method, path, kw, field = case
    c = shared.client()
    r = c.http.request(method, path, **kw)
    body = r.json()
    text = body["error"] + "".join(f"\n{p['field']}: {p['reason']}" for p in body.get("problems", []))
    assert r.status_code == 400, text
    assert field in text
    assert c.get("/v1/health")["ok"] is True


def test_alias_bomb_is_refused_at_once_and_the_agent_keeps_working(shared: AgentProcess) -> None:
    c = shared.client()
    assert len(BOMB) < 500
    for path in ("/v1/tracingpolicies", "/v1/policies"):
        t = time.monotonic()
        r = c.http.post(path, content=BOMB.encode(), timeout=30)
        assert r.status_code == 400
        assert "expands to more than" in r.json()["problems"][0]["reason"]
        assert time.monotonic() - t < 5
    valid = CNP + "  endpointSelector: {}\n  ingress:\n  - fromEntities: [host]\n"
    ok = shared.cli("policy", "apply", "-f", "-", input=valid)
    assert ok.returncode == 0, ok.stderr
    # a file of a policy and a bad Service: the policy applies, the services do not, and the error says both
    mixed = shared.cli("apply", "-f", "-", input=valid + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s1}\n"
                       "spec: {ports: [{port: 70000}]}\n")
    assert mixed.returncode == 1 and "services rejected (1 problem; nothing was changed)" in mixed.stderr, mixed
    assert mixed.stderr.rstrip().endswith("apiary: the policies above stay applied"), mixed.stderr
    assert shared.cli("policy", "delete", "c1", "-n", "default").returncode == 0
    assert c.get("/v1/health")["ok"] is True


def test_cli_errors_are_one_line(shared: AgentProcess, tmp_path: Any) -> None:
    assert "no API route" in one_line_error(shared.cli("endpoint", "delete", "a\nb"))
    assert "no policy 'a\\nb'" in one_line_error(shared.cli("policy", "get", "a\nb"))
    long = shared.cli("tp", "delete", "x" * 500)
    assert long.returncode != 0 and "Traceback" not in long.stderr
    assert max(len(line) for line in long.stderr.splitlines()) < 200  # the echoed name is cut
    assert "… (500 characters)" in long.stderr
    gone = shared.cli("tp", "delete", "nosuch")  # not there: said as such, not as a rejected policy
    assert gone.returncode == 1 and gone.stderr.strip() == \
        "apiary: no tracing policy 'nosuch' at cluster scope nor in namespace default", gone
    gone = shared.cli("tp", "delete", "nosuch", "-n", "")  # the cluster scope only
    assert gone.returncode == 1 and gone.stderr.strip() == "apiary: no tracing policy 'nosuch' at cluster scope", gone
    f = tmp_path / "bad.yaml"
    f.write_bytes(b"kind: \xff\n")
    assert "not UTF-8" in one_line_error(shared.cli("tp", "apply", "-f", str(f)))


def test_non_root_user_is_told_permission_denied(shared: AgentProcess) -> None:
    """As nobody (allowed to read and traverse directories, so Python and the socket's directory are
    reachable): the socket is root-only."""
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
         "--ambient-caps=+dac_read_search", sys.executable, "-m", "apiary", "--socket", shared.socket, "status"],
        capture_output=True, text=True, timeout=60,
    )
    line = one_line_error(r)
    assert "permission denied: the API is root-only" in line
    assert "not running" not in line


def test_idle_connection_flood_never_locks_out_the_cli_nor_floods_the_log() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the agent inherits a small limit
    try:
        a = started("--api-max-connections", "16", "--api-idle-timeout", "4")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    socks: list[socket.socket] = []
    try:
        log_before = len(a.log())
        for _ in range(1500):  # far past both the connection limit and the agent's RLIMIT_NOFILE
            s = socket.socket(socket.AF_UNIX)
            s.connect(a.socket)
            socks.append(s)
        r = a.cli("status", "-o", "json", timeout=60)
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)["api_connections"]
        assert st["limit"] == 16 and st["open"] <= 16 + 1
        assert st["evicted_idle"] >= 1500 - 16
        assert a.client().get("/v1/health")["ok"] is True
        # the agent never ran out of descriptors, so nothing was logged in a loop
        assert len(a.log()) - log_before < 5_000, a.log()[-2000:]
        # the survivors are closed once idle for longer than --api-idle-timeout
        last = socks[-1]
        last.settimeout(30)
        assert last.recv(1) == b""
        # streams in progress are never evicted: past the limit, a new request is answered 503 (busy)
        streams = [httpx.Client(transport=httpx.HTTPTransport(uds=a.socket), base_url="http://apiary", timeout=30)
                   for _ in range(16)]
        held = [cl.stream("GET", "/v1/events") for cl in streams]
        try:
            for cm in held:
                cm.__enter__()
            r503 = a.client().http.get("/v1/health")
            assert r503.status_code == 503 and "too many API connections" in r503.json()["error"]
        finally:
            for cm in held:
                cm.__exit__(None, None, None)
            for cl in streams:
                cl.close()
        for _ in range(50):
            try:
                if a.client().get("/v1/health")["ok"]:
                    break
            except Exception:  # noqa: BLE001 - the streams' connections are still closing
                time.sleep(0.1)
        assert a.client().get("/v1/health")["ok"] is True
        # streams whose client went away end at once: their subscribers are gone
        deadline = time.monotonic() + 10
        while a.client().get("/v1/status")["subscribers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert a.client().get("/v1/status")["subscribers"] == 0
        assert a.client().get("/v1/status")["api_connections"]["refused_busy"] >= 1
    finally:
        for s in socks:
            s.close()
        a.cleanup()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _busy_worker(a: AgentProcess, marker: Path) -> threading.Thread:
    """A request that keeps the control-plane worker busy: an endpoint create held by the agent's test pause
    (APIARY_TEST_PAUSE_ENDPOINT_CREATE) once its kernel objects exist."""

    def create() -> None:
        try:
            a.client().http.post("/v1/endpoints", json={"name": "held", "namespace": "default"}, timeout=600)
        except httpx.HTTPError:
            pass  # the agent stops under it

    t = threading.Thread(target=create, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the endpoint create never reached its pause"
    return t


def test_sigterm_stops_the_agent_while_its_worker_is_busy_and_clients_are_told() -> None:
    marker = Path(tempfile.mkdtemp(prefix="apiary-pause-")) / "paused"
    os.environ[PAUSE_ENV] = str(marker)
    try:
        a = started("--api-request-timeout", "2")
    finally:
        del os.environ[PAUSE_ENV]
    try:
        _busy_worker(a, marker)
        # the agent answers requests that need the busy worker with a 503 after --api-request-timeout
        r = a.client().http.get("/v1/endpoints", timeout=30)
        assert r.status_code == 503 and "did not answer within 2 s" in r.json()["error"]
        # and the CLI gives up after its own --timeout
        cli = a.cli("--timeout", "1", "endpoint", "list")
        assert "no answer from the agent within 1 s" in one_line_error(cli)
        # streams that end because the agent stops make the CLI exit non-zero
        ev = subprocess.Popen([sys.executable, "-m", "apiary", "--socket", a.socket, "--timeout", "1", "events"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # quiet for longer than --timeout: a stream has no read bound once it started
        assert ev.poll() is None
        t = time.monotonic()
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        rc = a.proc.wait(timeout=60)
        assert rc == 0 and time.monotonic() - t < 20
        _, err = ev.communicate(timeout=30)
        assert ev.returncode != 0 and "Traceback" not in err
        assert "ended the event stream" in err or "closed the stream" in err
    finally:
        a.cleanup()
        shutil.rmtree(marker.parent, ignore_errors=True)


def test_agent_killed_mid_request_and_mid_stream() -> None:
    marker = Path(tempfile.mkdtemp(prefix="apiary-pause-")) / "paused"
    os.environ[PAUSE_ENV] = str(marker)
    try:
        a = started()
    finally:
        del os.environ[PAUSE_ENV]
    try:
        cmd = [sys.executable, "-m", "apiary", "--socket", a.socket]
        ev = subprocess.Popen([*cmd, "events"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        obs = subprocess.Popen([*cmd, "observe", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # both streams are under way before the agent goes (a CLI still starting would find no agent at all)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = a.client().get("/v1/status")
            if st["subscribers"] >= 1 and st["network"]["flows"]["subscribers"] >= 1:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the event and flow streams never subscribed: {ev.poll()=} {obs.poll()=}")
        # a request the agent is in the middle of: an endpoint create held at the agent's test pause
        apply = subprocess.Popen([*cmd, "endpoint", "create", "held"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the endpoint create never reached its pause"
        assert ev.poll() is None and obs.poll() is None and apply.poll() is None
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait(timeout=30)
        for p, expect in ((ev, "closed the stream"), (obs, "closed the stream"), (apply, "closed the connection")):
            p.wait(timeout=30)
            assert p.stderr is not None
            err = p.stderr.read()
            assert p.returncode != 0, err
            assert "Traceback" not in err and expect in err, err
            assert len(err.strip().splitlines()) == 1
    finally:
        a.cleanup()
        shutil.rmtree(marker.parent, ignore_errors=True)


def test_a_hook_that_cannot_attach_is_400_and_the_whole_file_is_undone(shared: AgentProcess) -> None:
    ok = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: first-ok}\nspec:\n  uprobes:\n" \
        "  - path: /usr/bin/bash\n    symbols: [shell_execve]\n"
    bad = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: second-bad}\nspec:\n  uprobes:\n" \
        "  - path: /usr/bin/bash\n    symbols: [apiary_no_such_symbol]\n"
    c = shared.client()

    def attached() -> list[dict[str, Any]]:
        return [b for b in c.get("/v1/bpf")["links"] if "shell_execve" in b["attach"]]

    assert c.http.post("/v1/tracingpolicies", content=ok.encode()).status_code == 200
    assert attached()  # what the check below looks for is really there when the policy is
    assert c.http.delete("/v1/tracingpolicies/first-ok").status_code == 200
    assert not attached()
    r = c.http.post("/v1/tracingpolicies", content=f"{ok}---\n{bad}".encode())
    assert r.status_code == 400
    (p,) = r.json()["problems"]
    assert p["field"] == "document[1].spec.uprobes[0]" and "apiary_no_such_symbol" in p["reason"]
    names = [row["name"] for row in c.get("/v1/tracingpolicies")]
    assert "first-ok" not in names and "second-bad" not in names
    assert not attached()
