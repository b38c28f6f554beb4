"""Datapath benchmarks (issue #3):

(a) per-packet cost of the endpoint program with BPF_PROG_TEST_RUN for 1, 100, 1,000 and 10,000
    policy entries (and as many port-range blocks), as a ratio to an empty TC program measured in the
    same run: a new connection denied by an L3/L4 policy (the decision: one hash lookup, the kinds of
    entries the policy has), the same with every hash lookup the datapath can make (six, all missing),
    and with the two LPM lookups of port ranges as well (the worst case), and an established connection
    (conntrack hit); and the
    verifier's instruction counts of the endpoint programs;
(b) TCP connection rate and request/response rate between two real endpoints, without policy and
    with an L3/L4 allow policy in force.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

from apiary.loader import BpfObject
from apiary.loader.paths import bpf_object
from apiary.policy.types import INGRESS, PolicyEntry, PolicyKey
from apiary.sensors.network import abi
from apiary.sensors.network.sensor import lxc_rodata
from apiary.testing.progrun import tcp_packet

LO = 1  # BPF_PROG_TEST_RUN runs TC programs on the loopback device


Row = tuple[int, float, float, float, float, float]


def per_packet(entries: list[int], repeat: int) -> tuple[list[Row], dict[str, int]]:
    """Rows (entries, empty ns, new connection ns: L3/L4 policy, every hash lookup, every lookup; established
    ns) and the verified instruction count of each endpoint program."""
    obj = BpfObject(bpf_object("lxc"))
    obj.set_max_entries("policy", 65536)
    obj.set_max_entries("policy_ranges", 65536)
    obj.set_rodata(**lxc_rodata())  # conntrack timeouts in the kernel's jiffies, as the agent sets them
    obj.load()
    try:
        empty = obj.program("empty_tc")
        to_c = obj.program("to_container")
        insns = {n: obj.program(n).info().verified_insns for n in ("from_container", "to_container")}
        eps, pol, ipc = obj.map("endpoints"), obj.map("policy"), obj.map("ipcache")
        ranges = obj.map("policy_ranges")
        ep_id, local_id, remote_id = 7, 300, 301
        ipc.update(abi.ipcache_key("10.99.0.2/32"), abi.ipcache_value(remote_id))
        ipc.update(abi.ipcache_key("0.0.0.0/0"), abi.ipcache_value(2))
        lo = LO.to_bytes(4, "little")

        def endpoint(flags: int, kinds: int) -> None:
            eps.update(lo, abi.ep_info(ep_id, abi.EP_ENFORCE_INGRESS | flags, local_id, "10.99.0.3", ep_id << 1,
                                       (kinds, 0)))

        syn = tcp_packet("10.99.0.2", "10.99.0.3", 40000, 5678, 0x02)
        ack = tcp_packet("10.99.0.2", "10.99.0.3", 40001, 8080, 0x10)
        rng = random.Random(1)
        rows = []
        written = 0
        for n in entries:
            # unrelated identities and ports, as many exact ports as port-range blocks: the packet's
            # lookups find nothing
            exact, blocks = [], []
            for _ in range(n - written):
                ident = rng.randrange(1000, 60000)
                k = PolicyKey(ep_id, INGRESS, ident, 6, rng.randrange(1, 65535), 16)
                exact.append((abi.policy_key(k, ep_id << 1), abi.policy_value(PolicyEntry(False, 1), k)))
                plen = rng.randrange(1, 16)
                r = PolicyKey(ep_id, INGRESS, ident, 6, rng.randrange(1, 65535) >> (16 - plen) << (16 - plen), plen)
                blocks.append((abi.policy_key(r, ep_id << 1), abi.policy_value(PolicyEntry(False, 1), r)))
            pol.update_batch(exact)
            ranges.update_batch(blocks)
            written = n
            # one allow for the established flow's port, so the conntrack entry gets created once
            ak = PolicyKey(ep_id, INGRESS, remote_id, 6, 8080, 16)
            pol.update(abi.policy_key(ak, ep_id << 1), abi.policy_value(PolicyEntry(False, 1), ak))
            _, base, _ = empty.test_run(syn, repeat=repeat)
            endpoint(0, abi.PK_PORT)  # what the map writer says of these entries (the ranges are not looked up)
            _, new_ns, _ = to_c.test_run(syn, repeat=repeat)  # denied by default: full decision every time
            # every kind of entry for the remote identity and any identity: every lookup, without then with ranges
            endpoint(abi.EP_ANY_DENY_INGRESS, 0xFF & ~(abi.PK_RANGE * 0x11))
            _, hash_ns, _ = to_c.test_run(syn, repeat=repeat)
            endpoint(abi.EP_ANY_DENY_INGRESS, 0xFF)
            _, all_ns, _ = to_c.test_run(syn, repeat=repeat)
            endpoint(0, abi.PK_PORT)
            to_c.test_run(ack, repeat=1)  # creates the conntrack entry
            _, est_ns, _ = to_c.test_run(ack, repeat=repeat)
            rows.append((n, base, new_ns, hash_ns, all_ns, est_ns))
        return rows, insns
    finally:
        obj.close()


CLIENT = textwrap.dedent("""
    import socket, sys, time
    host, port, mode, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    n = 0
    end = time.monotonic() + secs
    if mode == "connect":
        while time.monotonic() < end:
            s = socket.create_connection((host, port), timeout=2); s.close(); n += 1
    else:
        s = socket.create_connection((host, port), timeout=2)
        while time.monotonic() < end:
            s.sendall(b"x"); s.recv(1); n += 1
    print(n / secs)
