"""imgclf benchmark BUNDLE: what each deployment target costs, in one table. Every format this
machine can run is built in memory exactly as ``imgclf export`` builds it (the same checks, the
same refusals) and measured on the same validation images: file size, accuracy, agreement with
the bundle, batch-1 latency (median and 95th percentile) and batch-32 throughput.

A format that cannot be built here (a package missing, a refused parity check) gets its row with
the reason instead of numbers. The browser page (``--format web``) runs the ONNX row's graph in
onnxruntime-web; it is measured in a browser, not here.
"""

from __future__ import annotations

import copy
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console

from imgclf.bundle import WEIGHTS_FILE, Bundle, load_bundle, recorded_data
from imgclf.errors import ImgclfError, UsageError
from imgclf.export.onnx_graph import add_contract, with_preprocessing
from imgclf.export.runtime import onnx_session
from imgclf.models.info import measure_latency
from imgclf.runners.export import (
    PARITY_IMAGES,
    RawImages,
    _checked_fp32,
    _contract,
    _int8,
    _network_proto,
    _onnx_outputs,
    _raw_images,
    _score,
    _torch_logits,
    _write_litert,
    _write_openvino,
    cpu_description,
    decisions,
)
from imgclf.text import stderr_console

__all__ = ["FORMAT_ROWS", "run_benchmark"]

FORMAT_ROWS = ("pytorch", "onnx", "onnx-int8", "openvino", "openvino-int8", "tflite", "tflite-int8")
TIMED_CALLS = 30  # batch-1 calls timed per format, after 3 untimed ones
THROUGHPUT_BATCH = 32


@dataclass
class FormatRow:
    format: str
    size_mb: float | None = None
    accuracy: float | None = None  # on the validation images (label sets: the share of labels right)
    agreement: float | None = None  # share of images answered as the bundle answers them
    p50_ms: float | None = None  # one image, median
    p95_ms: float | None = None
    images_per_s: float | None = None  # batches of THROUGHPUT_BATCH
    note: str = ""


def _timed(call: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _session_row(name: str, session, size_bytes: int, bundle: Bundle, val: RawImages, reference: np.ndarray,
                 note: str = "") -> FormatRow:  # fmt: skip
    """Accuracy and agreement on ``val``, latency and throughput on images at the input size."""
    answers = decisions(bundle, _onnx_outputs(session, val, "nhwc"))
    size, channels = bundle.preprocess.input_size, bundle.preprocess.channels
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, size, size, channels), dtype=np.uint8)
    many = rng.integers(0, 256, (THROUGHPUT_BATCH, size, size, channels), dtype=np.uint8)
    input_name = session.get_inputs()[0].name
    single = _timed(lambda: session.run(None, {input_name: one}), TIMED_CALLS)
    batched = _timed(lambda: session.run(None, {input_name: many}), 5)
    return FormatRow(name, round(size_bytes / 1e6, 2), _score(answers, val.targets), float(np.mean(
        _same(answers, reference))), round(float(np.median(single)), 3), round(float(np.percentile(single, 95)), 3),
        round(THROUGHPUT_BATCH / (float(np.median(batched)) / 1000), 1), note)  # fmt: skip


