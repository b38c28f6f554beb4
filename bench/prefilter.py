"""XDP prefilter benchmark (issue #10): per-packet cost of the prefilter program with BPF_PROG_TEST_RUN at
10, 1,000 and 100,000 deny CIDRs (half exact /32 entries, half LPM prefixes), as a ratio to an empty XDP
program measured just before it (rounds interleaved; the median of the ratios): a packet whose source is in
no list (both lookups miss: what legitimate traffic pays), one dropped by an LPM entry, one dropped by an
exact entry (LPM miss, then the hash hit). Also the time to add the CIDRs (map writes through the sensor).
"""

from __future__ import annotations

import ipaddress
import random
import statistics
import time

from apiary.sensors.prefilter.sensor import Prefilter
from apiary.testing.progrun import udp_packet

SIZES = (10, 1000, 100000)


def cidrs(n: int, rng: random.Random) -> tuple[list[str], str, str]:
    """n CIDRs: n/2 exact addresses in 10.0.0.0/8, n/2 prefixes (/16../28) in 100.64.0.0/10 (disjoint), and
    one source address hit by an LPM entry, one by an exact entry."""
    exact: dict[str, None] = {}
    lpm: dict[str, None] = {}
    while len(exact) < n // 2:
        exact.setdefault(str(ipaddress.IPv4Address((10 << 24) | rng.getrandbits(24))) + "/32", None)
    while len(lpm) < n - n // 2:
        plen = rng.randrange(16, 29)
        addr = (100 << 24) | (64 << 16) | rng.getrandbits(22)
        lpm.setdefault(str(ipaddress.ip_network((addr & ~((1 << (32 - plen)) - 1), plen))), None)
    first_lpm = ipaddress.ip_network(next(iter(lpm)))
    return [*exact, *lpm], str(first_lpm.network_address + 1), next(iter(exact)).split("/")[0]


def per_packet(repeat: int, rounds: int = 5) -> list[tuple[int, float, float, dict[str, float]]]:
    """Rows (CIDRs, add seconds, empty ns, {case: median ratio to the empty program})."""
    rng = random.Random(10)
    rows = []
    for n in SIZES:
        pf = Prefilter(capacity=max(1024, n))
        pf.load(baseline=True)
        try:
            assert pf.obj
            empty, prog = pf.obj.program("pf_empty"), pf.obj.program("prefilter")
            deny, lpm_src, exact_src = cidrs(n, rng)
            t = time.perf_counter()
            pf.add(deny)
            added = time.perf_counter() - t
            frames = {
                "miss (passes)": udp_packet("192.0.2.1", "192.0.2.2", 1000, 53),
                "LPM hit (drop)": udp_packet(lpm_src, "192.0.2.2", 1000, 53),
                "exact hit (drop)": udp_packet(exact_src, "192.0.2.2", 1000, 53),
            }
            base: list[float] = []
            ratio: dict[str, list[float]] = {k: [] for k in frames}
            for _ in range(rounds):  # each case against the empty program of its own round
                for k, f in frames.items():
                    b = empty.test_run(frames["miss (passes)"], repeat=repeat)[1]
                    ret, ns, _ = prog.test_run(f, repeat=repeat)
                    assert ret == (2 if k.startswith("miss") else 1), (k, ret)
                    base.append(b)
                    ratio[k].append(ns / max(b, 1))
            rows.append((n, added, statistics.median(base), {k: statistics.median(v) for k, v in ratio.items()}))
        finally:
            pf.close()
    return rows


def main(repeat: int) -> None:
    print(f"(prefilter) XDP prefilter per packet, BPF_PROG_TEST_RUN x {repeat:,}, median of 5 interleaved rounds")
    for n, added, base, cases in per_packet(repeat):
        line = "  ".join(f"{k} {r:4.2f}x" for k, r in cases.items())
        print(f"  {n:>7,} CIDRs (added in {added:6.2f} s)  empty XDP {base:5.1f} ns  {line}")
    print("  target: within 2x of the empty XDP program at 100k CIDRs")
