"""Shared output helpers for the CLI."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


class _Console(Console):
    """Tables with box lines on a terminal wide enough for them. Plain columns (kubectl's: a header line, then a
    line per row, three spaces between columns; a cell of several lines, such as an identity's labels, goes on
    over the next lines, under its column) to a pipe or a file, which grep, awk and cut read, and on a
    terminal too narrow for the table: at its full width, long lines left to the terminal to wrap, rather than a
    box whose cells are cut short with an ellipsis (a policy's name must stay whole to be typed back)."""

    def print(self, *objects: Any, **kw: Any) -> None:
        if not any(isinstance(o, Table) for o in objects):
            super().print(*objects, **kw)
            return
        for o in objects:
            if not isinstance(o, Table):
                super().print(o, **kw)
                continue
            natural = Measurement.get(self, self.options.update_width(1 << 16), o).maximum  # unconstrained width
            if self.is_terminal and natural <= self.width:
                super().print(o, **kw)
                continue
            o.box, o.pad_edge, o.show_edge = None, False, False
            o.padding = (0, 3, 0, 0)
            for col in o.columns:
                col.no_wrap = True
            plain = Measurement.get(self, self.options.update_width(1 << 16), o).maximum
            saved = self._width  # print(width=) is capped at the console's width: widen the console itself
            self.width = max(self.width, plain)
            try:
                if self.is_terminal:
                    super().print(o, **kw)
                    continue
                with self.capture() as cap:  # a pipe: no colour codes, so the cells' padding can go at line ends
                    super().print(o, **kw)
                self.file.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))
            finally:
                self._width = saved


def console() -> Console:
    """Colour only on a terminal and never with NO_COLOR; pipes and files get whole lines."""
    tty = sys.stdout.isatty()
    return _Console(no_color=bool(os.environ.get("NO_COLOR")) or not tty, highlight=False, width=None if tty else 200)
