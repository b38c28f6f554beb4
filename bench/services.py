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

Run: `make bench ARGS="--only services"` (N = 10..10,000), `ARGS="--only services --quick"` (N = 10, 100),
or `python -m bench.services --svc-sizes 10,100 --svc-modes iptables,ipvs --out /tmp/svc.json`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.testing.net import endpoint_exec_cmd

SIZES = (10, 100, 1000, 10000)
QUICK = (10, 100)
MODES = ("iptables", "ipvs", "apiary")
VIP_RANGES = {"iptables": "10.192.0.0/16", "ipvs": "10.193.0.0/16", "apiary": "10.194.0.0/16"}
SVC_PORT = 80
TARGET_PORT = 8080
NAMESPACE = "svcbench"
# backend groups: service i is backed by group i % 3 (2-3 backends each); the wrk service by backend 0 alone
GROUPS = ((0, 1, 2), (3, 4), (5, 6, 7))
N_BACKENDS = 8
MASQ_MARK = "0x4000"
APPLY_MAX_CHARS = 1_000_000  # the agent takes at most 1 MiB of YAML per request (policy/yamlutil.MAX_CHARS)
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class Service:
    name: str
    vip: str
    port: int
    backends: tuple[tuple[str, int], ...]  # (ip, port)
    namespace: str = NAMESPACE
    group: int = 0

    @property
    def port_name(self) -> str:  # kube-proxy's ServicePortName as it appears in comments
        return f"{self.namespace}/{self.name}:http"


def vip(cidr: str, i: int) -> str:
    """The i-th service address of a range, skipping the network address (i = 0 -> .1)."""
    net = ipaddress.ip_network(cidr)
    if i + 1 >= net.num_addresses - 1:
        raise ValueError(f"{cidr} holds fewer than {i + 1} service addresses")
    return str(net.network_address + i + 1)


def http_vip(cidr: str) -> str:
    """The one-backend service's address: the range's last, so bench-svc-i keeps vip(i) at every size."""
    net = ipaddress.ip_network(cidr)
    return str(net.broadcast_address - 1)


def added_service(n: int, cidr: str, backend_ips: list[str]) -> Service:
    """The service added at size N (named and addressed as the N+1-th of the series)."""
    return Service(f"bench-svc-{n}", vip(cidr, n), SVC_PORT, tuple((backend_ips[b], TARGET_PORT) for b in GROUPS[0]))


def services(n: int, cidr: str, backend_ips: list[str]) -> list[Service]:
    """N services over the backend groups, plus (last) one 'bench-http' service backed by backend 0 only."""
    out = []
    for i in range(n):
        g = i % len(GROUPS)
        out.append(
            Service(
                f"bench-svc-{i}",
                vip(cidr, i),
                SVC_PORT,
                tuple((backend_ips[b], TARGET_PORT) for b in GROUPS[g]),
                group=g,
            )
        )
    out.append(Service("bench-http", http_vip(cidr), SVC_PORT, ((backend_ips[0], TARGET_PORT),), group=-1))
    return out


def _hash16(*parts: str) -> str:
    """kube-proxy's chain-name suffix: the first 16 characters of base32(sha256(parts))."""
    return base64.b32encode(hashlib.sha256("".join(parts).encode()).digest()).decode()[:16]


@dataclass(frozen=True)
class Chains:
    """kube-proxy's chain names with a prefix of our own (e.g. 'KB1a2b-' instead of 'KUBE-')."""

    prefix: str

    @property
    def services(self) -> str:
        return self.prefix + "SERVICES"

    @property
    def postrouting(self) -> str:
        return self.prefix + "POSTROUTING"

    @property
    def mark_masq(self) -> str:
        return self.prefix + "MARK-MASQ"

    @property
    def nodeports(self) -> str:
        return self.prefix + "NODEPORTS"

    def svc(self, s: Service) -> str:
        return f"{self.prefix}SVC-{_hash16(s.port_name, 'tcp')}"

    def sep(self, s: Service, ip: str, port: int) -> str:
        return f"{self.prefix}SEP-{_hash16(s.port_name, 'tcp', f'{ip}:{port}')}"

    def base(self) -> list[str]:
        return [self.services, self.postrouting, self.mark_masq, self.nodeports]


