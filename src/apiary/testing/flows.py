"""A fixed EndpointDirectory for building Hubble flows without an agent (tests, examples)."""

from __future__ import annotations

from dataclasses import dataclass, field

from apiary.observe.hubble.builder import EndpointInfo
from apiary.policy.types import RuleRef


@dataclass
class StaticDirectory:
    eps: dict[int, EndpointInfo] = field(default_factory=dict)
    labels: dict[int, list[str]] = field(default_factory=dict)  # identity -> labels
    rules: dict[int, RuleRef] = field(default_factory=dict)
    ifnames: dict[int, str] = field(default_factory=dict)

    def endpoint(self, ep_id: int) -> EndpointInfo | None:
        return self.eps.get(ep_id)

    def endpoint_by_ip(self, ip: str) -> EndpointInfo | None:
        return next((e for e in self.eps.values() if e.ipv4 == ip), None)

    def identity_labels(self, identity: int) -> list[str]:
        return self.labels.get(identity, [])

    def rule(self, rule_id: int) -> RuleRef | None:
        return self.rules.get(rule_id)

    def ifname(self, ifindex: int) -> str | None:
        return self.ifnames.get(ifindex)
