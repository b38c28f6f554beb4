"""Policies + endpoints -> desired datapath state (:class:`CompiledPolicy`): per-endpoint policy entries,
rule attribution, identities and the ipcache. Pure: no kernel, no I/O besides the identity allocator.

Named ports (``toPorts.ports[].port: http``) resolve as in Cilium: on ingress against the container ports of
the endpoint the policy is for; on egress against the container ports of each peer identity the rule selects
(the union over that identity's endpoints; a rule with no L3 peer resolves against every endpoint's). A name
that resolves to nothing, to another protocol, or to several port numbers (Cilium's ErrDuplicateNamedPorts)
allows nothing; it is not an error. Endpoints' ports are compile inputs, so any change recompiles.

Map semantics (see types.py): the datapath looks up (remote identity) and (identity 0) separately,
longest prefix wins in each lookup and a deny from either wins. Deny precedence inside one identity
sub-space is resolved here: an allow covered by a less specific deny of the same identity becomes a deny.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from types import SimpleNamespace
from typing import Any, Literal

from .fqdn import selector_matches
from .identity import (
    RESERVED_IDENTITIES,
    CidrIndex,
    IdentityAllocator,
    build_ipcache,
    cidr_labels,
    cidr_selection,
    endpoint_labels,
)
from .load import unsupported_problems
from .models import (
    SECTIONS,
    CIDRRule,
    FQDNSelector,
    PolicyError,
    PortRule,
    PortRuleHTTP,
    Rule,
    parse_cidr,
    split_header,
)
from .models import Policy as PolicyModel
from .selectors import Selector, entity_identities, peer_selector, select, subject_selector
from .types import (
    EGRESS,
    ID_UNKNOWN,
    INGRESS,
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    CompiledPolicy,
    DnsRule,
    EndpointPolicy,
    HttpRule,
    PolicyEntry,
    PolicyKey,
    RuleRef,
)

__all__ = ["EndpointSpec", "Enforcement", "check_capacity", "compile_policies", "port_blocks"]

Enforcement = Literal["default", "always", "never"]
PROTO_NUMBERS = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}
DEFAULT_DENY_RULE = RuleRef("", "", "", "default deny", 0)


@dataclass(frozen=True)
class EndpointSpec:
    ep_id: int
    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    ipv4: str = ""
    ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # container ports: name -> (port, protocol)


# (port name, IP protocol) -> the port numbers the endpoints of one identity give that name
NamedPorts = dict[tuple[str, int], set[int]]


@dataclass
class _Rule:
    policy: PolicyModel
    path: str  # "spec" or "specs[i]"
    rule: Rule
    subject: Selector
    index: int  # position among all rules, for caches


def port_blocks(first: int, last: int) -> Iterator[tuple[int, int]]:
    """Decompose the inclusive range first..last into aligned power-of-two blocks (port, prefix length)."""
    while first <= last:
        size = first & -first or 1 << 16
        while size > last - first + 1:
            size >>= 1
        yield first, 17 - size.bit_length()
        first += size


def _v4(text: str) -> IPv4Network:
    net = parse_cidr(text, bare_ip=True)
    if not isinstance(net, IPv4Network):
        raise PolicyError(f"IPv6 CIDR {text} cannot be compiled: the datapath is IPv4-only")
    return net


def _l4(item: Any) -> tuple[list[tuple[int, int, int]], list[tuple[str, int]]]:
    """(proto, port, port_prefix) triples of an item (L3-only items give the any-protocol triple), and its
    named ports as (name, proto) pairs (ANY: one per protocol, as Cilium splits ANY into TCP, UDP and SCTP)."""
    if not item.to_ports and not item.icmps:
        return [(PROTO_ANY, 0, 0)], []
    out: dict[tuple[int, int, int], None] = {}
    named: dict[tuple[str, int], None] = {}
    for port_rule in item.to_ports or []:
        for pp in port_rule.ports or []:
            protos = PROTO_NUMBERS.values() if pp.protocol == "ANY" else [PROTO_NUMBERS[pp.protocol]]
            n = pp.number
            if n is None:  # endPort has no meaning for a named port (Cilium ignores it)
                named.update(((pp.port, proto), None) for proto in protos)
                continue
            blocks = [(0, 0)] if n == 0 else list(port_blocks(n, max(n, pp.end_port or 0)))
            out.update(((proto, port, plen), None) for proto in protos for port, plen in blocks)
    for icmp in item.icmps or []:
        out.update(((PROTO_ICMP, f.code, 16), None) for f in icmp.fields or [])
    return list(out), list(named)


def _own_port(ports: Mapping[str, tuple[int, str]], name: str, proto: int) -> int | None:
    """A name against one endpoint's container ports: its number when the protocol matches."""
    hit = ports.get(name)
    return hit[0] if hit is not None and PROTO_NUMBERS.get(hit[1]) == proto else None


