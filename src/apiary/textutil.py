"""Small text helpers shared by the agent and the CLI."""

from __future__ import annotations


def clip(value: object, limit: int = 80) -> str:
    """``value`` as text cut to ``limit`` characters with an ellipsis, for echoing user input in errors."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text):,} characters)"
