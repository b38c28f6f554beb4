"""XDP prefilter drop rate through a real veth (issue #10), side by side with iptables.

Two network namespaces of this bench's own joined by a veth pair: a sender whose address is in the deny
list floods UDP at the receiver's address for a few seconds, and the receiver drops it in one of four ways:

- ``stack``: no filter; the receiver's stack discards the datagrams (no socket on the port): the cost of doing
  nothing early;
- ``apiary``: apiary's XDP prefilter (the agent's own sensor and program) on the receiving veth, native mode;
- ``iptables``: what an operator writes without apiary: one ``-t raw -A PREROUTING -s CIDR -j DROP`` per CIDR
  (kube-proxy-style linear rules; iptables-nft on Debian 12);
- ``ipset``: the better iptables answer: one ``hash:net`` set of the CIDRs and one raw rule matching it.

Per mode and list size: datagrams the sender got out per second (each send pays the veth hop and the
receiver's filter, which runs in the sender's softirq), and the drops the filter counted per second (the
prefilter's per-CIDR counters, iptables' rule counters, the stack's Udp NoPorts). Everything lives in the two
namespaces, so deleting them removes the veth, the rules and the sets; the XDP link goes with the sensor.
Traffic never leaves the namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from apiary.kernel.probes import in_named_netns
from apiary.sensors.prefilter.sensor import Prefilter

from .prefilter import cidrs
from .services import terminated_as_interrupt

SIZES = (10, 1000, 100000)
MODES = ("stack", "apiary", "iptables", "ipset")
DST = "198.18.77.1"  # the receiver's address, in the receiver namespace only

SENDER = r"""
import socket, sys, time
src, dst, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
payload, addr, n, errors = b"x" * 18, (dst, 9), 0, 0
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    for _ in range(256):
        try:
            s.sendto(payload, addr)
        except OSError:
            errors += 1
    n += 256
print(n - errors, errors)
"""


@dataclass
class Row:
    mode: str
    cidrs: int
    sent_per_s: float
    drops_per_s: float
    setup_s: float


def sh(*cmd: str, stdin: str | None = None) -> str:
    r = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class Pair:
    """The sender and receiver namespaces and their veth pair (names unique to this process)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000:05d}"
        self.tx, self.rx = f"pfdtx{tag}", f"pfdrx{tag}"
        self.dev_tx, self.dev_rx = f"pftx{tag}", f"pfrx{tag}"

    def up(self, src: str) -> None:
        for ns in (self.tx, self.rx):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", self.dev_tx, "netns", self.tx, "type", "veth", "peer", "name", self.dev_rx,
           "netns", self.rx)
        for ns, dev in ((self.tx, self.dev_tx), (self.rx, self.dev_rx)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.rx, "addr", "add", f"{DST}/32", "dev", self.dev_rx)
        self.source(src)

    def source(self, src: str) -> None:
        """The sender's address (one in the deny list), its route to the receiver, and the receiver's MAC
        written in (no ARP: an ARP reply would need the receiver to route back to a denied address)."""
        sh("ip", "-n", self.tx, "addr", "flush", "dev", self.dev_tx)
        sh("ip", "-n", self.tx, "addr", "add", f"{src}/32", "dev", self.dev_tx)
        sh("ip", "-n", self.tx, "route", "replace", f"{DST}/32", "dev", self.dev_tx, "src", src)
        mac = json.loads(sh("ip", "-n", self.rx, "-j", "link", "show", "dev", self.dev_rx))[0]["address"]
        sh("ip", "-n", self.tx, "neigh", "replace", DST, "lladdr", mac, "dev", self.dev_tx, "nud", "permanent")

    def send(self, src: str, seconds: float) -> float:
        out = sh("ip", "netns", "exec", self.tx, sys.executable, "-c", SENDER, src, DST, str(seconds))
        return int(out.split()[0]) / seconds

    def down(self) -> None:
        for ns in (self.tx, self.rx):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _noports(pair: Pair) -> int:
    text = sh("ip", "netns", "exec", pair.rx, "cat", "/proc/net/snmp")
    head, vals = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")][:2]
    return int(vals[head.index("NoPorts")])


def _raw_counts(pair: Pair) -> int:
    text = sh("ip", "netns", "exec", pair.rx, "iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n")
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+\d+\s+DROP", text, re.M))