def _one_port(named: NamedPorts, name: str, proto: int) -> int | None:
    """A name against an identity's ports: its number when its endpoints agree on one."""
    ports = named.get((name, proto), ())
    return next(iter(ports)) if len(ports) == 1 else None


def named_ports(endpoints: Iterable[EndpointSpec], ep_identity: Mapping[int, int]) -> dict[int, NamedPorts]:
    """Cilium's named-port map per identity, from the container ports of the node's endpoints."""
    out: dict[int, NamedPorts] = defaultdict(lambda: defaultdict(set))
    for ep in endpoints:
        for name, (port, protocol) in ep.ports.items():
            if protocol in PROTO_NUMBERS:
                out[ep_identity[ep.ep_id]][(name, PROTO_NUMBERS[protocol])].add(port)
    return out


class _Compiler:
    def __init__(self, rules: list[_Rule], identities: dict[int, tuple[str, ...]],
                 cidr_ids: dict[IPv4Network, int], revision: int, audit: bool,
                 ports: dict[int, NamedPorts] | None = None) -> None:
        self.rules, self.identities, self.cidr_ids = rules, identities, cidr_ids
        self.ports = ports or {}  # named ports per identity (egress resolution)
        self._all_ports: NamedPorts = defaultdict(set)  # every endpoint's (a rule with no L3 peer)
        for named in self.ports.values():
            for key, numbers in named.items():
                self._all_ports[key] |= numbers
        self._cidr_index = CidrIndex(cidr_ids)
        self.revision, self.audit = revision, audit
        self.refs: list[RuleRef] = [DEFAULT_DENY_RULE]
        self._ref_ids: dict[tuple[int, str], int] = {}
        self._peers: dict[tuple[int, str], set[int]] = {}
        self.l7: dict[PolicyKey, list[HttpRule]] = {}
        self.dns: dict[PolicyKey, list[DnsRule]] = {}
        self.fqdn_ips: dict[str, tuple[str, ...]] = {}  # toFQDNs: every resolved name and its IPs (compile input)
        self.fqdn_selected: dict[str, tuple[str, ...]] = {}  # the names some toFQDNs selected, and their IPs
        self._void: dict[PolicyKey, int] = {}  # L7 keys a plain allow of the very same key voids

    def ref(self, r: _Rule, section: str) -> int:
        key = (r.index, section)
        if key not in self._ref_ids:
            p = r.policy
            labels: tuple[str, ...] = (
                f"k8s:io.cilium.k8s.policy.derived-from={p.kind}", f"k8s:io.cilium.k8s.policy.name={p.name}")
            if p.namespace:
                labels += (f"k8s:io.cilium.k8s.policy.namespace={p.namespace}",)
            prefix = "" if r.path == "spec" else f"{r.path}."
            self._ref_ids[key] = len(self.refs)
            self.refs.append(RuleRef(p.name, p.namespace, p.kind, prefix + section, self.revision,
                                     labels + r.rule.label_strings(), r.rule.description or ""))
        return self._ref_ids[key]

    def _cidr(self, text: str, excepts: Iterable[str] = ()) -> set[int]:
        return cidr_selection(_v4(text), [_v4(e) for e in excepts], self._cidr_index)

    def peers(self, r: _Rule, section: str, item: Any, direction: int) -> set[int]:
        """Remote identities an item selects; {0} = any identity."""
        key = (r.index, section)
        if key in self._peers:
            return self._peers[key]
        side = "from" if direction == INGRESS else "to"
        endpoints: list[Any] | None = getattr(item, f"{side}_endpoints")
        cidrs: list[str] | None = getattr(item, f"{side}_cidr")
        cidr_sets: list[CIDRRule] | None = getattr(item, f"{side}_cidr_set")
        entities: list[str] | None = getattr(item, f"{side}_entities")
        fqdns: list[FQDNSelector] | None = getattr(item, "to_fqdns", None) if direction == EGRESS else None
        out: set[int] = set()
        if endpoints is None and cidrs is None and cidr_sets is None and entities is None and fqdns is None:
            # no L3 peer at all: a port/ICMP rule applies to any identity; an empty item allows nothing
            out = {ID_UNKNOWN} if item.to_ports or item.icmps else set()
        else:  # an explicitly empty list selects nothing
            ns = r.policy.namespace
            out |= select([peer_selector(s, ns) for s in endpoints or []], self.identities)
            for c in cidrs or []:
                out |= self._cidr(c)
            for cs in cidr_sets or []:
                out |= self._cidr(cs.cidr or "", cs.except_ or [])
            for e in entities or []:
                out |= entity_identities(e, self.identities)
            for name, ips in _fqdn_selection(fqdns or [], self.fqdn_ips):
                self.fqdn_selected[name] = ips
                out |= {self.cidr_ids[IPv4Network(f"{ip}/32")] for ip in ips}
        if ID_UNKNOWN in out:
            out = {ID_UNKNOWN}
        self._peers[key] = out
        return out

    def named_keys(self, ep: EndpointSpec, direction: int, peers: list[int],
                   named: list[tuple[str, int]]) -> list[PolicyKey]:
        """Map keys of named ports: ingress resolves against ``ep``'s own ports, egress against each peer's."""
        keys = []
        for name, proto in named:
            if direction == INGRESS:
                port = _own_port(ep.ports, name, proto)
                if port is not None:
                    keys += [PolicyKey(ep.ep_id, direction, ident, proto, port, 16) for ident in peers]
                continue
            for ident in peers:
                port = _one_port(self._all_ports if ident == ID_UNKNOWN else self.ports.get(ident, {}), name, proto)
                if port is not None:
                    keys.append(PolicyKey(ep.ep_id, direction, ident, proto, port, 16))
        return keys

    def direction(self, ep: EndpointSpec, direction: int, selecting: list[_Rule],
                  enforcement: Enforcement) -> tuple[bool, dict[PolicyKey, PolicyEntry]]:
        ep_id = ep.ep_id
        ingress = direction == INGRESS
        sections = SECTIONS[:2] if ingress else SECTIONS[2:]
        with_rules = [r for r in selecting if any(getattr(r.rule, attr) for attr, _ in sections)]
        default_deny = enforcement == "always" or any(r.rule.default_deny(ingress) for r in selecting)
        if not with_rules and not default_deny:
            return False, {}
        entries: dict[PolicyKey, PolicyEntry] = {}
        for r in with_rules:
            for attr, name in sections:
                deny = attr.endswith("_deny")
                for i, item in enumerate(getattr(r.rule, attr) or []):
                    section = f"{name}[{i}]"
                    peers = sorted(self.peers(r, section, item, direction))
                    for sub, kind, l7rules, l7_path in _l7_split(
                            item, ("" if r.path == "spec" else f"{r.path}.") + section):
                        numbered, named = _l4(sub)
                        keys = [PolicyKey(ep_id, direction, ident, proto, port, plen)
                                for ident in peers for proto, port, plen in numbered]
                        if named:
                            keys += self.named_keys(ep, direction, peers, named)
                        if not keys:
                            continue
                        rule_id = self.ref(r, section)
                        for key in keys:
                            # the DNS proxy takes UDP and TCP; other protocols of an ANY port stay plain L4
                            dns = kind == "dns" and key.proto in (PROTO_TCP, PROTO_UDP)
                            entry = PolicyEntry(deny, rule_id, self.audit and deny, l7=kind == "http", dns=dns)
                            old = entries.get(key)
                            if old is not None and not deny and not old.deny and _proxied(old) != _proxied(entry):
                                plain = old if _proxied(entry) else entry  # a plain allow of the key voids L7
                                self._void.setdefault(key, plain.rule_id)
                            _merge(entries, key, entry)
                            if kind == "http":
                                self.l7.setdefault(key, []).extend(
                                    _http_rule(rule_id, f"{l7_path}[{j}]", h) for j, h in enumerate(l7rules))
                            elif dns:
                                self.dns.setdefault(key, []).extend(
                                    DnsRule(rule_id, f"{l7_path}[{j}]", d.match_name, d.match_pattern)
                                    for j, d in enumerate(l7rules))
        if not default_deny:  # only additive rules (enableDefaultDeny false): everything not denied is allowed
            r = with_rules[0]
            entry = PolicyEntry(False, self.ref(r, f"enableDefaultDeny.{'ingress' if ingress else 'egress'}"))
            _merge(entries, PolicyKey(ep_id, direction, ID_UNKNOWN, PROTO_ANY, 0, 0), entry)
        _deny_precedence(entries)
        self._l7_void(entries)
        return True, entries

    def _l7_void(self, entries: dict[PolicyKey, PolicyEntry]) -> None:
        """Cilium's wildcardL3L4Rule: a plain allow (no L7) of the same peer (or of any peer) and port makes
        the port's HTTP rules void for that peer: the proxy still sees its requests and allows them all."""
        for key, entry in entries.items():
            http, dns = self.l7.get(key), self.dns.get(key)
            if (http is None and dns is None) or entry.deny:
                continue
            if not _proxied(entry):
                entries[key] = PolicyEntry(False, entry.rule_id, entry.audit, l7=http is not None, dns=dns is not None)
            void = self._void.get(key)
            if void is None:
                for other, e in entries.items():
                    if e.deny or _proxied(e) or other.identity not in (key.identity, 0):
                        continue
                    if PolicyKey(key.ep_id, key.direction, other.identity, key.proto, key.port, key.port_prefix) \
                            .covered_by(other):
                        void = e.rule_id
                        break
            if void is not None:
                ref = self.refs[void].section
                if http is not None:
                    http.append(HttpRule(void, ref))
                if dns is not None:
                    dns.append(DnsRule(void, ref))


