"""Validation of what a user names and labels an endpoint with, and of the pod CIDR. Pure functions:
the kernel facts (host addresses, routes) are passed in.

Names and labels follow Kubernetes (apimachinery's validation): an endpoint name is a DNS-1123
subdomain, a namespace a DNS-1123 label, a label key an optional DNS-1123 subdomain prefix and a
name of at most 63 characters, a label value at most 63 characters of the same alphabet. Python's
regular expressions are used with ``fullmatch`` and ASCII classes only, so a trailing newline or a
fullwidth digit never passes.

Labels that Kubernetes and Cilium set themselves are refused, so an endpoint cannot claim another
namespace or cluster: Cilium overwrites ``io.kubernetes.pod.namespace`` with the pod's real namespace
and removes pod labels under ``io.cilium.k8s.namespace.labels`` (``SanitizePodLabels``); every key
under ``io.cilium.k8s`` is Cilium's (its ``LabelPrefix``), and ``io.kubernetes`` keys are the
runtime's (Cilium ignores them for identity). A label source (``reserved:``, ``k8s:``, ``cidr:``) is
not part of a key: the ``:`` is refused by the key syntax.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from apiary.policy.models import is_port_name

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", re.ASCII)
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII)
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", re.ASCII)
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", re.ASCII)

MAX_PORTS = 100  # container ports of one endpoint
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
# an endpoint's cgroup directory is "<namespace>_<name>" (NAME_MAX 255) and a pod's hostname is its
# name cut at 63: endpoint names are DNS-1123 subdomains of at most 63 characters
MAX_NAME = 63
MAX_LABELS = 64
RESERVED_LABEL_KEYS = ("io.kubernetes.pod.namespace",)
RESERVED_LABEL_PREFIXES = ("io.cilium.k8s.", "io.kubernetes.")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# not unicast: "this network", multicast, reserved/broadcast
NON_UNICAST = tuple(ipaddress.IPv4Network(n) for n in ("0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))


class ValidationError(ValueError):
    """Bad input: ``field`` names what was wrong, the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def shown(value: str, limit: int = 40) -> str:
    """A user's value for an error message: quoted, escapes visible, long ones cut."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def _dns_name(value: object, field: str, pattern: re.Pattern[str], kind: str) -> str:
    if value is None:
        raise ValidationError(field, "required, a string")
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {type(value).__name__}")
    if len(value) > MAX_NAME:
        raise ValidationError(field, f"{shown(value)} is longer than {MAX_NAME} characters")
    if not pattern.fullmatch(value):
        raise ValidationError(field, f"{shown(value)} is not a {kind}, starting and ending with a letter or digit)")
    return value


def check_endpoint_name(name: object, field: str = "name") -> str:
    return _dns_name(name, field, _DNS1123_SUBDOMAIN,
                     "DNS-1123 subdomain (lower-case letters, digits, '-' and '.', no empty part between dots")


def check_namespace(namespace: object, field: str = "namespace") -> str:
    return _dns_name(namespace, field, _DNS1123_LABEL, "DNS-1123 label (lower-case letters, digits and '-'")


def check_label_key(key: str, field: str) -> None:
    if not key:
        raise ValidationError(field, "empty label key")
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            raise ValidationError(field, f"key prefix {shown(prefix)} is not a DNS-1123 subdomain of at most 253 "
                                         "characters")
    if not name:
        raise ValidationError(field, f"key {shown(key)} has an empty name after its prefix")
    if len(name) > 63:
        raise ValidationError(field, f"key name {shown(name)} is longer than 63 characters")
    if not _QUALIFIED_NAME.fullmatch(name):
        reason = f"key {shown(key)} is not a label key (letters, digits, '-', '_' and '.', starting and ending " \
                 "with a letter or digit, with an optional DNS-subdomain prefix and '/')"
        if ":" in key:
            reason += "; a label source (reserved:, k8s:, cidr:) cannot be given"
        raise ValidationError(field, reason)
    lowered = key.lower()
    if lowered in RESERVED_LABEL_KEYS or lowered.startswith(RESERVED_LABEL_PREFIXES):
        raise ValidationError(
            field,
            f"{key} is reserved: the agent sets the namespace and cluster labels of an endpoint itself "
            f"(keys {', '.join(RESERVED_LABEL_KEYS)} and {', '.join(p + '*' for p in RESERVED_LABEL_PREFIXES)} "
            "cannot be given)",
        )


def check_label_value(key: str, value: str, field: str) -> None:
    if len(value) > 63:
        raise ValidationError(field, f"value of {key} {shown(value)} is longer than 63 characters")
    if not _LABEL_VALUE.fullmatch(value):
        raise ValidationError(
            field,
            f"value of {key} {shown(value)} is not a label value (empty, or letters, digits, '-', '_' and '.' "
            "starting and ending with a letter or digit)",
        )


def check_labels(labels: object, field: str = "labels") -> dict[str, str]:
    """An endpoint's labels as Kubernetes accepts them on a pod, minus the keys the agent sets."""
    if not isinstance(labels, Mapping):
        raise ValidationError(field, f"must be an object of string keys and values, not {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise ValidationError(field, f"{len(labels)} labels: at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationError(field, "must be an object of string keys and values")
        where = f"{field}.{key}" if key and len(key) <= 80 and key.isprintable() else field
        check_label_key(key, where)
        check_label_value(key, value, where)
        out[key] = value
    return out


def check_port(name: object, port: object, protocol: object, field: str = "ports") -> tuple[str, int, str]:
    """One container port as Kubernetes takes it on a pod: an IANA_SVC_NAME, a port 1-65535, TCP, UDP or SCTP."""
    if not isinstance(name, str):
        raise ValidationError(field, f"a port name must be a string, not {type(name).__name__}")
    if not is_port_name(name):
        raise ValidationError(field, f"port name {shown(name)} is not an IANA service name (1-15 lower-case letters, "
                                     "digits and '-', at least one letter, no leading, trailing or double '-')")
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValidationError(field, f"port {name}: the port number must be an integer, not {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise ValidationError(field, f"port {name}: {port} is not a port number 1-65535")
    if protocol not in PORT_PROTOCOLS:
        shown_proto = shown(protocol) if isinstance(protocol, str) else type(protocol).__name__
        raise ValidationError(field, f"port {name}: protocol {shown_proto} is not TCP, UDP or SCTP")
    return name, port, str(protocol)


def check_ports(ports: object, field: str = "ports") -> dict[str, tuple[int, str]]:
    """An endpoint's named container ports, ``{"http": [8080, "TCP"]}`` (a 2-list or a tuple each), unique names."""
    if not isinstance(ports, Mapping):
        raise ValidationError(field, f"must be an object of port name -> [port, protocol], not {type(ports).__name__}")
    if len(ports) > MAX_PORTS:
        raise ValidationError(field, f"{len(ports)} ports: at most {MAX_PORTS}")
    out: dict[str, tuple[int, str]] = {}
    for name, value in ports.items():
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValidationError(field, f"port {shown(str(name))}: expected [port, protocol]")
        key, port, proto = check_port(name, value[0], value[1], field)
        out[key] = (port, proto)
    return out


@dataclass(frozen=True)
class HostRoute:
    """A route of the host's main table, as the pod CIDR check needs it."""

    dst: str  # prefix, e.g. "10.0.0.0/8"
    kind: str  # unicast | unreachable | blackhole | ...
    device: str  # output interface name, "" when none


def _overlaps(a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> bool:
    return a.subnet_of(b) or b.subnet_of(a)


def check_pod_cidr_syntax(cidr: str, field: str = "--pod-cidr") -> ipaddress.IPv4Network:
    """The checks that need no kernel: an IPv4 network of unicast addresses, not loopback, /8 to /30."""
    try:
        net = ipaddress.IPv4Network(cidr)
    except ValueError as e:
        raise ValidationError(field, f"{shown(cidr)} is not an IPv4 network ({e})") from None
    if net.prefixlen < 8:
        raise ValidationError(field, f"{net} is too wide: at most a /8 (it would route every address in it to "
                                     "endpoints and nowhere else)")
    if net.num_addresses < 4:
        raise ValidationError(field, f"{net} is too small: endpoints need at least a /30")
    if _overlaps(net, LOOPBACK):
        raise ValidationError(field, f"{net} overlaps loopback {LOOPBACK}")
    for special in NON_UNICAST:
        if _overlaps(net, special):
            raise ValidationError(field, f"{net} overlaps {special}, which is not unicast address space")
    return net


def check_pod_cidr(cidr: str, host_addrs: Iterable[tuple[str, str]], routes: Iterable[HostRoute],
                   own_device_prefix: str = "lxc", field: str = "--pod-cidr") -> ipaddress.IPv4Network:
    """``host_addrs``: (address, device) of the host; ``routes``: its main table. Refused when the range
    holds a host address or overlaps a route, except what an apiary agent with this pod CIDR installs
    itself: the ``unreachable`` route of exactly this range, and the router address and /32 endpoint
    routes on its veths (devices named ``own_device_prefix*``). Default routes overlap everything and
    are ignored."""
    net = check_pod_cidr_syntax(cidr, field)
    router = net.network_address + 1
    for addr, dev in host_addrs:
        ip = ipaddress.IPv4Address(addr)
        if ip in net and not (ip == router and dev.startswith(own_device_prefix)):
            raise ValidationError(field, f"{net} holds {ip}, an address of this host (on {dev or '?'})")
    for r in routes:
        dst = ipaddress.IPv4Network(r.dst, strict=False)
        if dst.prefixlen == 0 or not _overlaps(net, dst):
            continue
        if r.kind == "unreachable" and dst == net:
            continue
        if dst.prefixlen == 32 and dst.subnet_of(net) and r.device.startswith(own_device_prefix):
            continue
        via = f" {r.kind}" if r.kind != "unicast" else ""
        raise ValidationError(field, f"{net} overlaps the host's{via} route to {dst}"
                                     + (f" (dev {r.device})" if r.device else ""))
    return net
