"""apiary benchmarks. Every figure is a ratio against a baseline measured in the same run.

  (a) overhead of the process sensor on an exec-heavy and an open/close-heavy workload,
      each timed without the agent and with a real agent running (rounds interleaved, medians);
  (b) events per second the agent ingests end to end from the kernel ring buffer, with
      produced = delivered + lost checked exactly; and the cost of the full exec/exit pipeline.

Also (bench/tracing.py, bench/datapath.py, bench/prefilter.py) the tracing sensor, the TC datapath and the XDP
prefilter (per packet, and its drop rate through a veth against iptables raw rules and an ipset:
bench/prefilter_drop.py), (bench/apply.py) the policy apply latency at 10 / 100 / 1,000 / 10,000 rules, and
(bench/services.py) apiary's services against kube-proxy's iptables and IPVS modes
at 10 / 100 / 1,000 / 10,000 services, and (bench/l7.py) HTTP through the L7 proxy against no policy, an L3/L4
policy and a plain HAProxy hop, and (bench/dns.py) DNS queries through the DNS proxy against
straight to the resolver (dnsperf).

Run: `make bench` (root), or one part: `make bench ARGS="--only apply"`. Options: --rounds N --execs N
--opens N --events N --apply-rounds N; the services part: --quick (N = 10, 100), --svc-sizes, --svc-modes, --out
(see `python -m bench.services --help`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from apiary.agent.config import AgentConfig
from apiary.agent.daemon import Agent
from apiary.loader.fs import ensure_mounts
from apiary.sensors.process.sensor import ProcessSensor
from apiary.testing.agent import AgentProcess

EXEC_LOOP = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
OPEN_LOOP = "import os\nfor _ in range({n}):\n    os.close(os.open('/etc/hostname', os.O_RDONLY))\n"


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def overhead(rounds: int, execs: int, opens: int) -> dict[str, tuple[float, float]]:
    workloads = {
        f"exec loop ({execs} x /bin/true)": ["/bin/sh", "-c", EXEC_LOOP.format(n=execs)],
        f"open/close loop ({opens} x)": [sys.executable, "-c", OPEN_LOOP.format(n=opens)],
    }
    base: dict[str, list[float]] = {k: [] for k in workloads}
    agent: dict[str, list[float]] = {k: [] for k in workloads}
    for cmd in workloads.values():  # warm caches
        timed(cmd)
    for _ in range(rounds):
        for name, cmd in workloads.items():
            base[name].append(timed(cmd))
        with AgentProcess(node_name="bench"):
            time.sleep(0.5)
            for name, cmd in workloads.items():
                agent[name].append(timed(cmd))
    return {k: (statistics.median(base[k]), statistics.median(agent[k])) for k in workloads}


def ingest(n_events: int) -> dict[str, float]:
    """The agent's own record handler draining the ring while a process makes n_events messages."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys; sys.stdin.readline(); [os.getppid() for _ in range({n_events})]"],
        stdin=subprocess.PIPE,
        text=True,
    )
    sensor = ProcessSensor(ringbuf_bytes=16 << 20, bench_tgid=child.pid)
    sensor.load()
    a = Agent(AgentConfig(node_name="bench"))
    a.use_process(sensor)
    try:
        assert child.stdin
        t0 = time.perf_counter()
        child.stdin.write("go\n")
        child.stdin.flush()
        while child.poll() is None:
            if sensor.ring and sensor.ring.available() == 0:
                time.sleep(0.0005)
            a.drain()
        a.drain()
        elapsed = time.perf_counter() - t0
        c = sensor.counters()
        delivered = a.counters.by_type["bench"]
        produced = c["bench"] + c["lost_bench"]
        assert produced == n_events, (produced, n_events)
        assert produced == delivered + c["lost_bench"], (produced, delivered, c)
        # baseline in the same run: reading the same ring with a handler that does nothing
        return {
            "produced": produced,
            "delivered": delivered,
            "lost": c["lost_bench"],
            "seconds": elapsed,
            "rate": delivered / elapsed,
        }
    finally:
        if child.poll() is None:
            child.kill()
        sensor.close()


