"""DNS names in policy (``toFQDNs`` and ``toPorts.rules.dns``) with Cilium's semantics. Pure.

- ``matchName``: the exact name, case-insensitive; a trailing dot is implied (``cilium.io`` = ``cilium.io.``).
- ``matchPattern``: ``*`` alone (or ``**``...) matches every name; inside a pattern ``*`` matches any run of
  DNS characters within one label (``*.cilium.io`` = exactly one more label); a leading ``**.`` matches one or
  more whole labels (``**.cilium.io`` = ``a.cilium.io``, ``a.b.cilium.io``, not ``cilium.io``).
  Only ``[-a-zA-Z0-9_.*]`` are allowed, at most 255 characters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from .types import DnsRule

__all__ = ["MAX_FQDN_LENGTH", "dns_verdict", "fqdn", "name_problem", "pattern_problem", "pattern_regex",
           "selector_matches"]

MAX_FQDN_LENGTH = 255
_DNS_CHARS = "[-a-zA-Z0-9_]"
_LABELS = f"({_DNS_CHARS}+([.]{_DNS_CHARS}+)*)[.]"  # one or more whole labels, then a dot
_PATTERN_CHARS = re.compile(r"[-a-zA-Z0-9_.*]+")
_NAME_CHARS = re.compile(r"[-a-zA-Z0-9_.]+")


def fqdn(name: str) -> str:
    """The canonical form: lower case, trailing dot."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid matchName (None when it is)."""
    if len(name.strip()) > MAX_FQDN_LENGTH:
        return f"{name!r} is longer than {MAX_FQDN_LENGTH} characters"
    if not _NAME_CHARS.fullmatch(name.strip()):
        return f"{name!r}: only 0-9, a-z, A-Z and the characters . - _ are allowed in matchName"
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid matchPattern (None when it is)."""
    if len(pattern.strip()) > MAX_FQDN_LENGTH:
        return f"{pattern!r} is longer than {MAX_FQDN_LENGTH} characters"
    if not _PATTERN_CHARS.fullmatch(pattern):
        return f"invalid characters in {pattern!r}: only 0-9, a-z, A-Z and the characters . - _ * are allowed"
    return None


def _all_stars(pattern: str) -> bool:
    body = pattern[:-1] if pattern.endswith(".") else pattern
    return bool(body) and set(body) == {"*"}


@functools.lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The anchored regex of a matchPattern, matched against canonical names (:func:`fqdn`)."""
    pattern = pattern.strip().lower()
    if _all_stars(pattern):
        return re.compile(rf"(^({_DNS_CHARS}+[.])+$)|(^[.]$)")
    pattern = pattern if pattern.endswith(".") else pattern + "."
    out, i = [], 0
    stars = len(pattern) - len(pattern.lstrip("*"))
    if stars >= 2 and pattern[stars:stars + 1] == ".":
        out.append(_LABELS)
        i = stars + 1
    while i < len(pattern):
        c = pattern[i]
        if c == ".":
            out.append("[.]")
        elif c == "*":
            while i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
            out.append(f"{_DNS_CHARS}*")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def selector_matches(name: str, match_name: str | None, match_pattern: str | None) -> bool:
    """A name (any case, with or without the trailing dot) against one selector (matchName or matchPattern)."""
    q = fqdn(name)
    if match_name and fqdn(match_name) == q:
        return True
    return bool(match_pattern) and pattern_regex(match_pattern or "").match(q) is not None


def dns_verdict(rules: Iterable[DnsRule], qname: str) -> DnsRule | None:
    """The first ``rules.dns`` rule that allows a query for ``qname`` (None: refused)."""
    for r in rules:
        if (r.match_name is None and r.match_pattern is None) or selector_matches(qname, r.match_name,
                                                                                     r.match_pattern):
            return r
    return None
