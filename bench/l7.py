"""L7 HTTP benchmark (issue 11): a client endpoint to a HAProxy-served backend endpoint, side by side in one run:

  (a) no policy, (b) an L3/L4 policy, (c) the seed's l7-http-policy through apiary's proxy, (d) the same backend
  behind a plain HAProxy hop with no rules (in the host, as apiary's proxy is: the reference cost of any proxy).

For each: a paced client at a fixed rate (default 1,000 req/s over 4 keep-alive connections; wrk2 is not in
Debian, so a small Python client sends on a schedule and times each request from its send to its full response)
and `wrk` unthrottled (req/s, p50/p99). Then the policy map entries and the proxy's memory (RSS of HAProxy's
processes) for a policy of 1,000 L7 rules. With wrk: the CPU (cores) the agent, its HAProxy and the plain hop
used. (c)/(d) throughput: (c) and (d) unthrottled again for ``--l7-rounds`` rounds in all, each round's ratio of
two adjacent runs, the median round's reported. Everything (agent, endpoints, servers, the plain hop) is removed at
the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apiary.testing.seed import SEED_L7_HTTP_POLICY

from .kubeproxy import parse_wrk, percentile, ratio
from .services import Undo, run, terminated_as_interrupt

NS = "default"  # the seed policy has no namespace
PORT = 8080
PATH = "/api/v1/items"  # allowed by the seed policy (GET /api/v1/.*)
SEED_L7 = SEED_L7_HTTP_POLICY
L4 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7bench-l4}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""

HEADER = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m
"""
BACKEND_CFG = HEADER + """\
frontend www
    bind 0.0.0.0:{port}
    http-request return status 200 content-type text/plain string "ok"
"""
HOP_CFG = HEADER + """\
frontend hop
    bind {addr}:{port}
    default_backend server
backend server
    server s {server}:{sport}
"""