""")


def endpoint_rates(seconds: float) -> dict[str, dict[str, float]]:
    from apiary.testing.agent import AgentProcess
    from apiary.testing.net import Net

    out: dict[str, dict[str, float]] = {}
    with AgentProcess(node_name="bench") as agent:
        net = Net(agent)
        try:
            c = net.endpoint("client", "bench", app="client")
            s = net.endpoint("server", "bench", app="server")
            net.serve("bench/server", "serve-tcp", "5678")
            row = net.cli_ok("endpoint", "get", "bench/client")
            import json
            import os

            ns = os.path.basename(json.loads(row)["netns"])

            def rate(mode: str) -> float:
                r = subprocess.run(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, s["ipv4"], "5678", mode, str(seconds)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                return float(r.stdout.strip())

            out["no policy"] = {"connect": rate("connect"), "rr": rate("rr")}
            net.apply_ok("""
                apiVersion: cilium.io/v2
                kind: CiliumNetworkPolicy
                metadata: {name: bench, namespace: bench}
                spec:
                  endpointSelector: {matchLabels: {app: server}}
                  ingress:
                  - fromEndpoints: [{matchLabels: {app: client}}]
                    toPorts: [{ports: [{port: "5678", protocol: TCP}]}]
                  egress:
                  - toEndpoints: [{matchLabels: {app: client}}]
            """)
            out["with policy"] = {"connect": rate("connect"), "rr": rate("rr")}
            del c
        finally:
            net.close()
    return out


def main(repeat: int = 200000, seconds: float = 3.0) -> None:
    print("\n(c) datapath per-packet cost, BPF_PROG_TEST_RUN x", f"{repeat:,}", "(ratio to an empty TC program)")
    rows, insns = per_packet([1, 100, 1000, 10000], repeat)
    print(f"  {'':>8}  {'':>8}  {'new connection (the policy decision)':^58}")
    print(f"  {'entries':>8}  {'empty':>8}  {'L3/L4 policy':>18}  {'6 hash lookups':>18}  {'+ 2 LPM (ranges)':>18}"
          f"  {'established (CT hit)':>20}")
    for n, base, *ns in rows:
        b = max(base, 1)
        cells = [f"{v:>6} ns = {v / b:5.2f}x" for v in ns]
        print(f"  {n:>8,}  {base:>5} ns  " + "  ".join(f"{c:>18}" for c in cells[:3]) + f"  {cells[3]:>20}")
    print("  target: the decision flat from 1 to 10,000 entries, the established path within 3x of the empty program")
    print("  verified instructions: " + ", ".join(f"{n} {v:,}" for n, v in insns.items()))
    print("\n(d) TCP between two endpoints (Python client in the endpoint; ratios with/without policy)")
    rates = endpoint_rates(seconds)
    for what, label in (("connect", "connections/s"), ("rr", "request/response/s")):
        a, b = rates["no policy"][what], rates["with policy"][what]
        print(f"  {label:<20} without policy {a:>10,.0f}   with policy {b:>10,.0f}   ratio {b / a:5.2f}")
