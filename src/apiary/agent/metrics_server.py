"""Prometheus metrics on a TCP port (``apiary agent --metrics-addr 127.0.0.1:9962``).

The agent's registry already holds Hubble's flow counters (apiary.observe.hubble.metrics) and Tetragon's event
counters (apiary.agent.events). This module adds what is read from the kernel and the agent's state when
Prometheus scrapes (:class:`AgentCollector`), and serves the whole registry over HTTP with aiohttp
(:func:`start`). The unix-socket API serves the same text at ``/metrics``.

apiary's own metrics (namespace ``apiary_``):

* ``apiary_bpf_map_pressure{map_name}`` — entries / max_entries of each hash and LPM map (Cilium's
  ``cilium_bpf_map_pressure``); arrays and rings are always "full" and are not shown.
* ``apiary_bpf_program_runs_total{program,attach}``, ``apiary_bpf_program_run_seconds_total{program,attach}``
  — the kernel's BPF stats (``BPF_ENABLE_STATS``); ``apiary_bpf_stats_enabled`` says whether they count.
* ``apiary_endpoints``, ``apiary_identities``, ``apiary_policies``, ``apiary_services``,
  ``apiary_tracing_policies``; ``apiary_build_info{version,python_version}``.

and Tetragon's: ``tetragon_process_cache_size``/``_capacity``/``_evictions_total``/``_misses_total{operation}``,
``tetragon_bpf_missed_events_total{msg_op,error}`` (records the kernel could not put on the ring, by Tetragon's
op number). The flow ring's losses move ``hubble_lost_events_total{source="perf_event_ring_buffer"}``, the L7
proxy's dropped access-log records ``hubble_lost_events_total{source="l7_proxy_access_log"}``.
"""

from __future__ import annotations

import ipaddress
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from apiary import __version__
from apiary.loader import Map
from apiary.observe.hubble.metrics import L7_LOST_SOURCE
from apiary.observe.process import ProcessCache
from apiary.sensors.base import Sensor

if TYPE_CHECKING:
    from .network import Network
    from .services import ServicesControl
    from .tracing import Tracing

DEFAULT_PORT = 9962  # the cilium agent's metrics port
# apiary's ring message types -> Tetragon's msg_op numbers (bpf/lib/msg_types.h)
TETRAGON_MSG_OPS = {"exec": "5", "exit": "7", "tracing": "13", "fork": "23"}
_COUNTED_MAP_TYPES = ("hash", "lru_hash", "percpu_hash", "lru_percpu_hash", "lpm_trie")


class MetricsError(ValueError):
    """A bad ``--metrics-addr``: the message names the flag and the reason."""


