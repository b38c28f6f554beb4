"""`apiary status` verdicts (apiary.agent.health) and its brief layout (apiary.cli.status_view): pure logic."""

from __future__ import annotations

from typing import Any

from apiary.agent import health
from apiary.cli.status_view import brief_lines, detail_lines, map_pressure


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _status(**over: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "version": "0.1", "node_name": "n1", "pid": 1, "uptime_s": 5.0, "subscribers": 0,
        "maps": [{"name": "procs", "owner": "process", "entries": 10, "max_entries": 100, "fill_pct": 10.0}],
        "process_cache": {"size": 3},
        "events": {"lost": 0, "client_drops": 0, "reconciled": True, "procs_map_full": 0, "emitted": {}},
        "api_connections": {"limit": 256, "open": 1, "evicted_idle": 0, "refused_busy": 0},
        "network": {"endpoints": 2, "policies": 1, "identities_allocated": 3,
                    "policy_map": {"entries": 5, "capacity": 100, "fill_pct": 5.0},
                    "flows": {"records": 0, "kernel_lost": 0, "decode_errors": 0, "buffered": 7, "capacity": 4095}},
        "services": {"services": 0, "frontends": 0, "backends": 0, "algorithm": "random", "maps": {}},
    }
    st.update(over)
    return st


def _subs(st: dict[str, Any], rates: dict[str, Any] | None = None, **kw: Any) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = dict(network_enabled=True, tracing_enabled=True, tracing_policies=[], prefilter=None,
                                missing=[])
    args.update(kw)
    return {s["name"]: s for s in health.subsystems(st, rates or {}, **args)}


def test_rates_over_the_window_and_counter_reset() -> None:
    clk = Clock()
    r = health.Rates(window=60, clock=clk)
    assert r.rates()["per_s"] == {}  # one sample or none: no rate yet
    r.sample({"flows": 100, "events": 5})
    clk.t = 10
    r.sample({"flows": 300, "events": 5})
    got = r.rates()
    assert got["window_s"] == 10 and got["per_s"] == {"flows": 20.0, "events": 0.0}
    assert got["increase"]["flows"] == 200
    clk.t = 100  # the first sample leaves the window
    r.sample({"flows": 400, "events": 0})  # events went down (a reset): no negative rate
    got = r.rates()
    assert got["window_s"] == 90 and got["increase"] == {"flows": 100, "events": 0}


def test_healthy_node_all_ok_or_disabled_with_reason() -> None:
    subs = _subs(_status())
    assert [s for s in subs] == ["process sensor", "tracing", "network datapath", "L7 proxy", "DNS proxy",
                                 "services/LB", "prefilter", "API", "event bus"]
    assert subs["prefilter"]["state"] == "disabled" and "--prefilter-device" in subs["prefilter"]["reason"]
    assert all(s["state"] in ("OK", "disabled") for s in subs.values())
    assert subs["network datapath"]["reason"] == "2 endpoints, 1 policies"
    assert health.overall(list(subs.values())) == "OK"


def test_recent_losses_and_full_maps_degrade() -> None:
    rates = {"window_s": 30.0, "per_s": {"flows": 1.0}, "increase": {"events_lost": 4, "flows_lost": 2,
                                                                     "event_client_drops": 1}}
    st = _status(maps=[{"name": "procs", "owner": "process", "entries": 95, "max_entries": 100, "fill_pct": 95.0}])
    subs = _subs(st, rates)
    assert subs["process sensor"]["state"] == "degraded"
    reason = subs["process sensor"]["reason"]
    assert "4 events lost" in reason and "procs 95.0% full" in reason
    assert subs["network datapath"]["state"] == "degraded" and "2 flows lost" in subs["network datapath"]["reason"]
    assert subs["event bus"]["state"] == "degraded"
    assert health.overall(list(subs.values())) == "degraded"
    # losses outside the window are totals, not a verdict on the present
    assert _subs(_status(), {"increase": {"events_lost": 0}})["process sensor"]["state"] == "OK"


def test_disabled_subsystems_say_why() -> None:
    subs = _subs(_status(network=None, services=None), network_enabled=False, tracing_enabled=False,
                 tracing_policies=None)
    assert subs["network datapath"] == {"name": "network datapath", "state": "disabled", "reason": "--no-network",
                                        "details": {}}
    assert subs["tracing"]["state"] == "disabled"