# the paced client (runs in the client endpoint): CONNS keep-alive connections, one thread each, each sending
# on its own schedule; the latency of a request is from its send to its full response
PACED = r"""
import json, socket, sys, threading, time
host, port, path, rate, seconds, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), \
    float(sys.argv[5]), int(sys.argv[6])
req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
lat, errors, codes = [], [0], {}
lock = threading.Lock()
start = time.perf_counter() + 0.2
def worker(i):
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    interval = conns / rate
    mine = []
    for k in range(int(seconds * rate / conns)):
        due = start + (k + i / conns) * interval
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        t = time.perf_counter()
        try:
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            while len(body) < n:
                body += s.recv(65536)
            mine.append(time.perf_counter() - t)
            code = head.split(b" ")[1].decode()
            with lock:
                codes[code] = codes.get(code, 0) + 1
        except OSError:
            with lock:
                errors[0] += 1
            s.close()
            s = socket.create_connection((host, port), timeout=10)
    with lock:
        lat.extend(mine)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"lat_s": lat, "errors": errors[0], "codes": codes, "seconds": time.perf_counter() - start}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    """VmRSS of a process and its children (HAProxy's master and workers)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return total


def cpu_s(pid: int, tree: bool) -> float:
    """CPU seconds (user + system) of a process, and of its descendants when ``tree``."""
    total, todo, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            if tree:
                for t in Path(f"/proc/{p}/task").iterdir():
                    todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


class Bench:
    def __init__(self, undo: Undo, tmp: str) -> None:
        from apiary.testing.agent import AgentProcess
        from apiary.testing.net import Net

        self.undo, self.tmp = undo, tmp
        self.hop_pid = 0
        self.agent = AgentProcess(node_name="l7bench")
        undo.push("agent", self.agent.cleanup)
        self.agent.start()
        self.net = Net(self.agent)
        undo.push("servers", self.net.close)
        self.server_ip = str(self.net.endpoint("frontend", NS, app="frontend")["ipv4"])
        self.client_ip = str(self.net.endpoint("backend", NS, app="backend")["ipv4"])
        cfg = Path(tmp) / "backend.cfg"
        cfg.write_text(BACKEND_CFG.format(port=PORT))
        self.spawn(self.exec_cmd(f"{NS}/frontend", shutil.which("haproxy") or "haproxy", "-db", "-f", str(cfg)))
        self.wait_http(self.server_ip, PORT)

    def exec_cmd(self, ep: str, *argv: str) -> list[str]:
        from apiary.testing.net import endpoint_exec_cmd

        return endpoint_exec_cmd(self.agent.socket, ep, *argv)

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        self.net.servers.append(p)  # killed by PID in Net.close (endpoint exec execs the command itself)
        return p

    def wait_http(self, host: str, port: int) -> None:
        code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
        for _ in range(100):
            if subprocess.run(self.exec_cmd(f"{NS}/backend", sys.executable, "-c", code),
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{host}:{port} does not answer from the client")

    def plain_hop(self) -> tuple[str, int]:
        """A plain HAProxy in the host, on the router address every endpoint reaches."""
        router = str(self.agent.pod_cidr.rsplit(".", 1)[0]) + ".1"
        port = free_port()
        cfg = Path(self.tmp) / "hop.cfg"
        cfg.write_text(HOP_CFG.format(addr=router, port=port, server=self.server_ip, sport=PORT))
        self.hop_pid = self.spawn([shutil.which("haproxy") or "haproxy", "-db", "-f", str(cfg)]).pid
        self.wait_http(router, port)
        return router, port

    def policy(self, text: str | None) -> None:
        self.net.delete_policies()
        if text:
            self.net.apply_ok(text)

    def paced(self, host: str, port: int, rate: float, seconds: float, conns: int) -> dict[str, Any]:
        argv = self.exec_cmd(f"{NS}/backend", sys.executable, "-c", PACED, host, str(port), PATH, str(rate),
                             str(seconds), str(conns))
        d = json.loads(run(argv, timeout=seconds + 120).strip().splitlines()[-1])
        lat = [x * 1e3 for x in d["lat_s"]]
        return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "qps": len(lat) / d["seconds"],
                "errors": d["errors"], "codes": d["codes"]}

    def wrk(self, host: str, port: int, seconds: int, conns: int) -> dict[str, float]:
        """wrk, and the CPU seconds per second the agent and its proxy spent meanwhile."""
        agent = self.agent.proc.pid if self.agent.proc else 0
        proxy = (self.status().get("l7_proxy") or {}).get("pid") or 0
        pids = {"agent_cpu": (agent, False), "proxy_cpu": (proxy, True), "hop_cpu": (self.hop_pid, False)}
        before = {k: cpu_s(pid, tree) for k, (pid, tree) in pids.items() if pid}
        t0 = time.perf_counter()
        r = self._wrk(host, port, seconds, conns)
        dt = time.perf_counter() - t0
        for k, (pid, tree) in pids.items():
            r[k] = (cpu_s(pid, tree) - before[k]) / dt if pid else 0.0
        return r

    def _wrk(self, host: str, port: int, seconds: int, conns: int) -> dict[str, float]:
        out = run(self.exec_cmd(f"{NS}/backend", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
                                f"http://{host}:{port}{PATH}"), timeout=seconds + 60)
        return parse_wrk(out)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.net.cli_ok("status", "-o", "json"))["network"])


def many_rules(n: int) -> str:
    rules = "".join(f'        - method: "GET"\n          path: "/api/v1/r{i}/.*"\n' for i in range(n))
    return SEED_L7.replace("name: l7-http-policy", "name: l7bench-many").split("        http:\n")[0] + \
        "        http:\n" + rules


def memory(b: Bench, n: int) -> dict[str, Any]:
    b.policy(SEED_L7)
    time.sleep(1.0)  # the reload's old worker exits (no connections left)
    st = b.status()
    pid = st["l7_proxy"]["pid"]
    before = (st["policy_map"]["entries"], rss_kb(pid), st["l7_proxy"]["http_rules"])
    b.net.apply_ok(many_rules(n))  # next to the seed policy
    time.sleep(1.0)
    st = b.status()
    after = (st["policy_map"]["entries"], rss_kb(st["l7_proxy"]["pid"]), st["l7_proxy"]["http_rules"])
    return {"rules": after[2] - before[2], "policy_entries": after[0] - before[0], "proxy_kb": after[1] - before[1],
            "proxy_kb_total": after[1]}


def fmt(r: dict[str, Any]) -> str:
    nan = float("nan")
    return f"{r.get('qps', 0):9,.0f} req/s  p50 {r.get('p50_ms', nan):6.3f} ms  p99 {r.get('p99_ms', nan):6.3f} ms"


