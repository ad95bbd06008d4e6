"""The evaluate runner: a bundle and DATA in, the same metrics training reported out."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from imgclf.bundle import load_bundle
from imgclf.evaluation import evaluate_split

__all__ = ["run_evaluate"]


def run_evaluate(
    bundle_dir: str | Path,
    data: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "auto",
    console: Console | None = None,
    tta: str = "none",
) -> dict:
    """Metrics of a bundle on one split of DATA (the test split by default)."""
    metrics = evaluate_split(load_bundle(bundle_dir), data, split, data_dir, device, console, tta).metrics
    metrics.pop("reliability")  # the diagram's bins: in the report, too detailed for the JSON result
    return metrics