def measure(sizes: tuple[int, ...] = SIZES, modes: tuple[str, ...] = MODES, seconds: float = 3.0,
            rounds: int = 2) -> list[Row]:
    rng = random.Random(10)
    rows: list[Row] = []
    pair = Pair()
    with terminated_as_interrupt():
        try:
            deny, lpm_src, exact_src = cidrs(max(sizes), rng)
            pair.up(lpm_src)
            for n in sizes:
                lst, src = _subset(deny, n, lpm_src)
                pair.source(src)
                for mode in modes:
                    rows.append(_one(pair, mode, lst, src, seconds, rounds))
        finally:
            pair.down()
    return rows


def _subset(deny: list[str], n: int, lpm_src: str) -> tuple[list[str], str]:
    """n of the CIDRs (half exact, half prefixes), always keeping the prefix that holds the sender."""
    exact = [c for c in deny if c.endswith("/32")]
    lpm = [c for c in deny if not c.endswith("/32")]
    return exact[: n // 2] + lpm[: n - n // 2], lpm_src


def _one(pair: Pair, mode: str, lst: list[str], src: str, seconds: float, rounds: int) -> Row:
    t0 = time.perf_counter()
    pf: Prefilter | None = None
    try:
        if mode == "apiary":
            pf = Prefilter(capacity=max(1024, len(lst)))
            pf.load()
            pf.add(lst)
            in_named_netns(pair.rx, lambda: pf.attach(pair.dev_rx, "native") if pf else None)
        elif mode == "iptables":
            rules = "".join(f"-A PREROUTING -s {c} -j DROP\n" for c in lst)
            sh("ip", "netns", "exec", pair.rx, "iptables-restore", stdin=f"*raw\n:PREROUTING ACCEPT [0:0]\n{rules}"
               "COMMIT\n")
        elif mode == "ipset":
            body = "".join(f"add pfdeny {c}\n" for c in lst)
            sh("ip", "netns", "exec", pair.rx, "ipset", "restore",
               stdin=f"create pfdeny hash:net family inet maxelem {max(65536, 2 * len(lst))}\n{body}")
            sh("ip", "netns", "exec", pair.rx, "iptables", "-t", "raw", "-A", "PREROUTING", "-m", "set",
               "--match-set", "pfdeny", "src", "-j", "DROP")
        setup = time.perf_counter() - t0

        slot = None
        if pf is not None:  # the counter of the entry that holds the sender: the longest prefix, as the LPM
            addr = ipaddress.ip_address(src)
            slot = max(((net.prefixlen, s) for net, s in pf.lists.entries.items() if addr in net))[1]

        def dropped() -> int:
            if pf is not None and slot is not None:
                return pf.drops_of(slot)
            return _noports(pair) if mode == "stack" else _raw_counts(pair)

        sent, drops = [], []
        for _ in range(rounds):
            before = dropped()
            sent.append(pair.send(src, seconds))
            drops.append((dropped() - before) / seconds)
        return Row(mode, len(lst), max(sent), max(drops), setup)
    finally:
        if pf is not None:
            pf.close()
        if mode in ("iptables", "ipset"):
            subprocess.run(["ip", "netns", "exec", pair.rx, "iptables", "-t", "raw", "-F"], capture_output=True,
                           check=False)
        if mode == "ipset":
            subprocess.run(["ip", "netns", "exec", pair.rx, "ipset", "destroy", "pfdeny"], capture_output=True,
                           check=False)


def main(seconds: float = 3.0) -> list[Row]:
    print(f"(prefilter) drop rate through a veth: a UDP flood from a denied source, {seconds:g} s per measure, "
          "best of 2")
    rows = measure(seconds=seconds)
    by = {(r.mode, r.cidrs): r for r in rows}
    for n in sorted({r.cidrs for r in rows}):
        print(f"  {n:>7,} CIDRs")
        for mode in MODES:
            r = by.get((mode, n))
            if r is None:
                continue
            ratio = ""
            if mode in ("iptables", "ipset") and ("apiary", n) in by:
                a = by[("apiary", n)]
                ratio = f"  (apiary drops {a.drops_per_s / max(r.drops_per_s, 1):5.2f}x this)"
            print(f"    {mode:9} sent {r.sent_per_s:>10,.0f}/s  dropped {r.drops_per_s:>10,.0f}/s  "
                  f"set up in {r.setup_s:6.2f} s{ratio}")
    return rows
