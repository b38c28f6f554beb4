"""docs/tracing.md stays in step with the realisation table and the tracing modules."""

from __future__ import annotations

import re
from pathlib import Path

from apiary.tracing.realisations import (
    KPROBE_REALISATIONS,
    LSM_REALISATIONS,
    LSM_SYSCALL_REALISATIONS,
    SYSCALL_REALISATIONS,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "tracing.md").read_text()


def _table_rows() -> set[str]:
    """The first column of the realisation table (kernel functions and ``lsm`` hooks)."""
    table = DOC.split("```text", 1)[1].split("```", 1)[0]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        first = line[:34].strip()
        names.update(w for w in re.split(r"[ ,]+", first) if w and w != "lsm")
    return names


def test_every_syscall_realisation_has_a_row() -> None:
    rows = _table_rows()
    assert set(SYSCALL_REALISATIONS) | set(LSM_SYSCALL_REALISATIONS) <= rows | {"__sys_X"}, rows


def test_direct_realisations_are_named() -> None:
    for name in (*KPROBE_REALISATIONS, *LSM_REALISATIONS):
        if name in ("override_creds", "revert_creds"):
            continue  # kprobe-only functions: covered by "any other kernel function"
        assert name in DOC, name


def test_every_tracing_module_is_listed() -> None:
    for path in sorted((ROOT / "src" / "apiary" / "tracing").glob("*.py")):
        if path.name == "__init__.py":
            continue
        assert f"`tracing/{path.name}`" in DOC, path.name