def main(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()
    print(f"(l7) HTTP through apiary's proxy: paced {args.l7_rate:,.0f} req/s over {args.l7_conns} connections, "
          f"{args.l7_seconds:.0f} s; wrk -t1 -c{args.l7_wrk_conns} {args.l7_seconds:.0f} s; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if shutil.which("haproxy") is None or shutil.which("wrk") is None:
        print("  skipped: needs haproxy and wrk (scripts/setup.sh installs them)")
        return {}
    undo = Undo()
    res: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="apiary-l7bench-")
    undo.push("tmp", lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        with terminated_as_interrupt():
            b = Bench(undo, tmp)
            hop = b.plain_hop()
            direct = (b.server_ip, PORT)
            cases = [("a", "no policy", None, direct), ("b", "L3/L4 policy", L4, direct),
                     ("c", "seed L7 policy (apiary's proxy)", SEED_L7, direct),
                     ("d", "plain HAProxy hop, no rules", None, hop)]
            for key, name, pol, (host, port) in cases:
                b.policy(pol)
                b.wait_http(host, port)
                paced = b.paced(host, port, args.l7_rate, args.l7_seconds, args.l7_conns)
                full = b.wrk(host, port, int(args.l7_seconds), args.l7_wrk_conns)
                res[key] = {"name": name, "paced": paced, "wrk": full, "policy": pol, "target": (host, port)}
                bad = {c: n for c, n in paced["codes"].items() if c != "200"}
                print(f"  ({key}) {name:<32} paced {fmt(paced)}   wrk {fmt(full)}  CPU agent "
                      f"{full['agent_cpu']:.2f} proxy {full['proxy_cpu']:.2f} hop {full['hop_cpu']:.2f}"
                      + (f"   non-200 {bad} errors {paced['errors']}+{full['non2xx'] + full['socket_errors']:.0f}"
                         if bad or paced["errors"] or full["non2xx"] or full["socket_errors"] else ""))
            a, c, d = (res[k] for k in "acd")
            add50 = c["paced"]["p50_ms"] - a["paced"]["p50_ms"]
            add99 = c["paced"]["p99_ms"] - a["paced"]["p99_ms"]
            # throughput: (c) and (d) alternate for more rounds (a shared 2-CPU machine drifts by 10-20% within
            # minutes), each round's ratio from two adjacent runs; the median round is the figure
            ratios = [ratio(c["wrk"].get("qps"), d["wrk"].get("qps")) or 0.0]
            for r in range(1, args.l7_rounds):
                got = {}
                for k in "cd":
                    b.policy(res[k]["policy"])
                    b.wait_http(*res[k]["target"])
                    got[k] = b.wrk(*res[k]["target"], int(args.l7_seconds), args.l7_wrk_conns)
                ratios.append(ratio(got["c"].get("qps"), got["d"].get("qps")) or 0.0)
                print(f"  round {r + 1}: (c) {got['c'].get('qps', 0):9,.0f} req/s (agent {got['c']['agent_cpu']:.2f}, "
                      f"proxy {got['c']['proxy_cpu']:.2f} cores)  (d) {got['d'].get('qps', 0):9,.0f} req/s  "
                      f"(c)/(d) {100 * ratios[-1]:.0f}%")
            thr = sorted(ratios)[len(ratios) // 2]
            for k in "acd":
                res[k].pop("policy"), res[k].pop("target")
            res["added_p50_ms"], res["added_p99_ms"] = add50, add99
            res["c_over_d"], res["c_over_d_rounds"] = thr, ratios
            print(f"  (c) - (a) at {args.l7_rate:,.0f} req/s: p50 {add50:+.3f} ms (target <= 0.3), "
                  f"p99 {add99:+.3f} ms (target <= 1)")
            print(f"  (c) / (d) unthrottled throughput: {100 * thr:.0f}% (target >= 70%), the median of "
                  f"{len(ratios)} rounds: {', '.join(f'{100 * x:.0f}%' for x in ratios)}")
            mem = memory(b, 1000)
            res["memory"] = mem
            print(f"  1,000 L7 rules: {mem['rules']} HTTP rules in the proxy, policy map {mem['policy_entries']:+d} "
                  f"entries, proxy RSS {mem['proxy_kb']:+,} kB (total {mem['proxy_kb_total']:,} kB)")
    except KeyboardInterrupt:
        print("  interrupted: cleaning up", file=sys.stderr)
        raise
    finally:
        undo.run()
    return res


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("l7")
    g.add_argument("--l7-seconds", type=float, default=10.0, help="seconds per measure (paced and wrk)")
    g.add_argument("--l7-rate", type=float, default=1000.0, help="the paced client's requests/s")
    g.add_argument("--l7-conns", type=int, default=4, help="the paced client's connections")
    g.add_argument("--l7-wrk-conns", type=int, default=16, help="wrk's connections (unthrottled)")
    g.add_argument("--l7-rounds", type=int, default=3,
                   help="rounds of (c) then (d) unthrottled; the (c)/(d) figure is the median round's")
