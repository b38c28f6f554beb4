"""docs/ stays in step with the code's tables: every drop reason and verdict the datapath defines has its row."""

from __future__ import annotations

import re
from pathlib import Path

from apiary.observe.hubble.enums import DROP_REASONS, VERDICT

ROOT = Path(__file__).resolve().parents[2]
ABI = ROOT / "src/apiary/bpf/include/datapath_abi.h"
DOC = ROOT / "docs/flows.md"


def _defines(prefix: str) -> dict[str, int]:
    return {n: int(v) for n, v in re.findall(rf"#define ({prefix}\w+) (\d+)", ABI.read_text())}


def _rows(section: str) -> list[list[str]]:
    """The cells of the markdown table under ``## <section>`` (header and rule skipped)."""
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in text.splitlines() if ln.startswith("|")][2:]
    return [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in lines]


def test_every_datapath_drop_reason_is_documented_and_no_other() -> None:
    rows = _rows("Drop reasons the datapath emits")
    assert rows, "no drop-reason table in docs/flows.md"
    documented = {r[1]: int(r[0]) for r in rows}
    assert documented == _defines("DROP_")
    for code, _, desc, text, *_ in rows:
        assert (desc, text) == DROP_REASONS[int(code)], f"docs/flows.md row {code} differs from enums.DROP_REASONS"


def test_every_datapath_verdict_is_documented_and_no_other() -> None:
    rows = _rows("Verdicts the datapath emits")
    assert {r[1]: int(r[0]) for r in rows} == _defines("VERDICT_")
    for number, _, name, *_ in rows:
        assert name == VERDICT[int(number)]
