"""Cilium-style label selectors over identity label sets.

Labels are strings ``source:key=value`` (``k8s:app=frontend``, ``reserved:host``, ``cidr:10.0.0.0/8``).
A selector key ``source:key`` only matches labels of that source; a key without a source means
``any:`` and matches every source. The namespace rules of a CiliumNetworkPolicy (FORMATS.md §3.2)
are applied by :func:`subject_selector` and :func:`peer_selector`; entities are selectors over
reserved labels (FORMATS.md §2.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .models import LabelSelector
from .types import ID_UNKNOWN

NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"
CLUSTER_NAME = "default"


def parse_label(label: str) -> tuple[str, str, str]:
    """``source:key=value`` -> (source, key, value); a label without a source is ``unspec``."""
    kv, _, value = label.partition("=")
    source, sep, key = kv.partition(":")
    return (source, key, value) if sep else ("unspec", kv, value)


def parse_key(key: str) -> tuple[str, str]:
    """A selector key -> (source, key); no source means ``any``."""
    source, sep, rest = key.partition(":")
    return (source, rest) if sep else ("any", key)


@dataclass(frozen=True)
class Requirement:
    source: str  # "any" matches every label source
    key: str
    op: str  # In | NotIn | Exists | DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Iterable[tuple[str, str, str]]) -> bool:
        found = [v for s, k, v in labels if k == self.key and (self.source == "any" or s == self.source)]
        if self.op == "In":
            return any(v in self.values for v in found)
        if self.op == "NotIn":
            return not any(v in self.values for v in found)
        return bool(found) == (self.op == "Exists")


@dataclass(frozen=True)
class Selector:
    """AND of requirements; no requirement selects every label set."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, match_labels: Mapping[str, str] | None = None, *extra: Requirement) -> Selector:
        reqs = [Requirement(*parse_key(k), "In", frozenset([v])) for k, v in (match_labels or {}).items()]
        return cls((*reqs, *extra))

    @classmethod
    def from_model(cls, model: LabelSelector) -> Selector:
        reqs = [Requirement(*parse_key(e.key), e.operator, frozenset(e.values or ())) for e in
                model.match_expressions or ()]
        return cls.of(model.match_labels, *reqs)

    @property
    def selects_all(self) -> bool:
        """``reserved:all`` in a selector is Cilium's wildcard: every identity (map identity 0)."""
        return any(r.source == "reserved" and r.key == "all" and r.op == "In" for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def names_namespace(self) -> bool:
        return any((r.key == NAMESPACE_KEY and r.source in ("k8s", "any")) or r.key.startswith(NAMESPACE_LABELS_PREFIX)
                   for r in self.requirements)

    def with_(self, *reqs: Requirement) -> Selector:
        return Selector(self.requirements + reqs)

    def matches(self, labels: Iterable[str]) -> bool:
        parsed = [parse_label(lbl) for lbl in labels]
        return self.selects_all or all(r.matches(parsed) for r in self.requirements)

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            key = f"{r.source}:{r.key}"
            vals = ",".join(sorted(r.values))
            parts.append({"In": f"{key} in ({vals})", "NotIn": f"{key} notin ({vals})", "Exists": key,
                          "DoesNotExist": f"!{key}"}[r.op])
        return ", ".join(parts) or "<all>"


def _ns_is(namespace: str) -> Requirement:
    return Requirement("k8s", NAMESPACE_KEY, "In", frozenset([namespace]))


def subject_selector(model: LabelSelector, namespace: str) -> Selector:
    """The endpointSelector of a rule. In a CNP (namespace != "") it is confined to the policy namespace:
    a namespace the user wrote in matchLabels is replaced, as Cilium does (with a warning there)."""
    sel = Selector.from_model(model)
    if not namespace:
        return sel
    keep = tuple(r for r in sel.requirements
                 if not (r.op == "In" and r.key == NAMESPACE_KEY and r.source in ("k8s", "any")))
    return Selector(keep + (_ns_is(namespace),))


def peer_selector(model: LabelSelector, namespace: str) -> Selector:
    """fromEndpoints/toEndpoints selector. CNP: the policy namespace is added unless the selector names a
    namespace; CCNP (namespace ""): ``k8s:io.kubernetes.pod.namespace Exists`` is added instead, so it
    selects pods only. Selectors on ``reserved:`` labels are left alone."""
    sel = Selector.from_model(model)
    if sel.has_source("reserved") or sel.names_namespace():
        return sel
    return sel.with_(_ns_is(namespace) if namespace else Requirement("k8s", NAMESPACE_KEY, "Exists"))


def _reserved(*names: str) -> list[Selector]:
    return [Selector.of({f"reserved:{n}": ""}) for n in names]


_CLUSTER_RESERVED = ("host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver")
ENTITY_SELECTORS: dict[str, list[Selector]] = {
    "all": _reserved("all"),
    "world": _reserved("world", "world-ipv4", "world-ipv6"),
    "cluster": _reserved(*_CLUSTER_RESERVED) + [Selector.of({f"k8s:{CLUSTER_KEY}": CLUSTER_NAME})],
    "cluster-mesh": _reserved(*_CLUSTER_RESERVED) + [Selector((Requirement("k8s", CLUSTER_KEY, "Exists"),))],
    "host": _reserved("host"),
    "remote-node": _reserved("remote-node"),
    "kube-apiserver": _reserved("kube-apiserver"),
    "ingress": _reserved("ingress"),
    "health": _reserved("health"),
    "init": _reserved("init"),
    "unmanaged": _reserved("unmanaged"),
    "none": [],
}


def select(selectors: Iterable[Selector], identities: Mapping[int, Iterable[str]]) -> set[int]:
    """Identities whose labels match any selector; a wildcard (``reserved:all``) gives {0} (any identity)."""
    selectors = list(selectors)
    if not selectors:  # nothing to test each identity against (a toCIDR or toPorts-only item: no walk)
        return set()
    if any(s.selects_all for s in selectors):
        return {ID_UNKNOWN}
    return {i for i, labels in identities.items() if any(s.matches(labels) for s in selectors)}


def entity_identities(entity: str, identities: Mapping[int, Iterable[str]]) -> set[int]:
    """Identities an entity selects (``all`` -> {0}, the datapath's any-identity)."""
    return select(ENTITY_SELECTORS[entity], identities)