def test_prefilter_device_that_did_not_attach_is_degraded() -> None:
    subs = _subs(_status(), prefilter={"devices": [], "entries": []},
                 missing=["prefilter on eth9: not attached: no such device"])
    assert subs["prefilter"]["state"] == "degraded" and "eth9" in subs["prefilter"]["reason"]


def test_brief_layout_and_map_pressure_order() -> None:
    st = _status()
    subs = health.subsystems(st, {}, network_enabled=True, tracing_enabled=True, tracing_policies=[],
                             prefilter=None, missing=[])
    st |= {"overall": health.overall(subs), "subsystems": subs,
           "rates": {"window_s": 20.0, "per_s": {"flows": 1.5, "events": 2.25}, "increase": {}}}
    lines = brief_lines(st)
    assert lines[0].startswith("apiary:            OK")
    assert "Network datapath:  OK         2 endpoints, 1 policies" in lines
    assert any(ln.startswith("Hubble:") and "Current/Max Flows: 7/4,095" in ln and "Flows/s: 1.50" in ln
               for ln in lines)
    assert any(ln.startswith("Events:") and "Events/s: 2.25 (over the last 20 s)" in ln for ln in lines)
    assert map_pressure(st) == [("procs", 10.0), ("policy", 5.0)]
    assert "  procs                    10.00%" in detail_lines(st)
    # the LB's maps are in the agent's map list and in the services status: each is listed once
    st["maps"] = st.get("maps", []) + [{"name": "lb4_services", "fill_pct": 2.0}]
    st["services"] = {"maps": {"lb4_services": {"entries": 2, "capacity": 100},
                               "lb4_backends": {"entries": 1, "capacity": 100}}}
    names = [n for n, _ in map_pressure(st)]
    assert names.count("lb4_services") == 1 and names.count("lb4_backends") == 1


L7 = {"pid": 42, "alive": True, "port": 15001, "restarts": 0, "restarting": False, "requests": 9, "denied": 3,
      "upstream_errors": 0, "bad_records": 0, "hot_updates": 4, "reloads": 1}
DNS = {"port": 15002, "serving": True, "queries": 5, "allowed": 4, "refused": 1, "upstream_errors": 0}


def _net(**over: Any) -> dict[str, Any]:
    return _status()["network"] | over


def test_proxies_ok_with_their_figures() -> None:
    subs = _subs(_status(network=_net(l7_proxy=L7, dns_proxy=DNS)))
    assert subs["L7 proxy"]["state"] == "OK"
    assert subs["L7 proxy"]["reason"] == ("haproxy pid 42 on 127.0.0.1:15001, 9 requests, 3 denied, 0 restarts, "
                                          "rule changes: 4 live, 1 reloads, no clients on other hosts (no --devices)")
    assert subs["L7 proxy"]["details"]["denied"] == 3 and subs["L7 proxy"]["details"]["hot_updates"] == 4
    with_dev = _subs(_status(network=_net(l7_proxy=L7 | {"devices": ["eth0", "eth1"]})))["L7 proxy"]
    assert with_dev["reason"].endswith(", clients on other hosts through eth0, eth1")
    assert with_dev["details"]["devices"] == ["eth0", "eth1"]
    assert subs["DNS proxy"] == {"name": "DNS proxy", "state": "OK",
                                 "reason": "127.0.0.1:15002 UDP+TCP, 5 queries, 1 refused",
                                 "details": {k: v for k, v in DNS.items() if k != "serving"}}


def test_dead_restarted_or_failing_proxy_is_degraded() -> None:
    rates = {"window_s": 30.0, "increase": {"l7_restarts": 1, "l7_upstream_errors": 2, "dns_upstream_errors": 4}}
    dead = L7 | {"alive": False, "restarting": True}
    subs = _subs(_status(network=_net(l7_proxy=dead, dns_proxy=DNS | {"serving": False})), rates)
    assert subs["L7 proxy"]["state"] == "degraded"
    assert subs["L7 proxy"]["reason"] == ("haproxy is not running (restarting); restarted once in the last 30 s; "
                                          "2 upstream errors in the last 30 s")
    assert subs["DNS proxy"]["state"] == "degraded"
    assert subs["DNS proxy"]["reason"] == "not serving; 4 upstream errors in the last 30 s"
    assert health.overall(list(subs.values())) == "degraded"
    # older restarts and errors are totals in the OK line, not a verdict on the present
    assert _subs(_status(network=_net(l7_proxy=L7 | {"restarts": 2})))["L7 proxy"]["state"] == "OK"