def base_jumps(c: Chains) -> list[str]:
    """The three jumps from the built-in chains, as kube-proxy installs them (without -A/-D)."""
    return [
        f'PREROUTING -m comment --comment "kubernetes service portals" -j {c.services}',
        f'OUTPUT -m comment --comment "kubernetes service portals" -j {c.services}',
        f'POSTROUTING -m comment --comment "kubernetes postrouting rules" -j {c.postrouting}',
    ]


def _service_rule(c: Chains, s: Service) -> str:
    return (
        f'-A {c.services} -d {s.vip}/32 -p tcp -m comment --comment "{s.port_name} cluster IP" '
        f"-m tcp --dport {s.port} -j {c.svc(s)}"
    )


def _service_chains(c: Chains, s: Service, cluster_cidr: str) -> tuple[list[str], list[str]]:
    """(chain declarations, rules) of one service: its SVC chain and one SEP chain per endpoint."""
    svc = c.svc(s)
    decl = [f":{svc} - [0:0]"]
    rules = [
        f'-A {svc} ! -s {cluster_cidr} -d {s.vip}/32 -p tcp -m comment --comment "{s.port_name} cluster IP" '
        f"-m tcp --dport {s.port} -j {c.mark_masq}"
    ]
    n = len(s.backends)
    for i, (ip, port) in enumerate(s.backends):
        sep = c.sep(s, ip, port)
        decl.append(f":{sep} - [0:0]")
        stat = f" -m statistic --mode random --probability {1.0 / (n - i):0.10f}" if i < n - 1 else ""
        rules.append(f'-A {svc} -m comment --comment "{s.port_name} -> {ip}:{port}"{stat} -j {sep}')
    for ip, port in s.backends:
        sep = c.sep(s, ip, port)
        rules.append(f'-A {sep} -s {ip}/32 -m comment --comment "{s.port_name}" -j {c.mark_masq}')
        rules.append(
            f'-A {sep} -p tcp -m comment --comment "{s.port_name}" -m tcp -j DNAT --to-destination {ip}:{port}'
        )
    return decl, rules


