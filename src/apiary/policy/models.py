"""Strict pydantic models of CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2).

Unknown fields are errors (a typo must fail, not be pruned). The validators implement Cilium's own
rule validation (pkg/policy/api rule_validation.go and the CRD schema); what apiary does not enforce
yet is a separate concern, checked by :mod:`apiary.policy.load`.

Cross-field validators raise :func:`invalid` errors carrying a sub-path (``at``) so the loader can
name the exact field, e.g. ``spec.egress[0].toCIDRSet[0].except[1]``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, alias_generators, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .fqdn import name_problem, pattern_problem

MAX_PORTS = 40
MAX_ICMP_FIELDS = 40

KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"

# Entities accepted by the CRD enum (v1.19) plus `cluster-mesh` (main); see FORMATS.md 2.3.
Entity = Literal[
    "all", "world", "cluster", "cluster-mesh", "host", "init", "ingress", "unmanaged", "remote-node", "health", "none",
    "kube-apiserver",
]
# Protocols Cilium accepts in toPorts; everything after ANY is an "extended" IP protocol.
PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY", "VRRP", "IGMP", "GRE", "IPIP", "IPV6", "ESP", "AH")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# ICMP type names (Cilium pkg/policy/api/icmp.go)
ICMPV4_TYPES = {
    "EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
    "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12, "Timestamp": 13,
    "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42, "ExtendedEchoReply": 43,
}
ICMPV6_TYPES = {
    "DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4, "EchoRequest": 128,
    "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131, "MulticastListenerDone": 132,
    "RouterSolicitation": 133, "RouterAdvertisement": 134, "NeighborSolicitation": 135, "NeighborAdvertisement": 136,
    "RedirectMessage": 137, "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
    "ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
    "InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
    "HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147,
    "DuplicateAddressRequestCodeSuffix": 157, "DuplicateAddressConfirmationCodeSuffix": 158,
    "ExtendedEchoRequest": 160, "ExtendedEchoReply": 161,
}

_SVC_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*", re.ASCII)  # IANA service name: no leading, trailing or double '-'
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def is_port_name(name: str) -> bool:
    """A port name as Kubernetes takes it (IANA_SVC_NAME, ``IsValidPortName``): 1-15 lower-case letters,
    digits and '-', at least one letter, no leading, trailing or double '-'."""
    return len(name) <= 15 and _SVC_NAME.fullmatch(name) is not None and re.search("[a-z]", name) is not None


@dataclass(frozen=True)
class Problem:
    """One reason a policy file is rejected: the field path and why."""

    path: str
    reason: str
    unsupported: bool = False

    def __str__(self) -> str:
        if self.unsupported:
            return f"unsupported: {self.path} ({self.reason})"
        return f"{self.path}: {self.reason}" if self.path else self.reason


class PolicyError(ValueError):
    """A policy (file) is rejected; ``problems`` lists every reason with its field path."""

    def __init__(self, problems: list[Problem] | str) -> None:
        self.problems = [Problem("", problems)] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.messages))

    @property
    def messages(self) -> list[str]:
        return [str(p) for p in self.problems]


def invalid(reason: str, at: str = "") -> PydanticCustomError:
    """A validation error for the sub-field ``at`` of the model being validated ("" = the model itself)."""
    return PydanticCustomError("apiary_policy", "{reason}", {"reason": reason, "at": at})


@functools.lru_cache(maxsize=1 << 16)  # validation, the support check and the compiler all parse each CIDR
def parse_cidr(text: str, *, bare_ip: bool = False) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``a.b.c.d/len`` (host bits are masked off); a bare address is a /32 (/128) when ``bare_ip``."""
    addr, slash, bits = text.partition("/")
    if not slash:
        if not bare_ip:
            raise ValueError(f"unable to parse CIDR {text!r}: expected <address>/<prefix length>")
        bits = ""
    elif not bits.isdigit():
        raise ValueError(f"unable to parse CIDR {text!r}: the prefix length must be a number (no netmask notation)")
    try:
        return ipaddress.ip_network(f"{addr}/{bits}" if bits else addr, strict=False)
    except ValueError as e:
        raise ValueError(f"unable to parse CIDR {text!r}: {e}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=alias_generators.to_camel)


# --- selectors ---------------------------------------------------------------------------------


class MatchExpression(_Strict):
    key: str = Field(min_length=1)
    operator: str
    values: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> MatchExpression:
        if self.operator not in SELECTOR_OPERATORS:
            raise invalid(f'"{self.operator}" is not a valid label selector operator (use In, NotIn, Exists or '
                          "DoesNotExist; operators are case-sensitive)", "operator")
        if self.operator in ("In", "NotIn") and not self.values:
            raise invalid(f"values must be non-empty for operator {self.operator}", "values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise invalid(f"values must be empty for operator {self.operator}", "values")
        return self


class LabelSelector(_Strict):
    match_labels: dict[str, str] | None = None
    match_expressions: list[MatchExpression] | None = None

    @field_validator("match_labels")
    @classmethod
    def _keys(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v and "" in v:
            raise invalid("label keys must not be empty")
        return v


# --- L4 --------------------------------------------------------------------------------------------


class PortProtocol(_Strict):
    port: str
    end_port: int | None = Field(None, ge=0, le=65535)
    protocol: str = "ANY"

    @field_validator("port", mode="before")
    @classmethod
    def _port_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("port")
    @classmethod
    def _port(cls, v: str) -> str:
        if v == "":
            raise invalid("port must be specified (a number 0-65535 or a port name)")
        if v.isascii() and v.isdigit():  # str.isdigit alone accepts fullwidth and other Unicode digits
            if int(v) > 65535:
                raise invalid(f"port {v} is out of range 0-65535")
            return str(int(v))
        name = v.lower()  # Cilium lower-cases a port name in a policy
        if not is_port_name(name):
            raise invalid(f"unable to parse port {v!r}: not a number 0-65535 nor a port name (IANA service name)")
        return name

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        up = v.upper()
        if up not in PROTOCOLS:
            raise invalid(f"invalid protocol {v!r} (use TCP, UDP, SCTP or ANY)")
        return up

    @property
    def number(self) -> int | None:
        """The port number, or None for a named port."""
        return int(self.port) if self.port.isascii() and self.port.isdigit() else None

    @model_validator(mode="after")
    def _range(self) -> PortProtocol:
        n = self.number
        if self.end_port and n is not None:
            if n == 0:
                raise invalid("endPort needs a non-zero port (port 0 already means every port)", "endPort")
            if self.end_port < n:
                raise invalid(f"endPort {self.end_port} must not be lower than port {n}", "endPort")
        if self.protocol in PROTOCOLS[4:] and self.port != "0":
            raise invalid(f"port must be empty or 0 for protocol {self.protocol}", "port")
        return self


class HeaderSecret(_Strict):
    namespace: str | None = None
    name: str


class HeaderMatch(_Strict):
    """``headerMatches[]``: the header ``name`` must carry exactly ``value`` (or the secret's value)."""

    mismatch: Literal["LOG", "ADD", "DELETE", "REPLACE"] | None = None
    name: str = Field(min_length=1)
    secret: HeaderSecret | None = None
    value: str | None = None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def split_header(text: str) -> tuple[str, str | None]:
    """A ``headers[]`` string as Cilium reads it: ``Name`` (present) or ``Name: value`` (split at the first
    space, the name's trailing ':' removed; the value must match exactly)."""
    name, sep, value = text.partition(" ")
    return name.rstrip(":"), (value if sep else None)


def _check_regex(text: str | None, at: str) -> None:
    if not text:
        return
    if any(c in text for c in "\r\n\0"):  # no method, path or Host holds one; the proxy reads one line
        raise invalid(f"{text!r}: a regular expression must be one line (no line break or NUL)", at)
    try:
        re.compile(text)
    except re.error as e:
        raise invalid(f"invalid regular expression {text!r}: {e}", at) from None


class PortRuleHTTP(_Strict):
    """One ``rules.http[]`` rule: every field it sets must match (regexes match the whole string)."""

    path: str | None = None
    method: str | None = None
    host: str | None = None
    headers: list[str] | None = None
    header_matches: list[HeaderMatch] | None = None

    @model_validator(mode="after")
    def _check(self) -> PortRuleHTTP:
        for name in ("path", "method", "host"):
            _check_regex(getattr(self, name), name)
        for i, text in enumerate(self.headers or []):
            if not _HEADER_NAME.fullmatch(split_header(text)[0]):
                raise invalid(f"{text!r}: the header name must be an HTTP token (letters, digits, '-', ...)",
                              f"headers[{i}]")
        for i, m in enumerate(self.header_matches or []):
            if not _HEADER_NAME.fullmatch(m.name):
                raise invalid(f"{m.name!r} is not an HTTP header name", f"headerMatches[{i}].name")
        return self


class FQDNSelector(_Strict):
    """``toFQDNs[]`` and ``rules.dns[]`` (Cilium's PortRuleDNS is the same selector)."""

    match_name: str | None = None
    match_pattern: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FQDNSelector:
        if not self.match_name and not self.match_pattern:
            raise invalid("one of matchName or matchPattern must be set")
        if self.match_name and (why := name_problem(self.match_name)):
            raise invalid(why, "matchName")
        if self.match_pattern and (why := pattern_problem(self.match_pattern)):
            raise invalid(why, "matchPattern")
        return self


class ToFQDNSelector(FQDNSelector):
    """``toFQDNs[]``: Cilium's FQDNSelector, where matchName and matchPattern exclude each other (in
    ``rules.dns[]``, a PortRuleDNS, both may be set and either matches)."""

    @model_validator(mode="after")
    def _one_of(self) -> ToFQDNSelector:
        if self.match_name and self.match_pattern:
            raise invalid("only one of matchName or matchPattern is allowed in a toFQDNs selector")
        return self


class L7Rules(_Strict):
    http: list[PortRuleHTTP] | None = None
    kafka: list[dict[str, Any]] | None = None
    dns: list[FQDNSelector] | None = None
    l7proto: str | None = None
    l7: list[dict[str, Any]] | None = None

    def kinds(self) -> list[str]:
        return [k for k in ("http", "kafka", "dns", "l7proto", "l7") if getattr(self, k) is not None]


class PortDenyRule(_Strict):
    """toPorts of ingressDeny/egressDeny: ports only."""

    ports: list[PortProtocol] | None = Field(None, max_length=MAX_PORTS)


class PortRule(PortDenyRule):
    rules: L7Rules | None = None
    server_names: list[str] | None = None
    listener: dict[str, Any] | None = None
    originating_tls: dict[str, Any] | None = Field(None, alias="originatingTLS")
    terminating_tls: dict[str, Any] | None = Field(None, alias="terminatingTLS")

    @model_validator(mode="after")
    def _check(self) -> PortRule:
        for i, name in enumerate(self.server_names or []):
            if not name:
                raise invalid("empty server name is not allowed", f"serverNames[{i}]")
        kinds = self.rules.kinds() if self.rules else []
        if not kinds:
            return self
        if self.server_names and self.terminating_tls is None:
            raise invalid("serverNames are not allowed with L7 rules without TLS termination", "serverNames")
        if len([k for k in kinds if k != "l7"]) > 1:
            raise invalid("multiple L7 protocol rule types specified in single rule", "rules")
        if "l7" in kinds and "l7proto" not in kinds:
            raise invalid("'l7' may only be specified when a 'l7proto' is also specified", "rules.l7")
        if self.listener is not None:
            raise invalid("listener is not allowed with L7 rules", "listener")
        for i, p in enumerate(self.ports or []):
            if p.port == "0":
                raise invalid("L7 rules can not be used when a port is 0", f"ports[{i}].port")
            if "dns" in kinds:
                if p.end_port and p.number is not None and p.end_port > p.number:
                    raise invalid("DNS rules do not support port ranges", f"ports[{i}].endPort")
            elif p.protocol != "TCP":
                raise invalid(f"L7 rules can only apply to TCP (not {p.protocol}) except for DNS rules",
                              f"ports[{i}].protocol")
        if "dns" in kinds and not self.ports:
            raise invalid("port 53 must be specified for DNS rules", "ports")
        return self


class ICMPField(_Strict):
    family: Literal["IPv4", "IPv6"] = "IPv4"
    type_: Any = Field(alias="type")

    @model_validator(mode="after")
    def _type(self) -> ICMPField:
        self.code  # noqa: B018 - validates
        return self

    @property
    def code(self) -> int:
        """The numeric ICMP type."""
        v = self.type_
        names = ICMPV6_TYPES if self.family == "IPv6" else ICMPV4_TYPES
        if isinstance(v, str) and v.isascii() and v.isdigit():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool):
            if 0 <= v <= 255:
                return v
            raise invalid(f"ICMP type {v} is out of range 0-255", "type")
        if isinstance(v, str) and v in names:
            return names[v]
        raise invalid(f"ICMP type {v!r} not found in {self.family} (use 0-255 or a name like EchoRequest)", "type")


class ICMPRule(_Strict):
    fields: list[ICMPField] | None = Field(None, max_length=MAX_ICMP_FIELDS)


# --- L3 --------------------------------------------------------------------------------------------


class CIDRRule(_Strict):
    cidr: str | None = None
    except_: list[str] | None = Field(None, alias="except")
    cidr_group_ref: str | None = None
    cidr_group_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _check(self) -> CIDRRule:
        n = sum(x is not None and x != "" for x in (self.cidr, self.cidr_group_ref, self.cidr_group_selector))
        if n != 1:
            raise invalid("exactly one of cidr, cidrGroupRef or cidrGroupSelector must be set")
        if self.cidr is None:
            return self
        try:
            net = parse_cidr(self.cidr)
        except ValueError as e:
            raise invalid(str(e), "cidr") from None
        for i, text in enumerate(self.except_ or []):
            try:
                exc = parse_cidr(text)
            except ValueError as e:
                raise invalid(str(e), f"except[{i}]") from None
            if exc.version != net.version or not exc.subnet_of(net):  # type: ignore[arg-type]
                raise invalid(f"allow CIDR prefix {self.cidr} does not contain exclude CIDR prefix {text}",
                              f"except[{i}]")
        return self




class Authentication(_Strict):
    mode: Literal["disabled", "required", "test-always-fail"]


def _check_cidrs(values: list[str] | None) -> list[str] | None:
    for i, text in enumerate(values or []):
        try:
            parse_cidr(text, bare_ip=True)
        except ValueError as e:
            raise invalid(str(e), f"[{i}]") from None
    return values


class _Item(_Strict):
    """Fields shared by every ingress/egress (deny) item; subclasses add the peer fields."""

    icmps: list[ICMPRule] | None = None

    PEER_FIELDS: ClassVar[tuple[str, ...]] = ()  # python names of the L3 peer fields
    REQUIRES: ClassVar[str] = ""

    def peer_fields(self) -> dict[str, list[Any]]:
        """YAML name -> value of every L3 peer field that is present (an explicit [] included)."""
        fields = type(self).model_fields
        return {fields[f].alias or f: getattr(self, f) for f in self.PEER_FIELDS if getattr(self, f) is not None}

    @model_validator(mode="after")
    def _check(self) -> _Item:
        used = [name for name, v in self.peer_fields().items() if v]
        if len(used) > 1:
            raise invalid(f"combining {used[0]} and {used[1]} is not supported yet (write separate items)")
        if getattr(self, self.REQUIRES):
            alias = type(self).model_fields[self.REQUIRES].alias
            raise invalid(f"{alias} was removed in Cilium 1.19 (the CRD allows 0 items); add the required labels "
                          "to each selector instead", alias or "")
        if self.icmps and getattr(self, "to_ports", None):
            raise invalid("the icmps block may only be present without toPorts; define a separate rule to use "
                          "toPorts", "icmps")
        return self


class _IngressCommon(_Item):
    from_endpoints: list[LabelSelector] | None = None
    from_requires: list[LabelSelector] | None = None
    from_cidr: list[str] | None = Field(None, alias="fromCIDR")
    from_cidr_set: list[CIDRRule] | None = Field(None, alias="fromCIDRSet")
    from_entities: list[Entity] | None = None
    from_nodes: list[LabelSelector] | None = None
    from_groups: list[dict[str, Any]] | None = None

    PEER_FIELDS: ClassVar[tuple[str, ...]] = (
        "from_endpoints", "from_cidr", "from_cidr_set", "from_entities", "from_nodes", "from_groups")
    REQUIRES: ClassVar[str] = "from_requires"

    @field_validator("from_cidr")
    @classmethod
    def _cidrs(cls, v: list[str] | None) -> list[str] | None:
        return _check_cidrs(v)


class IngressRule(_IngressCommon):
    to_ports: list[PortRule] | None = None
    authentication: Authentication | None = None

    @model_validator(mode="after")
    def _no_dns(self) -> IngressRule:
        for i, pr in enumerate(self.to_ports or []):
            if pr.rules and pr.rules.dns is not None:
                raise invalid("DNS rules are not allowed on ingress", f"toPorts[{i}].rules.dns")
        return self


class IngressDenyRule(_IngressCommon):
    to_ports: list[PortDenyRule] | None = None


class _EgressCommon(_Item):
    to_endpoints: list[LabelSelector] | None = None
    to_requires: list[LabelSelector] | None = None
    to_cidr: list[str] | None = Field(None, alias="toCIDR")
    to_cidr_set: list[CIDRRule] | None = Field(None, alias="toCIDRSet")
    to_entities: list[Entity] | None = None
    to_services: list[dict[str, Any]] | None = None
    to_groups: list[dict[str, Any]] | None = None
    to_nodes: list[LabelSelector] | None = None

    PEER_FIELDS: ClassVar[tuple[str, ...]] = (
        "to_endpoints", "to_cidr", "to_cidr_set", "to_entities", "to_services", "to_groups", "to_nodes")
    REQUIRES: ClassVar[str] = "to_requires"

    @field_validator("to_cidr")
    @classmethod
    def _cidrs(cls, v: list[str] | None) -> list[str] | None:
        return _check_cidrs(v)


class EgressRule(_EgressCommon):
    to_ports: list[PortRule] | None = None
    to_fqdns: list[ToFQDNSelector] | None = Field(None, alias="toFQDNs")
    authentication: Authentication | None = None

    PEER_FIELDS: ClassVar[tuple[str, ...]] = _EgressCommon.PEER_FIELDS + ("to_fqdns",)


class EgressDenyRule(_EgressCommon):
    to_ports: list[PortDenyRule] | None = None


# --- rules and policies ----------------------------------------------------------------------------


class DefaultDeny(_Strict):
    ingress: StrictBool | None = None
    egress: StrictBool | None = None


class LogConfig(_Strict):
    value: str = Field(max_length=32)

    @field_validator("value")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.isprintable():
            raise invalid("log value must be printable")
        return v


class RuleLabel(_Strict):
    key: str
    value: str = ""
    source: str = ""


# (python attribute, YAML name) of a rule's four sections
SECTIONS = (("ingress", "ingress"), ("ingress_deny", "ingressDeny"), ("egress", "egress"),
            ("egress_deny", "egressDeny"))


class Rule(_Strict):
    endpoint_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    ingress: list[IngressRule] | None = None
    ingress_deny: list[IngressDenyRule] | None = None
    egress: list[EgressRule] | None = None
    egress_deny: list[EgressDenyRule] | None = None
    labels: list[RuleLabel] | None = None
    enable_default_deny: DefaultDeny | None = None
    description: str | None = None
    log: LogConfig | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _label_strings(cls, v: Any) -> Any:
        """A rule label is ``{key, value, source}`` or the string form ``source:key=value``."""
        if not isinstance(v, list):
            return v
        out = []
        for lbl in v:
            if isinstance(lbl, str):
                kv, _, value = lbl.partition("=")
                source, sep, key = kv.partition(":")
                lbl = {"key": key, "value": value, "source": source} if sep else {"key": kv, "value": value}
            out.append(lbl)
        return out

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if not any(getattr(self, attr) for attr, _ in SECTIONS):
            raise invalid("rule must have at least one of ingress, ingressDeny, egress, egressDeny")
        if self.endpoint_selector is None and self.node_selector is None:
            raise invalid("rule must have one of endpointSelector or nodeSelector")
        if self.endpoint_selector is not None and self.node_selector is not None:
            raise invalid("rule cannot have both endpointSelector and nodeSelector", "nodeSelector")
        return self

    def default_deny(self, ingress: bool) -> bool:
        """Cilium's per-direction default: deny when the rule has that direction, unless overridden."""
        dd = self.enable_default_deny
        explicit = None if dd is None else (dd.ingress if ingress else dd.egress)
        if explicit is not None:
            return explicit
        return bool(self.ingress or self.ingress_deny) if ingress else bool(self.egress or self.egress_deny)

    def label_strings(self) -> tuple[str, ...]:
        return tuple(f"{lbl.source or 'unspec'}:{lbl.key}" + (f"={lbl.value}" if lbl.value else "")
                     for lbl in self.labels or [])


class Metadata(_Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _dns_name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _K8S_NAME.match(v)):
            raise invalid(f"{v!r} is not a valid name (lower-case letters, digits, '-' and '.')")
        return v


class _Policy(_Strict):
    api_version: Literal["cilium.io/v2"]
    metadata: Metadata
    spec: Rule | None = None
    specs: list[Rule] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> _Policy:
        if self.spec is None and not self.specs:
            raise invalid("empty policy: set spec or specs")
        return self

    def rules(self) -> list[tuple[str, Rule]]:
        """(field path, rule) for every rule: ``spec`` first, then ``specs[i]`` (Cilium's order)."""
        out = [("spec", self.spec)] if self.spec is not None else []
        return out + [(f"specs[{i}]", r) for i, r in enumerate(self.specs or [])]

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The policy namespace; "" for a cluster-wide policy."""
        return self.metadata.namespace or ""


class CiliumNetworkPolicy(_Policy):
    kind: Literal["CiliumNetworkPolicy"]

    @property
    def namespace(self) -> str:
        """A namespaced policy is never cluster-wide: without metadata.namespace it lives in "default"."""
        return self.metadata.namespace or "default"

    @model_validator(mode="after")
    def _no_node_selector(self) -> CiliumNetworkPolicy:
        for path, rule in self.rules():
            if rule.node_selector is not None:
                raise invalid("nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy",
                              f"{path}.nodeSelector")
        return self


class CiliumClusterwideNetworkPolicy(_Policy):
    kind: Literal["CiliumClusterwideNetworkPolicy"]

    @model_validator(mode="after")
    def _cluster_scoped(self) -> CiliumClusterwideNetworkPolicy:
        if self.metadata.namespace is not None:
            raise invalid("a CiliumClusterwideNetworkPolicy is cluster-scoped and has no namespace",
                          "metadata.namespace")
        return self


Policy = CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy
POLICY_KINDS: dict[str, type[CiliumNetworkPolicy] | type[CiliumClusterwideNetworkPolicy]] = {
    KIND_CNP: CiliumNetworkPolicy,
    KIND_CCNP: CiliumClusterwideNetworkPolicy,
}
