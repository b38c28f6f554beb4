"""Field masks on JSON objects (``google.protobuf.FieldMask`` paths such as ``process.binary``).

Used by Tetragon's field filters (``--field-filters``: INCLUDE/EXCLUDE per event type, on the event's body)
and Hubble's ``--hubble-export-fieldmask`` (the flow fields kept). A path names nested keys; on a list the
rest of the path applies to each element (a repeated message), as fieldmask-utils does.
"""

from __future__ import annotations

import re
from typing import Any

Tree = dict[str, "Tree"]  # path component -> its sub-mask; an empty sub-mask means the whole value

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake(component: str) -> str:
    """``execId`` -> ``exec_id`` (protojson's FieldMask spelling); names that start upper-case are proto field
    names as they are (Hubble's ``IP``, ``Type``, ``Summary``), and snake_case stays."""
    return component if component[:1].isupper() else _CAMEL.sub("_", component).lower()


def parse_paths(paths: list[str], where: str) -> Tree:
    """Paths -> mask tree; ``ValueError`` names the bad path."""
    tree: Tree = {}
    for p in paths:
        p = p.strip()
        if not p:
            continue
        if not _PATH.fullmatch(p):
            raise ValueError(f"{where}: {p!r} is not a field path (names joined by '.')")
        parts = [snake(c) for c in p.split(".")]
        node = tree
        for c in parts[:-1]:
            if c in node and not node[c]:  # a shorter path already keeps all of it
                break
            node = node.setdefault(c, {})
        else:
            node[parts[-1]] = {}  # the whole value (a finer mask given before is widened)
    return tree


def include(value: Any, tree: Tree) -> Any:
    """Only the masked fields of ``value`` (a new object; ``value`` is not changed)."""
    if not tree:
        return value
    if isinstance(value, list):
        return [include(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: include(value[k], sub) for k, sub in tree.items() if k in value}


def exclude(value: Any, tree: Tree) -> Any:
    """``value`` without the masked fields (a new object where something is removed)."""
    if isinstance(value, list):
        return [exclude(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        sub = tree.get(k)
        if sub is None:
            out[k] = v
        elif sub:
            out[k] = exclude(v, sub)
    return out
