"""Would this packet pass? The datapath's policy lookup, in Python, on a :class:`CompiledPolicy`.

:func:`lookup` is exactly what the BPF program does for one direction of one endpoint: a direction
that is not enforced allows without a lookup; otherwise two longest-prefix lookups (remote identity,
identity 0), a deny from either wins, an allow from either allows, no match is default deny.
:func:`explain` evaluates the sender's egress and the receiver's ingress and says why, in one sentence.

With an HTTP request (:class:`HttpRequest`) it goes on as the L7 proxy does: the connection is redirected to
the proxy when the egress or ingress entry that allowed it is an L7 entry; the proxy then applies every L7
entry that covers the connection (the client's egress ones, the server's ingress ones, for this peer or any
peer, and this port), and the request passes when each side (egress, ingress) has one entry with a matching
HTTP rule (method, path with its query, Host and header regexes anchored to the whole string, as Cilium's;
the path normalized first, as the proxy does: :func:`normalize_path`); otherwise the client gets the
proxy's 403 ``Access denied``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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
    HttpRule,
    PolicyEntry,
    PolicyKey,
    RuleRef,
)

__all__ = [
    "Decision",
    "Explanation",
    "HttpDecision",
    "HttpRequest",
    "Peer",
    "describe_http_rule",
    "describe_rule",
    "endpoint_peer",
    "explain",
    "explain_http",
    "http_decision_json",
    "identity_peer",
    "ip_peer",
    "lookup",
    "normalize_path",
    "parse_http_request",
    "parse_proto",
]

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
    http: HttpDecision | None = None  # with a request: what the L7 proxy does with it


def explain(compiled: CompiledPolicy, src: Peer, dst: Peer, port: int, proto: int | str = "TCP", *,
            audit: bool = False, http: HttpRequest | None = None) -> Explanation:
    """Would ``src`` -> ``dst`` on ``port``/``proto`` pass, and which rule decides. With ``http``, the L3/L4
    answer is followed by the L7 proxy's for that request (see :func:`explain_http`)."""
    num = parse_proto(proto)
    if http is not None:
        if num != PROTO_TCP:
            raise ValueError("http: an HTTP request needs a TCP port")
        l4 = explain(compiled, src, dst, port, num, audit=audit)
        if l4.verdict == "DENIED":
            return l4  # the request never reaches the proxy
        hd = explain_http(compiled, src, dst, port, http, l4)
        if hd.verdict == "denied":
            return Explanation(l4.egress, l4.ingress, "DENIED", hd.reason, hd)
        return Explanation(l4.egress, l4.ingress, l4.verdict, f"{l4.sentence}; {hd.reason}", hd)
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


# ------------------------------------------------------------------------------------------ L7 HTTP
@dataclass(frozen=True)
class HttpRequest:
    """What the proxy judges: the method, the path with its query (Envoy's ``:path``), the headers."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), as HAProxy's ``req.fhdr``."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_path(pathq: str) -> str:
    """The path (with its query) as the proxy judges it, by HAProxy's ``normalize-uri`` steps (Cilium's Envoy
    normalizes too): %-encoded unreserved characters decoded, "." and ".." segments resolved (never above
    "/"), repeated slashes merged."""
    def unreserved(m: re.Match[str]) -> str:
        c = chr(int(m.group(1), 16))
        return c if c.isascii() and (c.isalnum() or c in "-._~") else m.group(0)

    path, sep, query = _PERCENT.sub(unreserved, pathq).partition("?")
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")
        elif seg or last:
            out.append(seg)
    return "/" + "/".join(out) + sep + query


def parse_http_request(method: str, path: str, headers: tuple[str, ...] = ()) -> HttpRequest:
    """``GET``, ``/api/v1/x?q=1`` and ``Name: value`` header strings; ``ValueError`` names the bad part."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"http method: {method[:40]!r} is not an HTTP method (a token such as GET)")
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError(f"http path: {path[:80]!r} must start with / and contain no spaces (e.g. /api/v1/items)")
    pairs = []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not _TOKEN.fullmatch(name.strip()):
            raise ValueError(f"http header: {h[:80]!r} must read 'Name: value'")
        pairs.append((name.strip(), value.strip()))
    return HttpRequest(method, path, tuple(pairs))


