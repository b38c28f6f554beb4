"""Services benchmark (issue #10): apiary's socket-level load balancer against kube-proxy's iptables and IPVS
modes, side by side in one run, with the same N services (10 / 100 / 1,000 / 10,000) over the same real
backends: endpoints of a real agent (netns + veth + cgroup) each running a small HTTP/1.1 server.

  iptables  the nat rules kube-proxy's iptables mode writes (PREROUTING/OUTPUT -> SERVICES -> SVC-* with
            `statistic --mode random` -> SEP-* DNAT, MARK-MASQ, POSTROUTING MASQUERADE, NODEPORTS), with the
            same rule counts, loaded in one iptables-restore; chain names carry a unique prefix.
  ipvs      one IPVS virtual service per VIP:port (round robin) with masquerading real servers, loaded in one
            `ipvsadm -R`; the VIP range is routed `local` on the host (kube-proxy puts each VIP on a dummy
            device; a local route has the same effect without a device per VIP).
  apiary    `apiary service apply` (v1/Service YAML, selector on the endpoints' labels); the VIP is translated
            at connect() by the agent's cgroup connect4 program.

Each mode has its own VIP range (10.192/16, 10.193/16, 10.194/16; none overlaps a pod CIDR). For each N and
mode: new connections/s and connect() latency p50/p99 from a client endpoint to random VIPs, with the same
client against the backends' own addresses as the baseline; HTTP p50/p99/QPS with `wrk` through a one-backend
VIP against that backend's own address; the time to add one service and to update one (a backend change) at
size N, done as the mode's own control plane does it; kernel memory (Slab delta; rules / map memlock). The ratios
apiary/iptables and apiary/IPVS are printed and saved with everything else as JSON, and drawn as a PNG when
matplotlib is present. Every rule, virtual service, route, endpoint and namespace is removed afterwards, also
on Ctrl-C, SIGTERM or an error. Traffic stays between namespaces this bench created.

The pure parts (kube-proxy's rules, IPVS text, YAML, arithmetic) are in bench/kubeproxy.py, the printed rows,
ratios, chart and JSON in bench/svcreport.py.

Run: `make bench ARGS="--only services"` (N = 10..10,000), `ARGS="--only services --quick"` (N = 10, 100),
or `python -m bench.services --svc-sizes 10,100 --svc-modes iptables,ipvs --out /tmp/svc.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.testing.net import endpoint_exec_cmd

from .kubeproxy import (
    GROUPS,
    N_BACKENDS,
    NAMESPACE,
    TARGET_PORT,
    Chains,
    Service,
    added_service,
    iptables_cleanup,
    iptables_full,
    iptables_partial,
    ipvs_add,
    ipvs_delete,
    kube_proxy_counts,
    parse_wrk,
    percentile,
    ratio,
    rule_counts,
    services,
    yaml_chunks,
)
from .svcreport import MODES, chart, print_row, save, summarise

SIZES = (10, 100, 1000, 10000)
QUICK = (10, 100)
VIP_RANGES = {"iptables": "10.192.0.0/16", "ipvs": "10.193.0.0/16", "apiary": "10.194.0.0/16"}
APPLY_MAX_CHARS = 1_000_000  # the agent takes at most 1 MiB of YAML per request (policy/yamlutil.MAX_CHARS)
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------- programs inside
# the backend: an HTTP/1.1 keep-alive server answering 200 "ok" (asyncio; a deep accept queue)
SERVER = r"""
import asyncio, sys
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, d):
        self.buf += d
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.t.write(RESP)
    def connection_lost(self, exc):
        pass
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "0.0.0.0", int(sys.argv[1]), backlog=4096,
                                                         reuse_address=True)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