def test_lost_access_log_records_and_a_dns_proxy_without_holder_are_degraded() -> None:
    rates = {"window_s": 30.0, "increase": {"l7_dropped_records": 7, "dns_holder_restarts": 1}}
    subs = _subs(_status(network=_net(l7_proxy=L7 | {"dropped_records": 7},
                                      dns_proxy=DNS | {"holder_pid": 77, "holder_restarts": 1})), rates)
    assert subs["L7 proxy"]["state"] == "degraded"
    assert subs["L7 proxy"]["reason"] == ("haproxy dropped 7 access-log records (pipe full) in the last 30 s: "
                                          "their L7 flows are missing")
    assert subs["L7 proxy"]["details"]["dropped_records"] == 7
    assert subs["DNS proxy"]["state"] == "degraded"
    assert subs["DNS proxy"]["reason"] == "socket holder died and was restarted once in the last 30 s"
    # a proxy serving without a holder fails DNS across the next agent restart: said now, not then
    no_holder = _subs(_status(network=_net(dns_proxy=DNS | {"holder_pid": None})))["DNS proxy"]
    assert no_holder["state"] == "degraded"
    assert no_holder["reason"] == "no socket holder: DNS queries go unanswered while the agent restarts"
    # losses and restarts older than the window are totals, not a verdict
    old = _subs(_status(network=_net(l7_proxy=L7 | {"dropped_records": 7},
                                     dns_proxy=DNS | {"holder_pid": 77, "holder_restarts": 1})))
    assert old["L7 proxy"]["state"] == "OK" and old["DNS proxy"]["state"] == "OK"


def test_proxies_disabled_say_why() -> None:
    net = _net(l7_proxy=None, l7_proxy_disabled="haproxy not installed: policies with rules.http are refused",
               dns_proxy=None, dns_proxy_disabled="needs the L7 proxy")
    subs = _subs(_status(network=net))
    assert subs["L7 proxy"]["state"] == "disabled" and "haproxy not installed" in subs["L7 proxy"]["reason"]
    assert subs["DNS proxy"]["state"] == "disabled" and subs["DNS proxy"]["reason"] == "needs the L7 proxy"
    off = _subs(_status(network=None), network_enabled=False)
    assert off["L7 proxy"]["reason"] == "--no-network" and off["DNS proxy"]["state"] == "disabled"
    st = _status(network=net)
    st["subsystems"] = health.subsystems(st, {}, network_enabled=True, tracing_enabled=True, tracing_policies=[],
                                         prefilter=None, missing=[])
    assert "L7 proxy:          disabled   haproxy not installed: policies with rules.http are refused" in (
        brief_lines(st))


def test_servers_and_export_lines() -> None:
    st = _status(serving={"Metrics": "http://127.0.0.1:9962/metrics (and the API socket's /metrics)",
                          "Hubble gRPC": "unix:///run/apiary/hubble.sock", "Tetragon gRPC": "not serving: x"},
                 export=None, subsystems=[])
    lines = brief_lines(st)
    assert "Metrics:           http://127.0.0.1:9962/metrics (and the API socket's /metrics)" in lines
    assert "Hubble gRPC:       unix:///run/apiary/hubble.sock" in lines
    assert "Tetragon gRPC:     not serving: x" in lines
    assert "Export:            off (no --export-filename, --export-otlp-endpoint)" in lines
    st["export"] = {"events": {"file": {"path": "/var/log/apiary/events.log"}}, "flows": None,
                    "otlp": {"endpoint": "http://127.0.0.1:4318"}}
    assert ("Export:            events -> /var/log/apiary/events.log, otlp -> http://127.0.0.1:4318"
            in brief_lines(st))
    # a failing sink says so in the brief view (no --verbose needed)
    st["export"] = {"events": {"file": {"path": "/x/e.log", "healthy": False, "failed_lines": 1200,
                                        "last_error": "write: [Errno 28] No space left on device"}},
                    "flows": {"file": {"path": "/x/f.log", "healthy": True, "failed_lines": 0, "last_error": ""}},
                    "otlp": {"endpoint": "http://127.0.0.1:4318", "failed": 3, "dropped": 0,
                             "last_error": "connection refused"}}
    assert ("Export:            events -> /x/e.log (FAILING; 1,200 lines lost), flows -> /x/f.log, "
            "otlp -> http://127.0.0.1:4318 (3 failed)") in brief_lines(st)
