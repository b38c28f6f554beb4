"""Event accounting of the shared ring buffer, per message type: produced = received + lost + in ring.

The kernel counts what each producer wrote to the ring and what it could not write (ring full), per
message type: the process sensor per exec/fork/exit/bench, the generic (tracing) sensor per hook. The
agent counts the records it read, by the type byte each record starts with. Whatever the kernel
wrote and the agent has not read is in the ring.

That identity is only worth something if it is checked against the ring itself: ``reconcile`` takes
the kernel's counts read before and after counting the records waiting in the ring (``pending``).
Every record the kernel had counted by the first read was written to the ring before it, so it was
read or is waiting; every record read or waiting was written, so the second read counts it (up to a
record still between its write and its count). A type is reconciled when::

    written_before - received <= pending <= written_after - received

Anything else (records the agent read that no producer counted, records counted that are neither
read nor in the ring, a record of a type no producer has) is "not reconciled". Pure logic: the agent
supplies the numbers, the CLI formats them (``text_lines``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apiary.sensors.abi import MsgType

# the type byte each producer writes first in its records
TYPE_NAMES: dict[int, str] = {
    MsgType.EXEC: "exec", MsgType.FORK: "fork", MsgType.EXIT: "exit", MsgType.GENERIC: "tracing", MsgType.BENCH: "bench"
}
TYPES = ("exec", "fork", "exit", "tracing", "bench")


def type_name(byte: int) -> str:
    return TYPE_NAMES.get(byte, f"unknown type {byte}")


def by_name(by_byte: list[int]) -> dict[str, int]:
    """Record counts indexed by type byte -> by type name (types with records only)."""
    return {type_name(i): n for i, n in enumerate(by_byte) if n}


def reconcile(
    written_before: Mapping[str, int],
    written_after: Mapping[str, int],
    lost: Mapping[str, int],
    received: Mapping[str, int],
    pending: Mapping[str, int],
    ring_walked: bool = True,
) -> dict[str, Any]:
    """Per-type rows and totals of the accounting (see the module's docstring).

    ``ring_walked`` False: the walk of the ring stopped at a record still being written, so
    ``pending`` may miss records; a type short of records is then not reconciled either (the agent
    retries before it reports that).
    """
    names = [t for t in TYPES if t in written_after or t in received or t in pending]
    names += sorted(set(received) - set(names))  # records of a type no producer has: never reconciled
    rows: dict[str, dict[str, Any]] = {}
    for t in names:
        w0, w1 = written_before.get(t, 0), written_after.get(t, 0)
        r, p, lo = received.get(t, 0), pending.get(t, 0), lost.get(t, 0)
        known = t in TYPES
        rows[t] = {
            "produced": w1 + lo,
            "written": w1,
            "lost": lo,
            "received": r,
            "in_ring": w1 - r,
            "pending": p,
            "reconciled": known and w0 - r <= p <= w1 - r,
        }
    total = {k: sum(row[k] for row in rows.values()) for k in ("produced", "written", "lost", "received", "in_ring")}
    return {
        "by_type": rows,
        **total,
        "reconciled": all(row["reconciled"] for row in rows.values()),
        "ring_walked": ring_walked,
    }


def _row_text(name: str, row: Mapping[str, Any]) -> str:
    verdict = "reconciled" if row["reconciled"] else "NOT reconciled"
    return (
        f"{name}: produced {row['produced']:,} = received {row['received']:,} + lost {row['lost']:,}"
        f" + in ring {row['in_ring']:,}  ({verdict})"
    )


def text_lines(ev: Mapping[str, Any]) -> list[str]:
    """`apiary status`'s accounting lines: the totals, then one line per message type."""
    lines = [_row_text("events", ev)]
    lines += ["  " + _row_text(name, row) for name, row in ev.get("by_type", {}).items()]
    bad = [name for name, row in ev.get("by_type", {}).items() if not row["reconciled"]]
    if bad:
        lines.append(
            "  not reconciled: "
            + ", ".join(f"{n} (read {ev['by_type'][n]['received']:,}, in the ring {ev['by_type'][n]['pending']:,})"
                        for n in bad)
        )
    return lines
