"""The layers of docs/architecture.md: a module imports only from its own layer and the ones above."""

from __future__ import annotations

import ast
from pathlib import Path

import imgclf

SOURCE = Path(imgclf.__file__).parent
# Top to bottom; a module may import from its own layer and the layers listed before it.
LAYERS = (
    ("errors", "text", "config", "models"),
    ("data",),
    ("engine", "distributed", "transfer", "bundle", "predictor", "explain", "export"),
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
