"""The Python API: ``imgclf.train(...)``, ``imgclf.evaluate(...)``, ``imgclf.load(bundle)``."""

from __future__ import annotations

from pathlib import Path

from imgclf.config import resolve
from imgclf.predictor import Classifier, load
from imgclf.runners.evaluate import run_evaluate
from imgclf.runners.train import run_train

__all__ = ["Classifier", "evaluate", "load", "train"]


def train(
    data: str,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    data_dir: str | Path | None = None,
    config: str | Path | None = None,
    **options,
) -> dict:
    """Train on DATA (a folder, archive, CSV, ``digits`` or ``fashion-mnist``) and write a bundle.

    ``options`` are TrainConfig fields (``model="lenet5"``, ``epochs=2``, ``pretrained=True`` or a
    weights file, ``finetune="two-stage"``, ``preset="fast"``, ``time_budget="10m"``...), resolved
    exactly as the command line resolves its options; ``config``: a YAML or JSON file of them,
    under ``options``. Without ``model`` the model is chosen as
    ``imgclf train`` chooses it (a linear probe on ImageNet features for natural photos). Returns
    ``{"bundle", "model", "epochs", "seconds", "metrics": {"val_accuracy", "test_accuracy", ...}}``.
    """
    resolved = resolve(options, config)
    return run_train(data, resolved.config, output=output, overwrite=overwrite, resume=resume, data_dir=data_dir,
                     choose_model=resolved.choose_model and not resume)  # fmt: skip


def evaluate(bundle: str | Path, data: str, split: str = "test", data_dir: str | Path | None = None) -> dict:
    """Accuracy, per-class metrics and confusion matrix of a bundle on a split of DATA."""
    return run_evaluate(bundle, data, split=split, data_dir=data_dir)
