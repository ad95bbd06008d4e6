"""The evaluate runner: a bundle and DATA in, the same metrics training reported out."""

from __future__ import annotations

from pathlib import Path

from imgclf.bundle import load_bundle
from imgclf.evaluation import evaluate_split

__all__ = ["run_evaluate"]


def run_evaluate(bundle_dir: str | Path, data: str, split: str = "test", **options) -> dict:
    """Metrics of a bundle on one split of DATA (the test split by default); ``options``: those of
    ``evaluation.evaluate_split`` (``data_dir``, ``device``, ``console``, ``tta``)."""
    metrics = evaluate_split(load_bundle(bundle_dir), data, split, **options).metrics
    metrics.pop("reliability", None)  # the diagram's bins: in the report, too detailed for the JSON result
    return metrics
