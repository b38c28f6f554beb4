"""Export writer benchmark (issue #12): records/s through what the agent's export writer thread does per
event (Tetragon allow/deny filters, a field filter, JSON encoding, the rotated file with gzip), as a ratio
to JSON-encoding the same events alone (what any JSON client of the agent pays), interleaved rounds, medians.
The events are exec events shaped like real ones (a process, its parent and five ancestors).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from typing import Any

from apiary.observe.export.pipeline import EventPipeline
from apiary.observe.export.rotate import RotatingFile
from apiary.observe.export.settings import ExportSettings, compile_events


def _proc(pid: int) -> dict[str, Any]:
    return {
        "exec_id": f"dm06NTYyMjg1NzUwOTAwNjoy{pid:08d}",
        "pid": pid,
        "uid": 0,
        "cwd": "/work",
        "binary": "/usr/bin/curl",
        "arguments": "-s -o /dev/null http://127.0.0.1:9/",
        "flags": "execve clone",
        "start_time": "2026-12-05T16:36:24.684241032Z",
        "auid": 4294967295,
        "parent_exec_id": "dm06NTYwMjk1OTk5ODU3ODoyOTc1NA==",
        "refcnt": 1,
        "tid": pid,
    }


def events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "process_exec": {
                "process": _proc(i),
                "parent": _proc(i + 1),
                "ancestors": [_proc(i + k) for k in range(5)],
            },
            "node_name": "vm",
            "time": "2026-12-05T16:36:24.684241032Z",
        }
        for i in range(n)
    ]


def main(n: int = 20000, rounds: int = 5) -> None:
    evs = events(n)
    settings = ExportSettings(
        export_allowlist='{"event_set":["PROCESS_EXEC","PROCESS_EXIT"]}',
        export_denylist='{"binary_regex":["^/usr/sbin/"]}',
        field_filters='{"event_set":["PROCESS_EXEC"],"fields":"ancestors","action":"EXCLUDE"}',
    )
    base, full = [], []
    with tempfile.TemporaryDirectory(prefix="apiary-bench-export-") as d:
        f = RotatingFile(f"{d}/ev.log", 10 << 20, 2, compress=True)
        f.start()
        pipe = EventPipeline(compile_events(settings), None, "vm")
        for _ in range(rounds):
            t = time.perf_counter()
            for ev in evs:
                json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()
            base.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            for i in range(0, n, 1024):
                out = pipe.process(evs[i : i + 1024], time.monotonic())
                f.write_lines(
                    [json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for e in out]
                )
            full.append(n / (time.perf_counter() - t))
        f.close()
        rotations, failed = f.stats.rotations, f.stats.failed_lines
    b, w = statistics.median(base), statistics.median(full)
    print(f"(i) export writer, {n:,} exec events x {rounds} rounds (medians)")
    print(f"  JSON encoding alone            {b:12,.0f} events/s")
    print(f"  filters + field filter + file  {w:12,.0f} events/s   ratio {w / b:.2f}x the encoding alone")
    print(f"  ({rotations} rotations with gzip, {failed} lines failed)")
