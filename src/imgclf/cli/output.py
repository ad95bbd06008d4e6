"""Output helpers shared by the commands: JSON on stdout, tables on stderr-free stdout."""

from __future__ import annotations

import json
import sys

from rich.console import Console

__all__ = ["print_json", "stdout_console"]


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def stdout_console() -> Console:
    # A pipe or log file gets wide tables instead of rich's 80-column default.
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=160)
