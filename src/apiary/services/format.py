"""``cilium service list`` rows: ID, Frontend, Service Type, Backend (FORMATS.md 9.5).

One row per frontend; the Backend column has one line per backend, ``N => ip:port/proto (state)``,
numbered from 1; the continuation lines leave the other columns empty, as Cilium's tab writer prints them.
"""

from __future__ import annotations

from collections.abc import Iterable

from .backends import Frontend, LBTable

HEADER = ("ID", "Frontend", "Service Type", "Backend")
# Cilium's SVCType names (pkg/loadbalancer) where apiary's frontend type differs
CILIUM_TYPES = {"ExternalIP": "ExternalIPs"}


def service_rows(fronts: Iterable[Frontend], table: LBTable) -> list[tuple[str, str, str, str]]:
    """Rows (header first) ordered by service ID."""
    rows: list[tuple[str, str, str, str]] = [HEADER]
    for fe in sorted(fronts, key=lambda f: table.frontend_ids[f.key]):
        ident = str(table.frontend_ids[fe.key])
        frontend = f"{fe.address}:{fe.port}/{fe.protocol}"
        kind = CILIUM_TYPES.get(fe.type, fe.type)
        if not fe.backends:
            rows.append((ident, frontend, kind, ""))
        for i, be in enumerate(fe.backends, 1):
            cell = f"{i} => {be.address}:{be.port}/{be.protocol} ({be.state.label})"
            rows.append((ident, frontend, kind, cell) if i == 1 else ("", "", "", cell))
    return rows


def render(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "   " + r[3]
                     for r in rows).rstrip() + "\n"
