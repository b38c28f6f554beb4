"""The agent: owns every BPF object, turns kernel messages into events, serves the local API."""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from apiary import __version__
from apiary.loader import BpfError
from apiary.loader import _libbpf as L
from apiary.loader.fs import BPFFS, TRACEFS, ensure_mounts, is_mounted, remove_pin_tree
from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache
from apiary.observe.procfs import scan_procfs
from apiary.observe.raw import ExecMsg, ExitMsg, ForkMsg
from apiary.observe.tetragon import events as tetragon
from apiary.observe.tetragon.filters import EventFilter
from apiary.sensors.process import abi
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tracing_abi

from . import accounting, bpfinfo, statedir
from .config import AgentConfig
from .statedir import StateDirBusy
from .worker import DaemonWorker


def _count_type(by_byte: list[int], rec: memoryview) -> None:
    by_byte[rec[0]] += 1


class AgentError(Exception):
    """A start-up problem the user can fix; printed as one line."""


@dataclass
class Subscriber:
    queue: asyncio.Queue[dict[str, Any]]
    flt: EventFilter
    dropped: int = 0


@dataclass
class Counters:
    received: int = 0  # ring-buffer records read by the agent
    received_by_byte: list[int] = field(default_factory=lambda: [0] * 256)  # by the record's type byte
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)
    events: collections.Counter[str] = field(default_factory=collections.Counter)  # events emitted by kind
    decode_errors: int = 0
    handler_errors: int = 0  # exceptions while handling a record (logged once per kind)
    client_drops: int = 0
    missing_process_info: int = 0  # tracing events whose process the cache did not know (still emitted)


