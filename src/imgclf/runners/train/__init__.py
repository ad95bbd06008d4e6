"""The training pipeline of ``imgclf train`` (and of ``lr-find``, ``compare`` and ``doctor
--labels``, which run parts of it): the data read and checked (``data``), the model, recipe and
runtime assembled (``setup``), chosen when no model is named (``choose_model``), trained in its
stages (``stages``: the probe, fine-tuning, the better of the two kept) and written as a bundle
with its report (``output``); ``pipeline`` runs them in order."""

from imgclf.runners.train.pipeline import run_train

__all__ = ["run_train"]
