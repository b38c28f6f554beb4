"""The connectivity test's scenarios, their selection (`--test`, as cilium-cli's) and the report lines.

Pure: nothing here talks to the agent or the kernel (src/apiary/cli/connectivity.py runs the scenarios).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

L7_MISSING = "L7 proxy not available in this agent"
DNS_MISSING = "DNS proxy not available in this agent"


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # one line: what it proves
    l7: bool = False  # needs the agent's L7 proxy
    dns: bool = False  # needs the agent's DNS proxy


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("pod-to-pod", "client endpoint -> echo endpoint, TCP"),
    Scenario("pod-to-host", "client endpoint -> the node (its router address), TCP"),
    Scenario("pod-to-service", "client endpoint -> ClusterIP of a Service backed by the echo endpoint"),
    Scenario("host-to-nodeport", "the node (127.0.0.1) -> NodePort of that Service"),
    Scenario("allow-l3-l4", "CiliumNetworkPolicy allowing client -> echo:8080: 8080 works, 8081 is dropped"),
    Scenario("deny-precedence", "ingressDeny on client -> echo:8080 wins over the allow of the same port"),
    Scenario("drop-flow", "a policy drop shows up in the agent's flows, DROPPED with reason POLICY_DENIED"),
    Scenario("prefilter", "XDP prefilter drops a denied source CIDR on a veth of the test's own"),
    Scenario("tracing-kill", "a TracingPolicy Sigkills a write into a scratch dir from the client endpoint"),
    Scenario("l7-http", "HTTP rule through the agent's proxy: GET /allowed 200, GET /denied 403", l7=True),
    Scenario("dns", "DNS rule through the agent's DNS proxy: allowed name resolves, other name refused", dns=True),
)


def l7_missing(status: Mapping[str, Any]) -> str:
    """Why the L7 scenarios cannot run on the agent whose ``/v1/status`` this is; empty when its proxy is up
    (``network.l7_proxy`` is the proxy's status, null when the agent runs without one)."""
    net = status.get("network")
    if not isinstance(net, Mapping):
        return f"{L7_MISSING} (no network half)"
    proxy = net.get("l7_proxy")
    if not isinstance(proxy, Mapping):
        return f"{L7_MISSING} (haproxy not installed or not started: see `apiary status`)"
    if not proxy.get("alive"):
        return f"{L7_MISSING}: the proxy is down (restarts {proxy.get('restarts', 0)}: see `apiary status`)"
    return ""


def dns_missing(status: Mapping[str, Any]) -> str:
    """Why the DNS scenario cannot run on the agent whose ``/v1/status`` this is; empty when its DNS proxy is up
    (``network.dns_proxy``: null when the agent runs without one; it starts with the L7 proxy)."""
    net = status.get("network")
    if not isinstance(net, Mapping):
        return f"{DNS_MISSING} (no network half)"
    if not isinstance(net.get("dns_proxy"), Mapping):
        return f"{DNS_MISSING} (it starts with the L7 proxy: haproxy not installed or not started, see `apiary status`)"
    return ""


class SelectionError(ValueError):
    pass


def select(patterns: tuple[str, ...], scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[Scenario]:
    """cilium-cli's --test: each pattern a regular expression searched in the name; a leading ``!`` excludes.
    With only exclusions, every other scenario runs. A pattern matching nothing is an error (a typo would
    otherwise test nothing and pass)."""
    include: list[re.Pattern[str]] = []
    exclude: list[re.Pattern[str]] = []
    for raw in patterns:
        for p in (x.strip() for x in raw.split(",")):
            if not p:
                continue
            neg = p.startswith("!")
            try:
                rx = re.compile(p[1:] if neg else p)
            except re.error as e:
                raise SelectionError(f"--test {p!r}: not a regular expression ({e})") from None
            if not any(rx.search(s.name) for s in scenarios):
                names = ", ".join(s.name for s in scenarios)
                raise SelectionError(f"--test {p!r}: matches no scenario (scenarios: {names})")
            (exclude if neg else include).append(rx)
    chosen = [
        s for s in scenarios
        if (not include or any(rx.search(s.name) for rx in include)) and not any(rx.search(s.name) for rx in exclude)
    ]
    if not chosen:
        raise SelectionError(f"--test {', '.join(map(repr, patterns))}: selects no scenario (an empty run would pass)")
    return chosen


@dataclass
class Action:
    what: str  # e.g. "client -> 10.200.0.3:8080 (expect success)"
    ok: bool
    reason: str = ""  # why it failed


@dataclass
class Result:
    scenario: Scenario
    actions: list[Action] = field(default_factory=list)
    skipped: str = ""  # the reason, when skipped
    error: str = ""  # the scenario could not run (set-up failed): counts as a failure

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.error and all(a.ok for a in self.actions)

    @property
    def reason(self) -> str:
        """Why it was skipped or failed (the first failed action); empty when it passed."""
        return self.skipped or self.error or next((f"{a.what}: {a.reason}" for a in self.actions if not a.ok), "")

    def line(self) -> str:
        s = self.scenario
        if self.skipped:
            return f"⏭️  [{s.name}] skipped: {self.skipped}"
        if self.ok:
            n = len(self.actions)
            return f"✅ [{s.name}] {s.what} ({n} action{'s' if n != 1 else ''})"
        return f"❌ [{s.name}] {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.scenario.name,
            "description": self.scenario.what,
            "result": "skipped" if self.skipped else "success" if self.ok else "failure",
            "reason": self.reason,
            "actions": [{"action": a.what, "ok": a.ok, "reason": a.reason} for a in self.actions],
        }


def summary(results: list[Result], deselected: int = 0) -> list[str]:
    """Cilium's report lines: `✅ All N tests (M actions) successful, K tests skipped, 0 scenarios skipped.` or
    `❌ x/N tests failed (a/M actions), K tests skipped, 0 scenarios skipped:` and one line per failure. Skipped
    tests are, as in cilium-cli, those that could not run here and those ``--test`` left out (``deselected``)."""
    ran = [r for r in results if not r.skipped]
    skipped = len(results) - len(ran) + deselected
    actions = sum(len(r.actions) for r in ran)
    failed = [r for r in ran if not r.ok]
    tail = f"{skipped} tests skipped, 0 scenarios skipped"
    if not failed:
        return [f"✅ All {len(ran)} tests ({actions} actions) successful, {tail}."]
    bad_actions = sum(1 for r in ran for a in r.actions if not a.ok) + sum(1 for r in failed if r.error)
    out = [f"❌ {len(failed)}/{len(ran)} tests failed ({bad_actions}/{actions} actions), {tail}:"]
    for r in failed:
        out.append(f"Test [{r.scenario.name}]:")
        if r.error:
            out.append(f"  ❌ {r.error}")
        out += [f"  ❌ {a.what}: {a.reason}" for a in r.actions if not a.ok]
    return out
