"""Would this packet pass? The datapath's policy lookup, in Python, on a :class:`CompiledPolicy`.

:func:`lookup` is exactly what the BPF program does for one direction of one endpoint: a direction
that is not enforced allows without a lookup; otherwise two longest-prefix lookups (remote identity,
identity 0), a deny from either wins, an allow from either allows, no match is default deny.
:func:`explain` evaluates the sender's egress and the receiver's ingress and says why, in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .compile import EndpointSpec
from .identity import resolve
from .types import (
    EGRESS,
    ID_UNKNOWN,
    INGRESS,
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    CompiledPolicy,
    PolicyEntry,
    PolicyKey,
    RuleRef,
)

__all__ = ["Decision", "Explanation", "Peer", "describe_rule", "endpoint_peer", "explain", "identity_peer", "ip_peer",
           "lookup", "parse_proto"]

Verdict = Literal["allowed", "denied", "default-denied", "not-enforced", "audit"]
PROTO_NAMES = {PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_SCTP: "SCTP", PROTO_ICMP: "ICMP", PROTO_ICMPV6: "ICMPv6"}
_PROTO_BY_NAME = {name: num for num, name in PROTO_NAMES.items()}
_DIRECTION = {INGRESS: "ingress", EGRESS: "egress"}


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: RuleRef | None  # the rule that decided (rules[0] "default deny" for default-denied), None if not enforced
    entry_key: PolicyKey | None  # the map entry that decided, None without one
    reason: str

    @property
    def forwarded(self) -> bool:
        return self.verdict in ("allowed", "not-enforced", "audit")


def describe_rule(rule: RuleRef | None) -> str:
    if rule is None or not rule.policy:
        return "default deny"
    name = f"{rule.namespace}/{rule.policy}" if rule.namespace else rule.policy
    return f"{rule.kind} {name} {rule.section}"


def _lpm(entries: dict[PolicyKey, PolicyEntry], ep_id: int, direction: int, identity: int, proto: int,
         port: int) -> tuple[PolicyKey, PolicyEntry] | None:
    """Longest-prefix match inside one identity: exact port, wider aligned blocks, any port, any protocol."""
    for plen in range(16, -1, -1):
        key = PolicyKey(ep_id, direction, identity, proto, port >> (16 - plen) << (16 - plen), plen)
        if key in entries:
            return key, entries[key]
    key = PolicyKey(ep_id, direction, identity, PROTO_ANY, 0, 0)
    return (key, entries[key]) if key in entries else None


def parse_proto(proto: int | str) -> int:
    if isinstance(proto, int):
        return proto
    if proto.upper() in _PROTO_BY_NAME:
        return _PROTO_BY_NAME[proto.upper()]
    if proto.lower() == "icmpv6":
        return PROTO_ICMPV6
    raise ValueError(f"unknown protocol {proto!r} (use TCP, UDP, SCTP, ICMP or a number)")


def lookup(compiled: CompiledPolicy, ep_id: int, direction: int, remote_identity: int, proto: int | str, port: int,
           *, audit: bool = False) -> Decision:
    """The verdict of endpoint ``ep_id`` for a packet in ``direction`` from/to ``remote_identity``.
    ``port`` is the destination port (the ICMP type for ICMP). ``audit`` = policy audit mode: default
    deny forwards and reports AUDIT (explicit deny entries carry their own audit flag)."""
    proto = parse_proto(proto)
    where = f"{_DIRECTION[direction]} of endpoint {ep_id}"
    ep = compiled.endpoints.get(ep_id)
    if ep is None or not (ep.ingress_enforced if direction == INGRESS else ep.egress_enforced):
        return Decision("not-enforced", None, None, f"{where}: no policy enforced, allowed")
    hits = [h for h in (_lpm(ep.entries, ep_id, direction, ident, proto, port)
                        for ident in dict.fromkeys((remote_identity, ID_UNKNOWN))) if h]
    deny = next((h for h in hits if h[1].deny), None)
    if deny:
        key, entry = deny
        rule = compiled.rules[entry.rule_id]
        return Decision("audit" if entry.audit else "denied", rule, key, f"{where}: denied by {describe_rule(rule)}")
    if hits:
        key, entry = hits[0]
        rule = compiled.rules[entry.rule_id]
        return Decision("allowed", rule, key, f"{where}: allowed by {describe_rule(rule)}")
    return Decision("audit" if audit else "default-denied", compiled.rules[0], None,
                    f"{where}: no rule allows identity {remote_identity}, default deny")


@dataclass(frozen=True)
class Peer:
    """One side of a connection: its identity, and its endpoint id when it is a local endpoint."""

    identity: int
    ep_id: int | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"identity {self.identity}"


def identity_peer(compiled: CompiledPolicy, identity: int) -> Peer:
    labels = compiled.identities.get(identity, ())
    reserved = [lbl.removeprefix("reserved:") for lbl in labels if lbl.startswith("reserved:")]
    cidr = [lbl.removeprefix("cidr:") for lbl in labels if lbl.startswith("cidr:")]
    return Peer(identity, None, (cidr or reserved or [f"identity {identity}"])[0])


def endpoint_peer(compiled: CompiledPolicy, ep: EndpointSpec) -> Peer:
    """A local endpoint (its identity comes from its ipcache entry)."""
    identity = compiled.ipcache.get(f"{ep.ipv4}/32")
    if identity is None:
        raise ValueError(f"endpoint {ep.namespace}/{ep.name} has no IPv4 address in the ipcache")
    return Peer(identity, ep.ep_id, f"{ep.namespace}/{ep.name}")


def ip_peer(compiled: CompiledPolicy, ip: str) -> Peer:
    """A non-endpoint address (host, outside peer), resolved through the ipcache."""
    return Peer(resolve(compiled.ipcache, ip), None, ip)


@dataclass(frozen=True)
class Explanation:
    egress: Decision | None  # the sender's egress (None when the sender is not a local endpoint)
    ingress: Decision | None  # the receiver's ingress (None when the receiver is not a local endpoint)
    verdict: Literal["ALLOWED", "DENIED", "AUDIT"]
    sentence: str


def explain(compiled: CompiledPolicy, src: Peer, dst: Peer, port: int, proto: int | str = "TCP", *,
            audit: bool = False) -> Explanation:
    """Would ``src`` -> ``dst`` on ``port``/``proto`` pass, and which rule decides."""
    num = parse_proto(proto)
    egress = ingress = None
    if src.ep_id is not None:
        egress = lookup(compiled, src.ep_id, EGRESS, dst.identity, num, port, audit=audit)
    if dst.ep_id is not None:
        ingress = lookup(compiled, dst.ep_id, INGRESS, src.identity, num, port, audit=audit)
    steps = [(d, "egress", src) for d in [egress] if d] + [(d, "ingress", dst) for d in [ingress] if d]
    for d, direction, peer in steps:
        if d.verdict in ("denied", "default-denied"):
            return Explanation(egress, ingress, "DENIED",
                               f"DENIED at {direction} of {peer.label} by {describe_rule(d.rule)}")
    for d, direction, peer in steps:
        if d.verdict == "audit":
            return Explanation(egress, ingress, "AUDIT", f"AUDIT: would be DENIED at {direction} of {peer.label} by "
                               f"{describe_rule(d.rule)}; forwarded in audit mode")
    parts = [f"{direction} of {peer.label} " + (f"allowed by {describe_rule(d.rule)}" if d.verdict == "allowed"
                                                 else "not enforced") for d, direction, peer in steps]
    return Explanation(egress, ingress, "ALLOWED", f"ALLOWED: {'; '.join(parts) or 'no local endpoint is involved'}")
