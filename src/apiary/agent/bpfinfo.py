"""Kernel-side facts about apiary's own programs, links and maps (for status and `bpf list`)."""

from __future__ import annotations

from typing import Any

from apiary.loader import Map
from apiary.loader.object import PROG_TYPES, prog_info
from apiary.sensors.base import LinkRow, ProgramRow

LIST_KEYS = ("id", "name", "type", "attach", "run_count")  # what `apiary bpf list` shows of a program


def program_row(p: ProgramRow) -> dict[str, Any]:
    """A program as status shows it (run count and time, verifier size); bpf list shows LIST_KEYS of it."""
    info = prog_info(p.fd)
    runs = info.run_cnt
    return {
        "name": p.name,
        "id": info.id,
        "type": PROG_TYPES.get(info.type, str(info.type)),
        "attach": p.attach,
        "link_id": p.link_id,
        "run_count": runs,
        "run_time_ns": info.run_time_ns,
        "avg_ns": round(info.run_time_ns / runs, 1) if runs else 0,
        "verified_insns": info.verified_insns,
        "recursion_misses": info.recursion_misses,
    }


def link_row(lk: LinkRow) -> dict[str, Any]:
    return {"id": lk.id, "program": lk.program, "attach": lk.attach, "pin": lk.pin}


def map_row(m: Map, pin: str | None = None, count_entries: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": m.name,
        "id": m.id,
        "type": m.type_name,
        "key_size": m.key_size,
        "value_size": m.value_size,
        "max_entries": m.max_entries,
        "pin": pin or "",
    }
    if m.type_name in ("ringbuf", "array", "percpu_array", "prog_array") or not count_entries:
        row["entries"] = None  # arrays are always "full"; a ring's fill is its unread bytes
        row["fill_pct"] = None
    else:
        n = m.count()
        row["entries"] = n
        row["fill_pct"] = round(100.0 * n / m.max_entries, 2) if m.max_entries else 0.0
    return row
