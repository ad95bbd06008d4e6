"""What every runner needs beyond the library: one console for progress on stderr."""

from __future__ import annotations

from rich.console import Console

from imgclf.text import terminal_console

__all__ = ["stderr_console"]


def stderr_console() -> Console:
    return terminal_console(soft_wrap=True)
