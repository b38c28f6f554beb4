"""Tetragon event encoding: process records -> Tetragon JSON dicts, and JSON dicts -> compact lines.

The JSON follows ``tetra getevents -o json`` (protojson with proto names): wrapper-typed fields
(``pid``, ``uid``, ``auid``, ``tid``) always printed, zero plain scalars and empty strings omitted.
The compact lines follow Tetragon's ``CompactEncoder.EventToString``, including its spacing when a
field is empty (``"%s %s %s"``: an exec without arguments ends with a space).
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Callable
from typing import Any

from apiary.observe.clock import format_rfc3339_ns, parse_rfc3339_ns
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


# --- compact -------------------------------------------------------------------------------------

_ANSI = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}


def paint(text: str, colour: str, color: bool) -> str:
    """Wrap text in an ANSI colour the way fatih/color does (also when text is empty)."""
    return f"\x1b[{_ANSI[colour]}m{text}\x1b[0m" if color else text


def head(emoji: str, word: str, color: bool, colour: str = "blue") -> str:
    """``<emoji> <word padded to 7>``."""
    return paint(f"{emoji} {word:<7}", colour, color)


def process_info(event: dict[str, Any], proc: dict[str, Any], color: bool) -> str:
    """``<where> <binary>``: namespace/pod for pod processes, else the node name."""
    pod = proc.get("pod")
    where = f"{pod.get('namespace', '')}/{pod.get('name', '')}" if pod else event.get("node_name", "")
    return f"{paint(where, 'green', color)} {paint(proc.get('binary', ''), 'magenta', color)}"


def _exec_line(event: dict[str, Any], body: dict[str, Any], color: bool) -> str:
    proc = body.get("process") or {}
    args = paint(proc.get("arguments", ""), "cyan", color)
    return f"{head('🚀', 'process', color)} {process_info(event, proc, color)} {args}"


def _exit_line(event: dict[str, Any], body: dict[str, Any], color: bool) -> str:
    proc = body.get("process") or {}
    args = paint(proc.get("arguments", ""), "cyan", color)
    status = paint(str(body.get("signal") or body.get("status", 0)), "red", color)
    return f"{head('💥', 'exit', color)} {process_info(event, proc, color)} {args} {status}"


CompactFormatter = Callable[[dict[str, Any], dict[str, Any], bool], str]

# event key -> formatter(event, body, color). Hook events (process_kprobe ...) add entries here.
COMPACT_FORMATTERS: dict[str, CompactFormatter] = {
    "process_exec": _exec_line,
    "process_exit": _exit_line,
}


def compact(event: dict[str, Any], color: bool = False) -> str:
    """One ``tetra getevents -o compact`` line for a Tetragon JSON event dict."""
    kind = event_kind(event) or "unknown"
    body = event.get(kind)
    body = body if isinstance(body, dict) else {}
    fmt = COMPACT_FORMATTERS.get(kind)
    if fmt is not None:
        return fmt(event, body, color)
    line = head("❓", kind, color)
    proc = body.get("process")
    return f"{line} {process_info(event, proc, color)}" if isinstance(proc, dict) else line


def with_timestamp(line: str, event: dict[str, Any]) -> str:
    """Prefix a compact line with the event time (UTC, 9 fractional digits), as ``--timestamps``."""
    t = event.get("time")
    try:
        ts = format_rfc3339_ns(parse_rfc3339_ns(t) if t else 0)
    except ValueError:
        ts = str(t)
    return f"{ts} {line}"


# Hook events (TracingPolicy): their formatters live in apiary.observe.tetragon.compact, which imports this module's
# helpers; it is imported here, after they exist, and looked up when a line is formatted.
import apiary.observe.tetragon.compact as _hook_lines  # noqa: E402

COMPACT_FORMATTERS.update({
    "process_kprobe": lambda event, body, color: _hook_lines.kprobe_line(event, color),
    "process_tracepoint": lambda event, body, color: _hook_lines.tracepoint_line(event, color),
    "process_lsm": lambda event, body, color: _hook_lines.lsm_line(event, color),
    "process_uprobe": lambda event, body, color: _hook_lines.uprobe_line(event, color),
    "process_usdt": lambda event, body, color: _hook_lines.usdt_line(event, color),
})
