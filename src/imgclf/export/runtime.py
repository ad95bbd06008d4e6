"""onnxruntime sessions, made in one place. Free of PyTorch: predicting with an exported file
loads onnxruntime and nothing heavier."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the onnx package takes 0.7 s to import: a file path or bytes never need it
    import onnx

__all__ = ["onnx_session"]


def onnx_session(model: onnx.ModelProto | bytes | str, threads: int | None = None):
    """An onnxruntime CPU session for a model (object, bytes or file path).

    ``threads``: the intra-op threads of one ``run`` (default: onnxruntime's, one per core). A
    server that runs several batches at once wants 1 each (see serve/batcher.py)."""
    import onnxruntime

    source = model if isinstance(model, bytes | str) else model.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-merge notes about the exported graph are harmless
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