# the client is bench/connect_client.c, compiled at run time; this Python one (same output) is the fallback when
# no C compiler is found. Sequential connect() to random targets (addresses on stdin as JSON), closed with RST
# so no TIME_WAIT piles up; prints connect latencies (ns) and the rate as JSON
CLIENT_C = Path(__file__).resolve().parent / "connect_client.c"
CLIENT = r"""
import json, random, socket, struct, sys, time
targets = json.loads(sys.stdin.read())
count, seed = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
by = [[tuple(t[:2]) for t in targets if len(t) > 2 and t[2] == c] for c in (0, 1)]
paired = all(by)
if paired:  # alternate the classes, as the C client does
    order = [by[i & 1][rng.randrange(len(by[i & 1]))] for i in range(count)]
else:
    order = [tuple(targets[rng.randrange(len(targets))][:2]) for _ in range(count)]
linger = struct.pack("ii", 1, 0)
def one(t):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(3)
    a = time.perf_counter_ns()
    try:
        s.connect(t)
        return time.perf_counter_ns() - a
    except OSError:
        return -1
    finally:
        s.close()
for t in order[:50]:
    one(t)
lat, cls, errors = [], [], 0
c0, t0 = time.process_time(), time.perf_counter()
for i, t in enumerate(order):
    ns = one(t)
    if ns < 0:
        errors += 1
    else:
        lat.append(ns)
        cls.append(i & 1)
el, cpu = time.perf_counter() - t0, time.process_time() - c0
out = {"lat_ns": lat, "errors": errors, "seconds": el, "cpu_seconds": cpu, "procs": 1, "client": "python"}
if paired:
    out["cls"] = cls
print(json.dumps(out))
"""