def _proxied(e: PolicyEntry) -> bool:
    return e.l7 or e.dns


def _l7_of(port_rule: Any) -> tuple[str, list[Any]] | None:
    """A toPorts entry's ``rules.http`` or ``rules.dns``: (kind, rules); deny rules have no ``rules``."""
    rules = getattr(port_rule, "rules", None)
    if rules is None:
        return None
    if rules.http is not None:
        return "http", rules.http
    if rules.dns is not None:
        return "dns", rules.dns
    return None


def _l7_split(item: Any, section: str) -> Iterator[tuple[Any, str | None, list[Any], str]]:
    """An item's L4 part, split so each port rule with ``rules.http``/``rules.dns`` stands alone: (item-like,
    "http", "dns" or None, its L7 rules, the field path of those rules)."""
    port_rules: list[PortRule] = getattr(item, "to_ports", None) or []
    l7 = [(i, pr, kr) for i, pr in enumerate(port_rules) if (kr := _l7_of(pr)) is not None]
    if not l7:
        yield item, None, [], ""
        return
    rest = [pr for pr in port_rules if _l7_of(pr) is None]
    if rest or item.icmps:
        yield SimpleNamespace(to_ports=rest, icmps=item.icmps), None, [], ""
    for i, pr, (kind, rules) in l7:
        yield SimpleNamespace(to_ports=[pr], icmps=None), kind, rules, f"{section}.toPorts[{i}].rules.{kind}"


