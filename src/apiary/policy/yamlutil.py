"""Strict YAML loading and pydantic error paths, shared by the CiliumNetworkPolicy and TracingPolicy loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from apiary.textutil import clip

from .models import PolicyError, Problem

P = TypeVar("P")


# Bounds checked before any document is constructed: a few hundred bytes of nested aliases ("billion laughs")
# expand to billions of nodes, and every later walk of the data (validation, checks) would do that work.
MAX_CHARS = 1 << 20  # YAML text of one request or file
MAX_NODES = 200_000  # nodes once every alias is expanded, all documents together
MAX_DEPTH = 64  # nesting of mappings and sequences


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one), keys that cannot
    be keys (sequences, mappings), strings holding lone surrogates, and documents past the bounds above."""

    def __init__(self, stream: Any) -> None:
        if isinstance(stream, str | bytes) and len(stream) > MAX_CHARS:
            raise yaml.YAMLError(f"the text is {len(stream):,} characters long; at most {MAX_CHARS:,} are accepted")
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            self._expanded += _expanded_size(node, {}, MAX_NODES - self._expanded)
        return node

    def construct_scalar(self, node: yaml.ScalarNode | yaml.MappingNode) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value):
            raise yaml.constructor.ConstructorError(
                None, None, "a string holds a lone surrogate (not valid Unicode text)", node.start_mark
            )
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a scalar, not a {key_node.id}", key_node.start_mark
                ) from None
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {clip(repr(key))}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Scalars(yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's own scalar resolution (YAML 1.1 implicit types) and construction, without a parser."""


_CParser: Any = getattr(getattr(yaml, "cyaml", None), "CParser", None)  # libyaml, if PyYAML has it
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}
_STR_TAG = "tag:yaml.org,2002:str"


def _fast_documents(text: str) -> list[Any] | None:
    """The documents of ``text`` built straight from libyaml's events (~10x faster than StrictLoader on a
    large policy: no node graph, no Python scanner). Only for the plain case: scalars, sequences and mappings
    without anchors, aliases, tags or merge keys, within the bounds, with unique scalar keys. None for
    anything else (or without libyaml): StrictLoader then gives the answer, or the error and its place."""
    if _CParser is None or len(text) > MAX_CHARS:
        return None
    try:
        parser = _CParser(text)
    except Exception:  # noqa: BLE001 - e.g. a lone surrogate: the slow path says what is wrong
        return None
    scalars = _Scalars()
    docs: list[Any] = []
    stack: list[list[Any]] = []  # [container, pending key, key set?] of the collections being built
    nodes = 0
    try:
        while True:
            ev: Any = parser.get_event()
            if ev is None:
                break
            cls = type(ev)
            if cls is yaml.ScalarEvent:
                if ev.anchor is not None or ev.tag is not None:
                    return None
                tag = scalars.resolve(yaml.ScalarNode, ev.value, ev.implicit)
                if tag == _STR_TAG:
                    value: Any = ev.value
                elif tag in _PLAIN_TAGS:
                    value = scalars.yaml_constructors[tag](scalars, yaml.ScalarNode(tag, ev.value))
                else:  # timestamps, merge keys, "=": the full constructor decides
                    return None
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                if ev.anchor is not None or ev.tag is not None:
                    return None
                value = {} if cls is yaml.MappingStartEvent else []
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                frame = stack.pop()
                if frame[2]:  # a mapping ended between a key and its value: not a parse libyaml gives
                    return None
                value = frame[0]
                if not stack:
                    docs.append(value)
                    continue
                _add(stack[-1], value)
                continue
            elif cls is yaml.AliasEvent:
                return None
            else:  # stream and document start/end
                continue
            nodes += 1
            if nodes > MAX_NODES or len(stack) + 1 > MAX_DEPTH:
                return None
            if isinstance(value, dict | list):
                if stack and stack[-1][0].__class__ is dict and not stack[-1][2]:
                    return None  # a collection as a mapping key
                stack.append([value, None, False])
            elif not stack:
                docs.append(value)
            elif not _add(stack[-1], value):
                return None
    except Exception:  # noqa: BLE001 - invalid YAML: the slow path gives the message and the place
        return None
    return [d for d in docs if d is not None]


def _add(frame: list[Any], value: Any) -> bool:
    """Put ``value`` into the collection being built: the next item, a key, or the pending key's value.
    False for a duplicate key."""
    container = frame[0]
    if container.__class__ is list:
        container.append(value)
    elif frame[2]:
        container[frame[1]] = value
        frame[1], frame[2] = None, False
    else:
        if value in container:
            return False
        frame[1], frame[2] = value, True
    return True


def _expanded_size(node: yaml.Node, memo: dict[int, int], budget: int) -> int:
    """Nodes under ``node`` with every alias expanded; ComposerError past ``budget`` or on a recursive alias.
    Linear in the composed graph (shared nodes are counted once each, then multiplied)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise yaml.composer.ComposerError(None, None, "an alias refers to its own anchor", node.start_mark)
        size = memo[key]
    else:
        memo[key] = -1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                size += _expanded_size(child, memo, budget)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                size += _expanded_size(k, memo, budget) + _expanded_size(v, memo, budget)
        memo[key] = size
    if size > budget:
        raise yaml.composer.ComposerError(
            None, None, f"expands to more than {MAX_NODES:,} nodes (aliases included)", node.start_mark
        )
    return size


def parse_documents(text: str) -> list[Any]:
    """The non-empty YAML documents of ``text``, or :class:`PolicyError` saying what is wrong and where."""
    docs = _fast_documents(text)
    try:
        if docs is None:
            docs = [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]
    except yaml.MarkedYAMLError as e:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})" if e.problem_mark else ""
        raise PolicyError(f"invalid YAML: {e.problem}{where}") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"invalid YAML: {clip(str(e), 200)}") from None
    except RecursionError:
        raise PolicyError(f"invalid YAML: nested deeper than {MAX_DEPTH} levels") from None
    if not docs:
        raise PolicyError("no policy documents found")
    return docs


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
