"""OpenVINO IR (``model.xml`` + ``model.bin``) from the exported ONNX graph, for Intel CPUs, GPUs
and NPUs: the same graph (the resize and normalisation inside, raw uint8 pixels in), converted by
OpenVINO itself, with imgclf's contract (class names, input layout, preprocessing, calibration)
in the model's runtime information under ``imgclf``. Needs the ``openvino`` package
(``pip install 'imgclf[openvino]'``).

``OpenVinoSession`` answers like an onnxruntime session (``get_inputs``, ``run``), so the export's
parity check and latency table measure the IR exactly as they measure the ONNX file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from imgclf.errors import ImgclfError, UsageError
from imgclf.files import check_can_write

__all__ = ["OpenVinoSession", "openvino_model", "read_contract", "record_check", "save_ir", "set_contract"]

CONTRACT_KEY, CHECKED_KEY = ["imgclf", "contract"], ["imgclf", "checked_on"]


def _openvino():
    try:
        import openvino
    except ImportError:
        raise UsageError("--format openvino needs the openvino package: pip install 'imgclf[openvino]'") from None
    return openvino


def openvino_model(onnx_model: onnx.ModelProto, contract: dict):
    """The ONNX graph read by OpenVINO (from memory), with ``contract`` in its runtime information."""
    openvino = _openvino()
    model = openvino.Core().read_model(model=onnx_model.SerializeToString(), weights=b"")
    set_contract(model, contract)
    return model


def set_contract(model, contract: dict) -> None:
    """``contract`` as the model's (replacing the one it has)."""
    model.set_rt_info(json.dumps(contract), CONTRACT_KEY)


def record_check(model, check: dict) -> None:
    """Where and how the IR's agreement with PyTorch was measured, kept in the IR."""
    model.set_rt_info(json.dumps(check), CHECKED_KEY)


def read_contract(model) -> dict:
    """The contract ``openvino_model`` stored (from a model read back from its .xml file)."""
    return json.loads(model.get_rt_info(CONTRACT_KEY).astype(str))


def save_ir(model, target: Path) -> list[Path]:
    """``target`` (.xml) and its .bin beside it, each written whole or not at all: both go to a
    temporary folder next to them first, then each is renamed into place (the .bin first, so an
    .xml found on disk always has its weights)."""
    openvino = _openvino()
    target = Path(target)
    check_can_write(target)
    weights = target.with_suffix(".bin")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as folder:
        staged = Path(folder) / target.name
        openvino.save_model(model, str(staged), compress_to_fp16=False)  # fp32 as exported: parity holds
        os.replace(staged.with_suffix(".bin"), weights)
        os.replace(staged, target)
    return [target, weights]


@dataclass(frozen=True)
class _Input:
    name: str


class OpenVinoSession:
    """A compiled OpenVINO model on the CPU, called as an onnxruntime session is. ``precision``
    None: OpenVINO's default, what a deployment gets (bf16 on CPUs with AVX-512 BF16 or AMX: on the
    digits model logits moved by up to 0.09 and 1 of 179 top-1 labels flipped; f32 elsewhere);
    "f32": the exported graph's own precision."""

    def __init__(self, model, precision: str | None = None):
        openvino = _openvino()
        config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        try:
            self.compiled = openvino.Core().compile_model(model, "CPU", config)
        except RuntimeError as error:  # e.g. ONEDNN_MAX_CPU_ISA below what OpenVINO detected: "bad combination"
            reason = str(error).strip().splitlines()[-1] or "no reason given"
            raise ImgclfError(f"OpenVINO cannot compile the model for this CPU at {precision or 'its default'} "
                              f"precision ({reason})") from None  # fmt: skip
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.input_name = model.inputs[0].get_any_name()
        self.output_names = [output.get_any_name() for output in model.outputs]

    def get_inputs(self) -> list[_Input]:
        return [_Input(self.input_name)]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.compiled([feeds[self.input_name]])
        by_name = {key.get_any_name(): value for key, value in results.items()}
        return [np.asarray(by_name[name]) for name in (outputs or self.output_names)]
