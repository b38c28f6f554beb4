"""The one terminal-colour helper for the Hubble and Tetragon printers (and the CLI's ``--color`` flag)."""

from __future__ import annotations

import os
from typing import IO

ANSI = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}


def paint(text: str, colour: str, color: bool) -> str:
    """Wrap text in an ANSI colour the way fatih/color does (also when text is empty); ``text`` when not ``color``."""
    return f"\x1b[{ANSI[colour]}m{text}\x1b[0m" if color else text


def wants_colour(stream: IO[str], mode: str = "auto") -> bool:
    """``--color always|never|auto``: auto means colour only on a terminal and when NO_COLOR is unset."""
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
