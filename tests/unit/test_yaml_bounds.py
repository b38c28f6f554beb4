"""The policy YAML loader is bounded before any work (size, depth, expanded aliases) and refuses what cannot be a
policy (unhashable keys, lone surrogates) with a PolicyError, never another exception."""

from __future__ import annotations

import time

import pytest

from apiary.policy.load import load_policies
from apiary.policy.models import PolicyError
from apiary.policy.yamlutil import MAX_CHARS, MAX_DEPTH, MAX_NODES
from apiary.textutil import clip, clip_quoted
from apiary.tracing.load import load_tracing_policies

LOADERS = [load_policies, load_tracing_policies]

# "billion laughs": 400 bytes that expand to 9**9 strings
BOMB = "kind: TracingPolicy\nmetadata: {name: lol}\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)

CASES = {
    "alias bomb": (BOMB, "expands to more than"),
    "recursive alias": ("a: &a [*a]\n", "refers to its own anchor"),
    "deep nesting": ("a: " + "[" * 500 + "]" * 500 + "\n", f"nested deeper than {MAX_DEPTH}"),
    "huge text": ("a: " + "x" * (MAX_CHARS + 1), "characters long"),
    "sequence as key": ("? [a, b]\n: 1\n", "a mapping key must be a scalar, not a sequence (line 1"),
    "set of sequences": ("!!set {? [a]: null}\n", "a mapping key must be a scalar"),
    "lone surrogate": ('kind: "\\udc80"\n', "lone surrogate"),
    "duplicate key": ("a: 1\na: 2\n", "duplicate key 'a' (line 2"),
}


@pytest.mark.parametrize("load", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES)
def test_refused_with_a_policy_error(load: object, case: str) -> None:
    text, expect = CASES[case]
    t = time.monotonic()
    with pytest.raises(PolicyError) as e:
        load(text)  # type: ignore[operator]
    assert expect in str(e.value)
    assert time.monotonic() - t < 2.0


def test_bomb_is_small() -> None:
    assert len(BOMB) < 500


def test_large_real_policy_is_within_bounds() -> None:
    cidrs = "".join(f"    - 10.{i // 256}.{i % 256}.0/24\n" for i in range(5000))
    text = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: big, namespace: default}\n"
            "spec:\n  endpointSelector: {}\n  egress:\n  - toCIDR:\n" + cidrs)
    (p,) = load_policies(text)
    assert p.metadata.name == "big"
    assert MAX_NODES > 5000 * 2


def test_hook_list_of_the_wrong_type_names_the_field() -> None:
    with pytest.raises(PolicyError) as e:
        load_tracing_policies("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: x}\n"
                              "spec:\n  kprobes: 18446744073709551616\n")
    assert [p.path for p in e.value.problems] == ["spec.kprobes"]


def test_clip() -> None:
    assert clip("short") == "short"
    long = clip("x" * 300)
    assert len(long) < 100 and long.endswith("… (300 characters)")
    msg = clip_quoted(f"name {'y' * 500!r}: must be a DNS label")
    assert len(msg) < 130 and msg.endswith(": must be a DNS label")
    assert clip_quoted("no policy 'ab'") == "no policy 'ab'"
    assert clip_quoted(msg) == msg  # cutting twice (agent, then CLI) keeps the true length
