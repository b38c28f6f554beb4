"""Policy apply latency (issue #9): a CiliumNetworkPolicy of N egress rules (one /32 `toCIDR` and one port
each) selecting one endpoint, applied to a real agent (own --state-dir, pins and pod CIDR) with 10, 100,
1,000 and 10,000 rules. Reported per size:

  agent     the agent's own time from the request to the policy in force in the kernel (``elapsed_ms``
            of the API answer), median over rounds; every round changes every rule's port so that all
            entries are really rewritten;
  request   the same apply seen from a client on the unix socket (agent time + HTTP);
  CLI       `apiary policy apply -f FILE` end to end, next to the CLI's own floor measured in the same run
            (`apiary policy list`: start-up + one request).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

SIZES = (10, 100, 1000, 10000)
TARGET_MS = 200.0  # at 1,000 rules


def policy_text(n: int, variant: int) -> str:
    """N egress rules, rule i allowing TCP to one /32 on one port; ``variant`` shifts every port."""
    lines = [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        "metadata: {name: bench-apply, namespace: bench}",
        "spec:",
        "  endpointSelector: {matchLabels: {app: bench}}",
        "  egress:",
    ]
    for i in range(n):
        ip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        port = 1024 + (i + variant * 7919) % 60000
        lines.append(f"  - toCIDR: [{ip}/32]")
        lines.append(f'    toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]')
    return "\n".join(lines) + "\n"


def _timed_cli(agent: AgentProcess, *args: str) -> float:
    t = time.perf_counter()
    r = agent.cli(*args)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise AssertionError(f"apiary {' '.join(args)} failed: {r.stderr}\nagent log:\n{agent.log()[-3000:]}")
    return dt


def measure(sizes: tuple[int, ...], rounds: int) -> tuple[float, list[tuple[int, float, float, float, int]]]:
    """(CLI floor s, [(rules, agent ms, request ms, CLI s, entries in force)])."""
    rows = []
    with AgentProcess(node_name="bench") as agent:
        net = Net(agent)
        try:
            net.endpoint("bench-ep", "bench", app="bench")
            client = agent.client()
            floor = statistics.median(_timed_cli(agent, "policy", "list") for _ in range(3))
            variant = 0
            for n in sizes:
                agent_ms, request_ms = [], []
                for _ in range(rounds):
                    variant += 1
                    body = policy_text(n, variant).encode()
                    t = time.perf_counter()
                    res = client.request(
                        "POST", "/v1/policies", content=body, headers={"Content-Type": "application/yaml"}
                    )
                    request_ms.append(1e3 * (time.perf_counter() - t))
                    agent_ms.append(float(res["elapsed_ms"]))
                variant += 1
                path = Path(agent.dir) / f"policy-{n}.yaml"
                path.write_text(policy_text(n, variant))
                cli_s = _timed_cli(agent, "policy", "apply", "-f", str(path))
                row = json.loads(net.cli_ok("endpoint", "get", "bench/bench-ep"))
                entries = int(row["policy_entries"])
                if entries != n or not row["egress_enforcement"]:
                    raise AssertionError(f"{n} rules applied but the endpoint holds {entries} entries: {row}")
                rows.append((n, statistics.median(agent_ms), statistics.median(request_ms), cli_s, entries))
            net.cli_ok("policy", "delete", "bench-apply", "-n", "bench")
        finally:
            net.close()
    return floor, rows


def main(rounds: int = 5, sizes: tuple[int, ...] = SIZES) -> None:
    print(f"\n(e) policy apply latency: one endpoint, N egress rules (/32 toCIDR + port each), median of {rounds}")
    floor, rows = measure(sizes, rounds)
    base = rows[0][1] if rows else 1.0
    print(f"  {'rules':>7}  {'agent':>11}  {'per rule':>9}  {'x 10 rules':>10}  {'request':>11}  {'CLI total':>10}")
    for n, agent_ms, request_ms, cli_s, _ in rows:
        print(
            f"  {n:>7,}  {agent_ms:>8.1f} ms  {1e3 * agent_ms / n:>6.1f} us  {agent_ms / base:>9.1f}x"
            f"  {request_ms:>8.1f} ms  {cli_s:>8.3f} s"
        )
    print(f"  CLI floor (`apiary policy list`: start-up + one request) {floor:.3f} s")
    at_1000 = [r[1] for r in rows if r[0] == 1000]
    if at_1000:
        print(f"  target: < {TARGET_MS:.0f} ms of agent time at 1,000 rules: {at_1000[0]:.1f} ms"
              f" = {at_1000[0] / TARGET_MS:.2f}x the target")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
