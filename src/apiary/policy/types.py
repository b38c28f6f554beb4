"""Plain data shared by the policy compiler (pure) and the datapath map writer (kernel-facing).

The per-endpoint policy is a set of entries keyed (endpoint, direction, identity, protocol, port/prefix).
The BPF program finds the longest-prefix entry twice — once for the remote identity and once for identity
0 ("any identity") — and a deny from either wins over an allow. (The datapath keeps the entries of one
port, one protocol or any protocol in a hash map and the blocks of port ranges in an LPM trie, and
looks them up from the most specific kind down: the same result as one LPM over every entry.) The
compiler must therefore resolve deny precedence *inside* one identity sub-space itself: an allow entry
that is more specific than a deny entry covering it must be turned into a deny (Cilium's map-state does
the same), otherwise the longest-prefix lookup would pick the allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# directions from the endpoint's point of view
INGRESS, EGRESS = 0, 1

# reserved identities (Cilium numbers)
ID_UNKNOWN, ID_HOST, ID_WORLD, ID_UNMANAGED, ID_HEALTH, ID_INIT, ID_REMOTE_NODE = 0, 1, 2, 3, 4, 5, 6
ID_KUBE_APISERVER, ID_INGRESS = 7, 8
MIN_CLUSTER_IDENTITY = 256  # first identity allocated for a label set
LOCAL_SCOPE = 1 << 24  # CIDR identities: LOCAL_SCOPE + n

PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMPV6 = 0, 1, 6, 17, 132, 58


@dataclass(frozen=True, order=True, slots=True)
class PolicyKey:
    ep_id: int  # endpoint id, 1..65535
    direction: int  # INGRESS or EGRESS
    identity: int  # remote identity; 0 = any identity
    proto: int  # IP protocol; 0 = any protocol (then port and port_prefix are 0)
    port: int  # first port of an aligned block, host byte order; for ICMP/ICMPv6 the ICMP type
    port_prefix: int  # how many high bits of the 16-bit port are significant: 16 exact, 0 any port

    def covers(self, other: PolicyKey) -> bool:
        """True when every packet matching ``other`` also matches this key (same ep/dir/identity)."""
        if (self.ep_id, self.direction, self.identity) != (other.ep_id, other.direction, other.identity):
            return False
        if self.proto == PROTO_ANY:
            return True
        if self.proto != other.proto or self.port_prefix > other.port_prefix:
            return False
        shift = 16 - self.port_prefix
        return (self.port >> shift) == (other.port >> shift)


    def covered_by(self, other: PolicyKey) -> bool:
        return other.covers(self)


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    deny: bool
    rule_id: int  # index into CompiledPolicy.rules; names the rule that decided (attribution)
    audit: bool = False  # policy-audit-mode: would-be drops are forwarded and reported AUDIT
    l7: bool = False  # allowed through the L7 proxy: the datapath redirects, the proxy judges each request
    dns: bool = False  # allowed through the DNS proxy (rules.dns): it judges each query, learns toFQDNs IPs


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One ``rules.http[]`` rule of an L7 entry, as the proxy enforces it. Regexes are matched against the
    whole string (Cilium anchors them); ``headers``: (name, exact value or None = must be present).
    A rule with nothing set allows every request (``http: [{}]``, or a plain L4 allow of the same peer and
    port, which makes the port's L7 rules void as in Cilium)."""

    rule_id: int  # CompiledPolicy.rules index of the policy section
    ref: str  # the rule's own path, e.g. "ingress[0].toPorts[0].rules.http[1]" (or the plain allow's section)
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class DnsRule:
    """One ``rules.dns[]`` selector of a DNS entry, as the DNS proxy enforces it (see policy/fqdn.py). Neither
    set: every name (a plain L4 allow of the same peer and port voids the port's DNS rules, as for HTTP)."""

    rule_id: int
    ref: str  # e.g. "egress[0].toPorts[0].rules.dns[1]"
    match_name: str | None = None
    match_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class RuleRef:
    """What a flow's `*_allowed_by` / `*_denied_by` and `apiary policy explain` name."""

    policy: str  # policy name
    namespace: str  # "" for CiliumClusterwideNetworkPolicy
    kind: str  # "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy"
    section: str  # e.g. "ingress[0]", "egressDeny[1].toPorts[0]"
    revision: int
    labels: tuple[str, ...] = ()
    description: str = ""


@dataclass
class EndpointPolicy:
    """Desired state for one endpoint."""

    ep_id: int
    ingress_enforced: bool  # default deny on ingress (some selecting rule has an ingress section)
    egress_enforced: bool
    entries: dict[PolicyKey, PolicyEntry] = field(default_factory=dict)


@dataclass
class CompiledPolicy:
    """Desired state for the whole node: what the map writer makes the kernel hold."""

    revision: int
    endpoints: dict[int, EndpointPolicy] = field(default_factory=dict)
    rules: list[RuleRef] = field(default_factory=list)  # rule_id = index; index 0 is reserved ("none")
    ipcache: dict[str, int] = field(default_factory=dict)  # "a.b.c.d/len" -> identity
    identities: dict[int, tuple[str, ...]] = field(default_factory=dict)  # identity -> labels
    l7: dict[PolicyKey, tuple[HttpRule, ...]] = field(default_factory=dict)  # the HTTP rules of each L7 entry
    dns: dict[PolicyKey, tuple[DnsRule, ...]] = field(default_factory=dict)  # the DNS rules of each DNS entry
    fqdn_ips: dict[str, tuple[str, ...]] = field(default_factory=dict)  # toFQDNs: name -> IPs it selected
