"""`apiary sysdump`: one tarball with everything a bug report needs (Cilium's `cilium sysdump` for one node).

From the agent (when it answers): status, config, bpf objects, endpoints, identities, policies, services, tracing
policies, prefilter, metrics, the recent flows and events of its rings. From the node (always, agent up or down):
the pins under the pin root with a summary of every pinned map (type, sizes, entries in use), the state dir's
files, `bpftool` listings, kernel facts and the preflight report, the agent's log (a file given with
--agent-log, else the systemd journal of apiary.service when there is one). Every item that could not be
collected is named in summary.txt with the reason; nothing is left out silently.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.agent.bpfinfo import map_row
from apiary.loader import BpfError, Map
from apiary.loader import _libbpf as L
from apiary.loader.fs import mounts

from .client import AgentUnreachable, Client

API_ITEMS = (  # (member, API path): JSON documents the agent serves
    ("status.json", "/v1/status"),
    ("config.json", "/v1/config"),
    ("bpf.json", "/v1/bpf"),
    ("endpoints.json", "/v1/endpoints"),
    ("identities.json", "/v1/identities"),
    ("policies.json", "/v1/policies"),
    ("services.json", "/v1/services"),
    ("tracingpolicies.json", "/v1/tracingpolicies"),
    ("prefilter.json", "/v1/prefilter"),
)
STATE_FILE_MAX = 64 << 20  # bytes of one state-dir file copied into the dump (larger: named, not copied)


@dataclass
class Dump:
    """Members collected so far, and what could not be collected (with the reason)."""

    members: dict[str, bytes] = field(default_factory=dict)
    collected: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, name: str, data: bytes | str) -> None:
        self.members[name] = data.encode() if isinstance(data, str) else data
        self.collected.append(name)

    def json(self, name: str, obj: Any) -> None:
        self.add(name, json.dumps(obj, indent=2, default=str) + "\n")

    def attempt(self, name: str, fn: Callable[[], bytes | str | None]) -> None:
        try:
            data = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported in summary.txt, never fatal
            self.failed.append(f"{name}: {type(e).__name__}: {e}")
            return
        if data is not None:
            self.add(name, data)


def _lines(objs: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objs)


def _stream(c: Client, path: str, params: list[tuple[str, str]], limit: int) -> str:
    out: list[dict[str, Any]] = []
    for obj in c.stream(path, params):
        out.append(obj)
        if len(out) >= limit:
            break
    return _lines(out)


def from_agent(d: Dump, c: Client, flows: int, events: int) -> bool:
    """What the agent serves; False (and the reason in summary.txt) when it does not answer."""
    try:
        c.get("/v1/health")
    except AgentUnreachable as e:
        d.failed.append(f"agent: {e} (collected what the node shows without it)")
        d.json("status.json", {"agent_running": False, "error": str(e)})
        return False
    for name, path in API_ITEMS:
        d.attempt(name, lambda p=path: json.dumps(c.get(p), indent=2) + "\n")  # type: ignore[misc]
    d.attempt("metrics.txt", lambda: c.http.get("/metrics").text)
    d.attempt("flows.jsonl", lambda: _stream(c, "/v1/flows", [("last", str(flows)), ("follow", "0")], flows))
    d.attempt("events.jsonl", lambda: _stream(c, "/v1/events", [("follow", "0")], events))
    return True


def pinned_objects(pin_root: Path) -> list[dict[str, Any]]:
    """Every pin under the pin root; maps with type, sizes and entries in use (the contents' summary)."""
    rows: list[dict[str, Any]] = []
    if not pin_root.is_dir():
        return rows
    for path in sorted(p for p in pin_root.rglob("*") if not p.is_dir()):
        row: dict[str, Any] = {"pin": str(path)}
        fd = L.lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            row["error"] = f"cannot open: errno {L.errno()}"
            rows.append(row)
            continue
        try:
            m = Map(fd, owned=True)
        except BpfError:
            os.close(fd)
            row["kind"] = "program or link"
            rows.append(row)
            continue
        try:
            row = {"kind": "map", **map_row(m, str(path))}  # arrays and rings: entries/fill null, as in status
        except BpfError as e:
            row["error"] = str(e)
        finally:
            m.close()
        rows.append(row)
    return rows


def _run(*cmd: str) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[:300]}")
    return r.stdout


