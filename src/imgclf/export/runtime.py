"""onnxruntime sessions, made in one place, and ``ResizedFirst`` for models whose resize is left
outside. Free of PyTorch: predicting with an exported file loads onnxruntime and nothing heavier."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the onnx package takes 0.7 s to import: a file path or bytes never need it
    import onnx

__all__ = ["ResizedFirst", "onnx_session"]


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


class ResizedFirst:
    """A session for a model that takes images at its input size, fed N images of one other size
    in ``layout``: each is resized and cropped by imgclf's own preprocessing first, as the model's
    contract tells a caller to: the OpenVINO IR whose resize is left outside, and LiteRT files."""

    def __init__(self, session, preprocess, layout: str):
        self.session, self.preprocess, self.layout = session, preprocess, layout
        self.precision = getattr(session, "precision", None)

    def get_inputs(self) -> list:
        return self.session.get_inputs()

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ((name, images),) = feeds.items()
        as_hwc = images if self.layout == "nhwc" else images.transpose(0, 2, 3, 1)
        prepared = np.stack([self.preprocess.prepare_pixels(image) for image in as_hwc])  # N x C x S x S
        batch = prepared.transpose(0, 2, 3, 1) if self.layout == "nhwc" else prepared
        return self.session.run(outputs, {name: np.ascontiguousarray(batch)})
