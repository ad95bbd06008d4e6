"""The report runner: writes ``report.html`` into a bundle, at the end of ``train`` and for
``imgclf report BUNDLE [DATA]``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from imgclf.bundle import load_bundle, recorded_data
from imgclf.errors import ImgclfError
from imgclf.evaluation import evaluate_split
from imgclf.explain.bundle_report import mistakes_gallery, write_report
from imgclf.explain.report import GalleryItem
from imgclf.text import stderr_console

__all__ = ["run_report"]


def run_report(
    bundle_dir: str | Path,
    data: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> Path:
    """Regenerate ``report.html``. With DATA (or the recorded training data when it is still
    there) the test split is evaluated afresh and the worst mistakes are shown."""
    console = console or stderr_console()
    bundle = load_bundle(bundle_dir)
    data = data or recorded_data(bundle)
    if data is None:
        gallery: list[GalleryItem] | str = (
            "The training data is not available here; run imgclf report BUNDLE DATA to show the worst mistakes."
        )
        return write_report(bundle, gallery)
    splits = ("test", "val")
    for split in splits:
        try:
            evaluation = evaluate_split(bundle, data, split, data_dir, device, console)
            break
        except ImgclfError as error:
            if split == splits[-1]:
                raise
            console.print(f"note: {error}; using the validation split")
    bundle.metrics = {**bundle.metrics, split: evaluation.metrics}
    gallery = mistakes_gallery(bundle, evaluation.split, evaluation.logits, evaluation.targets)
    return write_report(bundle, gallery)
