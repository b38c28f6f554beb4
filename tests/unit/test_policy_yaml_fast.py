"""The libyaml fast path of parse_documents builds exactly what StrictLoader builds, and hands everything
beyond plain scalars, sequences and mappings (or anything invalid) back to StrictLoader."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from apiary.policy import yamlutil
from apiary.policy.models import PolicyError

pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")

PLAIN = [
    "a: yes\nb: 0x1f\nc: 1_000\nd: ~\ne: 1.5\nf: -.inf\ng: '1'\nh: \"x\\u00e9\"\ni: 0o17\nj: Off\nk: 1:30\n",
    "{a: 1, b: [1, 2, {c: d}], e: []}\n",
    "---\n---\na: 1\n---\n- x\n- - y\n  - z\n",
    "a: |\n  x\n  y\nb: >\n  p\n  q\nc: 'it''s'\n",
    "a:\n- \n- b: \n",
    "",
    "[" * 64 + "]" * 64,
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n"
    "  endpointSelector: {matchLabels: {app: x}}\n  egress:\n"
    + "".join(f"  - toCIDR: [10.0.0.{i}/32]\n    toPorts: [{{ports: [{{port: '{i}', protocol: TCP}}]}}]\n"
              for i in range(50)),
]
SLOW = [  # valid, but beyond the fast path: anchors, aliases, tags, timestamps
    "a: &x [1]\nb: *x\n",
    "a: !!str 1\n",
    "d: 2001-01-01\n",
]
INVALID = [
    "a: 1\na: 2\n",
    "1: a\nTrue: b\n",
    "[" * 65 + "]" * 65,
    "a: b: c\n",
    "{[1]: 2}\n",
    "? {a: 1}\n: x\n",
    "*x\n",
    "a: \ud800\n",
    "=: 1\n",
    "<<: {a: 1}\nb: 2\n",  # merge keys: StrictLoader refuses them
]


def strict(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=yamlutil.StrictLoader) if d is not None]


@pytest.mark.parametrize("text", PLAIN)
def test_fast_path_builds_what_strict_loader_builds(text: str) -> None:
    fast = yamlutil._fast_documents(text)
    assert fast is not None and fast == strict(text)
    assert [type(v) for d in fast if isinstance(d, dict) for v in d.values()] == [
        type(v) for d in strict(text) if isinstance(d, dict) for v in d.values()
    ]


@pytest.mark.parametrize("text", SLOW)
def test_beyond_the_fast_path_strict_loader_answers(text: str) -> None:
    assert yamlutil._fast_documents(text) is None
    assert yamlutil.parse_documents(text) == strict(text)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_text_gets_strict_loaders_error(text: str) -> None:
    assert yamlutil._fast_documents(text) is None
    with pytest.raises(PolicyError) as fast_err:
        yamlutil.parse_documents(text)
    try:
        strict(text)
    except yaml.YAMLError as e:
        assert str(getattr(e, "problem", "") or e).split("\n")[0] in str(fast_err.value)


def test_node_bound_holds_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlutil, "MAX_NODES", 10)
    assert yamlutil._fast_documents("[1, 2, 3, 4, 5, 6, 7, 8]\n") is not None  # 9 nodes
    assert yamlutil._fast_documents("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n") is None
    with pytest.raises(PolicyError, match="more than"):
        yamlutil.parse_documents("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n")
