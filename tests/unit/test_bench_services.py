"""Pure parts of bench/services.py: kube-proxy's iptables-restore text (rule and chain counts, chain names,
probabilities), its clean-up, IPVS and Service YAML generators, wrk parsing."""

from __future__ import annotations

import re

import pytest
from bench.kubeproxy import (
    Chains,
    Service,
    added_service,
    http_vip,
    iptables_cleanup,
    iptables_full,
    iptables_partial,
    ipvs_add,
    ipvs_delete,
    kube_proxy_counts,
    parse_wrk,
    percentile,
    rule_counts,
    service_yaml,
    services,
    vip,
)

BACKENDS = [f"10.211.7.{i}" for i in range(2, 10)]
C = Chains("KBab12-")


@pytest.mark.parametrize("n", [1, 10, 100, 1000])
def test_full_sync_has_kube_proxys_counts(n: int) -> None:
    svcs = services(n, "10.192.0.0/16", BACKENDS)
    assert len(svcs) == n + 1  # and the one-backend HTTP service
    text = iptables_full(C, svcs, "10.211.7.0/24")
    chains, rules = rule_counts(text)
    assert (chains, rules) == kube_proxy_counts(svcs)
    # per service: 1 SERVICES jump, 1 MARK-MASQ + k jumps in SVC, 2 per endpoint in SEP; 4 + 8 fixed
    backends = sum(len(s.backends) for s in svcs)
    assert rules == 8 + 2 * len(svcs) + 3 * backends
    assert chains == 4 + len(svcs) + backends
    assert text.count(" -j DNAT --to-destination ") == backends
    assert text.startswith("*nat\n") and text.endswith("COMMIT\n")


def test_rules_as_kube_proxy_writes_them() -> None:
    svcs = services(3, "10.192.0.0/16", BACKENDS)
    text = iptables_full(C, svcs, "10.211.7.0/24")
    s0 = svcs[0]
    assert len(s0.backends) == 3
    svc = C.svc(s0)
    assert re.fullmatch(r"KBab12-SVC-[A-Z2-7]{16}", svc) and len(svc) <= 28  # iptables' limit on chain names
    lines = [x for x in text.splitlines() if x.startswith(f"-A {svc} ")]
    assert lines[0] == (
        f'-A {svc} ! -s 10.211.7.0/24 -d 10.192.0.1/32 -p tcp -m comment --comment "svcbench/bench-svc-0:http '
        f'cluster IP" -m tcp --dport 80 -j KBab12-MARK-MASQ'
    )
    # 1/3, 1/2, then the last endpoint unconditionally: an even split
    assert "--probability 0.3333333333 " in lines[1] and "--probability 0.5000000000 " in lines[2]
    assert "statistic" not in lines[3]
    sep = C.sep(s0, *s0.backends[0])
    assert (
        f'-A {sep} -p tcp -m comment --comment "svcbench/bench-svc-0:http" -m tcp -j DNAT --to-destination '
        f"{s0.backends[0][0]}:8080" in text
    )
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KBab12-SERVICES' in text
    assert '-A OUTPUT -m comment --comment "kubernetes service portals" -j KBab12-SERVICES' in text
    # the NODEPORTS jump is the last rule of SERVICES
    services_rules = [x for x in text.splitlines() if x.startswith("-A KBab12-SERVICES ")]
    assert services_rules[-1].endswith("--dst-type LOCAL -j KBab12-NODEPORTS")
    # the one-backend service: a single jump, no statistic
    http = svcs[-1]
    assert http.vip == http_vip("10.192.0.0/16") == "10.192.255.254"
    assert [x for x in text.splitlines() if x.startswith(f"-A {C.svc(http)} ")][1].endswith(
        f"-j {C.sep(http, *http.backends[0])}"
    )


def test_chain_names_are_unique_per_service_and_endpoint() -> None:
    svcs = services(300, "10.192.0.0/16", BACKENDS)
    names = [C.svc(s) for s in svcs] + [C.sep(s, ip, p) for s in svcs for ip, p in s.backends]
    assert len(set(names)) == len(names)


