"""Strict YAML loading and pydantic error paths, shared by the CiliumNetworkPolicy and TracingPolicy loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from .models import PolicyError, Problem

P = TypeVar("P")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def join(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A pydantic location as a field path: ``spec.ingress[0].toPorts``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def sub(path: str, at: str) -> str:
    if not at:
        return path
    if at.startswith("["):
        return path + at
    return f"{path}.{at}" if path else at


def validation_problems(err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path, reason = join(loc), e["msg"]
        if e["type"] == "apiary_policy":
            path, reason = sub(path, e["ctx"]["at"]), e["ctx"]["reason"]
        elif e["type"] == "extra_forbidden":
            reason = "unknown field"
        elif e["type"] == "missing":
            reason = "required field missing"
        elif e["type"] == "too_long":
            reason = f"too many items: at most {e['ctx'].get('max_length')} ({e['ctx'].get('actual_length')} given)"
        elif e["type"] == "string_too_long":
            reason = f"too long: at most {e['ctx'].get('max_length')} characters"
        out.append(Problem(path, reason))
    return out


def load_documents(docs: list[Any], load_one: Callable[[Any, str], tuple[P | None, list[Problem]]],
                   default_namespace: str) -> list[P]:
    """Load every document (problems prefixed ``document[i]`` when there are several); a name defined
    twice is a problem too; any problem refuses the whole file."""
    policies: list[P] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, doc in enumerate(docs):
        prefix = f"document[{i}]" if len(docs) > 1 else ""
        policy, found = load_one(doc, default_namespace)
        problems += [Problem(sub(prefix, p.path), p.reason, p.unsupported) for p in found]
        if policy is None:
            continue
        ident = (policy.kind, policy.namespace, policy.name)  # type: ignore[attr-defined]
        if ident in seen:
            problems.append(Problem(sub(prefix, "metadata.name"),
                                    f"{ident[0]} {ident[2]!r} is already defined in document[{seen[ident]}]"))
        seen[ident] = i
        policies.append(policy)
    if problems:
        raise PolicyError(problems)
    return policies
