"""Names and values from files are data, never commands: class folders and CSV labels holding
terminal escape sequences, rich markup, HTML, ``javascript:`` URLs, right-to-left marks, mathtext
and 1,000-character names go through every command with no traceback, and nothing but text
reaches the terminal, the report or the figures."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import pattern_image

# Folder names (no "/" in a file name): a terminal title, a colour, rich markup, HTML that runs
# script when parsed as HTML, a javascript: URL, a right-to-left override with a mark.
FOLDER_CLASSES = (
    "\x1b]0;PWNED\x07title",
    "\x1b[31mred",
    "[bold]loud",
    "<img src=x onerror=window.__pwned=1>",
    "javascript:alert(1)",
    "\u202eevil\u200f",
)
# CSV cells can hold anything: rich's closing tag, a 1,000-character name, a clear-screen sequence,
# a matplotlib formula, a CSV-quoted comma.
CSV_CLASSES = ("[/]", "x" * 1000, "\x1b[2J\x1b[Hclear", "$x^{2}$", 'a,b "quoted"')
# Control characters other than line breaks and tabs, C1 controls, and invisible format characters.
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
PER_CLASS = 10


def write_hostile_folder(root: Path) -> Path:
    """root/<hostile class>/<image>, plus a file with a hostile name and a damaged one."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(FOLDER_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(PER_CLASS):
            pattern_image(label, 16, rng).save(folder / f"{index:03d}.png")
    pattern_image(0, 16, rng).save(root / FOLDER_CLASSES[0] / "\x1b[8mhidden.png")
    (root / FOLDER_CLASSES[1] / "[red]damaged\x1b[0m.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def write_hostile_csv(root: Path) -> Path:
    rng = np.random.default_rng(1)
    images = root / "images"
    images.mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for label, name in enumerate(CSV_CLASSES):
            for index in range(PER_CLASS):
                path = images / f"{label}-{index}.png"
                pattern_image(label, 16, rng).save(path)
                writer.writerow([f"images/{path.name}", name])
    return root / "labels.csv"


def _shown_as_text(capsys) -> str:
    captured = capsys.readouterr()
    for stream, text in (("stdout", captured.out), ("stderr", captured.err)):
        assert "Traceback" not in text, text
        hidden = HIDDEN.findall(text)
        assert not hidden, f"{stream} carries {hidden!r}:\n{text}"
    return captured.out + captured.err


def _train(data: Path, output: Path) -> list[str]:
    return ["train", str(data), "--model", "simple_cnn", "--epochs", "2", "--batch-size", "8", "--threads", "1",
            "--val-fraction", "0.2", "--test-fraction", "0.2", "--output", str(output)]  # fmt: skip


@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_hostile_class_and_file_names_are_shown_as_text_by_every_command(tmp_path: Path, capsys, kind):
    from imgclf.cli.main import main

    data = write_hostile_folder(tmp_path / "data") if kind == "folder" else write_hostile_csv(tmp_path / "data")
    classes = FOLDER_CLASSES if kind == "folder" else CSV_CLASSES
    bundle = tmp_path / "bundle"

    assert main(["doctor", str(data)]) == 0
    shown = _shown_as_text(capsys)
    assert "[bold]loud" in shown or "[/]" in shown  # markup printed as written, not applied or refused
    assert main(["doctor", str(data), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["classes"]) == set(classes)

    assert main(_train(data, bundle)) == 0
    _shown_as_text(capsys)
    assert json.loads((bundle / "model.json").read_text())["classes"] == sorted(classes)
    report = (bundle / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in report and "&lt;img src=x onerror" in report or kind == "csv"

    some_image = next(path for path in sorted((data.parent if kind == "csv" else data).rglob("*.png"))
                      if "damaged" not in path.name)  # fmt: skip
    commands = (["evaluate", str(bundle), str(data)], ["predict", str(bundle), str(some_image)],
                ["report", str(bundle)], ["export", str(bundle)],
                ["explain", str(bundle), str(some_image), "--output", str(tmp_path / "cams")])  # fmt: skip
    for command in commands:
        assert main(command) == 0, command
        _shown_as_text(capsys)


def test_a_damaged_file_with_a_hostile_name_is_named_with_visible_escapes(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_hostile_folder(tmp_path / "data")
    assert main(["doctor", str(data)]) == 0
    shown = _shown_as_text(capsys)
    assert "[red]damaged\\x1b[0m.png" in shown  # the file is named, its escape visible
    bundle = tmp_path / "bundle"
    assert main(_train(data, bundle)) == 0
    capsys.readouterr()
    # Both class folders: the hidden-text file is predicted, the damaged one is its own error (exit 1).
    assert main(["predict", str(bundle), str(data / FOLDER_CLASSES[0]), str(data / FOLDER_CLASSES[1])]) == 1
    captured = capsys.readouterr()
    assert "\\x1b[8mhidden.png:" in captured.out and "[red]damaged\\x1b[0m.png:" in captured.err
    assert not HIDDEN.findall(captured.out + captured.err)


def test_the_label_check_shows_hostile_names_as_text(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_hostile_folder(tmp_path / "data")
    output = tmp_path / "labels"
    assert main(["doctor", str(data), "--labels", "--output", str(output)]) == 0
    _shown_as_text(capsys)
    gallery = (output / "label_issues.html").read_text(encoding="utf-8")
    # Every training image is ranked and the gallery shows them all here: each class name as text.
    assert "<img src=x onerror" not in gallery and "&lt;img src=x onerror=window.__pwned=1&gt;" in gallery


def test_each_surface_function_makes_its_own_syntax_inert():
    from imgclf.text import for_html, for_markdown, for_plot, for_terminal, shortened

    assert for_terminal("\x1b]0;T\x07a\u202eb\nc\td") == "\\x1b]0;T\\x07a\\u202eb\nc\td"
    assert for_terminal("plain [bold]") == "plain [bold]"
    assert for_html('<img src=x onerror="a">') == "&lt;img src=x onerror=&quot;a&quot;&gt;"
    assert for_plot("$x^{2}$") == r"\$x^{2}\$" and len(for_plot("y" * 1000)) == 40
    assert for_markdown("| a | [b](javascript:c) |").startswith("\\| a \\| \\[b\\]\\(javascript:c\\)")
    assert shortened("abcdefghij", 5) == "ab\u2026ij"


def test_the_console_prints_data_as_text_in_strings_tables_and_other_objects():
    import io

    from rich.table import Table

    from imgclf.text import terminal_console

    buffer = io.StringIO()
    console = terminal_console(file=buffer, width=120)
    table = Table("class")
    table.add_row("\x1b[31m[/]")
    console.print("[bold]\x1b]0;T\x07", table, Path("\u202epath"), ValueError("\x1b[2J"))
    console.rule("\x1b[5m")
    written = buffer.getvalue()
    assert not HIDDEN.findall(written)
    assert "[bold]\\x1b]0;T\\x07" in written and "\\x1b[31m[/]" in written and "\\u202epath" in written


def test_the_server_log_shows_a_request_path_with_escapes_as_text():
    import io
    import logging.config

    from imgclf.cli.serve_cmd import server_log_config

    config = server_log_config()
    assert all("text_only" in handler["filters"] for handler in config["handlers"].values())
    logging.config.dictConfig(config)
    stream = io.StringIO()
    handler = logging.getLogger("uvicorn.access").handlers[0]
    handler.setStream(stream)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/\x1b]0;T\x07", "1.1", 404
    )
    assert stream.getvalue().count("\\x1b]0;T\\x07") == 1 and not HIDDEN.findall(stream.getvalue().replace("\n", ""))
