"""The services benchmark's report: the rows it prints, the ratios apiary/iptables and apiary/IPVS, the PNG
chart and the JSON it saves (bench/services.py measures)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from .kubeproxy import ratio

MODES = ("iptables", "ipvs", "apiary")


def summarise(results: dict[str, Any]) -> list[str]:
    """Ratios apiary/iptables and apiary/IPVS for every size where both were measured."""
    lines = []
    for n, modes in sorted(results["sizes"].items(), key=lambda kv: int(kv[0])):
        a = modes.get("apiary")
        if not isinstance(a, dict) or "vip" not in a:
            continue
        for other in ("iptables", "ipvs"):
            o = modes.get(other)
            if not isinstance(o, dict) or "vip" not in o:
                continue
            r = {
                "conn_per_s": ratio(a["vip"]["conn_per_s"], o["vip"]["conn_per_s"]),
                "connect_p50": ratio(a["vip"]["p50_us"], o["vip"]["p50_us"]),
                "connect_p99": ratio(a["vip"]["p99_us"], o["vip"]["p99_us"]),
                "add_one": ratio(a.get("add_one_s"), o.get("add_one_s")),
                "update_one": ratio(a.get("update_one_s"), o.get("update_one_s")),
                "load": ratio(a.get("load_s"), o.get("load_s")),
            }
            if "http_vip" in a and "http_vip" in o:
                r["http_qps"] = ratio(a["http_vip"]["qps"], o["http_vip"]["qps"])
                r["http_p99"] = ratio(a["http_vip"]["p99_ms"], o["http_vip"]["p99_ms"])
            # the same, each mode first divided by its own baseline (backend's own IP, same run): robust to the
            # machine's load drifting between the modes
            r["conn_per_s_norm"] = ratio(a["vip_over_clean"]["conn_per_s"], o["vip_over_clean"]["conn_per_s"])
            r["connect_p50_norm"] = ratio(a["vip_over_clean"]["p50"], o["vip_over_clean"]["p50"])
            results.setdefault("ratios", {}).setdefault(n, {})[f"apiary/{other}"] = r
            lines.append(
                f"  N={int(n):>6,} apiary/{other:<8} "
                + "  ".join(f"{k} {v:.2f}x" for k, v in r.items() if v is not None)
            )
            if line := translation_line(int(n), other, a, o):
                lines.append(line)
        if (pr := a.get("paired")) and "p50" in pr:
            met = "met" if pr["p50"] <= 1.10 else "NOT met"
            lines.append(
                f"  N={int(n):>6,} apiary VIP/own IP connect p50 {pr['p50']:.3f}x, p99 {pr['p99']:.2f}x"
                f" (paired, {pr['connects']:,} connects; target p50 within 10%: {met})"
            )
            if h := pr.get("http"):
                lines.append(
                    f"  N={int(n):>6,} apiary VIP/own IP wrk p50 {h['p50']:.3f}x, p99 {h['p99']:.2f}x, qps"
                    f" {h['qps']:.2f}x (paired: both at once)"
                )
    return lines


def translation_line(n: int, other: str, a: dict[str, Any], o: dict[str, Any]) -> str | None:
    """The translation cost per new connection (VIP connect p50 minus the own IP's before load), other/apiary:
    the datapath's share of the ">= 5x" target, without the client's own cost per connect."""
    ta, to = a.get("translation_us"), o.get("translation_us")
    if not ta or not to:
        return None
    line = f"  N={n:>6,} translation per new connection (VIP p50 - own IP p50): {other} {to['vip_p50']:.1f} us"
    line += f", apiary {ta['vip_p50']:.1f} us"
    if ta["vip_p50"] > 0:
        line += f" ({other}/apiary {to['vip_p50'] / ta['vip_p50']:.1f}x)"
    else:
        line += " (apiary's within the noise)"
    if a.get("connect4_ns_per_call"):
        prog_us = a["connect4_ns_per_call"] / 1e3
        line += f"; apiary's connect4 program {prog_us:.1f} us ({other}/it {to['vip_p50'] / prog_us:.0f}x)"
    return line


def print_row(n: int, mode: str, r: dict[str, Any]) -> None:
    v, b, c = r["vip"], r["baseline"], r["clean"]
    print(
        f"  N={n:>6,} {mode:<8} load {r['load_s']:8.3f} s  add 1 {1e3 * r['add_one_s']:7.1f} ms"
        f"  update 1 {1e3 * r['update_one_s']:7.1f} ms  unload {r['unload_s']:7.3f} s  slab {r['slab_kb']:+,} kB"
    )
    print(
        f"  {'':>8} {'':<8} connects/s: VIP {v['conn_per_s']:6,.0f}  own IP {b['conn_per_s']:6,.0f}"
        f"  own IP before load {c['conn_per_s']:6,.0f};  connect p50/p99 us: VIP {v['p50_us']:.0f}/{v['p99_us']:.0f}"
        f"  own IP {b['p50_us']:.0f}/{b['p99_us']:.0f}  before load {c['p50_us']:.0f}/{c['p99_us']:.0f}"
        f"  (VIP p50 {v['p50_us'] / c['p50_us']:.2f}x before load)"
    )
    if (pr := r.get("paired")) and "p50" in pr:
        print(
            f"  {'':>8} {'':<8} paired (VIP and own IP connects alternating in one run, {pr['connects']:,}):"
            f" p50 VIP {pr['vip_p50_us']:.1f} us own IP {pr['own_p50_us']:.1f} us ({pr['p50']:.3f}x);"
            f" p99 VIP {pr['vip_p99_us']:.0f} own IP {pr['own_p99_us']:.0f} ({pr['p99']:.2f}x)"
        )
        if h := pr.get("http"):
            print(
                f"  {'':>8} {'':<8} paired wrk (VIP and own IP at once): p50 VIP {h['vip_p50_ms']:.3f} ms"
                f" own IP {h['own_p50_ms']:.3f} ms ({h['p50']:.2f}x), p99 {h['p99']:.2f}x, qps {h['qps']:.2f}x"
            )
    if t := r.get("translation_us"):
        other = t.get("other_traffic_p50", float("nan"))
        print(
            f"  {'':>8} {'':<8} translation per new connection: VIP p50 {t['vip_p50']:+.1f} us,"
            f" p99 {t['vip_p99']:+.1f} us over the own IP before load; other traffic p50 {other:+.1f} us"
        )
    if "load_agent_s" in r:
        mem = sum(r.get("lb_map_memlock_bytes", {}).values())
        print(
            f"  {'':>8} {'':<8} agent time: load {r['load_agent_s']:.3f} s  add 1 {1e3 * r['add_one_agent_s']:.1f} ms"
            f"  update 1 {1e3 * r['update_one_agent_s']:.1f} ms;  LB maps {mem / 2**20:.1f} MiB memlock (preallocated)"
            + (
                f";  connect4 program {r['connect4_ns_per_call']:.0f} ns per connect (bpf_stats)"
                if "connect4_ns_per_call" in r
                else ""
            )
        )
    if "rules" in r:
        print(
            f"  {'':>8} {'':<8} {r['chains']:,} chains, {r['rules']:,} rules"
            f" ({r['rules_bytes'] / 2**20:.1f} MiB of iptables-restore text)"
        )
    if "http_vip" in r:
        hv, hb = r["http_vip"], r["http_baseline"]
        print(
            f"  {'':>8} {'':<8} wrk VIP p50 {hv['p50_ms']:.3f} ms p99 {hv['p99_ms']:.3f} ms {hv['qps']:,.0f} req/s;"
            f" own IP p50 {hb['p50_ms']:.3f} p99 {hb['p99_ms']:.3f} {hb['qps']:,.0f} req/s"
            f" (VIP/own p50 {hv['p50_ms'] / hb['p50_ms']:.2f}x, qps {hv['qps'] / hb['qps']:.2f}x)"
        )


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no PNG: matplotlib is not installed; scripts/setup.sh installs it)")
        return False
    panels = [
        ("new connections/s to random VIPs", lambda r: r["vip"]["conn_per_s"]),
        ("connect p50 (us)", lambda r: r["vip"]["p50_us"]),
        ("add one service (ms)", lambda r: 1e3 * r["add_one_s"]),
        ("load all N services (s)", lambda r: r["load_s"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    sizes = sorted(results["sizes"], key=int)
    for ax, (title, get) in zip(axes, panels, strict=True):
        for mode in MODES:
            pts = [
                (int(n), get(results["sizes"][n][mode]))
                for n in sizes
                if isinstance(results["sizes"][n].get(mode), dict) and "vip" in results["sizes"][n][mode]
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
        base = [
            (int(n), results["sizes"][n][m]["clean"])
            for n in sizes
            for m in MODES
            if isinstance(results["sizes"][n].get(m), dict) and "clean" in results["sizes"][n][m]
        ]
        if base and title.startswith(("new", "connect")):
            key = "conn_per_s" if title.startswith("new") else "p50_us"
            med = statistics.median(b[key] for _, b in base)
            ax.axhline(med, color="grey", ls="--", label="own IP, before load")
        ax.set_xscale("log")
        if title.startswith(("add", "load")):
            ax.set_yscale("log")
        ax.set_xlabel("services (N)")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"apiary vs kube-proxy (iptables, IPVS) on {os.uname().release}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def save(results: dict[str, Any], dest: Path) -> None:
    """Written after every measurement, so that a long run interrupted keeps what it measured."""
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(dest)
