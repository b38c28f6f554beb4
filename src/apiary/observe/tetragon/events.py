"""Tetragon process events: process records -> ``tetra getevents -o json`` dicts (process_exec / process_exit).

The JSON is protojson with proto names: wrapper-typed fields (``pid``, ``uid``, ``auid``, ``tid``) always
printed, zero plain scalars and empty strings omitted. Compact lines for these dicts are in
:mod:`apiary.observe.tetragon.compact`.
"""

from __future__ import annotations

import signal as _signal
from typing import Any

from apiary.observe.process import Process

# Keys of GetEventsResponse that are not the event itself.
META_KEYS = frozenset({"node_name", "time", "cluster_name", "node_labels", "aggregation_info"})


def signal_name(n: int) -> str:
    """Signal number -> ``SIGKILL`` style name; "" for 0 and for numbers Go's unix.SignalName lacks."""
    if not 0 < n < _signal.SIGRTMIN:
        return ""
    try:
        return _signal.Signals(n).name
    except ValueError:
        return ""


def process_json(p: Process, credentials: bool = False) -> dict[str, Any]:
    """A Tetragon ``Process`` object (proto field order).

    ``credentials`` adds ``process_credentials`` (Tetragon only sends it with
    ``--enable-process-cred``) with the ids the sensor reports: uid, gid, euid, egid.
    """
    memo = p.json_memo
    if not credentials and memo is not None and memo[0] == p.refcnt and memo[1] is p.pod:
        return memo[2]  # shared, never mutated: events are only serialised
    d: dict[str, Any] = {"exec_id": p.exec_id, "pid": p.pid, "uid": p.uid}
    for k in ("cwd", "binary", "arguments", "flags", "start_time"):
        v = getattr(p, k)
        if v:
            d[k] = v
    d["auid"] = p.auid
    if p.pod:
        d["pod"] = p.pod
    if p.parent_exec_id:
        d["parent_exec_id"] = p.parent_exec_id
    if p.refcnt > 0:
        d["refcnt"] = p.refcnt
    d["tid"] = p.tid
    if credentials:
        d["process_credentials"] = {"uid": p.uid, "gid": p.gid, "euid": p.euid, "egid": p.egid}
    else:
        p.json_memo = (p.refcnt, p.pod, d)
    return d


def _body(p: Process, parent: Process | None) -> dict[str, Any]:
    body: dict[str, Any] = {"process": process_json(p)}
    if parent is not None:
        body["parent"] = process_json(parent)
    return body


def exec_event(p: Process, parent: Process | None, ancestors: list[Process], node: str, time: str) -> dict[str, Any]:
    body = _body(p, parent)
    if ancestors:
        body["ancestors"] = [process_json(a) for a in ancestors]
    return {"process_exec": body, "node_name": node, "time": time}


def exit_event(
    p: Process,
    parent: Process | None,
    ancestors: list[Process],
    node: str,
    time: str,
    status: int = 0,
    signal: int | str = 0,
) -> dict[str, Any]:
    body = _body(p, parent)
    sig = signal_name(signal) if isinstance(signal, int) else signal
    if sig:
        body["signal"] = sig
    if status:
        body["status"] = status
    body["time"] = time
    if ancestors:
        body["ancestors"] = [process_json(a) for a in ancestors]
    return {"process_exit": body, "node_name": node, "time": time}


def event_kind(event: dict[str, Any]) -> str | None:
    """The event key of a GetEventsResponse dict (``process_exec`` ...), None if there is none."""
    return next((k for k in event if k not in META_KEYS), None)