def ring_baseline(n_events: int) -> float:
    """Records/s the bare ring reader reaches with a no-op handler (same ring, same producer)."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys; sys.stdin.readline(); [os.getppid() for _ in range({n_events})]"],
        stdin=subprocess.PIPE,
        text=True,
    )
    sensor = ProcessSensor(ringbuf_bytes=64 << 20, bench_tgid=child.pid)
    sensor.load()
    try:
        assert child.stdin and sensor.ring
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait()
        t0 = time.perf_counter()
        n = sensor.ring.consume(lambda b: None)
        return n / (time.perf_counter() - t0)
    finally:
        sensor.close()


def pipeline(execs: int) -> tuple[float, int]:
    """exec/fork/exit records of a real workload, replayed through decode + cache + Tetragon JSON."""
    sensor = ProcessSensor(ringbuf_bytes=64 << 20)
    sensor.load()
    a = Agent(AgentConfig(node_name="bench"))
    a.use_process(sensor)  # its decoders; the records are replayed below, after the sensor is gone
    records: list[bytes] = []
    try:
        subprocess.run(["/bin/sh", "-c", EXEC_LOOP.format(n=execs)], check=True)
        assert sensor.ring
        sensor.ring.consume(lambda b: records.append(bytes(b)))
    finally:
        sensor.close()
    t0 = time.perf_counter()
    for r in records:
        a.handle_record(memoryview(r))
    dt = time.perf_counter() - t0
    return len(records) / dt, len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=2000)
    ap.add_argument("--opens", type=int, default=200000)
    ap.add_argument("--events", type=int, default=1000000)
    ap.add_argument(
        "--only", choices=["process", "datapath", "tracing", "apply", "prefilter", "services", "export", "l7",
                            "dns", "flowcost"],
        default=None,
    )
    ap.add_argument("--apply-rounds", type=int, default=5, help="rounds per size of the policy apply bench")
    ap.add_argument("--repeat", type=int, default=200000, help="BPF_PROG_TEST_RUN repetitions")
    ap.add_argument("--drop-seconds", type=float, default=3.0, help="seconds per prefilter drop-rate measure")
    from . import services

    services.add_arguments(ap)
    from . import l7

    l7.add_arguments(ap)
    from . import dns

    dns.add_arguments(ap)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (loads BPF)")
    ensure_mounts()
    print(f"apiary bench on {os.uname().release}, {os.cpu_count()} CPUs\n")
    if args.only in (None, "tracing"):
        from . import tracing

        tracing.main(args.rounds, args.opens // 2, args.execs // 2)
        if args.only == "tracing":
            return
    if args.only in (None, "export"):
        from . import export

        export.main()
        if args.only == "export":
            return
        print()
    if args.only in (None, "l7"):
        l7.main(args)
        if args.only == "l7":
            return
        print()
    if args.only in (None, "dns"):
        dns.main(args)
        if args.only == "dns":
            return
        print()
    if args.only in (None, "flowcost"):
        from . import flowcost

        flowcost.main()
        if args.only == "flowcost":
            return
        print()
    if args.only in (None, "prefilter"):
        from . import prefilter, prefilter_drop

        prefilter.main(args.repeat)
        print()
        prefilter_drop.main(args.drop_seconds)
        if args.only == "prefilter":
            return
        print()
    if args.only in (None, "services"):
        services.main(services.sizes_of(args), services.modes_of(args), args.out, args)
        if args.only == "services":
            return
        print()
    if args.only in (None, "apply"):
        from . import apply

        apply.main(args.apply_rounds)
        if args.only == "apply":
            return
    if args.only != "process":
        from . import datapath

        datapath.main(args.repeat)
        if args.only == "datapath":
            return
        print()
    print("(a) overhead of the process sensor, median of", args.rounds, "interleaved rounds")
    for name, (b, w) in overhead(args.rounds, args.execs, args.opens).items():
        pct = 100.0 * (w - b) / b
        print(f"  {name:<36} without {b:7.3f} s   with agent {w:7.3f} s   overhead {pct:+6.2f}%")
    print("  target: < 2% on the exec loop")
    print("\n(b) ingestion, kernel ring buffer -> agent record handler")
    base = ring_baseline(args.events)
    r = ingest(args.events)
    print(f"  produced {r['produced']:,} = delivered {r['delivered']:,} + lost {r['lost']:,}  (exact)")
    print(
        f"  agent ingest rate {r['rate']:,.0f} events/s  = {r['rate'] / 200000:.2f}x the 200k/s target"
        f"  = {r['rate'] / base:.2f}x a no-op reader of the same ring ({base:,.0f}/s)"
    )
    rate, n = pipeline(min(args.execs, 1000))
    print(
        f"  full exec/fork/exit pipeline (decode + process cache + Tetragon JSON): {rate:,.0f} records/s"
        f" over {n:,} real records = {rate / base:.3f}x the no-op reader"
    )


if __name__ == "__main__":
    main()