def _http_rule(rule_id: int, ref: str, h: PortRuleHTTP) -> HttpRule:
    headers = [split_header(t) for t in h.headers or []]
    headers += [(m.name, m.value or "") for m in h.header_matches or []]
    return HttpRule(rule_id, ref, h.method or None, h.path or None, h.host or None, tuple(headers))


def _merge(entries: dict[PolicyKey, PolicyEntry], key: PolicyKey, entry: PolicyEntry) -> None:
    """Same key from several rules: deny beats allow; otherwise the first rule keeps the attribution."""
    old = entries.get(key)
    if old is None or (entry.deny and not old.deny):
        entries[key] = entry


def _deny_precedence(entries: dict[PolicyKey, PolicyEntry]) -> None:
    """Turn every allow covered by a less specific deny of the same identity into that deny."""
    denies: dict[tuple[int, int, int], list[PolicyKey]] = defaultdict(list)
    for k, e in entries.items():
        if e.deny:
            denies[(k.ep_id, k.direction, k.identity)].append(k)
    for k, e in list(entries.items()):
        if e.deny:
            continue
        covering = [d for d in denies.get((k.ep_id, k.direction, k.identity), ()) if d.covers(k)]
        if covering:
            best = max(covering, key=lambda d: (d.proto != PROTO_ANY, d.port_prefix))
            entries[k] = entries[best]


