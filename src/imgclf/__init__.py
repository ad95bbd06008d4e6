"""imgclf: from a folder of labelled images to a trained, explained, deployable classifier."""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__", "evaluate", "load", "train"]


def __getattr__(name: str):
    """``imgclf.train``, ``imgclf.load``, ``imgclf.evaluate`` and ``imgclf.Predictor``, imported
    on first use: the command line starts (and sets up its allocator) before PyTorch is imported."""
    if name in ("evaluate", "load", "train"):
        from imgclf import api

        return getattr(api, name)
    if name == "Predictor":
        from imgclf.scale import Predictor

        return Predictor
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