@dataclass(frozen=True)
class HttpDecision:
    verdict: Literal["allowed", "denied", "not-proxied"]
    reason: str
    rules: tuple[HttpRule, ...] = ()  # allowed: the rule that matched in each L7 entry that applied
    denied_by: tuple[HttpRule, ...] = ()  # denied: the rules of the L7 entry none of which matched
    entries: tuple[PolicyKey, ...] = field(default=())  # the L7 entries that applied


def describe_http_rule(rule: HttpRule, compiled: CompiledPolicy) -> str:
    """The policy and the HTTP rule's own path, as a flow's ``decided_by`` names it."""
    ref = compiled.rules[rule.rule_id] if 0 < rule.rule_id < len(compiled.rules) else None
    if ref is None:
        return rule.ref
    return f"{ref.kind} {ref.namespace + '/' if ref.namespace else ''}{ref.policy} {rule.ref}"


def _rule_matches(rule: HttpRule, req: HttpRequest) -> bool:
    def full(regex: str | None, value: str | None) -> bool:
        if regex is None:
            return True
        try:
            return value is not None and re.fullmatch(regex, value) is not None
        except re.error:
            return False  # the proxy's regex engine decides; a pattern Python cannot read never matches here

    if not (full(rule.method, req.method) and full(rule.path, req.path) and full(rule.host, req.header("host"))):
        return False
    return all(req.header(n) is not None if not v else req.header(n) == v for n, v in rule.headers)


def _covers(key: PolicyKey, port: int) -> bool:
    return key.proto in (PROTO_TCP, PROTO_ANY) and key.port >> (16 - key.port_prefix) == port >> (16 - key.port_prefix)


def _redirected(compiled: CompiledPolicy, d: Decision | None) -> bool:
    if d is None or d.entry_key is None or d.verdict != "allowed":
        return False
    ep = compiled.endpoints.get(d.entry_key.ep_id)
    entry = ep.entries.get(d.entry_key) if ep else None
    return bool(entry and entry.l7)


def explain_http(compiled: CompiledPolicy, src: Peer, dst: Peer, port: int, req: HttpRequest,
                 l4: Explanation) -> HttpDecision:
    """What the L7 proxy does with ``req`` on a connection ``l4`` allowed."""
    what = f"HTTP {req.method} {req.path}"
    if not (_redirected(compiled, l4.egress) or _redirected(compiled, l4.ingress)):
        return HttpDecision("not-proxied", f"{what} is not inspected (no L7 rule for this connection)")
    judged = normalize_path(req.path)
    if judged != req.path:
        what += f" (judged as {judged}, normalized as the proxy does)"
    applies = []
    for key in sorted(compiled.l7):
        if key.direction == EGRESS and key.ep_id == src.ep_id and key.identity in (0, dst.identity):
            applies.append(key)
        elif key.direction == INGRESS and key.ep_id == dst.ep_id and key.identity in (0, src.identity):
            applies.append(key)
    matched: list[HttpRule] = []
    req = HttpRequest(req.method, judged, req.headers)
    for direction in (EGRESS, INGRESS):  # each side judges; within a side one matching rule is enough
        keys = [k for k in applies if k.direction == direction and _covers(k, port)]
        if not keys:
            continue
        rules = tuple(r for k in keys for r in compiled.l7[k])
        hit = next((r for r in rules if _rule_matches(r, req)), None)
        if hit is None:
            side = f"{_DIRECTION[direction]} of {(src if direction == EGRESS else dst).label}"
            paths = sorted({describe_http_rule(r, compiled).rsplit("[", 1)[0] for r in rules})
            return HttpDecision(
                "denied",
                f"DENIED by the L7 proxy (HTTP 403 Access denied) at {side}: {what} matches no HTTP rule of "
                f"{', '.join(paths)}",
                denied_by=rules, entries=tuple(keys),
            )
        matched.append(hit)
    return HttpDecision(
        "allowed",
        f"{what} allowed by the L7 proxy: " + ", ".join(describe_http_rule(r, compiled) for r in matched),
        rules=tuple(matched), entries=tuple(k for k in applies if _covers(k, port)),
    )


def http_decision_json(d: HttpDecision, compiled: CompiledPolicy) -> dict[str, object]:
    """``apiary policy explain -o json``'s ``http`` part."""
    return {
        "verdict": d.verdict,
        "reason": d.reason,
        "rules": [describe_http_rule(r, compiled) for r in d.rules],
        "denied_by": [describe_http_rule(r, compiled) for r in d.denied_by],
    }