def iptables_full(c: Chains, svcs: list[Service], cluster_cidr: str) -> str:
    """iptables-restore --noflush input for the nat table: kube-proxy's full sync of these services."""
    decl = [f":{name} - [0:0]" for name in c.base()]
    rules = [f"-A {j}" for j in base_jumps(c)]
    rules += [
        f"-A {c.mark_masq} -j MARK --or-mark {MASQ_MARK}",
        f"-A {c.postrouting} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A {c.postrouting} -j MARK --xor-mark {MASQ_MARK}",
        f'-A {c.postrouting} -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    svc_rules: list[str] = []
    for s in svcs:
        d, r = _service_chains(c, s, cluster_cidr)
        decl += d
        svc_rules += r
        rules.append(_service_rule(c, s))
    rules.append(_nodeports_rule(c))
    return "\n".join(["*nat", *decl, *rules, *svc_rules, "COMMIT", ""])


def _nodeports_rule(c: Chains) -> str:
    return (
        f'-A {c.services} -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        f'this chain" -m addrtype --dst-type LOCAL -j {c.nodeports}'
    )


def iptables_partial(
    c: Chains, svcs: list[Service], changed: Service, cluster_cidr: str, stale: tuple[str, ...] = ()
) -> str:
    """kube-proxy's partial sync after one service was added or changed: SERVICES is rewritten whole (it lists
    every service), the changed service's chains are rewritten, chains of gone endpoints are deleted."""
    d, r = _service_chains(c, changed, cluster_cidr)
    decl = [f":{c.services} - [0:0]", *d, *(f":{x} - [0:0]" for x in stale)]
    rules = [_service_rule(c, s) for s in svcs] + [_nodeports_rule(c)] + r + [f"-X {x}" for x in stale]
    return "\n".join(["*nat", *decl, *rules, "COMMIT", ""])


def iptables_cleanup(c: Chains, saved: str) -> str:
    """iptables-restore --noflush input removing, from an `iptables-save -t nat` dump, every jump into a chain
    of ours and then every chain of ours (declaring a chain flushes it, so deletion order does not matter)."""
    ours = sorted({m for m in re.findall(r"^:(\S+)", saved, re.M) if m.startswith(c.prefix)})
    if not ours:
        return ""
    dels = []
    for line in saved.splitlines():
        m = re.match(r"^-A (\S+) (.*-j (\S+).*)$", line)
        if m and not m.group(1).startswith(c.prefix) and m.group(3).startswith(c.prefix):
            dels.append(f"-D {m.group(1)} {m.group(2)}")
    return "\n".join(["*nat", *(f":{x} - [0:0]" for x in ours), *dels, *(f"-X {x}" for x in ours), "COMMIT", ""])


def rule_counts(restore_text: str) -> tuple[int, int]:
    """(chains declared, rules appended) in an iptables-restore text."""
    lines = restore_text.splitlines()
    return sum(1 for x in lines if x.startswith(":")), sum(1 for x in lines if x.startswith("-A "))


def kube_proxy_counts(svcs: list[Service]) -> tuple[int, int]:
    """What kube-proxy's iptables mode holds for ClusterIP services: 4 base chains + 1 per service + 1 per
    endpoint; 8 fixed rules + per service 1 (SERVICES) + 1 (MARK-MASQ) + 1 per endpoint (SVC) + 2 per
    endpoint (SEP)."""
    chains = 4 + sum(1 + len(s.backends) for s in svcs)
    rules = 8 + sum(2 + 3 * len(s.backends) for s in svcs)
    return chains, rules


def ipvs_add(svcs: list[Service]) -> str:
    """`ipvsadm -R` input: a round-robin virtual service per VIP:port, masquerading real servers."""
    out = []
    for s in svcs:
        out.append(f"-A -t {s.vip}:{s.port} -s rr")
        out += [f"-a -t {s.vip}:{s.port} -r {ip}:{port} -m -w 1" for ip, port in s.backends]
    return "\n".join(out) + "\n"


def ipvs_delete(addrs: list[str]) -> str:
    return "".join(f"-D -t {a}\n" for a in addrs)


def service_yaml(svcs: list[Service]) -> str:
    """Multi-document v1/Service YAML selecting the backend groups by label."""
    docs = []
    for s in svcs:
        sel = "{svcbench-http: 'yes'}" if s.group < 0 else f"{{svcbench-group: g{s.group}}}"
        docs.append(
            "apiVersion: v1\nkind: Service\n"
            f"metadata: {{name: {s.name}, namespace: {s.namespace}}}\n"
            f"spec:\n  clusterIP: {s.vip}\n  selector: {sel}\n"
            f"  ports: [{{name: http, port: {s.port}, targetPort: {s.backends[0][1]}, protocol: TCP}}]\n"
        )
    return "---\n".join(docs)


def yaml_chunks(svcs: list[Service], max_chars: int) -> list[str]:
    """service_yaml of consecutive slices of the services, each under max_chars."""
    out: list[str] = []
    cur: list[Service] = []
    size = 0
    for s in svcs:
        n = len(service_yaml([s])) + 4
        if cur and size + n > max_chars:
            out.append(service_yaml(cur))
            cur, size = [], 0
        cur.append(s)
        size += n
    if cur:
        out.append(service_yaml(cur))
    return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict[str, float]:
    """p50/p99 (ms) from `wrk --latency`'s distribution, and Requests/sec; errors counted."""
    res: dict[str, float] = {}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{q}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["qps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = float(sum(int(x) for x in m.groups())) if m else 0.0
    return res


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


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

# the client: sequential connect() to random targets (addresses on stdin as JSON), closed with RST so no
# TIME_WAIT piles up; prints connect latencies (ns) and the rate as JSON
CLIENT = r"""
import json, random, socket, struct, sys, time
targets = json.loads(sys.stdin.read())
count, seed = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
order = [tuple(targets[rng.randrange(len(targets))]) for _ in range(count)]
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
lat, errors = [], 0
c0, t0 = time.process_time(), time.perf_counter()
for t in order:
    ns = one(t)
    if ns < 0:
        errors += 1
    else:
        lat.append(ns)
el, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"lat_ns": lat, "errors": errors, "seconds": el, "cpu_seconds": cpu}))
"""


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


def timed_run(cmd: list[str], stdin: str | None = None) -> float:
    t = time.perf_counter()
    run(cmd, stdin)
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
    results: dict[str, Any] = field(default_factory=dict)

    def exec_cmd(self, *argv: str) -> list[str]:
        return endpoint_exec_cmd(self.agent.socket, self.client, *argv)

    def connects(self, targets: list[tuple[str, int]], count: int, seed: int) -> dict[str, Any]:
        r = subprocess.run(
            self.exec_cmd(sys.executable, "-c", CLIENT, str(count), str(seed)),
            input=json.dumps(targets),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            raise RuntimeError(f"connect client failed: {r.stderr[-2000:]}")
        d = json.loads(r.stdout)
        lat = [x / 1e3 for x in d["lat_ns"]]
        return {
            "lat_us": lat,
            "errors": d["errors"],
            "conn_per_s": len(lat) / d["seconds"] if d["seconds"] else 0.0,
            "p50_us": percentile(lat, 50),
            "p99_us": percentile(lat, 99),
            "client_cpu_us_per_conn": 1e6 * d["cpu_seconds"] / max(1, len(lat) + d["errors"]),
        }

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
    for k in ("vip", "baseline"):
        if k in res:
            res[f"{k}_over_clean"] = {
                "conn_per_s": ratio(res[k]["conn_per_s"], c["conn_per_s"]),
                "p50": ratio(res[k]["p50_us"], c["p50_us"]),
                "p99": ratio(res[k]["p99_us"], c["p99_us"]),
            }


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
    return res


def check_reachable(bed: Bed, s: Service) -> None:
    r = subprocess.run(
        bed.exec_cmd(sys.executable, "-c", CLIENT, "3", "1"),
        input=json.dumps([[s.vip, s.port]]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0 or json.loads(r.stdout)["errors"]:
        raise RuntimeError(f"{s.vip}:{s.port} is not reachable from the client: {r.stdout[-300:]} {r.stderr[-500:]}")


def mode_iptables(bed: Bed, n: int, args: argparse.Namespace) -> dict[str, Any]:
    c = Chains(f"KB{uuid.uuid4().hex[:4]}-")
    svcs = services(n, VIP_RANGES["iptables"], bed.backend_ips)
    text = iptables_full(c, svcs, bed.pod_cidr)
    chains, rules = rule_counts(text)
    assert (chains, rules) == kube_proxy_counts(svcs), ((chains, rules), kube_proxy_counts(svcs))

    def cleanup() -> None:
        undo_text = iptables_cleanup(c, run(["iptables-save", "-t", "nat"]))
        if undo_text:
            run(["iptables-restore", "--noflush"], undo_text)
        left = [x for x in re.findall(r"^:(\S+)", run(["iptables-save", "-t", "nat"]), re.M) if x.startswith(c.prefix)]
        if left:
            raise RuntimeError(f"chains left: {left[:5]}")

    clean = clean_baseline(bed, args, n)
    slab0 = settle_slab()
    bed.undo.push(f"iptables chains {c.prefix}*", cleanup)
    res: dict[str, Any] = {}
    try:
        load_s = timed_run(["iptables-restore", "--noflush"], text)
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
    return lines


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
    if todo:
        with terminated_as_interrupt(), testbed(undo, apiary_ok) as bed:
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


def save(results: dict[str, Any], dest: Path) -> None:
    """Written after every measurement, so that a long run interrupted keeps what it measured."""
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(dest)


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
