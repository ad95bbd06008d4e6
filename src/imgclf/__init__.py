"""imgclf: from a folder of labelled images to a trained, explained, deployable classifier."""

__version__ = "0.1.0"

from imgclf.api import evaluate, load, train  # noqa: E402

__all__ = ["__version__", "evaluate", "load", "train"]
