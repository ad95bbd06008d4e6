"""Output helpers shared by the commands: JSON on stdout, tables on stderr-free stdout."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from imgclf.text import for_terminal, terminal_console

__all__ = ["format_count", "per_file_exit_code", "pretrained_source", "print_json", "stdout_console"]


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def format_count(value: int) -> str:
    """1234567 -> "1.23M" (parameters, FLOPs)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def stdout_console() -> Console:
    # A pipe or log file gets wide tables instead of rich's 80-column default.
    console = terminal_console(stderr=False)
    return console if console.is_terminal else terminal_console(stderr=False, width=160)


def pretrained_source(value: str | None, positionals: list[str]) -> str | None:
    """``--pretrained`` takes an optional FILE, so ``--pretrained photo.jpg`` would swallow a
    positional argument: a value that is not a weights file goes back to the positionals and the
    built-in weights are meant ("default")."""
    from imgclf.transfer import WEIGHT_SUFFIXES  # imported here: torch loads only when needed

    if value is None or value == "default" or value.lower().endswith(WEIGHT_SUFFIXES):
        return value
    positionals.insert(0, value)
    return "default"


def per_file_exit_code(command: str, results: list[dict]) -> int:
    """Name each file that failed on stderr; 1 when any failed, 2 when there was nothing to do."""
    for result in results:
        if "error" in result:
            sys.stderr.write(for_terminal(f"imgclf {command}: error: {result['path']}: {result['error']}") + "\n")
    if not results:
        sys.stderr.write(f"imgclf {command}: error: no image files found in the given folders\n")
        return 2
    return 1 if any("error" in result for result in results) else 0