def _same(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    same = first == second
    return same.all(axis=1) if same.ndim == 2 else same


def _pytorch_row(bundle: Bundle, val: RawImages, reference: np.ndarray) -> FormatRow:
    pre = bundle.preprocess
    # A copy: measure_latency turns the model it times channels-last, and the formats measured after
    # this row are exported from bundle.model (OpenVINO computed the int8 graph of a channels-last
    # export wrongly: 87% of the labels of onnxruntime's on the same graph).
    model = copy.deepcopy(bundle.model)
    one = measure_latency(model, 1, pre.channels, pre.input_size, repeats=TIMED_CALLS)
    many = measure_latency(model, THROUGHPUT_BATCH, pre.channels, pre.input_size, repeats=5)
    size = (bundle.path / WEIGHTS_FILE).stat().st_size
    return FormatRow("pytorch", round(size / 1e6, 2), _score(reference, val.targets), 1.0, one["p50_ms"],
                     one["p95_ms"], round(THROUGHPUT_BATCH / (many["p50_ms"] / 1000), 1),
                     "the bundle itself (normalised float input: no decoding or resize timed)")  # fmt: skip


def run_benchmark(
    bundle_dir: str | Path,
    data: str | None = None,
    data_dir=None,
    formats: tuple[str, ...] = FORMAT_ROWS,
    console: Console | None = None,
) -> dict:
    """One row per format (see the module docstring); raises UsageError without validation images."""
    console = console or stderr_console()
    unknown = [name for name in formats if name not in FORMAT_ROWS]
    if unknown:
        raise UsageError(f"--formats: unknown {', '.join(unknown)} (choose from {', '.join(FORMAT_ROWS)})")
    bundle = load_bundle(bundle_dir)
    data = data or recorded_data(bundle)
    val = _raw_images(bundle, data, data_dir, "val", PARITY_IMAGES)
    if val is None or not val.pixels:
        raise UsageError(f"{bundle_dir}: no validation images to measure on: pass --data DATA (with a val split)")
    reference = decisions(bundle, _torch_logits(bundle, val))
    quiet = Console(file=io.StringIO())  # the export's own lines: the table says it all
    rows, built = [], {}  # the fp32 graph and its check, made once for every format built from it
    for name in formats:
        console.print(f"measuring {name} on {val.source}", highlight=False)
        try:
            rows.append(_pytorch_row(bundle, val, reference) if name == "pytorch" else
                        _format_row(name, bundle, data, data_dir, val, reference, quiet, built))  # fmt: skip
        except (ImgclfError, UsageError) as error:
            rows.append(FormatRow(name, note=f"not measured: {error}"))
    return {"bundle": str(bundle_dir), "images": val.source, "cpu": cpu_description(),
            "rows": [asdict(row) for row in rows]}  # fmt: skip


def _format_row(name: str, bundle: Bundle, data, data_dir, val: RawImages, reference, quiet: Console,
                built: dict) -> FormatRow:  # fmt: skip
    """Build one format as the export does (its checks included) and measure it. ``built``: the
    network, the checked fp32 graph and the int8 graphs, each made on the first call that needs it
    and shared by the others."""
    if not built:
        built["network"] = _network_proto(bundle)
        built["fp32"], built["session"], _, built["temperature"] = _checked_fp32(bundle, built["network"], "nhwc",
                                                                                 val, False, quiet)  # fmt: skip
    network, fp32, session, temperature = built["network"], built["fp32"], built["session"], built["temperature"]
    int8 = name.endswith("-int8")
    if int8 and name != "tflite-int8" and "int8" not in built:
        built["int8"] = _int8(bundle, network, data, data_dir, "nhwc", temperature, val, session, quiet)
    contract = _contract(bundle, "nhwc", quantized=int8 and name != "tflite-int8")
    if name == "onnx":
        return _session_row(name, session, len(fp32.SerializeToString()), bundle, val, reference)
    if name == "onnx-int8":
        data_bytes = built["int8"][0].SerializeToString()
        return _session_row(name, onnx_session(data_bytes), len(data_bytes), bundle, val, reference)
    with tempfile.TemporaryDirectory(prefix="imgclf-benchmark-") as folder:
        if name.startswith("openvino"):

            def fixed(int8_network: bool) -> onnx.ModelProto:
                core = built["int8"][2] if int8_network else network
                return with_preprocessing(core, bundle.preprocess, "nhwc", temperature, resize=False)

            int8_graph = None
            if int8:
                int8_graph = onnx.ModelProto.FromString(built["int8"][0].SerializeToString())  # a copy: the contract
                add_contract(int8_graph, contract)  # fmt: skip
            ov, _, _ = _write_openvino(bundle, fp32, contract, Path(folder) / "model.xml", val, "nhwc", quiet, fixed,
                                       int8_graph)  # fmt: skip
            size = sum(path.stat().st_size for path in Path(folder).iterdir())
            note = "int8, the rest in f32 (hint)" if int8 else f"{ov.precision}, OpenVINO's default here"
            return _session_row(name, ov, size, bundle, val, reference, note)
        target = Path(folder) / "model.tflite"
        litert, _, _ = _write_litert(bundle, contract, target, val, False, quiet, int8=int8)
        return _session_row(name, litert, target.stat().st_size, bundle, val, reference,
                            "1 x S x S input: imgclf's resize timed with it")  # fmt: skip
