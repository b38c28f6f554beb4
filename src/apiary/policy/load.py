"""Load CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML: all documents apply or none does.

Every problem is reported with its field path. Valid Cilium that apiary does not enforce yet is
rejected as ``unsupported: <path> (<why>)`` — nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from apiary.policy.yamlutil import load_documents, parse_documents
from apiary.policy.yamlutil import sub as _sub
from apiary.policy.yamlutil import validation_problems as _validation_problems

from .models import (
    KIND_CCNP,
    KIND_CNP,
    POLICY_KINDS,
    PROTOCOLS,
    CIDRRule,
    ICMPField,
    L7Rules,
    Policy,
    PolicyError,
    PortProtocol,
    PortRuleHTTP,
    Problem,
    parse_cidr,
)

__all__ = ["PolicyError", "Problem", "load_policies", "load_policy_documents", "unsupported_problems"]

_IPV4_ONLY = "apiary's datapath is IPv4-only for now"
# YAML field name -> why it is rejected and what to use instead
# L7 kinds apiary refuses, and why: Cilium itself removed them (Kafka and the generic l7proto/l7 parsers went
# with proxylib: cilium/cilium#43557, #44610; deprecated since v1.16)
_L7_REFUSED = {
    "kafka": "Kafka L7 rules: removed from Cilium (with proxylib, cilium/cilium#43557; deprecated since v1.16) and not "
             "implemented by apiary; use a port rule (the broker port, e.g. 9092)",
    "l7proto": "generic L7 parsers (l7proto): removed from Cilium (cilium/cilium#44610) and not implemented by apiary; "
               "use a port rule",
    "l7": "generic L7 rules (l7): removed from Cilium (cilium/cilium#44610) and not implemented by apiary; "
          "use a port rule",
}
UNSUPPORTED_FIELDS = {
    "nodeSelector": "host policies are not enforced yet; select endpoints with endpointSelector",
    "log": "policy log values are not recorded in flows yet; remove it",
    "fromNodes": "node selectors are not supported; use fromEntities host/remote-node",
    "toNodes": "node selectors are not supported; use toEntities host/remote-node",
    "fromGroups": "cloud provider groups are not supported; use fromCIDR/fromCIDRSet",
    "toGroups": "cloud provider groups are not supported; use toCIDR/toCIDRSet",
    "toServices": "service-based rules are not supported; use toEndpoints with the service's pod labels",
    "cidrGroupRef": "CiliumCIDRGroup is not supported; write the cidr (with except) inline",
    "cidrGroupSelector": "CiliumCIDRGroup is not supported; write the cidr (with except) inline",
    "authentication": "mutual authentication is not supported",
    "serverNames": "TLS SNI matching needs the L7 proxy apiary does not have yet; use a port rule",
    "listener": "Envoy listeners are not supported",
    "originatingTLS": "TLS origination needs the L7 proxy apiary does not have yet",
    "terminatingTLS": "TLS termination needs the L7 proxy apiary does not have yet",
}


def _unsupported(obj: Any, path: str, out: list[Problem]) -> None:
    """Walk a validated model and report every field/value apiary cannot enforce yet."""
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            _unsupported(v, f"{path}[{i}]", out)
        return
    if not isinstance(obj, BaseModel):
        return
    for name, field in type(obj).model_fields.items():
        value, alias = getattr(obj, name), field.alias or name
        sub = _sub(path, alias)
        if value is None:
            continue
        if alias in UNSUPPORTED_FIELDS:
            out.append(Problem(sub, UNSUPPORTED_FIELDS[alias], unsupported=True))
        elif isinstance(value, L7Rules):
            for kind in value.kinds():
                if kind == "http":
                    _unsupported_http(value.http or [], f"{sub}.http", out)
                    continue
                if kind == "dns":  # the agent's DNS proxy
                    continue
                out.append(Problem(f"{sub}.{kind}", _L7_REFUSED.get(kind, f"L7 {kind} rules need a {kind} proxy apiary "
                                                                   "does not have; use a port rule"), unsupported=True))
        elif alias in ("fromCIDR", "toCIDR"):
            out.extend(Problem(f"{sub}[{i}]", f"IPv6 CIDR {c}: {_IPV4_ONLY}", unsupported=True)
                       for i, c in enumerate(value) if parse_cidr(c, bare_ip=True).version == 6)
        else:
            _unsupported(value, sub, out)
    if isinstance(obj, PortProtocol):
        if obj.protocol in PROTOCOLS[4:]:
            out.append(Problem(_sub(path, "protocol"), f"protocol {obj.protocol}: only TCP, UDP, SCTP and ANY are "
                               "enforced", unsupported=True))
    elif isinstance(obj, ICMPField) and obj.family == "IPv6":
        out.append(Problem(_sub(path, "family"), f"ICMPv6: {_IPV4_ONLY}", unsupported=True))
    elif isinstance(obj, CIDRRule) and obj.cidr and parse_cidr(obj.cidr).version == 6:
        out.append(Problem(_sub(path, "cidr"), f"IPv6 CIDR {obj.cidr}: {_IPV4_ONLY}", unsupported=True))


def _unsupported_http(rules: list[PortRuleHTTP], path: str, out: list[Problem]) -> None:
    """What apiary's HTTP proxy cannot honour: header rewriting on mismatch and secrets."""
    for i, rule in enumerate(rules):
        for j, m in enumerate(rule.header_matches or []):
            at = f"{path}[{i}].headerMatches[{j}]"
            if m.mismatch is not None:
                out.append(Problem(f"{at}.mismatch", f"mismatch action {m.mismatch}: apiary's proxy only rejects a "
                                   "request whose header does not match (leave mismatch out)", unsupported=True))
            if m.secret is not None:
                out.append(Problem(f"{at}.secret", "header values from Kubernetes secrets are not supported; "
                                   "write the value inline", unsupported=True))


def unsupported_problems(policy: Policy) -> list[Problem]:
    """Everything in a valid policy that apiary cannot enforce yet (empty when it can enforce all of it)."""
    out: list[Problem] = []
    _unsupported(policy, "", out)
    return out


def _load_document(doc: Any, default_namespace: str) -> tuple[Policy | None, list[Problem]]:
    if not isinstance(doc, dict):
        return None, [Problem("", f"a policy document must be a mapping, not {type(doc).__name__}")]
    kind = doc.get("kind")
    if kind is None:
        return None, [Problem("kind", "required field missing")]
    if kind not in POLICY_KINDS:
        return None, [Problem("kind", f"{kind}: apiary applies only {KIND_CNP} and {KIND_CCNP}", unsupported=True)]
    try:
        policy = POLICY_KINDS[kind].model_validate(doc)
    except ValidationError as e:
        return None, _validation_problems(e)
    problems = unsupported_problems(policy)
    if kind == KIND_CNP and policy.metadata.namespace is None:
        policy.metadata.namespace = default_namespace
    return policy, problems


def load_policies(text: str, *, default_namespace: str = "default") -> list[Policy]:
    """Parse one or several YAML documents into policies, or raise :class:`PolicyError` listing every
    problem (paths are prefixed with ``document[i].`` when the text holds several documents).
    A CiliumNetworkPolicy without ``metadata.namespace`` gets ``default_namespace`` (as kubectl does)."""
    return load_policy_documents(text, default_namespace=default_namespace)[0]


def load_policy_documents(text: str, *, default_namespace: str = "default") -> tuple[list[Policy], list[Any]]:
    """:func:`load_policies`, and the parsed YAML documents the policies were validated from (one each)."""
    docs = parse_documents(text)
    return load_documents(docs, _load_document, default_namespace), docs