def _fqdn_selection(selectors: Iterable[FQDNSelector],
                    fqdn_ips: Mapping[str, Sequence[str]]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(name, its IPv4 addresses) of every resolved name a toFQDNs list selects."""
    for name, ips in fqdn_ips.items():
        if any(selector_matches(name, s.match_name, s.match_pattern) for s in selectors):
            yield name, tuple(ip for ip in ips if ":" not in ip)


def _prefixes(rule: Rule, fqdn_ips: Mapping[str, Sequence[str]]) -> Iterator[IPv4Network]:
    for attr, _ in SECTIONS:
        for item in getattr(rule, attr) or []:
            side = "from" if attr.startswith("ingress") else "to"
            yield from (_v4(c) for c in getattr(item, f"{side}_cidr") or [])
            for cs in getattr(item, f"{side}_cidr_set") or []:
                yield from (_v4(c) for c in [cs.cidr or "", *(cs.except_ or [])])
            for _, ips in _fqdn_selection(getattr(item, "to_fqdns", None) or [], fqdn_ips):
                yield from (IPv4Network(f"{ip}/32") for ip in ips)


def compile_policies(policies: Sequence[PolicyModel], endpoints: Sequence[EndpointSpec], *,
                     host_ips: Iterable[str] = (), enforcement: Enforcement = "default", audit: bool = False,
                     allocator: IdentityAllocator | None = None, revision: int = 0,
                     supported: bool = False, fqdn_ips: Mapping[str, Sequence[str]] | None = None) -> CompiledPolicy:
    """Desired state for the node. ``policies`` come from :func:`apiary.policy.load.load_policies`;
    ``supported``: they all did (it refused what apiary cannot enforce), so they are not walked again.
    ``fqdn_ips``: the names the DNS proxy has learned (canonical name -> IPs in force): each IP a toFQDNs
    selects gets one identity of the local scope (its /32's, shared by every name mapping to it)."""
    fqdn_ips = fqdn_ips or {}
    if enforcement not in ("default", "always", "never"):
        raise ValueError(f"enforcement must be default, always or never, not {enforcement!r}")
    problems = [] if supported else [problem for p in policies for problem in unsupported_problems(p)]
    if problems:
        raise PolicyError(problems)
    allocator = allocator or IdentityAllocator(None)
    rules: list[_Rule] = []
    for p in policies:
        for path, rule in p.rules():
            assert rule.endpoint_selector is not None, "host policies are rejected at load"
            rules.append(_Rule(p, path, rule, subject_selector(rule.endpoint_selector, p.namespace), len(rules)))

    # the node's identities: reserved, its endpoints, the CIDRs its policies reference
    identities = dict(RESERVED_IDENTITIES)
    ep_identity: dict[int, int] = {}
    for ep in endpoints:
        labels = endpoint_labels(ep.labels, ep.namespace)
        ep_identity[ep.ep_id] = allocator.allocate(labels)
        identities[ep_identity[ep.ep_id]] = labels
    cidr_ids = {}
    prefixes = {p for r in rules for p in _prefixes(r.rule, fqdn_ips) if p.prefixlen}
    for prefix in sorted(prefixes, key=lambda n: (n.prefixlen, n)):
        cidr_ids[prefix] = allocator.allocate_cidr(prefix)
        identities[cidr_ids[prefix]] = cidr_labels(prefix)

    ipcache = build_ipcache({ep.ipv4: ep_identity[ep.ep_id] for ep in endpoints if ep.ipv4}, host_ips, cidr_ids)
    compiler = _Compiler(rules, identities, cidr_ids, revision, audit, named_ports(endpoints, ep_identity))
    compiler.fqdn_ips = {name: tuple(ips) for name, ips in fqdn_ips.items()}
    compiled = CompiledPolicy(revision=revision, rules=compiler.refs, ipcache=ipcache, identities=identities)
    for ep in endpoints:
        epp = EndpointPolicy(ep.ep_id, ingress_enforced=False, egress_enforced=False)
        if enforcement != "never":
            labels = identities[ep_identity[ep.ep_id]]
            selecting = [r for r in rules if r.subject.matches(labels)]
            epp.ingress_enforced, ingress = compiler.direction(ep, INGRESS, selecting, enforcement)
            epp.egress_enforced, egress = compiler.direction(ep, EGRESS, selecting, enforcement)
            epp.entries = {**ingress, **egress}
            for key, entry in epp.entries.items():
                if entry.l7:
                    compiled.l7[key] = tuple(compiler.l7[key])
                if entry.dns:
                    compiled.dns[key] = tuple(compiler.dns[key])
        compiled.endpoints[ep.ep_id] = epp
    compiled.fqdn_ips = compiler.fqdn_selected
    allocator.flush()  # the allocator's table is written once per compile, not once per new identity
    return compiled


def check_capacity(compiled: CompiledPolicy, max_entries: int) -> None:
    """Raise before anything is written when the policy map cannot hold the desired state."""
    need = sum(len(ep.entries) for ep in compiled.endpoints.values())
    if need > max_entries:
        raise PolicyError(f"policy map would need {need} entries, capacity {max_entries}")