def build_client(workdir: str) -> tuple[str | None, str]:
    """Compile bench/connect_client.c into workdir: (the binary or None, what the figures were measured with)."""
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        return None, "Python (no C compiler found: cc/gcc/clang; its own ~150 us per connect dominates the figures)"
    out = str(Path(workdir) / "connect_client")
    r = subprocess.run([cc, "-O2", "-Wall", "-o", out, str(CLIENT_C)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None, f"Python ({cc} failed on {CLIENT_C.name}: {r.stderr.strip()[:300]})"
    return out, f"C ({cc} -O2 {CLIENT_C.name})"


# ------------------------------------------------------------------------------------------------ cleanup
class Undo:
    """A LIFO of clean-up steps; each runs once, errors are printed and do not stop the others."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.steps.append((what, fn))

    def run(self) -> None:
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - every other step must still run
                print(f"  cleanup: {what}: {e}", file=sys.stderr)


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt (like Ctrl-C) so every finally block runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(cmd: list[str], stdin: str | None = None, check: bool = True, timeout: float = 600) -> str:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({r.returncode}): {r.stderr.strip()[:2000]}")
    return r.stdout


def timed_run(cmd: list[str], stdin: str | None = None, timeout: float = 600) -> float:
    t = time.perf_counter()
    run(cmd, stdin, timeout=timeout)
    return time.perf_counter() - t


def slab_kb() -> int:
    """Kernel slab in kB (the memory iptables rules, conntrack and IPVS entries live in)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def settle_slab() -> int:
    time.sleep(0.3)
    return slab_kb()


# ------------------------------------------------------------------------------------------------ the bench
@dataclass
class Bed:
    """The agent, the backends, the client and what every mode needs to reach them."""

    agent: Any
    net: Any
    backend_ips: list[str]
    client: str  # endpoint ref of the client
    pod_cidr: str
    apiary_services: bool
    undo: Undo
    client_bin: str | None = None  # the compiled connect client (None: the Python one)
    connect_procs: int = 1
    results: dict[str, Any] = field(default_factory=dict)

    def exec_cmd(self, *argv: str) -> list[str]:
        return endpoint_exec_cmd(self.agent.socket, self.client, *argv)

    def run_client(
        self, targets: list[tuple[str, int]] | list[tuple[str, int, int]], count: int, seed: int, procs: int = 1
    ) -> dict[str, Any]:
        """The connect client inside the client endpoint: its JSON (lat_ns, errors, seconds, cpu_seconds; with
        targets of two classes (ip, port, 0|1), connects alternate between them and ``cls`` gives each
        latency's class)."""
        if self.client_bin:
            cmd = self.exec_cmd(self.client_bin, str(count), str(seed), str(procs))
            text = "".join(" ".join(map(str, t)) + "\n" for t in targets)
        else:  # the Python fallback has no concurrent mode
            cmd, text = self.exec_cmd(sys.executable, "-c", CLIENT, str(count), str(seed)), json.dumps(targets)
        r = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"connect client failed ({r.returncode}): {r.stdout[-300:]} {r.stderr[-2000:]}")
        d: dict[str, Any] = json.loads(r.stdout)
        return d

    def connects(self, targets: list[tuple[str, int]], count: int, seed: int) -> dict[str, Any]:
        d = self.run_client(targets, count, seed, self.connect_procs)
        lat = [x / 1e3 for x in d["lat_ns"]]
        return {
            "lat_us": lat,
            "errors": d["errors"],
            "conn_per_s": len(lat) / d["seconds"] if d["seconds"] else 0.0,
            "p50_us": percentile(lat, 50),
            "p99_us": percentile(lat, 99),
            "client_cpu_us_per_conn": 1e6 * d["cpu_seconds"] / max(1, len(lat) + d["errors"]),
        }

    def wrk_pair(self, urls: tuple[str, str], seconds: int, conns: int) -> tuple[dict[str, float], dict[str, float]]:
        """Two wrk runs at once (each with ``conns`` connections), one per URL: both see the same moments of the
        machine, so their latencies compare without the drift between separate runs."""
        cmds = [self.exec_cmd("wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", u) for u in urls]
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
        outs = []
        try:
            for c, p in zip(cmds, procs, strict=True):
                out, err = p.communicate(timeout=seconds + 60)
                if p.returncode != 0:
                    raise RuntimeError(f"{' '.join(c[:4])} failed ({p.returncode}): {err.strip()[:2000]}")
                outs.append(parse_wrk(out))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return outs[0], outs[1]

    def wrk(self, url: str, seconds: int, conns: int) -> dict[str, float]:
        out = run(self.exec_cmd("wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url), timeout=seconds + 60)
        return parse_wrk(out)


def connect_rounds(
    bed: Bed, targets: dict[str, list[tuple[str, int]]], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """For each set of targets, --connect-rounds client runs (the sets interleaved round by round): latency
    percentiles over all rounds, rates as medians."""
    res: dict[str, Any] = {}
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    for r in range(args.connect_rounds):
        for k, t in targets.items():
            per[k].append(bed.connects(t, args.connects, seed + r))
    for k, rows in per.items():
        lat = [x for row in rows for x in row.pop("lat_us")]
        res[k] = {
            "connects": len(lat),
            "errors": sum(row["errors"] for row in rows),
            "conn_per_s": statistics.median(row["conn_per_s"] for row in rows),
            "p50_us": percentile(lat, 50),
            "p99_us": percentile(lat, 99),
            "client_cpu_us_per_conn": statistics.median(row["client_cpu_us_per_conn"] for row in rows),
            "rounds": rows,
        }
    return res


def paired_rounds(
    bed: Bed, vips: list[tuple[str, int]], own: list[tuple[str, int]], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """--connect-rounds client runs whose connects alternate between a random VIP and a random backend's own
    address, one of each in turn: both sets see the same moments of the machine, so load drifting between
    separate runs (this machine is shared) does not show as a VIP's cost. Percentiles over all rounds."""
    targets = [(ip, port, 0) for ip, port in vips] + [(ip, port, 1) for ip, port in own]
    lat: dict[int, list[float]] = {0: [], 1: []}
    errors = 0
    for r in range(args.connect_rounds):
        d = bed.run_client(targets, 2 * args.connects, seed + 1000 + r, bed.connect_procs)
        errors += d["errors"]
        for ns, c in zip(d["lat_ns"], d["cls"], strict=True):
            lat[c].append(ns / 1e3)
    v, o = lat[0], lat[1]
    out: dict[str, Any] = {"connects": len(v) + len(o), "errors": errors}
    if v and o:
        out |= {
            "vip_p50_us": percentile(v, 50), "vip_p99_us": percentile(v, 99),
            "own_p50_us": percentile(o, 50), "own_p99_us": percentile(o, 99),
        }
        out["p50"] = ratio(out["vip_p50_us"], out["own_p50_us"])
        out["p99"] = ratio(out["vip_p99_us"], out["own_p99_us"])
    return out


def own_addresses(bed: Bed) -> list[tuple[str, int]]:
    return [(ip, TARGET_PORT) for ip in bed.backend_ips]


def clean_baseline(bed: Bed, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Connects to the backends' own addresses before the mode's services are loaded."""
    return connect_rounds(bed, {"clean": own_addresses(bed)}, args, seed)


def add_clean(res: dict[str, Any], clean: dict[str, Any]) -> None:
    """Ratios against the backends' own addresses measured before the mode's services were loaded: what a
    VIP costs, and what the loaded mode costs traffic that is not for a service."""
    res |= clean
    c = clean["clean"]
    res["translation_us"] = translation(res, c)
    for k in ("vip", "baseline"):
        if k in res:
            res[f"{k}_over_clean"] = {
                "conn_per_s": ratio(res[k]["conn_per_s"], c["conn_per_s"]),
                "p50": ratio(res[k]["p50_us"], c["p50_us"]),
                "p99": ratio(res[k]["p99_us"], c["p99_us"]),
            }


def translation(res: dict[str, Any], clean: dict[str, Any]) -> dict[str, float]:
    """What a connection pays for the mode, in us: a VIP's connect over the own IP's on the clean node (the
    translation: rule walk or map lookups, DNAT or the socket rewrite), and what the loaded mode costs a
    connect that is not for a service (kube-proxy's KUBE-SERVICES is walked to its end for those)."""
    out = {
        "vip_p50": res["vip"]["p50_us"] - clean["p50_us"],
        "vip_p99": res["vip"]["p99_us"] - clean["p99_us"],
    }
    if "baseline" in res:
        out["other_traffic_p50"] = res["baseline"]["p50_us"] - clean["p50_us"]
    return out


def measure_traffic(bed: Bed, svcs: list[Service], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Connects to random VIPs and to the backends' own addresses with the services loaded (rounds
    interleaved), then wrk through the one-backend VIP and to that backend directly."""
    vips = [(s.vip, s.port) for s in svcs[:-1]]
    res = connect_rounds(bed, {"vip": vips, "baseline": own_addresses(bed)}, args, seed)
    res["vip_over_own"] = {
        "conn_per_s": ratio(res["vip"]["conn_per_s"], res["baseline"]["conn_per_s"]),
        "p50": ratio(res["vip"]["p50_us"], res["baseline"]["p50_us"]),
        "p99": ratio(res["vip"]["p99_us"], res["baseline"]["p99_us"]),
    }
    res["paired"] = paired_rounds(bed, vips, own_addresses(bed), args, seed)
    if res["vip"]["errors"]:
        print(f"    warning: {res['vip']['errors']} connects to VIPs failed", file=sys.stderr)
    if shutil.which("wrk"):
        http = svcs[-1]
        runs: dict[str, list[dict[str, float]]] = {"vip": [], "baseline": []}
        for _ in range(args.wrk_rounds):
            runs["vip"].append(bed.wrk(f"http://{http.vip}:{http.port}/", args.wrk_seconds, args.wrk_conns))
            runs["baseline"].append(
                bed.wrk(f"http://{bed.backend_ips[0]}:{TARGET_PORT}/", args.wrk_seconds, args.wrk_conns)
            )
        for k, rows in runs.items():
            res[f"http_{k}"] = {
                m: statistics.median(r.get(m, float("nan")) for r in rows)
                for m in ("p50_ms", "p99_ms", "qps", "non2xx", "socket_errors")
            }
        pv, po = [], []  # the same two, run at once (paired)
        for _ in range(args.wrk_rounds):
            v, o = bed.wrk_pair((f"http://{http.vip}:{http.port}/", f"http://{bed.backend_ips[0]}:{TARGET_PORT}/"),
                                args.wrk_seconds, args.wrk_conns)
            pv.append(v)
            po.append(o)
        hp = res["paired"]["http"] = {}
        for k, rows in (("vip", pv), ("own", po)):
            for m in ("p50_ms", "p99_ms", "qps"):
                hp[f"{k}_{m}"] = statistics.median(r.get(m, float("nan")) for r in rows)
        hp["p50"] = ratio(hp["vip_p50_ms"], hp["own_p50_ms"])
        hp["p99"] = ratio(hp["vip_p99_ms"], hp["own_p99_ms"])
        hp["qps"] = ratio(hp["vip_qps"], hp["own_qps"])
    return res


def check_reachable(bed: Bed, s: Service) -> None:
    d = bed.run_client([(s.vip, s.port)], 3, 1)
    if d["errors"]:
        raise RuntimeError(f"{s.vip}:{s.port} is not reachable from the client: {d['errors']} of 3 connects failed")


def mode_iptables(bed: Bed, n: int, args: argparse.Namespace) -> dict[str, Any]:
    c = Chains(f"KB{uuid.uuid4().hex[:4]}-")
    svcs = services(n, VIP_RANGES["iptables"], bed.backend_ips)
    text = iptables_full(c, svcs, bed.pod_cidr)
    chains, rules = rule_counts(text)
    assert (chains, rules) == kube_proxy_counts(svcs), ((chains, rules), kube_proxy_counts(svcs))

    def cleanup() -> None:
        undo_text = iptables_cleanup(c, run(["iptables-save", "-t", "nat"]))
        if undo_text:
            run(["iptables-restore", "--noflush"], undo_text, timeout=args.load_timeout)
        left = [x for x in re.findall(r"^:(\S+)", run(["iptables-save", "-t", "nat"]), re.M) if x.startswith(c.prefix)]
        if left:
            raise RuntimeError(f"chains left: {left[:5]}")

    clean = clean_baseline(bed, args, n)
    slab0 = settle_slab()
    bed.undo.push(f"iptables chains {c.prefix}*", cleanup)
    res: dict[str, Any] = {}
    try:
        load_s = timed_run(["iptables-restore", "--noflush"], text, args.load_timeout)
        slab1 = settle_slab()
        saved = run(["iptables-save", "-t", "nat"])
        check_reachable(bed, svcs[0])
        res |= {
            "load_s": load_s,
            "chains": chains,
            "rules": rules,
            "rules_bytes": len(text),
            "slab_kb": slab1 - slab0,
            "iptables": run(["iptables", "-V"]).strip(),
            "saved_rules": sum(1 for x in saved.splitlines() if x.startswith("-A ") and c.prefix in x),
        }
        res |= measure_traffic(bed, svcs, args, seed=n)
        add_clean(res, clean)
        # add one service: kube-proxy's partial sync (SERVICES whole + the new chains)
        added = added_service(n, VIP_RANGES["iptables"], bed.backend_ips)
        svcs2 = [*svcs, added]
        res["add_one_s"] = timed_run(["iptables-restore", "--noflush"], iptables_partial(c, svcs2, added, bed.pod_cidr))
        check_reachable(bed, added)
        # update one: service 0 loses its first backend and gains another one
        s0 = svcs2[0]
        new_backends = (*s0.backends[1:], (bed.backend_ips[GROUPS[2][0]], TARGET_PORT))
        upd = Service(s0.name, s0.vip, s0.port, new_backends, group=s0.group)
        stale = (c.sep(s0, *s0.backends[0]),)
        svcs2[0] = upd
        res["update_one_s"] = timed_run(
            ["iptables-restore", "--noflush"], iptables_partial(c, svcs2, upd, bed.pod_cidr, stale)
        )
        check_reachable(bed, upd)
    finally:
        t = time.perf_counter()
        _pop_and_run(bed.undo, cleanup)
        res["unload_s"] = time.perf_counter() - t
    return res


def _pop_and_run(undo: Undo, fn: Callable[[], None]) -> None:
    """Run one step now (and drop it from the LIFO)."""
    undo.steps = [(w, f) for w, f in undo.steps if f is not fn]
    fn()


def ipvs_available() -> str | None:
    """None when IPVS can be used here, else why not."""
    if not shutil.which("ipvsadm"):
        return "ipvsadm is not installed (scripts/setup.sh installs it)"
    if not Path("/proc/net/ip_vs").exists():
        run(["modprobe", "ip_vs"], check=False)
        if not Path("/proc/net/ip_vs").exists():
            return "the kernel has no IPVS (CONFIG_IP_VS is not set and no ip_vs module)"
    return None


def mode_ipvs(bed: Bed, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cidr = VIP_RANGES["ipvs"]
    svcs = services(n, cidr, bed.backend_ips)
    mine: list[str] = []

    def cleanup() -> None:
        if mine:
            run(["ipvsadm", "-R"], ipvs_delete(mine), check=False)
            listed = run(["ipvsadm", "-Ln"], check=False)
            left = [a for a in mine if f"TCP  {a} " in listed]
            mine.clear()
            if left:
                raise RuntimeError(f"IPVS services left: {left[:5]}")

    def unroute() -> None:
        run(["ip", "route", "del", "local", cidr, "dev", "lo", "table", "local"], check=False)

    existing = run(["ipvsadm", "-Ln"])
    clash = [s.vip for s in svcs if f"{s.vip}:" in existing]
    if clash:
        raise RuntimeError(f"IPVS already holds services on {clash[:3]}: not touching them")
    clean = clean_baseline(bed, args, n)
    slab0 = settle_slab()
    run(["ip", "route", "add", "local", cidr, "dev", "lo", "table", "local"])
    bed.undo.push(f"local route {cidr}", unroute)
    bed.undo.push("IPVS virtual services", cleanup)
    res: dict[str, Any] = {}
    try:
        mine += [f"{s.vip}:{s.port}" for s in svcs]
        res["load_s"] = timed_run(["ipvsadm", "-R"], ipvs_add(svcs))
        res["slab_kb"] = settle_slab() - slab0
        res["virtual_services"] = len(svcs)
        res["real_servers"] = sum(len(s.backends) for s in svcs)
        check_reachable(bed, svcs[0])
        res |= measure_traffic(bed, svcs, args, seed=n)
        add_clean(res, clean)
        added = added_service(n, cidr, bed.backend_ips)
        mine.append(f"{added.vip}:{added.port}")
        res["add_one_s"] = timed_run(["ipvsadm", "-R"], ipvs_add([added]))
        check_reachable(bed, added)
        s0 = svcs[0]
        old_ip, old_port = s0.backends[0]
        new_ip = bed.backend_ips[GROUPS[2][0]]
        res["update_one_s"] = timed_run(
            ["ipvsadm", "-R"],
            f"-d -t {s0.vip}:{s0.port} -r {old_ip}:{old_port}\n"
            f"-a -t {s0.vip}:{s0.port} -r {new_ip}:{TARGET_PORT} -m -w 1\n",
        )
        check_reachable(bed, s0)
    finally:
        t = time.perf_counter()
        _pop_and_run(bed.undo, cleanup)
        res["unload_s"] = time.perf_counter() - t
        _pop_and_run(bed.undo, unroute)
    return res


def apiary_service_support(agent_python: str = sys.executable) -> str | None:
    """None when this tree's CLI has `apiary service` and the agent `--service-cidr`, else why not."""
    r = subprocess.run([agent_python, "-m", "apiary", "service", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        return "this tree has no `apiary service` command yet (the socket LB is not merged)"
    r = subprocess.run([agent_python, "-m", "apiary", "agent", "--help"], capture_output=True, text=True)
    if "--service-cidr" not in r.stdout:
        return "this tree's agent has no --service-cidr option yet"
    return None


def agent_lb(client: Any) -> tuple[list[int], dict[str, int]]:
    """The agent's connect4 program ids (from /v1/bpf), and the bytes_memlock of its LB maps by name."""
    rows = client.request("GET", "/v1/bpf")
    progs = [int(p["id"]) for p in rows.get("programs", []) if p.get("name") == "lb_connect4"]
    mem: dict[str, int] = {}
    for m in rows.get("maps", []):
        if str(m.get("name", "")).startswith("lb4_") or m.get("owner") == "lb":
            info = json.loads(run(["bpftool", "-j", "map", "show", "id", str(m["id"])]))
            mem[str(m["name"])] = int(info.get("bytes_memlock", 0))
    return progs, mem


def prog_stats(prog_ids: list[int]) -> tuple[int, int]:
    """run_time_ns and run_cnt summed over programs (kernel.bpf_stats_enabled on)."""
    ns = cnt = 0
    for pid in prog_ids:
        p = json.loads(run(["bpftool", "-j", "prog", "show", "id", str(pid)]))
        ns += int(p.get("run_time_ns", 0))
        cnt += int(p.get("run_cnt", 0))
    return ns, cnt


@contextmanager
def bpf_stats() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(old)


def mode_apiary(bed: Bed, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Services accumulate in the agent from one size to the next (bench-svc-i keeps its name and address,
    so applying size N leaves exactly N + 1 of ours); they are deleted after sizes up to
    --apiary-delete-max (one API call each), larger ones go with the agent at the end."""
    svcs = services(n, VIP_RANGES["apiary"], bed.backend_ips)
    client = bed.agent.client()

    def post(svcs: list[Service]) -> tuple[float, float]:
        """Apply in as few requests as the agent's 1 MiB limit on a request's YAML allows: (wall, agent) s."""
        wall = agent = 0.0
        for chunk in yaml_chunks(svcs, APPLY_MAX_CHARS):
            t = time.perf_counter()
            r = client.request("POST", "/v1/services", json={"yaml": chunk})
            wall += time.perf_counter() - t
            agent += float(r.get("elapsed_ms", "nan")) / 1e3
        return wall, agent

    def ours() -> list[str]:
        rows = client.request("GET", "/v1/services")["services"]
        return [r["name"] for r in rows if r["name"].startswith(f"{NAMESPACE}/bench-")]

    def cleanup() -> None:
        if n > args.apiary_delete_max:
            return  # removed with the agent
        for name in ours():
            client.request("DELETE", f"/v1/services/{name}")
        if left := ours():
            raise RuntimeError(f"{len(left)} services left in the agent")

    clean = clean_baseline(bed, args, n)
    slab0 = settle_slab()
    bed.undo.push("apiary services", cleanup)
    res: dict[str, Any] = {"services_before": len(ours())}
    try:
        res["load_s"], res["load_agent_s"] = post(svcs)
        res["slab_kb"] = settle_slab() - slab0
        res["services_listed"] = len(ours())
        progs, res["lb_map_memlock_bytes"] = agent_lb(client)
        res["lb_fill"] = (client.request("GET", "/v1/status").get("services") or {}).get("maps", {})
        # add and update before the traffic: right after thousands of connects the agent is still busy with
        # their flow events, and the requests would wait for that (~0.1 s here), not for the services
        time.sleep(0.5)
        added = added_service(n, VIP_RANGES["apiary"], bed.backend_ips)
        res["add_one_s"], res["add_one_agent_s"] = post([added])
        check_reachable(bed, added)
        s0 = svcs[0]
        upd = Service(s0.name, s0.vip, s0.port, tuple((bed.backend_ips[b], TARGET_PORT) for b in GROUPS[2]), group=2)
        res["update_one_s"], res["update_one_agent_s"] = post([upd])
        check_reachable(bed, upd)
        check_reachable(bed, svcs[0])
        res |= measure_traffic(bed, svcs, args, seed=n)
        add_clean(res, clean)
        if progs:  # the connect4 program's own cost per connect, one extra client run with bpf_stats on
            with bpf_stats():
                ns0, c0 = prog_stats(progs)
                bed.connects([(s.vip, s.port) for s in svcs[:-1]], args.connects, n)
                ns1, c1 = prog_stats(progs)
            res["connect4_ns_per_call"] = (ns1 - ns0) / max(1, c1 - c0)
            res["connect4_calls"] = c1 - c0
    finally:
        t = time.perf_counter()
        _pop_and_run(bed.undo, cleanup)
        res["unload_s"] = time.perf_counter() - t
    return res


@contextmanager
def testbed(undo: Undo, apiary_services: bool) -> Iterator[Bed]:
    from apiary.testing.agent import AgentProcess
    from apiary.testing.net import Net

    extra = ("--service-cidr", VIP_RANGES["apiary"]) if apiary_services else ()
    agent = AgentProcess(*extra, node_name="svcbench")
    try:
        agent.start()
        net = Net(agent)
        undo.push("servers", net.close)
        ips = []
        for i in range(N_BACKENDS):
            labels = {"svcbench-group": f"g{next(g for g, m in enumerate(GROUPS) if i in m)}"}
            if i == 0:
                labels["svcbench-http"] = "yes"
            ep = net.endpoint(f"backend-{i}", NAMESPACE, **labels)
            ips.append(str(ep["ipv4"]))
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "apiary",
                    "--socket",
                    agent.socket,
                    "endpoint",
                    "exec",
                    f"{NAMESPACE}/backend-{i}",
                    "--",
                    sys.executable,
                    "-c",
                    SERVER,
                    str(TARGET_PORT),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            net.servers.append(p)
            assert p.stdout is not None
            if "ready" not in p.stdout.readline():
                raise RuntimeError(f"backend-{i} server did not start: {p.stderr.read() if p.stderr else ''}")
        net.endpoint("client", NAMESPACE, role="svcbench-client")
        yield Bed(agent, net, ips, f"{NAMESPACE}/client", agent.pod_cidr, apiary_services, undo)
    finally:
        undo.run()
        agent.cleanup()
        # the agent routes its service CIDR unreachable while services exist: it must be gone with the agent
        cidr = VIP_RANGES["apiary"]
        if apiary_services and run(["ip", "route", "show", "type", "unreachable", cidr], check=False).strip():
            print(f"  cleanup: the agent left the route 'unreachable {cidr}': removing it", file=sys.stderr)
            run(["ip", "route", "del", "unreachable", cidr], check=False)


def main(
    sizes: tuple[int, ...] = SIZES,
    modes: tuple[str, ...] = MODES,
    out: str | None = None,
    args: argparse.Namespace | None = None,
) -> dict[str, Any]:
    args = args or parser().parse_args([])
    print(
        f"(services) apiary vs kube-proxy: N services (2-3 real backends each), modes {', '.join(modes)}; "
        f"{args.connects:,} connects per measure, wrk {args.wrk_rounds} x {args.wrk_seconds} s"
    )
    skipped: dict[str, str] = {}
    if "iptables" in modes and not (shutil.which("iptables-restore") and shutil.which("iptables-save")):
        skipped["iptables"] = "iptables is not installed (scripts/setup.sh installs it)"
    if "ipvs" in modes and (why := ipvs_available()):
        skipped["ipvs"] = why
    apiary_ok = "apiary" in modes and not (why := apiary_service_support())
    if "apiary" in modes and not apiary_ok:
        skipped["apiary"] = why or ""
    if not shutil.which("wrk"):
        print("  (no wrk: HTTP figures skipped; scripts/setup.sh installs it)")
    for m, why in skipped.items():
        print(f"  skip {m}: {why}")
    todo = [m for m in modes if m not in skipped]
    results: dict[str, Any] = {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
        "vip_ranges": VIP_RANGES,
        "skipped": skipped,
        "sizes": {},
    }
    dest = Path(out) if out else RESULTS / f"services-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    undo = Undo()
    workdir = tempfile.TemporaryDirectory(prefix="apiary-svcbench-")
    client_bin, results["client"] = build_client(workdir.name)
    procs = args.connect_procs if client_bin else 1
    print(f"  connect client: {results['client']}, {procs} process(es)")
    if todo:
        with workdir, terminated_as_interrupt(), testbed(undo, apiary_ok) as bed:
            bed.client_bin, bed.connect_procs = client_bin, procs
            results["backends"] = bed.backend_ips
            # mode by mode (apiary's LB programs load with its first service: they must not run under the
            # other modes' figures), sizes ascending (apiary's services grow from one size to the next)
            for mode in todo:
                fn = {"iptables": mode_iptables, "ipvs": mode_ipvs, "apiary": mode_apiary}[mode]
                for n in sorted(sizes):
                    row = results["sizes"].setdefault(str(n), {})
                    try:
                        row[mode] = fn(bed, n, args)
                    except Exception as e:  # noqa: BLE001 - recorded; the other sizes and modes still run
                        why = f"{type(e).__name__}: {e}" + (f" {e.problems}" if getattr(e, "problems", None) else "")
                        row[mode] = {"error": why[:2000]}
                        print(f"  N={n:>6,} {mode:<8} FAILED: {why[:800]}")
                        continue
                    finally:
                        save(results, dest)
                    print_row(n, mode, row[mode])
    workdir.cleanup()
    results["loadavg_end"] = os.getloadavg()
    lines = summarise(results)
    if lines:
        print("  ratios (connects/s, QPS: higher is better for apiary; times, latencies: lower is better;")
        print("  *_norm: each mode's VIP figure first divided by the own-IP figure measured before its load)")
    for line in lines:
        print(line)
    save(results, dest)
    png = dest.with_suffix(".png")
    if results["sizes"] and chart(results, png):
        print(f"  chart {png}")
    print(f"  results {dest}")
    print("  targets: flat cost 10 -> 10k services; >= 5x iptables at 10k; VIP latency within 10% of the own IP")
    return results


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The services bench's options (bench/run.py adds them to its own)."""
    g = ap.add_argument_group("services (--only services)")
    g.add_argument("--svc-sizes", default=None, help="comma-separated N (default 10,100,1000,10000)")
    g.add_argument("--quick", action="store_true", help="N = 10, 100 only")
    g.add_argument("--svc-modes", default=",".join(MODES), help="comma-separated subset of iptables,ipvs,apiary")
    g.add_argument("--out", default=None, help="JSON path (the PNG goes next to it); default bench/results/")
    g.add_argument("--connects", type=int, default=2000, help="connect() calls per measure and round")
    g.add_argument("--connect-rounds", type=int, default=3, help="interleaved rounds, VIPs vs own IPs")
    g.add_argument(
        "--load-timeout",
        type=float,
        default=1800,
        help="seconds one iptables-restore of all the rules may take (100k rules: 270 s idle, over 600 s loaded)",
    )
    g.add_argument(
        "--connect-procs",
        type=int,
        default=1,
        help="concurrent client processes per measure (connects/s is then their aggregate; C client only)",
    )
    g.add_argument("--wrk-seconds", type=int, default=3)
    g.add_argument("--wrk-rounds", type=int, default=3)
    g.add_argument("--wrk-conns", type=int, default=8)
    g.add_argument(
        "--apiary-delete-max", type=int, default=1000, help="delete apiary's services after sizes up to this"
    )


def sizes_of(args: argparse.Namespace) -> tuple[int, ...]:
    if args.svc_sizes:
        return tuple(int(x) for x in args.svc_sizes.split(","))
    return QUICK if args.quick else SIZES


def modes_of(args: argparse.Namespace) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in args.svc_modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}; choose from {MODES}")
    return modes


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench: needs root (iptables, IPVS, a real agent)")
    a = parser().parse_args()
    main(sizes_of(a), modes_of(a), a.out, a)
