"""Text of `apiary status` (Cilium's `cilium status` layout: one `Name:  State  detail` line per subsystem)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WIDTH = 19  # the label column


def _row(label: str, text: str) -> str:
    return f"{label + ':':<{WIDTH}}{text}"


def _rate(v: float) -> str:
    return f"{v:,.2f}"


def map_pressure(st: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(map, fill %) of every map whose fill is known, fullest first (status maps, policy map, LB maps)."""
    rows = [(m["name"], float(m["fill_pct"])) for m in st.get("maps", []) if m.get("fill_pct") is not None]
    pm = (st.get("network") or {}).get("policy_map")
    if pm and pm.get("capacity") and "policy" not in {r[0] for r in rows}:
        rows.append(("policy", float(pm["fill_pct"])))
    listed = {r[0] for r in rows}  # the LB's maps may be in both lists
    for name, m in ((st.get("services") or {}).get("maps") or {}).items():
        if m.get("capacity") and name not in listed:
            rows.append((name, round(100.0 * m["entries"] / m["capacity"], 2)))
    return sorted(rows, key=lambda r: -r[1])


def _export_targets(ex: Mapping[str, Any]) -> list[str]:
    """Each sink and where it writes, with what it failed to write (files: lines lost to failed writes; OTLP:
    records the exporter failed or dropped): a failing sink shows on its line (the export section has the errors)."""
    out = []
    for name in ("events", "flows"):
        st = ex.get(name)
        f = st.get("file") if st else None
        if not f:
            continue
        lost = int(f.get("failed_lines", 0))
        bad = [f"{lost:,} lines lost"] if lost else []
        if f.get("healthy") is False:
            bad.insert(0, "FAILING")
        out.append(f"{name} -> {f['path']}" + (f" ({'; '.join(bad)})" if bad else ""))
    for key, what in (("otlp", "otlp"), ("otlp_traces", "otlp spans")):
        o = ex.get(key)
        if not o:
            continue
        failed, dropped = int(o.get("failed", 0)), int(o.get("dropped", 0))
        bad = ([f"{failed:,} failed"] if failed else []) + ([f"{dropped:,} dropped"] if dropped else [])
        out.append(f"{what} -> {o['endpoint']}" + (f" ({'; '.join(bad)})" if bad else ""))
    return out or ["on"]


def brief_lines(st: Mapping[str, Any]) -> list[str]:
    up = f"{st['version']} on node {st['node_name']} (pid {st['pid']}, up {st['uptime_s']} s)"
    lines = [_row("apiary", f"{st.get('overall', 'OK'):<10} {up}")]
    for sub in st.get("subsystems", []):
        label = sub["name"][0].upper() + sub["name"][1:]
        lines.append(_row(label, f"{sub['state']:<10} {sub['reason']}"))
    for label, where in (st.get("serving") or {}).items():  # the gRPC servers and the metrics endpoint
        lines.append(_row(label, where))
    ex = st.get("export")
    lines.append(_row("Export", ", ".join(_export_targets(ex)) if ex else "off (no --export-filename, "
                                                                         "--export-otlp-endpoint)"))
    rates = st.get("rates") or {}
    per_s, win = rates.get("per_s", {}), rates.get("window_s", 0.0)
    over = f"over the last {win:.0f} s" if win else "no window yet: rates need two samples"
    flows = (st.get("network") or {}).get("flows")
    if flows:
        cap = flows["capacity"] or 1
        lines.append(_row("Hubble", f"Current/Max Flows: {flows['buffered']:,}/{flows['capacity']:,} "
                                    f"({100.0 * flows['buffered'] / cap:.2f}%), Flows/s: {_rate(per_s.get('flows', 0))}"
                                    f" ({over})"))
    lines.append(_row("Events", f"Events/s: {_rate(per_s.get('events', 0))} ({over})"))
    ev = st.get("events") or {}
    lost = [f"events {ev.get('lost', 0):,} in the kernel, {ev.get('client_drops', 0):,} for slow clients"]
    if flows:
        lost.append(f"flows {flows.get('kernel_lost', 0):,} in the kernel")
    lines.append(_row("Losses", "; ".join(lost)))
    mp = map_pressure(st)
    shown = ", ".join(f"{n} {p:.1f}%" for n, p in mp[:3])
    lines.append(_row("Map pressure", (shown + (f" (+{len(mp) - 3} more: --verbose)" if len(mp) > 3 else ""))
                      if mp else "-"))
    return lines


def detail_lines(st: Mapping[str, Any]) -> list[str]:
    """--verbose: every subsystem's details, every map's fill."""
    lines = ["", "Subsystem details:"]
    for sub in st.get("subsystems", []):
        det = ", ".join(f"{k} {v}" for k, v in sub.get("details", {}).items() if not isinstance(v, dict))
        lines.append(f"  {sub['name']}: {sub['state']}" + (f" ({det})" if det else ""))
    mp = map_pressure(st)
    if mp:
        lines.append("Map pressure:")
        lines += [f"  {n:<24}{p:6.2f}%" for n, p in mp]
    return lines
