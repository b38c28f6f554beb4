"""The agent's state directory: its files, the lock a running agent holds on it, and offline edits.

A running agent holds an exclusive flock on STATE_DIR/agent.lock for its whole life (the kernel drops it
when the process dies, kill -9 included). The offline commands take the same lock, so they refuse while an
agent runs on that directory, and an agent cannot start in the middle of an offline edit.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apiary.store import FileStore, Store, StoreError, describe
from apiary.textutil import default_scope

LOCK_FILE = "agent.lock"
TRACING_FILE = "tracingpolicies.json"  # [{key: "namespace/name", source, mode, enabled}]
NETWORK_FILE = "policies.json"  # {revision, policies: [{kind, namespace, name, revision, source}]}


class StateDirBusy(Exception):
    """Another process (an agent, or an offline command) holds the state directory."""


def lock(state_dir: str | Path, create: bool = True) -> int:
    """Take the state directory's lock (non-blocking) and write our pid into it; returns the fd to keep."""
    d = Path(state_dir)
    if create:
        os.makedirs(d, mode=0o700, exist_ok=True)
    path = d / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirBusy(f"the apiary state directory {d} is in use by pid {other} (an agent runs on it)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextmanager
def offline(state_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of an existing state directory while editing it without an agent."""
    d = Path(state_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"no apiary state directory {d}")
    fd = lock(d, create=False)
    try:
        yield d
    finally:
        os.close(fd)


def open_store(state_dir: str | Path) -> Store:
    """The state store the agent (and an offline command) keeps its desired state in: the embedded one, a file
    per key in the state directory."""
    return FileStore(state_dir)


def read_json(store: Store, key: str) -> Any:
    """The JSON document under ``key``, or None when there is none."""
    try:
        raw = store.get(key)
        return None if raw is None else json.loads(raw)
    except (StoreError, ValueError) as e:
        raise ValueError(f"{describe(store, key)}: cannot read it: {e}") from e


def write_json(store: Store, key: str, data: Any) -> None:
    """Replace ``key`` with ``data`` as JSON, atomically."""
    write_text(store, key, json.dumps(data, indent=1))


def write_text(store: Store, key: str, text: str) -> None:
    """Replace ``key`` with ``text``, atomically and durably (a reader sees the old value or the new one, also
    after a crash; a write that returned is kept)."""
    store.put(key, text.encode())


def switch_off_pinned(pin_root: str | Path, key: str) -> int:
    """Switch a policy off in the pins a stopped or killed agent left (sensors/tracing/sensor.py's layout), so that
    pinned programs that outlive the agent stop enforcing it now. Returns how many hooks were switched off."""
    from apiary.loader import BpfError
    from apiary.sensors.tracing.sensor import disable_pinned_policy

    d = Path(pin_root) / "tracing"
    try:
        return disable_pinned_policy(d, key)
    except (BpfError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{d}: cannot switch off the pinned hooks of {key.lstrip('/')}: {e}") from e


def delete_tracing_policy(
    state_dir: str | Path, name: str, namespace: str | None = "", pin_root: str | Path | None = None
) -> str:
    """Remove a stored TracingPolicy so that the next agent start does not restore it, and switch off its
    hooks in the pins a stopped or killed agent left (pin_root), so that enforcement stops now."""
    with offline(state_dir) as d:
        store, path = open_store(d), d / TRACING_FILE
        recs = read_json(store, TRACING_FILE) or []
        namespace = default_scope(name, namespace, (str(r.get("key", "")).partition("/")[::2] for r in recs))
        key = f"{namespace}/{name}"
        keep = [r for r in recs if r.get("key") != key]
        if len(keep) == len(recs):
            where = f" in namespace {namespace}" if namespace else ""
            raise KeyError(f"no stored tracing policy {name!r}{where} in {path}")
        off = switch_off_pinned(pin_root, key) if pin_root else 0
        write_json(store, TRACING_FILE, keep)
        done = f"tracingpolicy {key.lstrip('/')} deleted from {d}"
        return done + (f"; its {off} pinned hooks switched off" if off else "")


def delete_network_policy(state_dir: str | Path, name: str, namespace: str | None = "") -> list[str]:
    """Remove a stored network policy (every kind with that name and namespace), as the agent's delete does."""
    with offline(state_dir) as d:
        store, path = open_store(d), d / NETWORK_FILE
        data = read_json(store, NETWORK_FILE) or {"revision": 0, "policies": []}
        namespace = default_scope(name, namespace, ((p.get("namespace", ""), p.get("name")) for p in data["policies"]))
        hits = [p for p in data["policies"] if p.get("name") == name and p.get("namespace", "") == namespace]
        if not hits:
            where = f"namespace {namespace}" if namespace else "cluster scope"
            raise KeyError(f"no stored policy {name!r} in {where} in {path}")
        data["policies"] = [p for p in data["policies"] if p not in hits]
        data["revision"] = data.get("revision", 0) + 1
        write_json(store, NETWORK_FILE, data)
        return [f"{p['kind']} {p['namespace']}/{p['name']}".replace(" /", " ") for p in hits]
