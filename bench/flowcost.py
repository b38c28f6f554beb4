"""The agent's CPU per TCP connection between two endpoints: reading the datapath's flow records, counting them in
Hubble's metrics and keeping them in the flow ring (built only when read, docs/flows.md "When a flow is built").

A real agent, two endpoints, an echo server in one, and `netprobe ask` in the other making N sequential
connections per round. For each round: the agent's utime+stime (/proc/PID/stat) per connect, the flow records
per connect, and the agent's share of one core over the round (its CPU over the client's wall time, the baseline
of the same run). Then one `observe --last` of the whole ring, the cost of building what is read.

Run: `make bench ARGS="--only flowcost"` (root).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from apiary.testing.net import running_net


def _cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _seen(net: Any) -> int:
    """The datapath's flow records the agent has read."""
    return int(json.loads(net.cli_ok("status", "-o", "json"))["network"]["flows"]["records"])


def main(connects: int = 3000, rounds: int = 3) -> dict[str, Any]:
    load = os.getloadavg()
    print(f"(flowcost) the agent's CPU per TCP connect between two endpoints: {rounds} rounds of {connects:,} "
          f"sequential connects; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    res: dict[str, Any] = {"rounds": []}
    with running_net() as net:
        net.endpoint("flowcost-client", app="flowcost-client")
        server = net.endpoint("flowcost-server", app="flowcost-server")
        net.serve("flowcost-server", "serve-id", "8080", "s")
        assert net.agent.proc is not None
        pid = net.agent.proc.pid
        for i in range(rounds):
            seen0, cpu0, t0 = _seen(net), _cpu_s(pid), time.monotonic()
            r = subprocess.run(net._exec("flowcost-client", "ask", server["ipv4"], "8080", str(connects)),
                               capture_output=True, text=True, timeout=600)
            wall = time.monotonic() - t0
            time.sleep(1.0)  # the agent drains the ring every 50 ms (and at its wake-up mark)
            cpu, seen = _cpu_s(pid) - cpu0, _seen(net) - seen0
            if r.returncode != 0:
                raise RuntimeError(f"client failed: {r.stderr[-500:]}")
            row = {"cpu_us_per_connect": 1e6 * cpu / connects, "flows_per_connect": seen / connects,
                   "agent_core_share": cpu / wall, "connects_per_s": connects / wall}
            res["rounds"].append(row)
            print(f"  round {i + 1}: agent {row['cpu_us_per_connect']:.0f} us CPU per connect, "
                  f"{row['flows_per_connect']:.1f} flows per connect, {row['agent_core_share']:.2f} of a core "
                  f"while the client made {row['connects_per_s']:,.0f} connects/s")
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        out = net.cli_ok("observe", "-o", "json", "--last", "4095")
        n = len(out.splitlines())
        res["read"] = {"flows": n, "agent_cpu_s": _cpu_s(pid) - cpu0, "wall_s": time.monotonic() - t0}
        print(f"  reading the ring: {n:,} flows built and sent in {res['read']['wall_s']:.2f} s "
              f"(agent CPU {res['read']['agent_cpu_s']:.2f} s)")
    return res


if __name__ == "__main__":
    main()
