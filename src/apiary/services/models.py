"""Strict models of ``v1/Service`` and ``discovery.k8s.io/v1/EndpointSlice`` and their YAML loader.

Unknown fields are errors, as in the policy loader. Valid Kubernetes that apiary does not do (``type:
LoadBalancer``, ExternalName, SCTP, IPv6, ...) is refused as ``unsupported: <path> (<why>)``. Fields are the
ones Cilium consumes (FORMATS.md 9.6).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    alias_generators,
    field_validator,
)
from pydantic_core import PydanticCustomError

from apiary.policy.models import Metadata, PolicyError, Problem, invalid
from apiary.policy.yamlutil import parse_documents, validation_problems
from apiary.policy.yamlutil import sub as _sub

__all__ = ["EndpointSlice", "PolicyError", "Problem", "Service", "ServicePort", "load_services"]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; Kubernetes' default, also Cilium's (FORMATS.md 9.2)
MAX_AFFINITY_TIMEOUT = 86400
NODEPORT_MIN, NODEPORT_MAX = 30000, 32767

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IANA_SVC = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_IPV4_ONLY = "apiary's datapath is IPv4-only for now"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=alias_generators.to_camel, populate_by_name=True)


def _ipv4(v: str) -> str:
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        raise invalid(f"{v!r} is not an IP address") from None
    if addr.version != 4:
        raise invalid(f"IPv6 address {v}: {_IPV4_ONLY}")
    return str(addr)


class _Port(_Strict):
    name: str | None = None
    protocol: str = "TCP"

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v not in ("TCP", "UDP", "SCTP"):
            raise invalid(f"{v!r} is not a protocol: use TCP, UDP or SCTP (case-sensitive)")
        return v


class ServicePort(_Port):
    port: StrictInt = Field(ge=1, le=65535)
    target_port: int | str | None = None
    node_port: StrictInt | None = None
    app_protocol: str | None = None

    @field_validator("target_port", mode="before")
    @classmethod
    def _target_type(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | str)):
            raise invalid(f"{v!r} is neither a port number nor a port name")
        return v

    @field_validator("target_port")
    @classmethod
    def _target(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise invalid(f"{v} is not a port: 1..65535")
        if isinstance(v, str) and (len(v) > 15 or not _IANA_SVC.match(v) or not re.search("[a-z]", v)):
            raise invalid(f"{v!r} is not a port name (at most 15 lower-case letters, digits and '-', one letter)")
        return v

    @field_validator("node_port")
    @classmethod
    def _node_port(cls, v: int | None) -> int | None:
        if v is not None and not NODEPORT_MIN <= v <= NODEPORT_MAX:
            raise invalid(f"{v} is outside the NodePort range {NODEPORT_MIN}-{NODEPORT_MAX}")
        return v

    @property
    def target(self) -> int | str:
        """The backend port or port name; without targetPort, the service port (as Kubernetes does)."""
        return self.port if self.target_port is None else self.target_port


class ClientIPConfig(_Strict):
    timeout_seconds: StrictInt = Field(DEFAULT_AFFINITY_TIMEOUT, ge=1, le=MAX_AFFINITY_TIMEOUT)


class SessionAffinityConfig(_Strict):
    client_ip: ClientIPConfig | None = Field(None, alias="clientIP")


class ServiceSpec(_Strict):
    type: str = "ClusterIP"
    cluster_ip: str | None = Field(None, alias="clusterIP")
    cluster_ips: list[str] | None = Field(None, alias="clusterIPs")
    ports: list[ServicePort] | None = None
    selector: dict[str, str] | None = None
    external_ips: list[str] | None = Field(None, alias="externalIPs")
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    publish_not_ready_addresses: StrictBool = False
    ip_families: list[str] | None = None
    ip_family_policy: str | None = None
    # Valid Kubernetes fields refused by the loader (each with its reason, see UNSUPPORTED_SPEC)
    external_name: str | None = None
    load_balancer_ip: str | None = Field(None, alias="loadBalancerIP")
    load_balancer_source_ranges: list[str] | None = None
    load_balancer_class: str | None = None
    health_check_node_port: int | None = None
    allocate_load_balancer_node_ports: bool | None = None
    traffic_distribution: str | None = None

    @field_validator("cluster_ip")
    @classmethod
    def _cluster_ip(cls, v: str | None) -> str | None:
        return v if v is None or v in ("", "None") else _ipv4(v)

    @field_validator("external_ips")
    @classmethod
    def _external_ips(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out = []
        for i, ip in enumerate(v):
            try:
                out.append(_ipv4(ip))
            except PydanticCustomError as e:
                raise invalid(e.message(), f"[{i}]") from None
        return out

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def affinity_timeout(self) -> int:
        """Seconds of ClientIP affinity; 0 without affinity."""
        if self.session_affinity != "ClientIP":
            return 0
        cfg = self.session_affinity_config
        return cfg.client_ip.timeout_seconds if cfg and cfg.client_ip else DEFAULT_AFFINITY_TIMEOUT


class _Object(_Strict):
    """A namespaced Kubernetes object (the loader fills in a missing namespace)."""

    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"


class Service(_Object):
    api_version: Literal["v1"]
    kind: Literal["Service"]
    spec: ServiceSpec = Field(default_factory=lambda: ServiceSpec.model_validate({}))
    status: dict[str, Any] | None = None  # written by Kubernetes; only an empty loadBalancer is accepted

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.annotations or {}


class EndpointConditions(_Strict):
    ready: StrictBool | None = None
    serving: StrictBool | None = None
    terminating: StrictBool | None = None


class Endpoint(_Strict):
    addresses: list[str] = Field(min_length=1, max_length=100)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    target_ref: dict[str, Any] | None = None

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out = []
        for i, ip in enumerate(v):
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise invalid(f"{ip!r} is not an IP address", f"[{i}]") from None
            out.append(ip)
        return out


class EndpointPort(_Port):
    port: StrictInt | None = Field(None, ge=1, le=65535)
    app_protocol: str | None = None


class EndpointSlice(_Object):
    api_version: Literal["discovery.k8s.io/v1"]
    kind: Literal["EndpointSlice"]
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=1000)
    ports: list[EndpointPort] | None = Field(None, max_length=100)

    @property
    def service_name(self) -> str | None:
        return (self.metadata.labels or {}).get(SERVICE_NAME_LABEL)


# --- what apiary does not do ----------------------------------------------------------------------

UNSUPPORTED_SPEC = {
    "externalName": "ExternalName services are DNS aliases; apiary has no DNS server",
    "loadBalancerIP": "LoadBalancer services are not supported (no load-balancer controller on one node)",
    "loadBalancerSourceRanges": "LoadBalancer services are not supported (no load-balancer controller on one node)",
    "loadBalancerClass": "LoadBalancer services are not supported (no load-balancer controller on one node)",
    "healthCheckNodePort": "LoadBalancer services are not supported (no load-balancer controller on one node)",
    "allocateLoadBalancerNodePorts": "LoadBalancer services are not supported "
                                     "(no load-balancer controller on one node)",
    "trafficDistribution": "topology-aware routing needs zones; apiary runs one node",
}
_SCTP = "SCTP is not load-balanced: apiary's service datapath parses TCP and UDP only"


LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"
LB_ALGORITHM_VALUES = ("random", "maglev")  # Cilium's, in any case


def _service_problems(svc: Service) -> list[Problem]:
    out: list[Problem] = []
    spec = svc.spec
    algo = svc.annotations.get(LB_ALGORITHM_ANNOTATION)
    if algo is not None and algo.lower() not in LB_ALGORITHM_VALUES:
        out.append(Problem(f"metadata.annotations[{LB_ALGORITHM_ANNOTATION}]",
                           f"{algo!r} is not a load-balancing algorithm: use {' or '.join(LB_ALGORITHM_VALUES)}"))

    def refuse(path: str, reason: str) -> None:
        out.append(Problem(path, reason, unsupported=True))

    if spec.type in ("LoadBalancer", "ExternalName"):
        why = ("no load-balancer controller on one node; use NodePort or externalIPs" if spec.type == "LoadBalancer"
               else "ExternalName services are DNS aliases; apiary has no DNS server")
        refuse("spec.type", f"{spec.type}: {why}")
    elif spec.type not in ("ClusterIP", "NodePort"):
        out.append(Problem("spec.type", f"{spec.type!r} is not a service type: use ClusterIP or NodePort "
                           "(LoadBalancer and ExternalName are valid Kubernetes, not supported)"))
    for alias, why in UNSUPPORTED_SPEC.items():
        name = next(n for n, f in ServiceSpec.model_fields.items() if (f.alias or n) == alias)
        if getattr(spec, name) is not None:
            refuse(f"spec.{alias}", why)
    if spec.ip_families is not None:
        for i, fam in enumerate(spec.ip_families):
            if fam != "IPv4":
                refuse(f"spec.ipFamilies[{i}]", f"{fam}: {_IPV4_ONLY}")
    if spec.ip_family_policy not in (None, "SingleStack"):
        refuse("spec.ipFamilyPolicy", f"{spec.ip_family_policy}: {_IPV4_ONLY}")
    if spec.cluster_ips is not None:
        if spec.cluster_ip is not None and spec.cluster_ips[:1] != [spec.cluster_ip]:
            out.append(Problem("spec.clusterIPs[0]", f"must equal spec.clusterIP ({spec.cluster_ip})"))
        for i, ip in enumerate(spec.cluster_ips):
            if ip == "None" and len(spec.cluster_ips) == 1:
                continue
            try:
                _ipv4(ip)
            except PydanticCustomError as e:
                refuse(f"spec.clusterIPs[{i}]", e.message())
        if len(spec.cluster_ips) > 1:
            refuse("spec.clusterIPs[1]", f"dual-stack: {_IPV4_ONLY}")
        if spec.cluster_ip is None:
            spec.cluster_ip = spec.cluster_ips[0]
    ports = spec.ports or []
    if not ports and not spec.headless and spec.type != "ExternalName":  # a DNS alias has no ports to require
        out.append(Problem("spec.ports", "required field missing (a service that is not headless needs ports)"))
    if len(ports) > 1 and any(not p.name for p in ports):
        i = next(i for i, p in enumerate(ports) if not p.name)
        out.append(Problem(f"spec.ports[{i}].name", "required when a service has several ports"))
    seen_names: dict[str, int] = {}
    seen_ports: dict[tuple[int, str], int] = {}
    for i, p in enumerate(ports):
        if p.name is not None:
            if not _DNS_LABEL.match(p.name) or len(p.name) > 63:
                out.append(Problem(f"spec.ports[{i}].name", f"{p.name!r} is not a valid port name (DNS label)"))
            elif p.name in seen_names:
                out.append(Problem(f"spec.ports[{i}].name", f"duplicate of spec.ports[{seen_names[p.name]}].name"))
            seen_names.setdefault(p.name, i)
        if (p.port, p.protocol) in seen_ports:
            out.append(Problem(f"spec.ports[{i}]", f"duplicate {p.port}/{p.protocol} "
                               f"(spec.ports[{seen_ports[(p.port, p.protocol)]}])"))
        seen_ports.setdefault((p.port, p.protocol), i)
        if p.protocol == "SCTP":
            refuse(f"spec.ports[{i}].protocol", _SCTP)
        if p.node_port is not None and spec.type != "NodePort":
            out.append(Problem(f"spec.ports[{i}].nodePort", "only a NodePort service has node ports"))
    if spec.headless:
        if spec.type != "ClusterIP":
            out.append(Problem("spec.clusterIP", "None (headless) is only valid for type ClusterIP"))
        if spec.external_ips:
            out.append(Problem("spec.externalIPs", "a headless service has no frontends to add external IPs to"))
    if spec.session_affinity_config is not None and spec.session_affinity != "ClientIP":
        out.append(Problem("spec.sessionAffinityConfig", "only meaningful with sessionAffinity: ClientIP"))
    if svc.status is not None and svc.status not in ({}, {"loadBalancer": {}}):
        refuse("status", "status is written by the cluster; only an empty loadBalancer status is accepted")
    return out


def _slice_problems(eps: EndpointSlice) -> list[Problem]:
    out: list[Problem] = []
    if eps.address_type != "IPv4":
        out.append(Problem("addressType", f"{eps.address_type}: {_IPV4_ONLY}", unsupported=True))
        return out
    if not eps.service_name:
        out.append(Problem("metadata.labels", f"label {SERVICE_NAME_LABEL} required: it names the service the "
                           "slice belongs to"))
    for i, ep in enumerate(eps.endpoints):
        for j, ip in enumerate(ep.addresses):
            if ipaddress.ip_address(ip).version != 4:
                out.append(Problem(f"endpoints[{i}].addresses[{j}]", f"IPv6 address in an IPv4 slice: {ip}"))
    seen: dict[str, int] = {}
    for i, p in enumerate(eps.ports or []):
        key = p.name or ""
        if key in seen:
            out.append(Problem(f"ports[{i}].name", f"duplicate of ports[{seen[key]}].name"))
        seen.setdefault(key, i)
        if p.protocol == "SCTP":
            out.append(Problem(f"ports[{i}].protocol", _SCTP, unsupported=True))
    return out


KINDS: dict[str, tuple[str, type[Service] | type[EndpointSlice]]] = {
    "Service": ("v1", Service),
    "EndpointSlice": ("discovery.k8s.io/v1", EndpointSlice),
}


def _load_document(doc: Any) -> tuple[Service | EndpointSlice | None, list[Problem]]:
    if not isinstance(doc, dict):
        return None, [Problem("", f"a document must be a mapping, not {type(doc).__name__}")]
    kind = doc.get("kind")
    if kind is None:
        return None, [Problem("kind", "required field missing")]
    if kind not in KINDS:
        return None, [Problem("kind", f"{kind}: apiary's service loader takes only Service and EndpointSlice",
                              unsupported=True)]
    api_version, model = KINDS[kind]
    if doc.get("apiVersion") != api_version:
        return None, [Problem("apiVersion", f"{doc.get('apiVersion')!r}: a {kind} is {api_version}")]
    try:
        obj = model.model_validate(doc)
    except ValidationError as e:
        return None, validation_problems(e)
    return obj, (_service_problems(obj) if isinstance(obj, Service) else _slice_problems(obj))


def load_services(text: str, *, default_namespace: str = "default") -> tuple[list[Service], list[EndpointSlice]]:
    """Parse one or several YAML documents into services and endpoint slices, or raise :class:`PolicyError`
    listing every problem (paths prefixed ``document[i].`` when there are several). All or nothing. Objects
    without ``metadata.namespace`` get ``default_namespace``; a name defined twice is refused."""
    docs = parse_documents(text)
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, doc in enumerate(docs):
        prefix = f"document[{i}]" if len(docs) > 1 else ""
        obj, found = _load_document(doc)
        problems += [Problem(_sub(prefix, p.path), p.reason, p.unsupported) for p in found]
        if obj is None:
            continue
        if obj.metadata.namespace is None:
            obj.metadata.namespace = default_namespace
        ident = (obj.kind, obj.namespace, obj.name)
        if ident in seen:
            problems.append(Problem(_sub(prefix, "metadata.name"), f"{obj.kind} {obj.namespace}/{obj.name} is "
                                    f"already defined in document[{seen[ident]}]"))
        seen.setdefault(ident, i)
        (services if isinstance(obj, Service) else slices).append(obj)  # type: ignore[arg-type]
    if problems:
        raise PolicyError(problems)
    return services, slices

