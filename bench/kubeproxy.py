"""The pure parts of the services benchmark (bench/services.py): the N services, kube-proxy's iptables-restore
text (the chains and rules its iptables mode writes, full and partial syncs, cleanup), its IPVS mode's
`ipvsadm -R` text, apiary's Service YAML in request-sized chunks, and the figures' arithmetic (percentiles,
wrk's output, ratios). No I/O: unit-tested in tests/unit/test_bench_services.py."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass

SVC_PORT = 80
TARGET_PORT = 8080
NAMESPACE = "svcbench"
# backend groups: service i is backed by group i % 3 (2-3 backends each); the wrk service by backend 0 alone
GROUPS = ((0, 1, 2), (3, 4), (5, 6, 7))
N_BACKENDS = 8
MASQ_MARK = "0x4000"

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