def kernel_facts() -> dict[str, Any]:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    interesting = {"bpf", "cgroup2", "tracefs", "securityfs", "debugfs"}
    return {
        "uname": platform.uname()._asdict(),
        "proc_version": read("/proc/version"),
        "btf_vmlinux": os.path.exists("/sys/kernel/btf/vmlinux"),
        "mounts": {p: t for p, t in mounts().items() if t in interesting},
        "sysctl": {k: read(f"/proc/sys/{k.replace('.', '/')}") for k in (
            "kernel.unprivileged_bpf_disabled", "net.core.bpf_jit_enable", "net.core.bpf_jit_harden",
            "kernel.perf_event_paranoid")},
        "lsm": read("/sys/kernel/security/lsm"),
        "cpus": os.cpu_count(),
    }


def from_node(d: Dump, pin_root: Path, state_dir: Path, agent_log: Path | None) -> None:
    d.attempt("pins.json", lambda: json.dumps(pinned_objects(pin_root), indent=2) + "\n")
    if state_dir.is_dir():
        for f in sorted(p for p in state_dir.rglob("*") if p.is_file()):
            if f.name == "agent.lock":
                continue
            if f.stat().st_size > STATE_FILE_MAX:
                d.failed.append(f"state/{f.relative_to(state_dir)}: larger than {STATE_FILE_MAX} bytes, not copied")
                continue
            d.attempt(f"state/{f.relative_to(state_dir)}", f.read_bytes)
    else:
        d.failed.append(f"state/: no state directory {state_dir}")
    if shutil.which("bpftool"):
        d.attempt("bpftool-prog.json", lambda: _run("bpftool", "-j", "prog", "show"))
        d.attempt("bpftool-map.json", lambda: _run("bpftool", "-j", "map", "show"))
        d.attempt("bpftool-net.json", lambda: _run("bpftool", "-j", "net", "show"))
        d.attempt("bpftool-cgroup.txt", lambda: _run("bpftool", "cgroup", "tree"))
    else:
        d.failed.append("bpftool-*: bpftool is not installed")
    d.attempt("kernel.json", lambda: json.dumps(kernel_facts(), indent=2) + "\n")

    def preflight() -> str:
        from apiary.kernel.preflight import run_preflight

        from .preflight_cmd import render_json

        return render_json(run_preflight()) + "\n"

    d.attempt("preflight.json", preflight)
    if agent_log is not None:
        d.attempt("agent.log", agent_log.read_bytes)
    elif shutil.which("journalctl"):
        def journal() -> str | None:
            text = _run("journalctl", "-u", "apiary.service", "--no-pager", "-n", "5000", "-o", "short-iso")
            if "-- No entries --" in text or not text.strip():
                d.failed.append("agent.log: no --agent-log given and the journal has no apiary.service entries")
                return None
            return text

        d.attempt("agent.log", journal)
    else:
        d.failed.append("agent.log: no --agent-log given and no systemd journal")


def write(d: Dump, output: Path, top: str, agent_up: bool) -> None:
    head = [f"apiary sysdump, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
            "agent: " + ("running (its API answered)" if agent_up else "NOT running: node-side items only"), "",
            "collected:", *[f"  {n}" for n in d.collected], "", "not collected:",
            *([f"  {f}" for f in d.failed] or ["  (nothing)"])]
    d.members = {"summary.txt": ("\n".join(head) + "\n").encode(), **d.members}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    now = time.time()
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in d.members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o600
            tar.addfile(info, io.BytesIO(data))
    os.chmod(tmp, 0o600)  # it holds policies, flows and process arguments
    os.replace(tmp, output)
