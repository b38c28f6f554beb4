"""Small text helpers shared by the agent and the CLI."""

from __future__ import annotations

import re
from collections.abc import Iterable


def clip(value: object, limit: int = 80) -> str:
    """``value`` as text cut to ``limit`` characters with an ellipsis, for echoing user input in errors."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text):,} characters)"


_CLIPPED = re.compile(r"… \([\d,]+ characters\)$")  # already cut by clip()
_QUOTED = re.compile(r"'([^'\n]{81,})'|\"([^\"\n]{81,})\"")


def clip_quoted(msg: str, limit: int = 80) -> str:
    """``msg`` with every quoted value longer than ``limit`` characters cut (errors echo what the user sent)."""

    def cut(m: re.Match[str]) -> str:
        value = m.group(1) or m.group(2)
        return m.group(0) if _CLIPPED.search(value) else repr(clip(value, limit))

    return _QUOTED.sub(cut, msg)


def default_scope(name: str, namespace: str | None, scopes: Iterable[tuple[str, str]]) -> str:
    """The namespace a NAME without -n means (namespace None): the cluster scope when a cluster-wide policy of
    that name exists, else kubectl's ``default``. ``scopes``: the (namespace, name) pairs there are."""
    if namespace is not None:
        return namespace
    have = set(scopes)
    return "" if ("", name) in have or ("default", name) not in have else "default"


def not_found(what: str, name: str, namespace: str, elsewhere: list[str], defaulted: bool = False) -> str:
    """``no WHAT 'NAME' in namespace NS`` (or at cluster scope), naming the namespaces (``""``: cluster scope)
    where something of that name is, and how to ask for it there."""
    where = f"in namespace {namespace}" if namespace else "at cluster scope"
    if defaulted:  # no -n: the cluster scope and namespace default were both looked in (default_scope)
        where = "at cluster scope nor in namespace default"
        elsewhere = [ns for ns in elsewhere if ns != "default"]
    hint = "; ".join(f"{ns}/{name} (-n {ns})" if ns else f"{name} at cluster scope (no -n)" for ns in elsewhere)
    return f"no {what} {name!r} {where}" + (f"; there is {hint}" if hint else "")
