"""Strings that come from data are shown as text, never run as commands: one function per surface.

Class names come from folder names and CSV cells, file names from whoever made the folder, and
model.json values from whoever wrote the bundle. Each surface has its own way to turn text into an
instruction, so each gets one function here, and every place that shows such a string uses it:

- the terminal (``for_terminal``, and ``terminal_console`` whose every string goes through it): an
  ESC sequence can retitle or recolour the terminal, hide or fake lines (and has led to command
  execution in some terminals); a right-to-left mark reverses what follows. Control and format
  characters are written as escapes (``\\x1b``, ``\\u202e``); rich markup is never interpreted;
- HTML (``for_html``): ``<``, ``>``, ``&`` and quotes as entities;
- matplotlib figures (``for_plot``): ``$...$`` is mathtext there (a bad formula fails the drawing);
- Markdown, as TensorBoard shows text (``for_markdown``).

The server's JSON needs nothing here: ``json.dumps`` writes control characters as ``\\u`` escapes.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata

from rich.console import Console
from rich.text import Text

__all__ = [
    "TerminalTextFilter",
    "for_html",
    "for_markdown",
    "for_plot",
    "for_terminal",
    "shortened",
    "stderr_console",
    "terminal_console",
]

# Kept as they are: line breaks and tabs are layout, and imgclf's own text uses them.
LAYOUT = frozenset("\n\t")
PLOT_LABEL_CHARS = 40  # a tick label longer than this crowds the figure out


def _visible(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _is_hidden(character: str) -> bool:
    """Control characters (C0, DEL, C1) and invisible format characters (bidirectional marks and
    overrides, zero-width joiners), which change how the text around them shows."""
    return character not in LAYOUT and unicodedata.category(character) in ("Cc", "Cf", "Zl", "Zp")


def for_terminal(text: object) -> str:
    """``text`` with every control and format character written as a visible escape."""
    text = str(text)
    if not any(_is_hidden(character) for character in text):
        return text
    return "".join(_visible(character) if _is_hidden(character) else character for character in text)


def shortened(text: str, limit: int) -> str:
    """At most ``limit`` characters: the start, an ellipsis and the end (names often differ there)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (limit - 1 - head) :]


def for_html(text: object) -> str:
    return html.escape(str(text), quote=True)


def for_plot(text: object, limit: int = PLOT_LABEL_CHARS) -> str:
    """For matplotlib: visible escapes, dollar signs escaped (no mathtext), long names shortened."""
    return shortened(for_terminal(text), limit).replace("$", r"\$")


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~])")


def for_markdown(text: object) -> str:
    """For Markdown (TensorBoard's text tab): every character Markdown gives a meaning escaped."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", for_terminal(text).replace("\n", " "))


def _is_renderable(item) -> bool:
    return hasattr(item, "__rich_console__") or hasattr(item, "__rich__")


class _DataSafeConsole(Console):
    """A rich console that shows every string as text: markup is off, so ``[bold]`` in a class
    name is printed as written, and each string (printed, or a table cell) passes ``for_terminal``
    on its way in. imgclf's own styles are given as ``style=`` or ``rich.text.Text``."""

    def print(self, *objects, **options) -> None:  # type: ignore[override]
        # rich writes other objects (a Path, an exception) with str() and no render_str: make them text first.
        super().print(*(item if isinstance(item, str | Text) or _is_renderable(item) else str(item)
                        for item in objects), **options)  # fmt: skip

    def render_str(self, text: str, **options):  # type: ignore[override]
        options["markup"] = False
        return super().render_str(for_terminal(text), **options)


def terminal_console(file=None, stderr: bool = True, **options) -> Console:
    """The console every command writes through: ``file``, else stderr (or stdout with
    ``stderr=False``), looked up when written to; ``options`` as rich's ``Console``."""
    options.setdefault("highlight", False)
    return _DataSafeConsole(file=file, stderr=stderr and file is None, markup=False, **options)


def stderr_console() -> Console:
    """Progress and notes of a running command: stderr, lines that wrap rather than cut."""
    return terminal_console(soft_wrap=True)


class TerminalTextFilter(logging.Filter):
    """For log handlers that write to a terminal: the message and its arguments as ``for_terminal``
    text (a server's access log repeats the path a client sent, ``%1b`` decoded to ESC)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = for_terminal(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(for_terminal(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True
