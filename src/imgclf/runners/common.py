"""What every runner needs beyond the library: one console for progress on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["stderr_console"]


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)
