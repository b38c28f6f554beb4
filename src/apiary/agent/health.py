"""`apiary status`'s health summary: each subsystem OK / degraded / disabled with the reason, rates over a
recent window, losses and map pressure (Cilium's `cilium status` brief layout).

Pure logic: the agent hands over its status object (the existing keys) and a few facts only it knows; the
verdicts are derived here, so they are unit-tested without a kernel.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

OK, DEGRADED, DISABLED = "OK", "degraded", "disabled"
PRESSURE_WARN = 90.0  # fill % of a map past which its subsystem is degraded
RATE_WINDOW = 60.0  # seconds of samples kept; rates are over what is kept (at least two samples)


@dataclass
class Rates:
    """Cumulative counters sampled over time; rate = increase / elapsed over the kept window."""

    window: float = RATE_WINDOW
    clock: Callable[[], float] = time.monotonic
    # bounded also in count: a client polling status in a loop shortens the window, never grows memory
    samples: deque[tuple[float, dict[str, int]]] = field(default_factory=lambda: deque(maxlen=1024))

    def sample(self, counters: Mapping[str, int]) -> None:
        now = self.clock()
        self.samples.append((now, dict(counters)))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def rates(self) -> dict[str, Any]:
        """Per counter: per-second rate and the increase over the window (None before two samples)."""
        if len(self.samples) < 2:
            return {"window_s": 0.0, "per_s": {}, "increase": {}}
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        dt = t1 - t0
        inc = {k: max(0, v - c0.get(k, 0)) for k, v in c1.items()}  # a counter never goes down; a reset is 0
        return {
            "window_s": round(dt, 1),
            "per_s": {k: round(v / dt, 2) if dt > 0 else 0.0 for k, v in inc.items()},
            "increase": inc,
        }


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n:,} times"


def _sub(name: str, state: str, reason: str, **details: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "reason": reason, "details": details}


def _pressure(rows: list[tuple[str, int | None, int]]) -> tuple[float, str]:
    """The fullest map of (name, entries, capacity) rows: (fill %, name)."""
    best, which = 0.0, ""
    for name, n, cap in rows:
        if n is None or not cap:
            continue
        pct = round(100.0 * n / cap, 2)
        if pct >= best:
            best, which = pct, name
    return best, which


def _worst(state: str, reasons: list[str], ok_reason: str) -> tuple[str, str]:
    return (DEGRADED, "; ".join(reasons)) if reasons else (state, ok_reason)


def subsystems(
    st: Mapping[str, Any],
    rates: Mapping[str, Any],
    *,
    network_enabled: bool,
    tracing_enabled: bool,
    tracing_policies: list[dict[str, Any]] | None,
    prefilter: Mapping[str, Any] | None,
    missing: list[str],
) -> list[dict[str, Any]]:
    """One row per subsystem: {name, state, reason, details}. Losses that happened within the rate window
    make a subsystem degraded (older ones are shown as totals, not as a verdict on the present)."""
    inc = rates.get("increase", {})
    per_s = rates.get("per_s", {})
    win = rates.get("window_s", 0.0)
    out: list[dict[str, Any]] = []

    def owned(owner: str) -> list[tuple[str, int | None, int]]:
        return [(m["name"], m.get("entries"), m["max_entries"]) for m in st.get("maps", []) if m.get("owner") == owner]

    # process sensor: its ring and its process table
    ev = st.get("events") or {}
    fill, fullest = _pressure(owned("process"))
    reasons = []
    if inc.get("events_lost"):
        reasons.append(f"{inc['events_lost']:,} events lost in the kernel (ring full) in the last {win:.0f} s")
    if inc.get("event_errors"):
        reasons.append(f"{inc['event_errors']:,} records could not be decoded in the last {win:.0f} s")
    if not ev.get("reconciled", True):
        reasons.append("ring accounting not reconciled")
    if ev.get("procs_map_full"):
        reasons.append(f"process table full {_times(ev['procs_map_full'])}")
    if fill >= PRESSURE_WARN:
        reasons.append(f"map {fullest} {fill:.1f}% full")
    state, reason = _worst(OK, reasons, "exec/fork/exit hooks attached")
    out.append(_sub("process sensor", state, reason, events_per_s=per_s.get("events", 0.0),
                    lost_total=ev.get("lost", 0), map_pressure_pct=fill, map=fullest,
                    process_cache=st.get("process_cache", {})))

    # tracing: TracingPolicies
    if not tracing_enabled or tracing_policies is None:
        out.append(_sub("tracing", DISABLED, "TracingPolicy sensor not loaded"))
    else:
        enabled = [p for p in tracing_policies if p.get("state") == "enabled"]
        lost = sum(int(p.get("lost", 0)) for p in tracing_policies)
        reasons = [f"{lost:,} policy events lost"] if lost else []
        state, reason = _worst(OK, reasons, f"{len(enabled)}/{len(tracing_policies)} policies enabled")
        out.append(_sub("tracing", state, reason, policies=len(tracing_policies), enabled=len(enabled),
                        events=sum(int(p.get("events", 0)) for p in tracing_policies), lost_total=lost))

    # network datapath
    net = st.get("network")
    if not network_enabled or net is None:
        out.append(_sub("network datapath", DISABLED, "--no-network"))
    else:
        pm = net.get("policy_map", {})
        flows = net.get("flows", {})
        fill, fullest = _pressure([("policy", pm.get("entries"), pm.get("capacity", 0)), *owned("datapath")])
        reasons = []
        if inc.get("flows_lost"):
            reasons.append(f"{inc['flows_lost']:,} flows lost in the kernel in the last {win:.0f} s")
        if inc.get("flow_errors"):
            reasons.append(f"{inc['flow_errors']:,} flow records could not be decoded in the last {win:.0f} s")
        if fill >= PRESSURE_WARN:
            reasons.append(f"map {fullest} {fill:.1f}% full")
        state, reason = _worst(
            OK, reasons, f"{net.get('endpoints', 0)} endpoints, {net.get('policies', 0)} policies"
        )
        out.append(_sub("network datapath", state, reason, flows_per_s=per_s.get("flows", 0.0),
                        lost_total=flows.get("kernel_lost", 0), map_pressure_pct=fill, map=fullest,
                        endpoints=net.get("endpoints", 0), policies=net.get("policies", 0),
                        identities=net.get("identities_allocated", 0), flow_buffer=flows.get("buffered", 0)))

    out += _proxies(net if network_enabled else None, inc, win)

    # services / load balancing
    sv = st.get("services")
    if not network_enabled or sv is None:
        out.append(_sub("services/LB", DISABLED, "--no-network"))
    else:
        rows = [(n, m["entries"], m["capacity"]) for n, m in (sv.get("maps") or {}).items()]
        fill, fullest = _pressure(rows)
        reasons = [f"map {fullest} {fill:.1f}% full"] if fill >= PRESSURE_WARN else []
        loaded = bool(sv.get("maps"))
        ok_reason = (f"{sv['services']} services, {sv['backends']} backends" if loaded
                     else "not loaded (loads with the first service)")
        state, reason = _worst(OK, reasons, ok_reason)
        out.append(_sub("services/LB", state, reason, map_pressure_pct=fill, map=fullest,
                        services=sv.get("services", 0), frontends=sv.get("frontends", 0),
                        backends=sv.get("backends", 0), algorithm=sv.get("algorithm")))

    # XDP prefilter
    devs = list((prefilter or {}).get("devices") or [])
    lost_dev = [m for m in missing if m.startswith("prefilter on ")]
    if not devs and not lost_dev:
        out.append(_sub("prefilter", DISABLED, "no --prefilter-device and none added"))
    else:
        entries = len((prefilter or {}).get("entries") or [])
        fill, fullest = _pressure(owned("prefilter"))
        reasons = lost_dev + ([f"map {fullest} {fill:.1f}% full"] if fill >= PRESSURE_WARN else [])
        state, reason = _worst(OK, reasons, f"XDP on {len(devs)} devices, {entries} CIDRs")
        out.append(_sub("prefilter", state, reason, devices=devs, cidrs=entries, map_pressure_pct=fill,
                        map=fullest))

    # local API
    api = st.get("api_connections") or {}
    reasons = []
    if api and api.get("open", 0) >= api.get("limit", 1):
        reasons.append(f"at its connection limit ({api['limit']})")
    state, reason = _worst(OK, reasons, f"{api.get('open', 0)}/{api.get('limit', '?')} connections")
    out.append(_sub("API", state, reason, **api))

    # event bus: clients reading events
    drops = inc.get("event_client_drops", 0)
    reasons = [f"{drops:,} events dropped for slow clients in the last {win:.0f} s"] if drops else []
    state, reason = _worst(OK, reasons, f"{st.get('subscribers', 0)} subscribers")
    out.append(_sub("event bus", state, reason, subscribers=st.get("subscribers", 0),
                    client_drops_total=ev.get("client_drops", 0)))
    return out


def _proxies(net: Mapping[str, Any] | None, inc: Mapping[str, int], win: float) -> list[dict[str, Any]]:
    """The L7 (HAProxy) and DNS proxies: OK with what they judged, degraded when down, restarted or failing
    upstream within the window, disabled with the reason when the agent runs without them."""
    if net is None:
        return [_sub("L7 proxy", DISABLED, "--no-network"), _sub("DNS proxy", DISABLED, "--no-network")]
    out = []
    l7 = net.get("l7_proxy")
    if l7 is None:
        out.append(_sub("L7 proxy", DISABLED, net.get("l7_proxy_disabled") or "not running"))
    else:
        reasons = []
        if not l7.get("alive"):
            reasons.append("haproxy is not running" + (" (restarting)" if l7.get("restarting") else ""))
        if inc.get("l7_restarts"):
            reasons.append(f"restarted {_times(inc['l7_restarts'])} in the last {win:.0f} s")
        if inc.get("l7_upstream_errors"):
            reasons.append(f"{inc['l7_upstream_errors']:,} upstream errors in the last {win:.0f} s")
        if inc.get("l7_dropped_records"):
            reasons.append(f"haproxy dropped {inc['l7_dropped_records']:,} access-log records (pipe full) in the last "
                           f"{win:.0f} s: their L7 flows are missing")
        state, reason = _worst(OK, reasons, f"haproxy pid {l7.get('pid')} on 127.0.0.1:{l7.get('port')}, "
                                            f"{l7.get('requests', 0):,} requests, {l7.get('denied', 0):,} denied, "
                                            f"{l7.get('restarts', 0):,} restarts, rule changes: "
                                            f"{l7.get('hot_updates', 0):,} live, {l7.get('reloads', 0):,} reloads, "
                                            + (f"clients on other hosts through {', '.join(l7['devices'])}"
                                               if l7.get("devices") else
                                               "no clients on other hosts (no --devices)"))
        out.append(_sub("L7 proxy", state, reason, pid=l7.get("pid"), port=l7.get("port"),
                        hot_updates=l7.get("hot_updates", 0), reloads=l7.get("reloads", 0),
                        requests=l7.get("requests", 0), denied=l7.get("denied", 0),
                        upstream_errors=l7.get("upstream_errors", 0), restarts=l7.get("restarts", 0),
                        bad_records=l7.get("bad_records", 0), dropped_records=l7.get("dropped_records", 0),
                        devices=l7.get("devices", [])))
    dns = net.get("dns_proxy")
    if dns is None:
        out.append(_sub("DNS proxy", DISABLED, net.get("dns_proxy_disabled") or "not running"))
    else:
        reasons = [] if dns.get("serving", True) else ["not serving"]
        if inc.get("dns_upstream_errors"):
            reasons.append(f"{inc['dns_upstream_errors']:,} upstream errors in the last {win:.0f} s")
        if dns.get("serving", True) and "holder_pid" in dns and dns.get("holder_pid") is None:
            reasons.append("no socket holder: DNS queries go unanswered while the agent restarts")
        if inc.get("dns_holder_restarts"):
            reasons.append(f"socket holder died and was restarted {_times(inc['dns_holder_restarts'])} in the last "
                           f"{win:.0f} s")
        state, reason = _worst(OK, reasons, f"127.0.0.1:{dns.get('port')} UDP+TCP, {dns.get('queries', 0):,} "
                                            f"queries, {dns.get('refused', 0):,} refused")
        out.append(_sub("DNS proxy", state, reason, **{k: v for k, v in dns.items() if k != "serving"}))
    return out


def overall(subs: list[dict[str, Any]]) -> str:
    return DEGRADED if any(s["state"] == DEGRADED for s in subs) else OK
