"""toFQDNs state of the agent: the names its DNS proxy learned (Cilium's per-endpoint DNS cache), and the
judging of each query against the ``rules.dns`` of the endpoint that asked.

An answer's IPs stay allowed for the answer's TTL, at least ``tofqdns_min_ttl`` seconds (Cilium's
``--tofqdns-min-ttl``, default 0); the selectors see the union of every endpoint's unexpired entries.

The cache is kept in the state directory (:meth:`FqdnCache.dump`, :meth:`FqdnCache.load`): a restarted agent
compiles the IPs its predecessor learned into the maps it reconciles, so connections to them keep working
until their TTL runs out, as they would have with no restart.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from apiary.policy.fqdn import dns_verdict, fqdn, pattern_regex
from apiary.policy.identity import resolve
from apiary.policy.types import EGRESS, PROTO_TCP, PROTO_UDP, DnsRule, PolicyKey, RuleRef

_PROTO = {"UDP": PROTO_UDP, "TCP": PROTO_TCP}


@dataclass
class CacheEntry:
    ep_id: int
    name: str  # canonical
    ips: tuple[str, ...]
    ttl: int  # the TTL in force (the answer's, raised to the minimum TTL)
    looked_up: float  # epoch seconds
    source: str = "lookup"

    @property
    def expires(self) -> float:
        return self.looked_up + self.ttl


class _Saved(BaseModel):
    endpoint: int
    fqdn: str
    ips: list[str]
    ttl: int
    looked_up: float
    source: str = "lookup"


class FqdnCache:
    def __init__(self, min_ttl: int = 0) -> None:
        if min_ttl < 0:
            raise ValueError(f"tofqdns-min-ttl must be >= 0, not {min_ttl}")
        self.min_ttl = min_ttl
        self.entries: dict[tuple[int, str], CacheEntry] = {}

    def learn(self, ep_id: int, name: str, ips: tuple[str, ...], ttl: int, now: float | None = None) -> bool:
        """Record an answer; True when the names' IPs (what the selectors see) changed."""
        return bool(self.learn_many([(ep_id, name, ips, ttl)], now))

    def learn_many(self, answers: list[tuple[int, str, tuple[str, ...], int]], now: float | None = None,
                   at: list[float] | None = None) -> set[str]:
        """Record answers (endpoint, name, IPs, TTL) in order, looked up ``now`` (or each at its time in
        ``at``); the names whose IPs (what the selectors see) changed. An answer that repeats its entry's IPs only
        refreshes the entry (the common case: cheap)."""
        now = time.time() if now is None else now
        times = at if at is not None else [now] * len(answers)
        new = [(ep_id, fqdn(name), tuple(sorted(set(ips))), max(ttl, self.min_ttl), t)
               for (ep_id, name, ips, ttl), t in zip(answers, times, strict=True) if ips]
        moved = any((e := self.entries.get((ep_id, name))) is None or e.ips != ips for ep_id, name, ips, _, _ in new)
        before = self.names_ips() if moved else {}
        for ep_id, name, ips, ttl, t in new:
            self.entries[(ep_id, name)] = CacheEntry(ep_id, name, ips, ttl, t)
        if not moved:
            return set()
        after = self.names_ips()
        return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}

    def holds(self, ep_id: int, name: str, ips: tuple[str, ...], margin: float) -> bool:
        """Whether the endpoint's entry for the name has exactly these IPs and lives ``margin`` seconds more."""
        return bool(ips) and self.holds_exactly(ep_id, fqdn(name), tuple(sorted(set(ips))), time.time() + margin)

    def holds_exactly(self, ep_id: int, name: str, ips: tuple[str, ...], until: float) -> bool:
        """:meth:`holds` for a canonical name and sorted, unique IPs: whether the entry lives beyond ``until``."""
        e = self.entries.get((ep_id, name))
        return e is not None and e.ips == ips and e.expires > until

    def expire(self, now: float | None = None) -> bool:
        """Drop the entries whose TTL ran out; True when the names' IPs changed."""
        now = time.time() if now is None else now
        gone = [k for k, e in self.entries.items() if e.expires <= now]
        if not gone:
            return False
        before = self.names_ips()
        for k in gone:
            del self.entries[k]
        return self.names_ips() != before

    def forget_endpoint(self, ep_id: int) -> None:
        for k in [k for k in self.entries if k[0] == ep_id]:
            del self.entries[k]

    def dump(self) -> bytes:
        """The entries as a JSON document (what :meth:`load` restores)."""
        rows = [_Saved(endpoint=e.ep_id, fqdn=e.name, ips=list(e.ips), ttl=e.ttl, looked_up=e.looked_up,
                       source=e.source).model_dump() for e in self.entries.values()]
        return json.dumps({"version": 1, "entries": rows}, separators=(",", ":")).encode()

    def load(self, data: bytes, endpoints: set[int], now: float | None = None) -> int:
        """Restore what :meth:`dump` wrote: the unexpired entries of endpoints that still exist (their expiry
        unchanged). Returns how many were restored; a document that does not parse raises ValueError."""
        now = time.time() if now is None else now
        try:
            doc = json.loads(data)
            rows = [_Saved.model_validate(r) for r in doc["entries"]]
        except (ValueError, KeyError, TypeError, ValidationError) as e:
            raise ValueError(f"the saved fqdn cache does not parse: {e}") from e
        n = 0
        for r in rows:
            if r.endpoint in endpoints and r.ips and r.looked_up + r.ttl > now:
                name = fqdn(r.fqdn)
                self.entries[(r.endpoint, name)] = CacheEntry(r.endpoint, name, tuple(r.ips), r.ttl, r.looked_up,
                                                              r.source)
                n += 1
        return n

    def names_ips(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, set[str]] = defaultdict(set)
        for e in self.entries.values():
            out[e.name] |= set(e.ips)
        return {n: tuple(sorted(ips)) for n, ips in sorted(out.items())}

    def rows(self, ep_id: int | None = None, pattern: str | None = None) -> list[dict[str, Any]]:
        """``cilium fqdn cache list``'s rows, keyed as its ``-o json`` (Cilium's ``models.DNSLookup``):
        ``endpoint-id``, ``source``, ``fqdn``, ``ttl``, ``lookup-time``, ``expiration-time``, ``ips``."""
        rx = pattern_regex(pattern) if pattern else None
        out = []
        for e in sorted(self.entries.values(), key=lambda e: (e.ep_id, e.name)):
            if (ep_id is not None and e.ep_id != ep_id) or (rx is not None and not rx.match(e.name)):
                continue
            out.append({"endpoint-id": e.ep_id, "source": e.source, "fqdn": e.name, "ttl": e.ttl,
                        "lookup-time": _rfc3339(e.looked_up), "expiration-time": _rfc3339(e.expires),
                        "ips": list(e.ips)})
        return out


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class DnsJudge:
    """Which ``rules.dns`` apply to a query: the entries of the asking endpoint for the resolver's identity
    (or any identity), the protocol and the port it asked."""

    def __init__(self, dns: Mapping[PolicyKey, tuple[DnsRule, ...]], ep_by_ip: Mapping[str, int],
                 ipcache: Mapping[str, int], refs: list[RuleRef]) -> None:
        self.by_ep: dict[int, list[tuple[PolicyKey, tuple[DnsRule, ...]]]] = defaultdict(list)
        for key, rules in dns.items():
            if key.direction == EGRESS:
                self.by_ep[key.ep_id].append((key, rules))
        self.ep_by_ip, self.ipcache, self.refs = dict(ep_by_ip), dict(ipcache), refs
        # a judge is replaced whole when policies or endpoints change: its answers can be remembered meanwhile
        self._verdicts: dict[tuple[str, str, int, str, str], tuple[bool, str]] = {}
        self._identities: dict[str, int] = {}

    def ep_of(self, ip: str) -> int | None:
        return self.ep_by_ip.get(ip)

    def identity(self, ip: str) -> int:
        """The identity of an address by the ipcache this judge was made with (remembered)."""
        ident = self._identities.get(ip)
        if ident is None:
            if len(self._identities) >= 4096:
                self._identities.clear()
            ident = self._identities[ip] = resolve(self.ipcache, ip)
        return ident

    def __call__(self, client: str, server: str, port: int, transport: str, name: str) -> tuple[bool, str]:
        key = (client, server, port, transport, name)
        got = self._verdicts.get(key)
        if got is None:
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            got = self._verdicts[key] = self._judge(client, server, port, transport, name)
        return got

    def _judge(self, client: str, server: str, port: int, transport: str, name: str) -> tuple[bool, str]:
        ep = self.ep_by_ip.get(client)
        if ep is None:
            return False, "not an endpoint of this agent"
        ident = self.identity(server)
        proto = _PROTO.get(transport, 0)
        rules: list[DnsRule] = []
        for key, rs in self.by_ep.get(ep, ()):
            if key.identity in (0, ident) and key.proto == proto and key.port >> (16 - key.port_prefix) == \
                    port >> (16 - key.port_prefix):
                rules.extend(rs)
        hit = dns_verdict(rules, name)
        if hit is not None:
            return True, self.text(hit)
        if rules:
            return False, self.text(rules[0]).rsplit("[", 1)[0] + " (no DNS rule matched)"
        return False, "no rules.dns for this resolver and port"

    def text(self, rule: DnsRule) -> str:
        ref = self.refs[rule.rule_id] if 0 < rule.rule_id < len(self.refs) else None
        if ref is None:
            return rule.ref
        where = f"{ref.namespace}/{ref.policy}" if ref.namespace else ref.policy
        return f"{ref.kind} {where} {rule.ref}"