def parse_metrics_addr(value: str, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port). A non-loopback host needs ``allow_remote``."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise MetricsError(f"--metrics-addr {value!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise MetricsError(f"--metrics-addr {value!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise MetricsError(f"--metrics-addr {value!r}: port {port} is out of range (1-65535)")
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsError(f"--metrics-addr {value!r}: {host!r} is not an IP address (or localhost)") from None
    if not ip.is_loopback and not allow_remote:
        raise MetricsError(
            f"--metrics-addr {value!r}: {host} is not a loopback address; the metrics name your endpoints and "
            "policies, so serving them beyond this host needs --metrics-allow-remote"
        )
    return str(ip), port


class MetricsSource(Protocol):
    """What the collector reads of the agent (the daemon's Agent has all of it)."""

    @property
    def sensors(self) -> list[Sensor]: ...

    @property
    def cache(self) -> ProcessCache: ...

    @property
    def stats_fd(self) -> int | None: ...

    @property
    def network(self) -> Network | None: ...

    @property
    def services(self) -> ServicesControl | None: ...

    @property
    def tracing(self) -> Tracing | None: ...

    @property
    def process(self) -> Sensor | None: ...


def _entries(m: Map) -> int:
    """Entries in use, with batched lookups where the map has them (a few syscalls for a full 64k map)."""
    return m.count() if m.type_name == "lpm_trie" else len(m.lookup_batch())


TETRAGON_SENSORS = frozenset({"process", "tracing"})
POLICY_STATES = ("enabled", "disabled", "error", "load_error", "partially_enabled", "skipped")


class AgentCollector:
    """Metrics read when scraped: the kernel's map fill and program stats, counts of the agent's state."""

    def __init__(self, agent: MetricsSource, registry: CollectorRegistry) -> None:
        self.agent = agent
        self._flow_lost_seen = 0
        self._l7_lost_seen = 0
        disable_created_metrics()  # no `_created` series: neither Hubble nor Tetragon has them
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # collected only when scraped (never at registration)

    def collect(self) -> Iterator[Metric]:
        from .bpfinfo import program_row

        a = self.agent
        pressure = GaugeMetricFamily(
            "apiary_bpf_map_pressure", "Fill of a BPF map: entries / max_entries (hash and LPM maps)",
            labels=["map_name"],
        )
        # Tetragon's own map gauges, for the maps of the sensors Tetragon has (process and tracing)
        t_entries = GaugeMetricFamily("tetragon_map_entries", "Entries in a BPF map of the runtime sensors",
                                      labels=["map"])
        t_capacity = GaugeMetricFamily("tetragon_map_capacity", "Capacity of a BPF map of the runtime sensors",
                                       labels=["map"])
        seen: set[str] = set()
        for s in a.sensors:
            for m in s.owned_maps():
                if not m.count_entries or m.map.type_name not in _COUNTED_MAP_TYPES or not m.map.max_entries:
                    continue
                name = m.name if m.name not in seen else f"{m.name}#{m.map.id}"
                seen.add(name)
                n = _entries(m.map)
                pressure.add_metric([name], n / m.map.max_entries)
                if s.name in TETRAGON_SENSORS:
                    t_entries.add_metric([name], float(n))
                    t_capacity.add_metric([name], float(m.map.max_entries))
        yield pressure
        yield t_entries
        yield t_capacity
        loaded = GaugeMetricFamily("tetragon_tracingpolicy_loaded", "TracingPolicies by state", labels=["state"])
        states = dict.fromkeys(POLICY_STATES, 0)
        if a.tracing is not None:
            for st in a.tracing.stored.values():
                states["enabled" if st.enabled else "disabled"] += 1
            states["load_error"] += len(a.tracing.unrestored)  # stored, but this kernel could not load them
        for state, count in states.items():
            loaded.add_metric([state], float(count))
        yield loaded

        enabled = a.stats_fd is not None
        yield GaugeMetricFamily(
            "apiary_bpf_stats_enabled",
            "1 when the kernel counts BPF program runs and run time (BPF_ENABLE_STATS); 0: the run counters stay 0",
            value=1.0 if enabled else 0.0,
        )
        runs = CounterMetricFamily("apiary_bpf_program_runs", "BPF program runs", labels=["program", "attach"])
        secs = CounterMetricFamily(
            "apiary_bpf_program_run_seconds", "BPF program run time", labels=["program", "attach"]
        )
        totals: dict[tuple[str, str], list[int]] = {}
        for s in a.sensors:
            for p in s.program_rows():
                row = program_row(p)
                tot = totals.setdefault((p.name, p.attach), [0, 0])
                tot[0] += int(row["run_count"])
                tot[1] += int(row["run_time_ns"])
        for (prog, attach), (n, ns) in totals.items():
            runs.add_metric([prog, attach], n)
            secs.add_metric([prog, attach], ns / 1e9)
        yield runs
        yield secs

        net = a.network
        for name, doc, v in (
            ("endpoints", "Endpoints managed by the agent", len(net.em.endpoints) if net else 0),
            ("identities", "Security identities allocated", net.alloc.count() if net else 0),
            ("policies", "Network policies applied", len(net.policies) if net else 0),
            ("services", "Services load-balanced", len(a.services.services) if a.services else 0),
            ("tracing_policies", "TracingPolicies loaded", len(a.tracing.stored) if a.tracing else 0),
        ):
            yield GaugeMetricFamily(f"apiary_{name}", doc, value=float(v))
        info = GaugeMetricFamily("apiary_build_info", "apiary build information", labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info

        if net is not None and net.metrics is not None and net.dp.obj:
            lost = net.dp.lost()  # the kernel's count: moves Hubble's counter by the difference
            if lost > self._flow_lost_seen:
                net.metrics.lost("PERF_EVENT_RING_BUFFER", lost - self._flow_lost_seen)
                self._flow_lost_seen = lost
        if net is not None and net.metrics is not None and net.l7 is not None:
            # HAProxy's access-log records it could not write (pipe full): L7 flows lost before the agent saw
            # them. Not one of Hubble's sources (Cilium does not count Envoy's): apiary's own label value.
            dropped = net.l7.dropped
            if dropped > self._l7_lost_seen:
                net.metrics.lost(L7_LOST_SOURCE, dropped - self._l7_lost_seen)
                self._l7_lost_seen = dropped

        cs = a.cache.stats()
        yield GaugeMetricFamily("tetragon_process_cache_size", "Processes in the cache", value=float(cs["size"]))
        yield GaugeMetricFamily(
            "tetragon_process_cache_capacity", "Capacity of the process cache", value=float(cs["capacity"])
        )
        yield CounterMetricFamily(
            "tetragon_process_cache_evictions", "Processes evicted from the cache", value=float(cs["evictions"])
        )
        misses = CounterMetricFamily(
            "tetragon_process_cache_misses", "Process cache lookups that found nothing", labels=["operation"]
        )
        for op in ("get", "remove"):
            misses.add_metric([op], float(cs["misses"].get(op, 0)))
        yield misses

        missed = CounterMetricFamily(
            "tetragon_bpf_missed_events",
            "Records the kernel could not put on the event ring (full), by Tetragon msg_op",
            labels=["msg_op", "error"],
        )
        ring = a.process.records_into() if a.process is not None else None
        lost_by_type: dict[str, int] = {}
        for s in a.sensors:
            if ring is not None and s.records_into() is ring:
                for t, n in s.ring_counts().lost.items():
                    lost_by_type[t] = lost_by_type.get(t, 0) + n
        for t, op in TETRAGON_MSG_OPS.items():
            missed.add_metric([op, "ENOSPC"], float(lost_by_type.pop(t, 0)))
        for t, n in sorted(lost_by_type.items()):  # apiary's own message types (none lost, none shown)
            if n:
                missed.add_metric([t, "ENOSPC"], float(n))
        yield missed


async def start(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve ``registry`` at ``http://host:port/metrics`` until the returned runner is cleaned up."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(_: web.Request) -> web.Response:
        return web.Response(text="apiary agent metrics: /metrics\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise MetricsError(f"--metrics-addr {host}:{port}: cannot listen: {e.strerror or e}") from None
    return runner
