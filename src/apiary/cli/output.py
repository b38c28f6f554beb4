"""Shared output helpers for the CLI."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


class _Console(Console):
    """Tables with box lines on a terminal; to a pipe or a file, plain columns (kubectl's: a header line, then a
    line per row), which grep, awk and cut read."""

    def print(self, *objects: Any, **kw: Any) -> None:
        if not self.is_terminal:
            for o in objects:
                if isinstance(o, Table):
                    o.box, o.pad_edge, o.show_edge = None, False, False
                    o.padding = (0, 3, 0, 0)  # three spaces between columns
        super().print(*objects, **kw)


def console() -> Console:
    """Colour only on a terminal and never with NO_COLOR; pipes and files get whole lines."""
    tty = sys.stdout.isatty()
    return _Console(no_color=bool(os.environ.get("NO_COLOR")) or not tty, highlight=False, width=None if tty else 200)
