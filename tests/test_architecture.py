"""The layers of docs/architecture.md: a module imports only from its own layer and the ones above."""

from __future__ import annotations

import ast
from pathlib import Path

import imgclf

SOURCE = Path(imgclf.__file__).parent
# Top to bottom; a module may import from its own layer and the layers listed before it.
LAYERS = (
    ("errors", "text", "files", "config", "models"),
    ("data",),
    (
        "answers",
        "engine",
        "distributed",
        "transfer",
        "bundle",
        "evaluation",
        "predictor",
        "engines",
        "explain",
        "export",
        "review",
        "scale",
    ),
    ("advise",),
    ("runners",),
    ("cli", "api", "serve", "__main__", "__init__"),
)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"imgclf.{module} belongs to no layer of docs/architecture.md")


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf."):
            names.add(node.module.removeprefix("imgclf."))
        elif isinstance(node, ast.Import):
            names.update(alias.name.removeprefix("imgclf.") for alias in node.names if alias.name.startswith("imgclf."))
    return names


def test_no_module_imports_from_a_lower_layer():
    upward = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        for imported in _imported(path):
            if _layer(imported) > _layer(module):
                upward.append(f"imgclf.{module} imports imgclf.{imported}")
    assert upward == []


def test_the_command_line_starts_without_the_library():
    """``imgclf --help`` must not pay for PyTorch: the CLI modules import runners only inside
    the function that runs the command."""
    for path in sorted((SOURCE / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("torch", "imgclf.runners", "imgclf.engine")), (
                    f"{path.name} imports {node.module} at start-up"
                )


# The training pipeline is the one runner others may import: lr-find, compare and doctor --labels
# run parts of training (its data checks, its set-up, the probe, or a whole run).
# Runners other commands build on: training (the advisor, lr-find), the label finder (doctor, review).
SHARED_RUNNERS = ("runners.train", "runners.label_issues")


def test_runners_do_not_import_each_other():
    """One file per command in runners/; what two commands share lives in the library below them."""
    crossing = []
    for path in sorted((SOURCE / "runners").rglob("*.py")):
        module = ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        own = module if path.parent.name == "runners" else ".".join(module.split(".")[:2])
        for imported in _imported(path):
            target = ".".join(imported.split(".")[:2])
            if imported.startswith("runners.") and target != own and target not in SHARED_RUNNERS:
                crossing.append(f"imgclf.{module} imports imgclf.{imported}")
    assert crossing == []


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_only_the_bundle_module_reads_model_json_keys():
    """model.json has one owner (``bundle.description.BundleDescription``): elsewhere a bundle's
    description is read through its accessors, never by key."""
    import re

    raw = re.compile(r"description(\.get\(|\[)")
    readers = [f"{path.relative_to(SOURCE)}:{number}"
               for path in sorted(SOURCE.rglob("*.py")) if path.parent.name != "bundle"
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               if raw.search(line)]  # fmt: skip
    assert readers == []
