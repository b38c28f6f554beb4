"""Datapath benchmarks (issue #3):

(a) per-packet cost of the endpoint program with BPF_PROG_TEST_RUN for 1, 100, 1,000 and 10,000
    policy entries, as a ratio to an empty TC program measured in the same run: a new connection
    (the policy decision: two LPM lookups) and an established one (conntrack hit);
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
from apiary.testing.progrun import tcp_packet

LO = 1  # BPF_PROG_TEST_RUN runs TC programs on the loopback device


def per_packet(entries: list[int], repeat: int) -> list[tuple[int, float, float, float]]:
    obj = BpfObject(bpf_object("lxc"))
    obj.set_max_entries("policy", 65536)
    obj.load()
    try:
        empty = obj.program("empty_tc")
        to_c = obj.program("to_container")
        eps, pol, ipc = obj.map("endpoints"), obj.map("policy"), obj.map("ipcache")
        ep_id, local_id, remote_id = 7, 300, 301
        ipc.update(abi.ipcache_key("10.99.0.2/32"), abi.ipcache_value(remote_id))
        ipc.update(abi.ipcache_key("0.0.0.0/0"), abi.ipcache_value(2))
        eps.update(
            LO.to_bytes(4, "little"), abi.ep_info(ep_id, abi.EP_ENFORCE_INGRESS, local_id, "10.99.0.3", ep_id << 1)
        )
        syn = tcp_packet("10.99.0.2", "10.99.0.3", 40000, 5678, 0x02)
        ack = tcp_packet("10.99.0.2", "10.99.0.3", 40001, 8080, 0x10)
        rng = random.Random(1)
        rows = []
        written: list[bytes] = []
        for n in entries:
            while len(written) < n:  # unrelated identities and ports: the packet's lookup finds nothing
                k = PolicyKey(ep_id, INGRESS, rng.randrange(1000, 60000), 6, rng.randrange(1, 65535), 16)
                kb = abi.policy_key(k, ep_id << 1)
                pol.update(kb, abi.policy_value(PolicyEntry(False, 1), k))
                written.append(kb)
            # one allow for the established flow's port, so the conntrack entry gets created once
            ak = PolicyKey(ep_id, INGRESS, remote_id, 6, 8080, 16)
            pol.update(abi.policy_key(ak, ep_id << 1), abi.policy_value(PolicyEntry(False, 1), ak))
            _, base, _ = empty.test_run(syn, repeat=repeat)
            _, new_ns, _ = to_c.test_run(syn, repeat=repeat)  # denied by default: full decision every time
            to_c.test_run(ack, repeat=1)  # creates the conntrack entry
            _, est_ns, _ = to_c.test_run(ack, repeat=repeat)
            rows.append((n, base, new_ns, est_ns))
        return rows
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
    print(f"  {'entries':>8}  {'empty':>8}  {'new conn (decision)':>22}  {'established (CT hit)':>22}")
    for n, base, new_ns, est_ns in per_packet([1, 100, 1000, 10000], repeat):
        b = max(base, 1)
        print(f"  {n:>8,}  {base:>6} ns  {new_ns:>8} ns = {new_ns / b:5.2f}x  {est_ns:>10} ns = {est_ns / b:5.2f}x")
    print("  target: flat from 1 to 10,000 entries, within 3x of the empty program")
    print("\n(d) TCP between two endpoints (Python client in the endpoint; ratios with/without policy)")
    rates = endpoint_rates(seconds)
    for what, label in (("connect", "connections/s"), ("rr", "request/response/s")):
        a, b = rates["no policy"][what], rates["with policy"][what]
        print(f"  {label:<20} without policy {a:>10,.0f}   with policy {b:>10,.0f}   ratio {b / a:5.2f}")
