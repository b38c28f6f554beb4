"""The agent: owns every BPF object, turns kernel messages into events, serves the local API."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from apiary import __version__
from apiary.loader import BpfError
from apiary.loader import _libbpf as L
from apiary.loader.fs import BPFFS, TRACEFS, ensure_mounts, is_mounted, remove_pin_tree
from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache
from apiary.observe.procfs import scan_procfs
from apiary.sensors.base import Sensor
from apiary.sensors.process.sensor import ProcessSensor

from . import accounting, bpfinfo, grpc_serve, health, statedir
from .bus import EventBus
from .config import AgentConfig
from .events import ProcessEvents, Publisher, TracingEvents, parse_metrics_label_filter
from .export import Exporter
from .metrics_server import AgentCollector, MetricsError
from .metrics_server import start as start_metrics
from .prefilter import PrefilterControl
from .pumps import L7_LOG_BATCH_S, RING_BATCH_S, Pump, coalesced_reader
from .records import ReadCounters, RingReader
from .statedir import StateDirBusy
from .view import ConnectionStats
from .worker import DaemonWorker

if TYPE_CHECKING:
    from .network import Network
    from .services import ServicesControl
    from .tracing import Tracing


def _count_type(by_byte: list[int], rec: memoryview) -> None:
    by_byte[rec[0]] += 1


HOST_ADDRS_INTERVAL_S = 2.0  # how soon a node address added or removed is a NodePort address (or no longer)


class AgentError(Exception):
    """A start-up problem the user can fix; printed as one line."""


class Agent:
    def __init__(self, cfg: AgentConfig, say: Any = print) -> None:
        self.cfg = cfg
        self.say = say
        self.process: ProcessSensor | None = None  # its ring is the one the agent reads (tracing writes to it too)
        self.sensors: list[Sensor] = []  # every loaded sensor, in the order status and bpf list show them
        self._closers: list[Callable[[], None]] = []  # in load order; closed last first
        self.clock = KtimeClock()
        self.cache = ProcessCache(cfg.node_name, clock=self.clock, capacity=cfg.process_cache_size)
        # events are encoded to JSON only when a client reads them
        self.events = EventBus(cfg.event_history, cfg.client_queue)
        self.started = time.time()
        self.lock_fd: int | None = None
        self.state_lock_fd: int | None = None
        self.stats_fd: int | None = None
        self.loaded: list[str] = []
        self.missing: list[str] = []
        self.serving = {"Metrics": "the API socket's /metrics only (no --metrics-addr)"}  # shown by `apiary status`
        self.procfs_seeded = 0
        self.network: Network | None = None
        self.services: ServicesControl | None = None
        self.tracing: Tracing | None = None
        self.store = statedir.open_store(cfg.state_dir)  # the one store of the agent's desired state
        self.prefilter = PrefilterControl(cfg, lambda s: self._add(s, self.prefilter.close), store=self.store)
        # Prometheus metrics (never the global registry): Hubble's flow metrics and Tetragon's event counters
        self.registry = CollectorRegistry()
        self.publisher = Publisher(self.events, self.registry, cfg.node_name,
                                   parse_metrics_label_filter(cfg.metrics_label_filter))
        self.process_events = ProcessEvents(self.cache, self.clock, cfg.node_name, self.publisher)
        self.tracing_events = TracingEvents(None, self.cache, self.clock, cfg.node_name, self.publisher, self.registry)
        AgentCollector(self, self.registry)  # map pressure, program stats, counts: read when scraped
        self.reader = RingReader(None, {}, {})
        self.received_earlier: dict[str, int] = {}  # records of an adopted ring read by earlier agents, by type
        self.net_pool = DaemonWorker("control-plane")
        self.api_connections: ConnectionStats | None = None
        self.exporter: Exporter | None = None  # --export-* / --hubble-export-*: a subscriber of both buses
        self._stop: asyncio.Event | None = None
        self.rates = health.Rates()  # flows/s, events/s, losses over a recent window (`apiary status`)

    @property
    def counters(self) -> ReadCounters:
        """What the agent read from its ring: records by type byte and kind, decode and handler errors."""
        return self.reader.counters

    def _add(self, sensor: Sensor, close: Callable[[], None] | None, at: int | None = None) -> None:
        """A loaded sensor, and what closes it (None: a closer registered already closes it)."""
        self.sensors.insert(len(self.sensors) if at is None else at, sensor)
        if close is not None:
            self._closers.append(close)
        for row in sensor.program_rows():
            self.loaded.append(f"program {row.name} at {row.attach}")

    def use_process(self, sensor: ProcessSensor) -> None:
        """The (loaded) process sensor: the agent reads its ring, with the decoders of every sensor writing to it."""
        self.process = sensor
        self._add(sensor, lambda: sensor.close(keep_pins=self.cfg.keep_sensors_on_exit))
        self._wire()

    def _wire(self) -> None:
        ring = self.process.records_into() if self.process else None
        consumers = {**self.process_events.consumers(), **self.tracing_events.consumers()}
        self.reader = RingReader.of(ring, self.sensors, consumers)

    # ------------------------------------------------------------------ start-up / shut-down
    def _helpers_cgroup(self) -> int:
        """The cgroup id of the agent's own helper processes (its HAProxy and DNS socket holder), 0: none."""
        l7 = self.network.l7 if self.network is not None else None
        try:
            return l7.cgroup_id if l7 is not None else 0
        except OSError:  # not created (the proxy did not start)
            return 0

    def start(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise AgentError("apiary agent must run as root (it loads BPF programs)")
        if not Path("/sys/kernel/btf/vmlinux").exists():
            raise AgentError(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux missing): apiary needs CONFIG_DEBUG_INFO_BTF=y"
            )
        self._take_lock()
        if cfg.mount_fs:
            try:
                for what in ensure_mounts():
                    self.loaded.append(f"mounted {what}")
            except Exception as e:  # noqa: BLE001 - reported, not fatal for tracefs
                raise AgentError(f"cannot mount bpffs/tracefs: {e}") from e
        if not is_mounted(BPFFS, "bpf"):
            raise AgentError(
                f"bpffs is not mounted at {BPFFS}: run `apiary preflight --fix` or `mount -t bpf bpf {BPFFS}`"
            )
        if not is_mounted(TRACEFS, "tracefs"):
            self.missing.append(f"tracefs not mounted at {TRACEFS} (only needed by tracepoint policies)")
        if cfg.bpf_stats:
            fd = L.lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME, on while this fd is open
            if fd >= 0:
                self.stats_fd = fd
            else:
                self.missing.append("BPF run-time statistics (bpf_enable_stats refused)")
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        sensor = ProcessSensor(
            pin_dir=Path(cfg.pin_root) / "process",
            ringbuf_bytes=cfg.ringbuf_bytes,
            procs_max=cfg.process_cache_size,
            wakeup_bytes=max(64, cfg.ringbuf_bytes // 16),
        )
        try:
            sensor.load()
        except BpfError as e:
            raise AgentError(f"process sensor: {e}") from e
        self.use_process(sensor)
        # processes that existed before us: the cache gets them, and so does the kernel's table
        procs = scan_procfs()
        for msg in procs:
            self.cache.on_exec(msg)
        self.procfs_seeded = sensor.seed(procs)
        self.loaded.append(f"process cache seeded from /proc: {len(procs)} processes")
        if sensor.seed_full:
            self.missing.append(
                f"{sensor.seed_full} running processes did not fit the kernel's process table "
                f"(--process-cache-size {cfg.process_cache_size}): their events say flags 'miss'"
            )
        if sensor.adopted:
            self.loaded.append(
                "process sensor: adopted the previous agent's pinned maps and links (its counters and unread events)"
            )
        if cfg.network:
            from .network import Network

            try:
                self.network = Network(cfg, self.clock, self.registry, store=self.store)
                self.loaded += self.network.start()
            except Exception as e:  # noqa: BLE001 - reported in one line; the process sensor still works
                if self.network:
                    self.network.close()
                self.network = None
                raise AgentError(f"network datapath: {e}") from e
            self._add(self.network.dp, self.network.close)
            self.process_events.pods = self.network
            from apiary.loader.fs import cgroup2_root

            from .services import ServicesControl

            net = self.network
            try:
                # closed whether or not its sensor ever loads: with no service it still routes the service CIDR
                self._closers.append(self._close_services)
                self.services = ServicesControl(cfg, net, cgroup2_root() or "/sys/fs/cgroup",
                                                lambda s: self._add(s, None), store=self.store)
                self.loaded += self.services.start()
            except Exception as e:  # noqa: BLE001 - one line, then stop
                raise AgentError(f"services: {e}") from e
            net.endpoint_listeners.append(self.services.endpoints_changed)
        if cfg.tracing:
            from apiary.kernel.features import kernel_features

            from .tracing import Tracing

            try:
                self.tracing = Tracing(
                    self.store,
                    sensor,
                    kernel_features(),
                    self.network,
                    agent_exemption=cfg.agent_exemption,
                    restore=cfg.restore_tracing,
                    pin_dir=Path(cfg.pin_root) / "tracing",
                    helpers_cgroup=self._helpers_cgroup,
                )
                self.loaded += self.tracing.start()
            except Exception as e:  # noqa: BLE001 - one line, then stop
                if self.tracing:
                    self.tracing.close()
                self.tracing = None
                raise AgentError(f"tracing sensor: {e}") from e
            tracing = self.tracing
            # shown after the process sensor, as ever
            self._add(tracing.sensor, lambda: tracing.close(keep_pins=cfg.keep_sensors_on_exit), at=1)
            self.tracing_events.tracing = self.tracing
            if self.network is not None:
                self.network.endpoint_listeners.append(self.tracing.refresh_scopes)
            self._wire()
        else:  # a previous agent's tracing pins would enforce with nobody managing them
            remove_pin_tree(Path(cfg.pin_root) / "tracing")
        try:
            loaded, missing = self.prefilter.start()
        except Exception as e:  # noqa: BLE001 - one line, then stop
            raise AgentError(f"XDP prefilter: {e}") from e
        self.loaded += loaded
        self.missing += missing
        if self.process is not None and self.process.adopted:
            self.loaded.append(self._baseline_adopted_ring())
        self._start_export()

    def _baseline_adopted_ring(self, attempts: int = 20) -> str:
        """An adopted ring's producer counters include what earlier agents read: count those records (written
        minus what still waits in the ring, per type, from a snapshot no producer wrote into) as received
        before, so that produced = received + lost + in ring holds for this agent too. Runs before this agent
        reads anything."""
        base: dict[str, int] = {}
        after: dict[str, int] = {}
        for _ in range(attempts):
            before, _lost, _kc = self._kernel_counts()
            pending, walked = self._pending()
            after, _lost, _kc = self._kernel_counts()
            if walked:
                for t, w in after.items():
                    if t not in base and before.get(t, 0) == w and w >= pending.get(t, 0):
                        base[t] = w - pending.get(t, 0)
            if all(t in base for t in after):
                break
        self.received_earlier = base
        unsettled = sorted(t for t in after if t not in base)
        read = sum(base.values())
        if unsettled:  # said, and the accounting of those types stays "not reconciled": never guessed
            return (f"event ring: {read:,} records read by earlier agents; could not settle {', '.join(unsettled)} "
                    f"(producers kept writing during {attempts} snapshots)")
        return f"event ring: {read:,} records read by earlier agents, the rest are read now"

    def _start_export(self) -> None:
        x = self.cfg.export
        if x.hubble_export_file_path and self.network is None:
            raise AgentError("--hubble-export-file-path: no flows without the network datapath (--no-network)")
        if x.events_on or x.flows_on:
            try:
                self.exporter = Exporter(x, self.cfg.node_name, self.registry)
                self.loaded += self.exporter.start()
            except (OSError, ValueError) as e:
                raise AgentError(f"export: {e}") from e
            self.exporter.attach(self.events, self.network.flows if self.network else None)
            self._closers.append(self.exporter.close)  # closed first: it writes what the buses still hold

    def _close_services(self) -> None:
        if self.services is not None:
            self.services.close()

    def _take_lock(self) -> None:
        sock_dir = Path(self.cfg.socket_path).parent
        os.makedirs(sock_dir, mode=0o700, exist_ok=True)
        lock_path = Path(str(self.cfg.socket_path) + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode().strip() or "?"
            os.close(fd)
            raise AgentError(f"another apiary agent (pid {other}) is already serving {self.cfg.socket_path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd
        try:  # the state directory too: offline edits (`tp delete --offline`) refuse while we run
            self.state_lock_fd = statedir.lock(self.cfg.state_dir)
        except StateDirBusy as e:
            raise AgentError(str(e)) from None

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        self.sensors.clear()
        self.tracing = self.network = self.process = self.services = None
        try:
            os.rmdir(self.cfg.pin_root)  # only when empty: other sensors' pins stay
        except OSError:
            pass
        if self.stats_fd is not None:
            os.close(self.stats_fd)
            self.stats_fd = None
        if self.state_lock_fd is not None:
            os.close(self.state_lock_fd)
            self.state_lock_fd = None
        if self.lock_fd is not None:  # only the agent holding the lock owns the socket
            try:
                os.unlink(self.cfg.socket_path)
            except FileNotFoundError:
                pass
            os.close(self.lock_fd)
            self.lock_fd = None

    def summary(self) -> str:
        lines = [f"apiary agent {__version__} on node {self.cfg.node_name}"]
        lines += [f"  ✓ {x}" for x in self.loaded]
        lines += [f"  ✗ {x}" for x in self.missing]
        lines.append(f"  API on unix socket {self.cfg.socket_path} (mode 0600)")
        return "\n".join(lines)

    # ------------------------------------------------------------------ event pipeline
    def handle_record(self, buf: memoryview) -> None:
        """One record of the agent's ring, as if read from it (decoded by its sensor's handler)."""
        self.reader.record(buf)

    def drain(self) -> int:
        return self.reader.drain()

    # ------------------------------------------------------------------ views
    def status(self) -> dict[str, Any]:
        acc, kc = self.accounting()
        progs = [bpfinfo.program_row(row) for s in self.sensors for row in s.program_rows()]
        maps = [
            bpfinfo.map_row(m.map, m.pin, count_entries=m.count_entries) | {"owner": s.name}
            for s in self.sensors
            for m in s.owned_maps()
            if m.in_status
        ]
        c = self.reader.counters
        emitted = self.publisher.counters
        out: dict[str, Any] = {
            "version": __version__,
            "node_name": self.cfg.node_name,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "bpf_stats": self.stats_fd is not None,
            "programs": progs,
            "maps": maps,
            "process_cache": self.cache.stats(),
            "events": {
                **acc,
                "kernel_written": {t: row["written"] for t, row in acc["by_type"].items()},
                "kernel_lost": {t: row["lost"] for t, row in acc["by_type"].items()},
                "received_by_earlier_agents": dict(self.received_earlier),  # an adopted ring's, in "received"
                "events_missing_process_info": emitted.missing_process_info,
                "event_build_errors": emitted.build_errors,
                "decoded": dict(c.by_type),
                "decode_errors": c.decode_errors,
                "handler_errors": c.handler_errors,
                "emitted": dict(emitted.events),
                "client_drops": self.events.drops,
                "procs_map_full": kc.get("procs_full", 0),
            },
            "subscribers": len(self.events.subscribers),
            "api_connections": self.api_connections.stats() if self.api_connections else None,
            "network": self.network.status() if self.network else None,
            "services": self.services.status() if self.services else None,
            "export": self.exporter.status() if self.exporter else None,
            "serving": dict(self.serving),
        }
        self.rates.sample(self.rate_counters())
        rates = self.rates.rates()
        subs = health.subsystems(
            out, rates, network_enabled=self.cfg.network, tracing_enabled=self.tracing is not None,
            tracing_policies=self.tracing.rows() if self.tracing else None,
            prefilter=self.prefilter.listing() if self.prefilter.sensor else None, missing=self.missing,
        )
        return out | {"overall": health.overall(subs), "subsystems": subs, "rates": rates}

    def rate_counters(self) -> dict[str, int]:
        """The cumulative counters `apiary status` turns into rates (cheap: no map walk)."""
        _written, lost, _other = self._kernel_counts()
        c, net = self.reader.counters, self.network
        nc = net.reader.counters if net and net.reader else None
        return {
            "events": sum(self.publisher.counters.events.values()),
            "events_lost": sum(lost.values()),
            "event_client_drops": self.events.drops,
            "event_errors": c.decode_errors + c.handler_errors,
            "flows": nc.received if nc else 0,
            "flows_lost": net.dp.lost() if net and net.dp.obj else 0,
            "flow_errors": nc.decode_errors + nc.handler_errors if nc else 0,
            "l7_restarts": net.l7.restarts if net and net.l7 else 0,
            "l7_upstream_errors": net.l7_counts["upstream_errors"] if net else 0,
            "l7_dropped_records": net.l7.dropped if net and net.l7 else 0,
            "dns_upstream_errors": int(net.dns.counters["upstream_errors"]) if net and net.dns else 0,
            "dns_holder_restarts": net.dns_holder_restarts if net else 0,
        }

    def _kernel_counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """What the producers of the agent's ring wrote and lost, per message type; their other counters."""
        written: dict[str, int] = {}
        lost: dict[str, int] = {}
        other: dict[str, int] = {}
        for s in self.sensors:
            if self.reader.ring is not None and s.records_into() is self.reader.ring:
                rc = s.ring_counts()
                written.update(rc.written)
                lost.update(rc.lost)
                other.update(rc.other)
        return written, lost, other

    def _pending(self) -> tuple[dict[str, int], bool]:
        """The records waiting in the ring, by type, without consuming them; False: the walk stopped early."""
        by_byte = [0] * 256
        walked = self.reader.peek(partial(_count_type, by_byte))
        return accounting.by_name(by_byte), walked

    def accounting(self, attempts: int = 3) -> tuple[dict[str, Any], dict[str, int]]:
        """Per-type accounting of the ring (apiary.agent.accounting), checked against the ring itself.

        The ring is drained first, so what stays in it is what producers wrote meanwhile. Under load
        a snapshot can catch a record between its write and its count: tried again (``attempts``).
        """
        acc: dict[str, Any] = {}
        kc: dict[str, int] = {}
        for _ in range(attempts):
            self.drain()
            before, _lost, _kc = self._kernel_counts()
            pending, walked = self._pending()
            received = accounting.by_name(self.reader.counters.received_by_byte)
            for t, n in self.received_earlier.items():  # an adopted ring: what earlier agents read
                received[t] = received.get(t, 0) + n
            after, lost, kc = self._kernel_counts()
            acc = accounting.reconcile(before, after, lost, received, pending, walked)
            if acc["reconciled"]:
                break
        return acc, kc

    def bpf_list(self) -> dict[str, Any]:
        out: dict[str, Any] = {"programs": [], "links": [], "maps": []}
        for s in self.sensors:
            for row in s.program_rows():
                prog = bpfinfo.program_row(row)
                out["programs"].append({k: prog[k] for k in bpfinfo.LIST_KEYS})
            out["links"] += [bpfinfo.link_row(lk) for lk in s.link_rows()]
            out["maps"] += [
                bpfinfo.map_row(m.map, m.pin, count_entries=False) | {"owner": s.name} for m in s.owned_maps()
            ]
        return out

    # ------------------------------------------------------------------ serving
    async def run(self) -> None:
        from .api import serve

        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        net = self.network
        # the services' ring exists once the first service loaded the LB: drained by the timer only
        pumps: list[Pump] = [p for p in (self.reader, net, net and net.l7, self.services) if p]
        woken = [p for p in pumps if p.fileno() >= 0]
        unwatch = [coalesced_reader(loop, p, L7_LOG_BATCH_S if net is not None and p is net.l7 else RING_BATCH_S)
                   for p in woken]
        metrics = None
        if self.cfg.metrics_addr is not None:
            try:
                metrics = await start_metrics(self.registry, *self.cfg.metrics_addr)
            except MetricsError as e:
                raise AgentError(str(e)) from None
            host, port = self.cfg.metrics_addr
            self.loaded.append(f"Prometheus metrics on http://{host}:{port}/metrics")
            self.serving["Metrics"] = f"http://{host}:{port}/metrics (and the API socket's /metrics)"
        runner = await serve(self)
        try:  # Hubble's and Tetragon's gRPC APIs, in this event loop
            grpc_servers = await grpc_serve.start(self)
        except grpc_serve.GrpcStartError as e:
            await runner.cleanup()
            raise AgentError(str(e)) from None
        self.loaded += grpc_servers.loaded
        self.missing += grpc_servers.missing
        self.serving |= grpc_servers.serving
        gc.freeze()  # what start-up made lives as long as the agent: the collector no longer scans it
        self.say(self.summary(), flush=True)

        async def safety_net() -> None:  # a missed wake-up never strands records
            while True:
                await asyncio.sleep(self.cfg.drain_interval)
                for p in pumps:
                    p.drain()
                self.clock.resync()

        async def sample_rates() -> None:  # the window `apiary status` computes flows/s and events/s over
            while True:
                self.rates.sample(self.rate_counters())
                if net and net.metrics:  # and the Hubble series of pods deleted a minute ago go
                    net.metrics.sweep(time.monotonic())
                await asyncio.sleep(5)

        async def ct_gc() -> None:
            while net:
                await asyncio.sleep(30)
                net.dp.ct_gc()

        async def host_addrs() -> None:  # the LB's node addresses follow the node's (on the worker, as its changes)
            svc, said = self.services, ""
            while svc is not None:
                await asyncio.sleep(HOST_ADDRS_INTERVAL_S)
                try:
                    await loop.run_in_executor(self.net_pool, svc.refresh_host_addrs)
                except Exception as e:  # noqa: BLE001 - e.g. more addresses than the map holds: the next round retries
                    if str(e) != said:
                        said = str(e)
                        self.say(f"services: the node's addresses were not refreshed: {e}", flush=True)

        async def l7_watch() -> None:  # a dead proxy is restarted (the gap is in status)
            while net and net.l7:
                await asyncio.sleep(1)
                if net.l7.check():
                    self.say(f"L7 proxy restarted (restarts: {net.l7.restarts})", flush=True)

        tasks = [asyncio.create_task(safety_net()), asyncio.create_task(ct_gc()), asyncio.create_task(sample_rates()),
                 asyncio.create_task(l7_watch()), asyncio.create_task(host_addrs())]
        if self.exporter is not None:
            tasks.append(asyncio.create_task(self.exporter.run()))
        if net is not None:  # the DNS proxy of toFQDNs policy; its policy changes run on the control-plane worker
            tasks.append(asyncio.create_task(net.dns_serve(lambda fn: loop.run_in_executor(self.net_pool, fn))))
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for stop in reversed(unwatch):
                stop()
            for p in reversed(pumps):
                p.drain()
            await grpc_servers.stop()
            await runner.cleanup()
            if metrics is not None:
                await metrics.cleanup()
            await self._settle_worker(loop)

    async def _settle_worker(self, loop: asyncio.AbstractEventLoop, grace: float = 5.0) -> None:
        """Give a change in progress a moment to finish; never wait for it longer (its thread is a daemon)."""
        if self.net_pool.busy() is None:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.net_pool.submit(lambda: None), loop=loop), grace)
        except TimeoutError:
            what, secs = self.net_pool.busy() or ("?", 0.0)
            self.say(
                f"stopping while the control-plane worker is still busy with {what} (for {secs:.0f} s): "
                "that change may be incomplete",
                flush=True,
            )

    def request_stop(self) -> None:
        if self._stop:
            self._stop.set()