def test_partial_sync_rewrites_services_and_the_changed_chains() -> None:
    svcs = services(50, "10.192.0.0/16", BACKENDS)
    added = added_service(50, "10.192.0.0/16", BACKENDS)
    assert added.vip == vip("10.192.0.0/16", 50) and added.name == "bench-svc-50"
    text = iptables_partial(C, [*svcs, added], added, "10.211.7.0/24", stale=("KBab12-SEP-OLD",))
    chains, rules = rule_counts(text)
    assert chains == 1 + 1 + len(added.backends) + 1  # SERVICES, SVC, SEPs, the stale one
    assert sum(1 for x in text.splitlines() if x.startswith("-A KBab12-SERVICES ")) == len(svcs) + 2
    assert "-X KBab12-SEP-OLD" in text
    assert rules == len(svcs) + 2 + 1 + 3 * len(added.backends)


def test_cleanup_removes_only_our_chains_and_jumps() -> None:
    saved = "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":KUBE-SERVICES - [0:0]",
            ":KBab12-SERVICES - [0:0]",
            ":KBab12-SVC-AAAA - [0:0]",
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KBab12-SERVICES',
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            "-A KBab12-SERVICES -d 10.192.0.1/32 -p tcp -m tcp --dport 80 -j KBab12-SVC-AAAA",
            "COMMIT",
        ]
    )
    text = iptables_cleanup(C, saved)
    assert '-D PREROUTING -m comment --comment "kubernetes service portals" -j KBab12-SERVICES' in text
    assert "KUBE-SERVICES" not in text
    assert text.count("-X ") == 2 and ":KBab12-SVC-AAAA - [0:0]" in text
    assert iptables_cleanup(Chains("KBffff-"), saved) == ""


def test_ipvs_and_yaml() -> None:
    svcs = services(2, "10.193.0.0/16", BACKENDS)
    text = ipvs_add(svcs)
    assert text.count("-A -t ") == 3 and text.count(" -m -w 1") == sum(len(s.backends) for s in svcs)
    assert ipvs_delete(["10.193.0.1:80"]) == "-D -t 10.193.0.1:80\n"
    y = service_yaml([Service("bench-svc-0", "10.194.0.1", 80, (("10.211.7.2", 8080),), group=1)])
    assert "clusterIP: 10.194.0.1" in y and "selector: {svcbench-group: g1}" in y and "targetPort: 8080" in y
    assert service_yaml(svcs).count("---\n") == len(svcs) - 1


def test_vip_bounds() -> None:
    assert vip("10.192.0.0/16", 0) == "10.192.0.1"
    assert vip("10.192.0.0/16", 255) == "10.192.1.0"
    with pytest.raises(ValueError):
        vip("10.192.0.0/30", 2)


def test_parse_wrk_and_percentile() -> None:
    out = """Running 3s test @ http://10.192.255.254:80/
  1 threads and 8 connections
  Latency Distribution
     50%  170.00us
     75%  210.00us
     90%  300.00us
     99%    1.33ms
  118800 requests in 3.00s, 8.50MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  39600.12
"""
    r = parse_wrk(out)
    assert r["p50_ms"] == pytest.approx(0.17) and r["p99_ms"] == pytest.approx(1.33)
    assert r["qps"] == pytest.approx(39600.12) and r["socket_errors"] == 3 and r["non2xx"] == 0
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([1.0], 99) == 1.0


def test_paired_ratio_in_the_summary() -> None:
    from bench.svcreport import summarise

    paired = {"connects": 12000, "vip_p50_us": 58.0, "own_p50_us": 50.0, "vip_p99_us": 900.0, "own_p99_us": 1000.0,
              "p50": 1.16, "p99": 0.9, "http": {"p50": 0.99, "p99": 1.2, "qps": 1.01}}
    lines = summarise({"sizes": {"10": {"apiary": {"vip": {}, "paired": paired}}}})
    assert any("connect p50 1.160x" in ln and "within 10%: NOT met" in ln for ln in lines)
    assert any("wrk p50 0.990x" in ln for ln in lines)
    paired["p50"] = 1.04
    again = summarise({"sizes": {"10": {"apiary": {"vip": {}, "paired": paired}}}})
    assert any("within 10%: met" in ln for ln in again)
