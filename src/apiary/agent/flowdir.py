"""What flows show of the agent's endpoints, identities, rules and learned names, at one moment.

The network agent builds a new :class:`FlowDirectory` after every change (a policy, an endpoint, the DNS names
it learned) and never edits one. A flow built later (``DeferredFlow``, on first read) keeps the directory of the
moment its packet was read, so it names the endpoints, identities and rules of then.
"""

from __future__ import annotations

from collections.abc import Mapping

from apiary.observe.hubble.builder import EndpointInfo
from apiary.policy.types import CompiledPolicy, RuleRef
from apiary.sensors.network.endpoints import Endpoint


class FlowDirectory:
    """An ``EndpointDirectory`` (and ``names_of``) over one compiled policy and one set of endpoints."""

    __slots__ = ("compiled", "by_id", "by_ip", "by_ifindex", "names_by_ip", "_infos")

    def __init__(self, compiled: CompiledPolicy, endpoints: list[Endpoint],
                 names_by_ip: Mapping[str, list[str]]) -> None:
        self.compiled = compiled
        self.by_id = {e.ep_id: e for e in endpoints}
        self.by_ip = {e.ipv4: e for e in endpoints}
        self.by_ifindex = {e.host_ifindex: e for e in endpoints}
        self.names_by_ip = names_by_ip
        self._infos: dict[int, EndpointInfo] = {}  # by ep_id: an endpoint reads the same in one directory

    def identity_of(self, ep: Endpoint) -> int:
        return self.compiled.ipcache.get(f"{ep.ipv4}/32", 0)

    def _info(self, e: Endpoint) -> EndpointInfo:
        info = self._infos.get(e.ep_id)
        if info is None:
            ident = self.identity_of(e)
            info = self._infos[e.ep_id] = EndpointInfo(
                e.ep_id, e.name, e.namespace, list(self.compiled.identities.get(ident, ())), ident, e.ipv4)
        return info

    def endpoint(self, ep_id: int) -> EndpointInfo | None:
        e = self.by_id.get(ep_id)
        return self._info(e) if e else None

    def endpoint_by_ip(self, ip: str) -> EndpointInfo | None:
        e = self.by_ip.get(ip)
        return self._info(e) if e else None

    def identity_labels(self, identity: int) -> list[str]:
        return list(self.compiled.identities.get(identity, ()))

    def rule(self, rule_id: int) -> RuleRef | None:
        rules = self.compiled.rules
        return rules[rule_id] if 0 < rule_id < len(rules) else None

    def ifname(self, ifindex: int) -> str | None:
        e = self.by_ifindex.get(ifindex)
        return e.host_if if e else None

    def names_of(self, ip: str) -> list[str]:
        """The names the DNS proxy learned for an address (flows' source_names/destination_names)."""
        return self.names_by_ip.get(ip, [])