class Agent:
    def __init__(self, cfg: AgentConfig, say: Any = print) -> None:
        self.cfg = cfg
        self.say = say
        self.sensor: ProcessSensor | None = None
        self.clock = KtimeClock()
        self.cache = ProcessCache(cfg.node_name, clock=self.clock, capacity=cfg.process_cache_size)
        # events are encoded to JSON only when a client reads them
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.event_history)
        self.subscribers: list[Subscriber] = []
        self.counters = Counters()
        self.started = time.time()
        self.lock_fd: int | None = None
        self.state_lock_fd: int | None = None
        self.stats_fd: int | None = None
        self.loaded: list[str] = []
        self.missing: list[str] = []
        self.procfs_seeded = 0
        self._logged: set[str] = set()
        self.network: Any = None
        self.tracing: Any = None
        # Prometheus metrics (never the global registry): Hubble's flow metrics and Tetragon's event counters
        self.registry = CollectorRegistry()
        self.m_events = Counter(
            "events_total", "Events by type", ["type"], namespace="tetragon", registry=self.registry
        )
        self.m_missing_process = Counter(
            "events_missing_process_info",
            "Tracing events emitted without their process's info (the process was unknown)",
            namespace="tetragon",
            registry=self.registry,
        )
        self.m_policy_events = Counter(
            "policy_events_total",
            "TracingPolicy events by policy and hook",
            ["policy", "hook", "namespace", "workload", "pod", "binary", "node_name"],
            namespace="tetragon",
            registry=self.registry,
        )
        self.net_pool = DaemonWorker("control-plane")
        self.api_connections: Any = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ start-up / shut-down
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
        self.sensor = sensor
        for name, _fd, point in sensor.info.programs:
            self.loaded.append(f"program {name} at {point}")
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
                self.network = Network(cfg, self.clock, self.registry)
                self.loaded += self.network.start()
            except Exception as e:  # noqa: BLE001 - reported in one line; the process sensor still works
                if self.network:
                    self.network.close()
                self.network = None
                raise AgentError(f"network datapath: {e}") from e
            for name, _fd, point in self.network.dp.programs():
                self.loaded.append(f"program {name} at {point}")
        if cfg.tracing:
            from apiary.kernel.features import kernel_features

            from .tracing import Tracing

            try:
                self.tracing = Tracing(
                    cfg.state_dir,
                    sensor,
                    kernel_features(),
                    self.network,
                    agent_exemption=cfg.agent_exemption,
                    restore=cfg.restore_tracing,
                    pin_dir=Path(cfg.pin_root) / "tracing",
                )
                self.loaded += self.tracing.start()
            except Exception as e:  # noqa: BLE001 - one line, then stop
                if self.tracing:
                    self.tracing.close()
                self.tracing = None
                raise AgentError(f"tracing sensor: {e}") from e
            for name, _fd, point in self.tracing.sensor.programs():
                self.loaded.append(f"program {name} at {point}")
            if self.network is not None:
                self.network.on_endpoints_changed = self.tracing.refresh_scopes
        else:  # a previous agent's tracing pins would enforce with nobody managing them
            remove_pin_tree(Path(cfg.pin_root) / "tracing")

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
        if self.tracing:
            self.tracing.close()
            self.tracing = None
        if self.network:
            self.network.close()
            self.network = None
        if self.sensor:
            self.sensor.close()
            self.sensor = None
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
        self.counters.received += 1
        self.counters.received_by_byte[buf[0]] += 1
        if buf[0] == tracing_abi.MSG_GENERIC:
            self._generic(buf)
            return
        try:
            msg = abi.decode(buf)
        except Exception:  # noqa: BLE001 - a corrupt record is counted, never fatal
            self.counters.decode_errors += 1
            return
        if isinstance(msg, ExecMsg):
            self.counters.by_type["exec"] += 1
            p = self.cache.on_exec(msg)
            if self.network is not None:
                p.pod = self.network.pod_of_cgroup(msg.cgroup_id)
            parent = self.cache.parent(p)
            ev = tetragon.exec_event(
                p, parent, self.cache.ancestors(p), self.cfg.node_name, self.clock.to_rfc3339(msg.ktime)
            )
            self.publish("exec", ev)
        elif isinstance(msg, ForkMsg):
            self.counters.by_type["fork"] += 1
            child = self.cache.on_fork(msg)
            parent = self.cache.parent(child)
            if parent is not None:
                child.pod = parent.pod
        elif isinstance(msg, ExitMsg):
            self.counters.by_type["exit"] += 1
            p = self.cache.on_exit(msg)
            if p is not None:
                ev = tetragon.exit_event(
                    p,
                    self.cache.parent(p),
                    self.cache.ancestors(p),
                    self.cfg.node_name,
                    self.clock.to_rfc3339(msg.ktime),
                    msg.status,
                    msg.signal,
                )
                self.publish("exit", ev)
        elif msg == abi.MSG_BENCH:
            self.counters.by_type["bench"] += 1
        else:
            self.counters.decode_errors += 1

    def _generic(self, buf: memoryview) -> None:
        self.counters.by_type["generic"] += 1
        if self.tracing is None:
            self.counters.decode_errors += 1
            return
        try:
            ev = tracing_abi.decode_event(buf)
            res = self.tracing.event(ev, self.cache, self.cfg.node_name, self.clock.to_rfc3339(ev.ktime))
        except Exception:  # noqa: BLE001 - counted, never fatal
            self.counters.decode_errors += 1
            return
        if res is None:  # a hook id no policy ever had: a corrupt record
            self.counters.decode_errors += 1
            return
        out, known = res
        if not known:  # emitted all the same, with what the record says of the process
            self.counters.missing_process_info += 1
            self.m_missing_process.inc()
        kind = next(iter(out))
        body = out[kind]
        proc = body.get("process", {})
        pod = proc.get("pod") or {}
        self.m_policy_events.labels(
            body.get("policy_name", ""),
            body.get("function_name") or f"{body.get('subsys', '')}/{body.get('event', '')}",
            pod.get("namespace", ""),
            pod.get("workload", ""),
            pod.get("name", ""),
            proc.get("binary", ""),
            self.cfg.node_name,
        ).inc()
        self.publish(kind.removeprefix("process_"), out)

    def publish(self, kind: str, ev: dict[str, Any]) -> None:
        self.counters.events[kind] += 1
        self.m_events.labels("PROCESS_" + kind.upper()).inc()
        self.history.append(ev)
        for sub in self.subscribers:
            try:
                sub.queue.put_nowait(ev)
            except asyncio.QueueFull:
                sub.dropped += 1
                self.counters.client_drops += 1

    def _safe_record(self, buf: memoryview) -> None:
        """A failure on one record is counted and logged (once per kind); the ring keeps draining."""
        try:
            self.handle_record(buf)
        except Exception as e:  # noqa: BLE001
            self.counters.handler_errors += 1
            key = f"{type(e).__name__}: {e}"
            if key not in self._logged:
                self._logged.add(key)
                traceback.print_exc()

    def drain(self) -> int:
        if not self.sensor or not self.sensor.ring:
            return 0
        return self.sensor.ring.consume(self._safe_record)

    # ------------------------------------------------------------------ views
    def status(self) -> dict[str, Any]:
        s = self.sensor
        acc, kc = self.accounting()
        progs = []
        maps = []
        if s and s.obj:
            link_ids = {lk.prog.name: getattr(lk, "id", 0) for lk in s.links}
            for name, fd, point in s.info.programs:
                progs.append(bpfinfo.program_row(name, fd, point, link_ids.get(name, 0)))
            for name, m in s.maps().items():
                if name.endswith((".rodata", ".bss", ".data")) or name in ("abi_types",):
                    continue
                maps.append(bpfinfo.map_row(m, s.info.pins.get(name)))
        if self.tracing and self.tracing.sensor.obj:
            for name, fd, point in self.tracing.sensor.programs():
                progs.append(bpfinfo.program_row(name, fd, point))
        if self.network and self.network.dp.obj:
            dp = self.network.dp
            for name, fd, point in dp.programs():
                progs.append(bpfinfo.program_row(name, fd, point))
            for name, m in dp.maps().items():
                if name.endswith(".rodata") or name == "dp_abi_types":
                    continue
                maps.append(bpfinfo.map_row(m, dp.pins.get(name), count_entries=name != "ct"))
        return {
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
                "events_missing_process_info": self.counters.missing_process_info,
                "decoded": dict(self.counters.by_type),
                "decode_errors": self.counters.decode_errors,
                "handler_errors": self.counters.handler_errors,
                "emitted": dict(self.counters.events),
                "client_drops": self.counters.client_drops,
                "procs_map_full": kc.get("procs_full", 0),
            },
            "subscribers": len(self.subscribers),
            "api_connections": self.api_connections.stats() if self.api_connections else None,
            "network": self.network.status() if self.network else None,
        }

    def _kernel_counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """What the producers of the shared ring wrote and lost, per message type; the raw counters."""
        kc = self.sensor.counters() if self.sensor else {}
        written = {k: kc.get(k, 0) for k in ("exec", "fork", "exit", "bench")}
        lost = {k: kc.get("lost_" + k, 0) for k in ("exec", "fork", "exit", "bench")}
        if self.tracing is not None and self.tracing.sensor.obj:
            t = self.tracing.sensor.totals()
            written["tracing"], lost["tracing"] = t["posted"], t["lost"]
        return written, lost, kc

    def accounting(self, attempts: int = 3) -> tuple[dict[str, Any], dict[str, int]]:
        """Per-type accounting of the ring (apiary.agent.accounting), checked against the ring itself.

        The ring is drained first, so what stays in it is what producers wrote meanwhile. Under load
        a snapshot can catch a record between its write and its count: tried again (``attempts``).
        """
        acc: dict[str, Any] = {}
        kc: dict[str, int] = {}
        ring = self.sensor.ring if self.sensor else None
        for _ in range(attempts):
            self.drain()
            before, _lost, _kc = self._kernel_counts()
            by_byte = [0] * 256
            walked = ring.peek(partial(_count_type, by_byte)) if ring else True
            pending = accounting.by_name(by_byte)
            received = accounting.by_name(self.counters.received_by_byte)
            after, lost, kc = self._kernel_counts()
            acc = accounting.reconcile(before, after, lost, received, pending, walked)
            if acc["reconciled"]:
                break
        return acc, kc

    def bpf_list(self) -> dict[str, Any]:
        s = self.sensor
        out: dict[str, Any] = {"programs": [], "links": [], "maps": []}
        if not s or not s.obj:
            return out
        for lk in s.links:
            out["links"].append(
                {"id": lk.id, "program": lk.prog.name, "attach": lk.describe(), "pin": lk.pin_path or ""}
            )
        for name, fd, point in s.info.programs:
            row = bpfinfo.program_row(name, fd, point)
            out["programs"].append({k: row[k] for k in ("id", "name", "type", "attach", "run_count")})
        for name, m in s.maps().items():
            out["maps"].append(bpfinfo.map_row(m, s.info.pins.get(name), count_entries=False) | {"owner": s.name})
        if self.tracing and self.tracing.sensor.obj:
            ts = self.tracing.sensor
            for name, fd, point in ts.programs():
                row = bpfinfo.program_row(name, fd, point)
                out["programs"].append({k: row[k] for k in ("id", "name", "type", "attach", "run_count")})
            for lk in [*ts.links, *ts.sys_links.values(), *ts.follow_links]:
                out["links"].append(
                    {"id": lk.id, "program": lk.prog.name, "attach": lk.describe(), "pin": lk.pin_path or ""}
                )
            for name, m in ts.obj.maps.items():
                if name in ("events", "procs", "binaries"):
                    continue  # the process sensor's, shared
                pin = ts.pins.map_path(name) if ts.pins and "." not in name else None
                out["maps"].append(bpfinfo.map_row(m, pin, count_entries=False) | {"owner": ts.name})
        if self.network and self.network.dp.obj:
            dp = self.network.dp
            for name, fd, point in dp.programs():
                row = bpfinfo.program_row(name, fd, point)
                out["programs"].append({k: row[k] for k in ("id", "name", "type", "attach", "run_count")})
            for f in dp.filters():
                out["links"].append({"id": 0, "program": f.prog.name, "attach": f.describe(), "pin": ""})
            for name, m in dp.maps().items():
                out["maps"].append(bpfinfo.map_row(m, dp.pins.get(name), count_entries=False) | {"owner": dp.name})
        return out

    # ------------------------------------------------------------------ serving
    async def run(self) -> None:
        from .api import serve

        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        assert self.sensor and self.sensor.ring
        loop.add_reader(self.sensor.ring.fileno(), self.drain)
        net = self.network
        if net and net.dp.ring:
            loop.add_reader(net.dp.ring.fileno(), net.drain)
        runner = await serve(self)
        self.say(self.summary(), flush=True)

        async def safety_net() -> None:  # a missed wake-up never strands records
            while True:
                await asyncio.sleep(self.cfg.drain_interval)
                self.drain()
                if net:
                    net.drain()
                self.clock.resync()

        async def ct_gc() -> None:
            while net:
                await asyncio.sleep(30)
                net.dp.ct_gc()

        tasks = [asyncio.create_task(safety_net()), asyncio.create_task(ct_gc())]
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            if net and net.dp.ring:
                loop.remove_reader(net.dp.ring.fileno())
                net.drain()
            loop.remove_reader(self.sensor.ring.fileno())
            self.drain()
            await runner.cleanup()
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
