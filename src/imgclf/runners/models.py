"""The models runner: the zoo as rows, optionally with latency measured on this machine.

Parameters and FLOPs depend only on the model code and the input size, so the table is kept
under a key made of those: the default table ships with imgclf (``models/zoo_table.json``, checked
against a fresh count by the test suite), others are cached (``$IMGCLF_CACHE_DIR`` or
``~/.cache/imgclf``) after the first listing. Either way ``imgclf models`` then answers without
importing PyTorch. Latencies (``measure=True``) are measured every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from imgclf import __version__

__all__ = ["run_models", "table_key", "write_shipped_table"]


MODELS_FOLDER = Path(__file__).parent.parent / "models"
SHIPPED_TABLE = MODELS_FOLDER / "zoo_table.json"


def table_key(input_size: int | None) -> str:
    """The imgclf version, the input size and every model file's bytes."""
    digest = hashlib.sha256(f"{__version__}|{input_size}".encode())
    for source in sorted(MODELS_FOLDER.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:24]


def _cache_file(key: str) -> Path:
    return Path(os.environ.get("IMGCLF_CACHE_DIR", Path.home() / ".cache" / "imgclf")) / "zoo" / f"{key}.json"


def _shipped(key: str) -> list[dict] | None:
    try:
        table = json.loads(SHIPPED_TABLE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return table.get("rows") if isinstance(table, dict) and table.get("key") == key else None


def write_shipped_table() -> None:
    """Count the default table afresh into ``models/zoo_table.json`` (after a model file changes)."""
    SHIPPED_TABLE.write_text(json.dumps({"key": table_key(None), "rows": _described(None, None)}, indent=0) + "\n")


def _cached(path: Path) -> list[dict] | None:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rows if isinstance(rows, list) and all(isinstance(row, dict) for row in rows) else None


def _store(path: Path, rows: list[dict]) -> None:
    from imgclf.files import atomic_write_bytes

    with contextlib.suppress(OSError):  # a read-only home: computed again next time, nothing is lost
        atomic_write_bytes(path, json.dumps(rows).encode("utf-8"))


def _described(names: list[str] | None, input_size: int | None) -> list[dict]:
    from imgclf.models import describe_model, list_models

    return [describe_model(name, input_size=input_size) for name in names or list_models()]


def _with_latency(row: dict) -> dict:
    from imgclf.models import create_model, get_model_spec
    from imgclf.models.info import measure_latency

    size, in_chans = row["flops_input_size"], get_model_spec(row["name"]).in_chans
    model = create_model(row["name"], input_size=size)
    for batch in (1, 32):  # the median of 5 forward passes at each batch size, in ms
        row[f"latency_ms_batch{batch}"] = measure_latency(model, batch, in_chans, size, repeats=5)["p50_ms"]
    return row


def run_models(input_size: int | None = None, measure: bool = False, names: list[str] | None = None) -> list[dict]:
    """One row per model (``describe_model``); ``measure``: with forward latency here."""
    key = table_key(input_size) if names is None else None
    path = _cache_file(key) if key is not None else None
    rows = (_shipped(key) or _cached(path)) if key is not None else None
    if rows is None:
        rows = _described(names, input_size)
        if path is not None:
            _store(path, rows)
    return [_with_latency(dict(row)) for row in rows] if measure else rows
