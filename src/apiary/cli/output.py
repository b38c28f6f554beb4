"""Shared output helpers for the CLI."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def console() -> Console:
    """Colour only on a terminal and never with NO_COLOR; pipes and files get whole lines."""
    tty = sys.stdout.isatty()
    return Console(no_color=bool(os.environ.get("NO_COLOR")) or not tty, highlight=False, width=None if tty else 200)
