"""The seed walkthrough as one command (`make demo`): two frontends and two backends; the frontend
reaches the backend; the seed's `block-backend-access` policy is applied; the same request fails; the
flows show the drop with its reason and the policy that made it; everything is cleaned up.

It runs its own agent (unique instance, pod CIDR and socket) so it never touches a running one.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

POLICY = Path(__file__).resolve().parents[2] / "examples" / "block-backend-access.yaml"
NS = "test-namespace"


def step(text: str) -> None:
    print(f"\n\033[1m▶ {text}\033[0m" if sys.stdout.isatty() else f"\n> {text}", flush=True)


def show(net: Net, *args: str) -> str:
    print(f"$ apiary {' '.join(shlex.quote(a) for a in args)}")
    out = net.cli_ok(*args)
    print(out.rstrip())
    return out


def main() -> int:
    agent = AgentProcess(node_name="demo")
    net = Net(agent)
    try:
        step("start an agent (its own socket, pin root, pod CIDR)")
        agent.start()
        print(agent.log().rstrip())
        step("two frontends and two backends")
        for name, app in (
            ("frontend", "frontend"),
            ("frontend2", "frontend"),
            ("backend", "backend"),
            ("backend2", "backend"),
        ):
            show(net, "endpoint", "create", name, "--labels", f"app={app}", "--namespace", NS)
        show(net, "endpoint", "list")
        for b in ("backend", "backend2"):
            net.serve(f"{NS}/{b}", "serve-http", "5678")
        rows = json.loads(net.cli_ok("endpoint", "list", "-o", "json"))
        backend_ip = next(e["ipv4"] for e in rows if e["name"] == "backend")
        step(f"frontend -> backend: GET http://{backend_ip}:5678/")
        ok = net.probe(f"{NS}/frontend", "http", backend_ip, "5678", "2")
        print("  reached the backend" if ok else "  FAILED (unexpected)")
        step("apply the seed's block-backend-access policy")
        print(POLICY.read_text().rstrip())
        show(net, "policy", "apply", "-f", str(POLICY))
        step("the same request again")
        blocked = not net.probe(f"{NS}/frontend", "http", backend_ip, "5678", "2")
        print("  blocked, as the policy says" if blocked else "  still reachable (unexpected)")
        step("why? the flows and the rule that decided")
        show(
            net,
            "observe",
            "--last",
            "4",
            "--verdict",
            "DROPPED",
            "--from-pod",
            f"{NS}/frontend",
            "--print-policy-names",
            "--color",
            "never",
        )
        show(net, "policy", "explain", "--from", f"{NS}/frontend", "--to", f"{NS}/backend", "--port", "5678/TCP")
        return 0 if ok and blocked else 1
    finally:
        step("clean up: endpoints, their netns/veths/cgroups, the agent")
        net.close()
        agent.cleanup()
        print("  done")


if __name__ == "__main__":
    sys.exit(main())
