"""The export runner: a bundle in, an ONNX file out that takes raw uint8 pixels, with a parity
check against PyTorch (and an int8 variant with its accuracy change) and a latency table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console

from imgclf.bundle import Bundle, load_bundle, recorded_data
from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.dataset import ArraySplit, load_dataset
from imgclf.data.decode import convert_channels, decode_image
from imgclf.data.prepare import TensorSplit
from imgclf.engine.evaluate import predict_logits
from imgclf.engine.label_sets import logit_thresholds, nearest_centroid
from imgclf.errors import BadImageError, ImgclfError, UsageError
from imgclf.explain.calibration import centroid_distance
from imgclf.export.litert import INT8_DESCRIPTION as LITERT_INT8_DESCRIPTION
from imgclf.export.litert import LiteRtSession, litert_bytes, litert_int8, with_contract
from imgclf.export.onnx_graph import OPSET, add_contract, network_proto, with_preprocessing
from imgclf.export.openvino_ir import OpenVinoSession, openvino_model, record_check, save_ir, set_contract
from imgclf.export.quantize import quantized_network
from imgclf.export.runtime import ResizedFirst, onnx_session
from imgclf.export.web import check_web_target, find_onnxruntime_web, write_web_folder
from imgclf.files import atomic_write_bytes, check_can_write
from imgclf.models.info import measure_latency
from imgclf.text import stderr_console

# --format: what the file is, by its suffix. OpenVINO IR is the ONNX graph converted by OpenVINO.
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite", "web": ""}  # web: a folder (export/web.py)

__all__ = ["MIN_FP32_AGREEMENT", "run_export"]

MIN_FP32_AGREEMENT = 0.999  # export fails below this top-1 agreement with PyTorch
PARITY_IMAGES = 2_000  # validation images compared (evenly spaced)
INT8_DESCRIPTION = (
    "int8 static (QDQ), calibrated on training images; weights per channel in 7 bits (no saturation in the u8 x "
    "s8 kernels of CPUs without VNNI); the final classifier in float"
)
CALIBRATION_IMAGES = 256  # training images for int8 calibration (evenly spaced)
LAYOUTS = ("nhwc", "nchw")
FIXED_SIZE_RESIZE = ("{size} x {size} only: first the shorter side to {side} px (bilinear, antialiased) and the "
                     "centre {size} x {size} cropped (the runtime's own antialiased resize is not imgclf's, or it has "
                     "none)")  # fmt: skip


class _ExportedNetwork(torch.nn.Module):
    """The network as exported: with ``flip``, the logits are the mean of the image's and its
    mirror image's (test-time augmentation, as ``predict --tta flip``); with ``centroids``, the
    bundle's distance rule too: the cosine distance of each image's own embedding to its predicted
    class's centroid (a multi-label bundle: to the nearest label's), so the graph abstains where
    the bundle does."""

    def __init__(self, model: torch.nn.Module, centroids: torch.Tensor | None, multi_label: bool, flip: bool):
        super().__init__()
        self.model, self.multi_label, self.flip = model, multi_label, flip
        self.register_buffer("centroids", None if centroids is None else centroids.float())

    def forward(self, images: torch.Tensor):
        logits, embedding = self.model.forward_head_and_embedding(self.model.forward_features(images))
        if self.flip:
            logits = (logits + self.model(torch.flip(images, dims=(3,)))) / 2
        if self.centroids is None:
            return logits
        embedding = torch.nn.functional.normalize(torch.flatten(embedding, 1).float(), dim=1)
        if self.multi_label:
            return logits, nearest_centroid(embedding, self.centroids)[1]
        return logits, centroid_distance(embedding, self.centroids, logits.argmax(dim=1))


def _distance_threshold(bundle: Bundle) -> float | None:
    value = bundle.description.abstain_distance_threshold
    return float(value) if value is not None and bundle.centroids is not None else None


def _network_module(bundle: Bundle, flip: bool = False) -> torch.nn.Module:
    """What every format computes after the preprocessing: logits (with the distance rule's
    output where the bundle has one). In the default memory format: OpenVINO computed the int8
    graph of a channels-last network wrongly (87.7% of onnxruntime's labels on the same graph)."""
    bundle.model.to(memory_format=torch.contiguous_format)
    centroids = bundle.centroids if _distance_threshold(bundle) is not None else None
    if centroids is not None or flip:
        return _ExportedNetwork(bundle.model, centroids, bundle.description.multi_label, flip).eval()
    return bundle.model


def _network_proto(bundle: Bundle, flip: bool = False) -> onnx.ModelProto:
    return network_proto(_network_module(bundle, flip), bundle.preprocess.channels, bundle.preprocess.input_size)


@dataclass
class RawImages:
    """Decoded images at their own size (H x W x C uint8, the model's channel count): what a user
    feeds the exported graph, which resizes and crops them itself."""

    pixels: list[np.ndarray]
    targets: np.ndarray
    source: str


def _raw_images(bundle: Bundle, data: str | None, data_dir, split: str, limit: int) -> RawImages | None:
    """Up to ``limit`` evenly spaced images of a split of DATA, decoded but not resized."""
    if data is None:
        return None
    dataset = load_dataset(data, bundle.description.split_policy(), data_dir)
    if split not in dataset.splits or len(dataset.splits[split]) == 0:
        return None
    chosen = dataset.splits[split]
    if len(chosen) > limit:
        chosen = chosen.subset(np.linspace(0, len(chosen) - 1, limit).astype(np.int64))
    channels, remap = bundle.preprocess.channels, [bundle.classes.index(name) for name in dataset.classes]
    pixels, targets = [], []
    for index, key in enumerate(chosen.keys):
        try:
            if isinstance(chosen, ArraySplit):
                image = convert_channels(chosen.images[index], channels)
            else:
                image = decode_image(chosen.reader.read(key), chosen.reader.describe(key), channels)
        except BadImageError:
            continue  # imgclf skips it too
        pixels.append(image)
        targets.append(_target(chosen.targets[index], remap, len(bundle.classes)))
    return RawImages(pixels, np.array(targets), f"{len(pixels)} {split} images of {data}")


def _target(target: np.ndarray, remap: list[int], classes: int):
    """A data target in the bundle's class order (a multi-label row: its labels' columns)."""
    if np.ndim(target) == 0:
        return remap[int(target)]
    row = np.zeros(classes, dtype=np.int64)
    row[remap] = np.asarray(target) > 0.5
    return row


def decisions(bundle: Bundle, logits: np.ndarray) -> np.ndarray:
    """What the bundle answers from these logits: the top class, or for a multi-label bundle the
    row of labels at or above their thresholds. Parity and int8 checks compare these."""
    if not bundle.description.multi_label:
        return logits.argmax(1)
    description = bundle.description
    cut = logit_thresholds(description.label_thresholds, description.label_temperatures, len(bundle.classes))
    return (logits >= cut.numpy()).astype(np.int64)


def _agreeing(bundle: Bundle) -> str:
    return "same label sets" if bundle.description.multi_label else "top-1 agreement"


def _scored(bundle: Bundle) -> str:
    return "share of labels right" if bundle.description.multi_label else "accuracy"


def _agreement(first: np.ndarray, second: np.ndarray) -> float:
    """The share of images answered the same (a multi-label answer: the whole label set)."""
    same = first == second
    return float((same.all(axis=1) if same.ndim == 2 else same).mean())


def _score(answers: np.ndarray, targets: np.ndarray) -> float:
    """Accuracy; on label sets the share of (image, label) decisions that are right."""
    return float((answers == targets).mean())


def _random_images(bundle: Bundle, count: int = 256) -> RawImages:
    """Random pixels at a size other than the input size, so the in-graph resize is exercised."""
    size, channels = bundle.preprocess.input_size, bundle.preprocess.channels
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (size + 7, size + 3, channels), dtype=np.uint8) for _ in range(count)]
    source = f"{count} random-pixel images (the training data is not available here; pass --data DATA)"
    return RawImages(pixels, np.zeros(count, dtype=np.int64), source)


def _in_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(batch if layout == "nhwc" else batch.transpose(0, 3, 1, 2))


def _onnx_outputs(session, images: RawImages, layout: str, output: str = "logits", batch: int = 64) -> np.ndarray:
    """Run the graph on every image: one call per chunk of images of the same size."""
    name = session.get_inputs()[0].name
    results: list = [None] * len(images.pixels)
    by_shape: dict[tuple, list[int]] = {}
    for index, pixels in enumerate(images.pixels):
        by_shape.setdefault(pixels.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            stacked = _in_layout(np.stack([images.pixels[i] for i in chunk]), layout)
            for index, row in zip(chunk, session.run([output], {name: stacked})[0]):
                results[index] = row
    return np.stack(results)


def _torch_logits(bundle: Bundle, images: RawImages, flip: bool = False) -> np.ndarray:
    """What imgclf itself computes: Pillow resize and crop, then the PyTorch model (``flip``:
    averaged with the mirror image, as ``predict --tta flip``)."""
    prepared = torch.from_numpy(np.stack([bundle.preprocess.prepare_pixels(p) for p in images.pixels]))
    batches = make_batches(_as_split(prepared), eval_batch_size(bundle.preprocess.input_size))
    return predict_logits(bundle.model, batches, bundle.preprocess, torch.device("cpu"), flip_tta=flip)[0].numpy()


def _parity(bundle: Bundle, session, images: RawImages, layout: str, flip: bool = False) -> dict:
    """Top-1 agreement and largest logit difference between onnxruntime and PyTorch."""
    torch_logits, onnx_logits = _torch_logits(bundle, images, flip), _onnx_outputs(session, images, layout)
    return {
        "images": images.source,
        # Multi-label: the share of images given exactly the same label set.
        "top1_agreement": _agreement(decisions(bundle, onnx_logits), decisions(bundle, torch_logits)),
        "max_logit_diff": float(np.abs(onnx_logits - torch_logits).max()),
    }


def _as_split(images: torch.Tensor) -> TensorSplit:
    return TensorSplit(images, torch.zeros(len(images), dtype=torch.int64), [str(i) for i in range(len(images))])


def _onnx_latency_ms(session, layout: str, channels: int, size: int, batch: int, repeats: int = 20) -> float:
    shape = (batch, size, size, channels) if layout == "nhwc" else (batch, channels, size, size)
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    name = session.get_inputs()[0].name
    for _ in range(2):
        session.run(None, {name: pixels})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: pixels})
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 3)


def _latency_table(bundle: Bundle, sessions: dict, layout: str) -> dict:
    channels, size = bundle.preprocess.channels, bundle.preprocess.input_size
    table = {}
    for batch in (1, 32):
        row = {"pytorch_eager": measure_latency(bundle.model, batch, channels, size)["p50_ms"]}
        for name, session in sessions.items():
            row[name] = _onnx_latency_ms(session, layout, channels, size, batch)
        table[f"batch_{batch}"] = row
    return table


def _contract(bundle: Bundle, layout: str, quantized: bool) -> dict:
    pre = bundle.preprocess
    shape = "N x H x W x C" if layout == "nhwc" else "N x C x H x W"
    return {
        "classes": bundle.classes,
        "input": {
            "name": "pixels",
            "dtype": "uint8",
            "layout": layout.upper(),
            "shape": shape,
            "channels": pre.channels,
            "channel_order": "RGB" if pre.channels == 3 else "grayscale",
            "resize": f"any H and W: inside the graph the shorter side goes to {pre.decode_side} px "
            f"(bilinear, antialiased) and the centre {pre.input_size} x {pre.input_size} is cropped",
            "shorter_side": pre.decode_side,  # what a caller may shrink an image to first, and no further
        },
        "preprocess": pre.to_dict(),
        **_decision_contract(bundle),
        "architecture": bundle.description.architecture,
        "quantization": INT8_DESCRIPTION if quantized else "none (fp32)",
    }


def _decision_contract(bundle: Bundle) -> dict:
    """The outputs and how the bundle decides from them: its temperature(s), its abstain rule and,
    for a multi-label bundle, the threshold of each label."""
    description, distance = bundle.description, _distance_threshold(bundle)
    multi = description.multi_label
    what = ("N x labels, sigmoid(logits / temperature of each label)" if multi
            else "N x classes, softmax(logits / temperature)")  # fmt: skip
    outputs = {"logits": "N x classes", "probabilities": what}
    if distance is not None:
        nearest = "the nearest label's centroid" if multi else "its predicted class's centroid"
        outputs["centroid_distance"] = f"N, the embedding's cosine distance to {nearest}"
    contract = {"task": description.task, "outputs": outputs,
                "temperature": description.label_temperatures if multi else description.temperature,
                # The bundle's abstain rule; the distance is the graph's "centroid_distance" output.
                "abstain": {"confidence_threshold": description.abstain_threshold,
                            "distance_threshold": distance}}  # fmt: skip
    if multi:  # a label is given when its probability reaches its threshold
        contract["thresholds"] = description.label_thresholds
    return contract


def cpu_description() -> str:
    """This CPU's model name and the instruction-set extensions int8 kernels choose between."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the name is what platform knows
        pass
    extensions = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if flag in flags]
    return f"{name} ({', '.join(extensions) or 'no AVX2'})" if flags else name


def _check_options(layout: str, quantize: str | None, format: str, tta: str) -> None:
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be nhwc or nchw, not {layout!r}")
    if quantize not in (None, "int8"):
        raise UsageError(f"--quantize must be int8, not {quantize!r}")
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format == "tflite" and layout != "nhwc":
        raise UsageError("--format tflite writes an NHWC file (LiteRT's layout): leave out --layout")
    if tta not in ("none", "flip"):
        raise UsageError(f"--tta must be none or flip, not {tta!r}")


def _checked_target(bundle_dir, output, quantize: str | None, format: str, onnxruntime_web) -> tuple[Path, Path | None]:
    """Where the export goes, checked before the export's minutes of work (and for the web page,
    the onnxruntime-web files it copies)."""
    if format == "web":
        target = Path(output) if output else Path(bundle_dir) / ("web.int8" if quantize == "int8" else "web")
        ort_web = find_onnxruntime_web(onnxruntime_web)
        check_web_target(target)
        return target, ort_web
    default_name = ("model.int8" if quantize == "int8" else "model") + FORMATS[format]
    target = Path(output) if output else Path(bundle_dir) / default_name
    check_can_write(target)
    return target, None


def _checked_fp32(bundle: Bundle, network, layout: str, val, flip: bool, console: Console):
    """The fp32 graph with its preprocessing, its session and its parity with PyTorch; refused
    (nothing written) below MIN_FP32_AGREEMENT."""
    description = bundle.description
    temperature = description.label_temperatures if description.multi_label else description.temperature
    fp32 = with_preprocessing(network, bundle.preprocess, layout, temperature)
    session = onnx_session(fp32)
    parity = _parity(bundle, session, val or _random_images(bundle), layout, flip)
    console.print(f"parity with PyTorch on {parity['images']}: {_agreeing(bundle)} {parity['top1_agreement']:.4%}, "
                  f"largest logit difference {parity['max_logit_diff']:.2e}")  # fmt: skip
    if parity["top1_agreement"] < MIN_FP32_AGREEMENT:
        raise ImgclfError(f"export refused: the ONNX model agrees with PyTorch on only {parity['top1_agreement']:.2%} "
                          f"of {parity['images']} (at least {MIN_FP32_AGREEMENT:.1%} needed)")  # fmt: skip
    return fp32, session, parity, temperature


def run_export(
    bundle_dir: str | Path,
    output: str | Path | None = None,
    quantize: str | None = None,
    layout: str = "nhwc",
    data: str | None = None,
    data_dir=None,
    console: Console | None = None,
    format: str = "onnx",
    tta: str = "none",
    onnxruntime_web: str | Path | None = None,
) -> dict:
    """Export BUNDLE to ONNX, or through it to OpenVINO IR (``format="openvino"``); fails (writing
    nothing) when fp32 top-1 agreement with PyTorch on the validation images is below
    MIN_FP32_AGREEMENT, for the ONNX graph and for the IR alike. ``tta="flip"``: the graph
    averages each image with its mirror image, as ``predict --tta flip`` does."""
    console = console or stderr_console()
    _check_options(layout, quantize, format, tta)
    bundle = load_bundle(bundle_dir)
    target, ort_web = _checked_target(bundle_dir, output, quantize, format, onnxruntime_web)
    data = data or recorded_data(bundle)
    network = _network_proto(bundle, flip=tta == "flip")
    val = _raw_images(bundle, data, data_dir, "val", PARITY_IMAGES)
    fp32, fp32_session, parity, temperature = _checked_fp32(bundle, network, layout, val, tta == "flip", console)
    result = {"format": "onnx", "opset": OPSET, "layout": layout, "tta": tta, "parity": parity}
    sessions, final = {"onnxruntime_fp32": fp32_session}, fp32
    onnx_int8 = quantize == "int8" and format != "tflite"  # LiteRT quantizes its own file (_write_litert)
    if onnx_int8:
        final, result["int8"], int8_network = _int8(bundle, network, data, data_dir, layout, temperature, val,
                                                     fp32_session, console)  # fmt: skip
        sessions["onnxruntime_int8"] = onnx_session(final)
    contract = {**_contract(bundle, layout, onnx_int8), "tta": tta}
    if onnx_int8:  # int8 kernels differ between CPUs: say where this file's accuracy was measured
        contract["int8_checked_on"] = {"cpu": cpu_description(), **result["int8"]}
    add_contract(final, contract)
    if format == "openvino":
        fixed_graph = _graphs_without_resize(bundle, network, int8_network if onnx_int8 else None, layout, temperature)
        openvino, result["openvino_parity"], openvino_int8 = _write_openvino(
            bundle, fp32, contract, target, val, layout, console, fixed_graph, final if onnx_int8 else None
        )
        sessions["openvino_int8" if onnx_int8 else "openvino"] = openvino
        if openvino_int8 is not None:
            result["openvino_int8"] = openvino_int8
    elif format == "tflite":
        litert, result["litert_parity"], litert_report = _write_litert(bundle, contract, target, val, tta == "flip",
                                                                       console, quantize == "int8")  # fmt: skip
        sessions["litert_int8" if quantize else "litert"] = litert
        if litert_report is not None:
            result["int8"] = litert_report
    elif format == "web":
        write_web_folder(target, final.SerializeToString(), contract, ort_web)
    else:
        atomic_write_bytes(target, final.SerializeToString())
    result["format"] = format
    result["output"] = str(target)
    result["latency_ms"] = _latency_table(bundle, sessions, layout)
    console.print(f"wrote {target}")
    return result


def _graphs_without_resize(bundle: Bundle, network, int8_network, layout: str, temperature):
    """``graph(int8)``: the float or int8 graph with the preprocessing but not its resize."""

    def graph(int8: bool) -> onnx.ModelProto:
        return with_preprocessing(int8_network if int8 else network, bundle.preprocess, layout, temperature,
                                  resize=False)  # fmt: skip

    return graph


def _write_openvino(bundle: Bundle, fp32, contract: dict, target: Path, val, layout: str, console: Console,
                    fixed_graph=None, int8=None) -> tuple[OpenVinoSession, dict, dict | None]:  # fmt: skip
    """The ONNX graph as OpenVINO IR at ``target``, written only when OpenVINO (computing in f32,
    as exported) agrees with PyTorch on the validation images as closely as the ONNX file had to;
    the agreement at this CPU's default precision (bf16 where the CPU has it) is measured and
    recorded beside it. Where OpenVINO's antialiased resize is what disagrees (photos the graph
    must shrink), ``fixed_graph(int8=False)`` (the graph without its resize) is tried instead: the
    IR then takes images at the input size, and its contract says to resize first, as LiteRT's does.
    ``int8``: the int8 graph; the float IR is the check (of preprocessing: int8 answers differ from
    float ones by design), and the IR written is the int8 graph in the form the check chose, its
    accuracy change against the float IR measured and recorded (see ``_openvino_int8``).
    Returns the session a deployment gets (the f32 one where the default cannot compile here), the
    float parity and the int8 report (None for a float IR)."""
    images, flip = val or _random_images(bundle), contract.get("tta") == "flip"
    model, wrap, int8_graph = openvino_model(fp32, contract), _as_is, int8
    parity = _parity(bundle, OpenVinoSession(model, "f32"), images, layout, flip)
    if parity["top1_agreement"] < MIN_FP32_AGREEMENT and fixed_graph is not None:
        console.print(f"OpenVINO with the resize inside agrees with PyTorch on only {parity['top1_agreement']:.2%} "
                      f"(its antialiased resize is not imgclf's): the IR takes {bundle.preprocess.input_size} px "
                      "images instead, resized first as its contract says", highlight=False)  # fmt: skip
        contract = _fixed_size_contract(bundle, contract, "N")
        model = openvino_model(fixed_graph(False), contract)
        wrap = lambda session: ResizedFirst(session, bundle.preprocess, layout)  # noqa: E731
        int8_graph = None if int8 is None else fixed_graph(True)
        parity = _parity(bundle, wrap(OpenVinoSession(model, "f32")), images, layout, flip)
    agreement = parity["top1_agreement"]
    if agreement < MIN_FP32_AGREEMENT:
        raise ImgclfError(f"export refused: the OpenVINO model agrees with PyTorch on only {agreement:.2%} of "
                          f"{parity['images']} (at least {MIN_FP32_AGREEMENT:.1%} needed)")  # fmt: skip
    report = int8_session = None
    if int8_graph is not None:
        float_session = wrap(OpenVinoSession(model, "f32"))
        model, report, int8_session = _openvino_int8(bundle, int8_graph, contract, float_session, val, layout, wrap,
                                                     console)  # fmt: skip
    session, default = _openvino_default(bundle, model, images, layout, flip, wrap)
    parity["default_precision"] = default
    console.print(f"OpenVINO parity with PyTorch on {parity['images']}: {_agreeing(bundle)} {agreement:.4%}, largest "
                  f"logit difference {parity['max_logit_diff']:.2e} (f32); {'the int8 IR at' if report else 'at'} "
                  f"this CPU's default precision: {_default_text(default)}")  # fmt: skip
    record_check(model, {"cpu": cpu_description(), **parity, **({"int8": report} if report else {})})
    save_ir(model, target)
    return int8_session or session or wrap(OpenVinoSession(model, "f32")), parity, report


# An int8 IR is checked and meant to run with OpenVINO's float parts in f32: at the bf16 default of a
# CPU with AMX (Xeon, 4th generation) the digits int8 IR with its resize inside failed to compile
# ("No suitable implementations"); in f32 it gave onnxruntime's int8 labels.
OPENVINO_INT8_PRECISION = "f32"
# The int8 IR must give onnxruntime's labels for the same int8 graph on this share of the images:
# both run the same quantized arithmetic, and only rounding inside their kernels differs (measured:
# digits 100%, clothing photos 98.2%); a runtime that computes the graph wrongly is refused (the IR
# of a network exported channels-last agreed on 87.7%, in f32 and in bf16 alike).
MIN_INT8_RUNTIME_AGREEMENT = 0.95


def _openvino_int8(bundle: Bundle, graph, contract: dict, float_session, val, layout: str, wrap, console: Console):
    """The int8 graph as an IR (OpenVINO runs the graph's quantize/dequantize pairs on its own int8
    kernels), compiled with OPENVINO_INT8_PRECISION for the rest; its accuracy and agreement
    measured against the float IR and written into its contract, with the precision hint a
    deployment must pass."""
    model = openvino_model(graph, contract)
    session = wrap(OpenVinoSession(model, OPENVINO_INT8_PRECISION))
    images = val or _random_images(bundle)
    same_graph = _agreement(decisions(bundle, _onnx_outputs(session, images, layout)),
                            decisions(bundle, _onnx_outputs(wrap(onnx_session(graph)), images, layout)))  # fmt: skip
    if same_graph < MIN_INT8_RUNTIME_AGREEMENT:
        raise ImgclfError(f"export refused: OpenVINO's int8 answers differ from onnxruntime's on the same int8 graph "
                          f"(the same labels on only {same_graph:.2%} of {images.source}; at least "
                          f"{MIN_INT8_RUNTIME_AGREEMENT:.0%} needed)")  # fmt: skip
    report = {"runtime": "OpenVINO", "inference_precision_hint": OPENVINO_INT8_PRECISION,
              "onnxruntime_int8_agreement": same_graph,
              **_int8_report(bundle, float_session, session, val, layout, console, "OpenVINO")}  # fmt: skip
    set_contract(model, {**contract, "int8_checked_on": {"cpu": cpu_description(), **report}})
    return model, report, session


def _as_is(session):
    return session


def _fixed_size_contract(bundle: Bundle, contract: dict, batch: str) -> dict:
    """``contract`` for a model that takes images already at its input size (no resize inside)."""
    pre = bundle.preprocess
    fixed_input = {"shape": f"{batch} x {pre.input_size} x {pre.input_size} x {pre.channels}",
                   "resize": FIXED_SIZE_RESIZE.format(side=pre.decode_side, size=pre.input_size)}  # fmt: skip
    return {**contract, "input": {**contract["input"], **fixed_input}}


def _write_litert(bundle: Bundle, contract: dict, target: Path, val, flip: bool, console: Console,
                  int8: bool = False):  # fmt: skip
    """The network as a LiteRT file at ``target``, written only when LiteRT agrees with PyTorch on
    the validation images as closely as the ONNX file had to (both fed imgclf's own resize).
    ``int8``: the checked float file quantized (export.litert.litert_int8), its accuracy change
    measured against the float file's and recorded in its contract, as for the ONNX int8 file.
    Returns the session of the file written, the float file's parity and the int8 report."""
    pre, description = bundle.preprocess, bundle.description
    contract = {**_fixed_size_contract(bundle, contract, "1"), "format": "LiteRT flatbuffer (.tflite)"}
    temperature = description.label_temperatures if description.multi_label else description.temperature
    data = litert_bytes(_network_module(bundle, flip), pre, temperature, description.multi_label, contract)
    session = ResizedFirst(LiteRtSession(data, pre.input_size, pre.channels), pre, "nhwc")
    parity = _parity(bundle, session, val or _random_images(bundle), "nhwc", flip)
    agreement = parity["top1_agreement"]
    console.print(f"LiteRT parity with PyTorch on {parity['images']}: {_agreeing(bundle)} {agreement:.4%}, "
                  f"largest logit difference {parity['max_logit_diff']:.2e}")  # fmt: skip
    if agreement < MIN_FP32_AGREEMENT:
        raise ImgclfError(f"export refused: the LiteRT model agrees with PyTorch on only {agreement:.2%} "
                          f"of {parity['images']} (at least {MIN_FP32_AGREEMENT:.1%} needed)")  # fmt: skip
    report = None
    if int8:
        quantized = litert_int8(data)
        int8_session = ResizedFirst(LiteRtSession(quantized, pre.input_size, pre.channels), pre, "nhwc")
        report = {"method": "dynamic range",
                  **_int8_report(bundle, session, int8_session, val, "nhwc", console, "LiteRT")}  # fmt: skip
        contract = {**contract, "quantization": LITERT_INT8_DESCRIPTION,
                    "int8_checked_on": {"cpu": cpu_description(), **report}}  # fmt: skip
        data, session = with_contract(quantized, contract), int8_session
    atomic_write_bytes(target, data)
    return session, parity, report


def _openvino_default(bundle: Bundle, model, images, layout: str, flip: bool, wrap=_as_is):
    """The IR as a deployment compiles it (OpenVINO's default precision) and its agreement with
    PyTorch; when that compile fails here (the f32 one worked), the reason instead."""
    try:
        session = wrap(OpenVinoSession(model))
    except ImgclfError as error:
        return None, {"precision": None, "unavailable": str(error)}
    default = _parity(bundle, session, images, layout, flip)
    return session, {"precision": session.precision, "top1_agreement": default["top1_agreement"],
                     "max_logit_diff": default["max_logit_diff"]}  # fmt: skip


def _default_text(default: dict) -> str:
    if default["precision"] is None:
        return default["unavailable"]
    return f"{default['precision']}, {default['top1_agreement']:.4%} and {default['max_logit_diff']:.2e}"


def _int8(
    bundle, network, data, data_dir, layout, temperature, val, fp32_session, console
) -> tuple[onnx.ModelProto, dict, onnx.ModelProto]:
    """The int8 graph with its preprocessing, its report, and the int8 network alone."""
    train = _raw_images(bundle, data, data_dir, "train", CALIBRATION_IMAGES)
    if train is None:
        raise UsageError("--quantize int8 calibrates on training images: pass --data DATA (the training data)")
    prepared = torch.from_numpy(np.stack([bundle.preprocess.prepare_pixels(p) for p in train.pixels]))
    calibration = bundle.preprocess.normalize(prepared).contiguous().numpy()
    core = quantized_network(network, calibration)  # the network alone, int8; and with its preprocessing:
    quantized = with_preprocessing(core, bundle.preprocess, layout, temperature)
    report = {"calibration_images": len(train.pixels),
              **_int8_report(bundle, fp32_session, onnx_session(quantized), val, layout, console)}  # fmt: skip
    return quantized, report, core


def _int8_report(bundle: Bundle, fp32_session, int8_session, val, layout: str, console: Console,
                 runtime: str = "") -> dict:  # fmt: skip
    """Validation accuracy of the float and the int8 model and how often they answer alike (empty
    without validation images); ``runtime`` names the int8 model's in the line printed."""
    if val is None:
        return {}
    fp32_predictions = decisions(bundle, _onnx_outputs(fp32_session, val, layout))
    int8_predictions = decisions(bundle, _onnx_outputs(int8_session, val, layout))
    report = {"fp32_accuracy": _score(fp32_predictions, val.targets),
              "int8_accuracy": _score(int8_predictions, val.targets),
              "top1_agreement": _agreement(fp32_predictions, int8_predictions)}  # fmt: skip
    named = f"{runtime} int8" if runtime else "int8"
    console.print(f"{named}: validation {_scored(bundle)} {report['int8_accuracy']:.4f} (fp32 "
                  f"{report['fp32_accuracy']:.4f}), {_agreeing(bundle)} with fp32 "
                  f"{report['top1_agreement']:.2%}")  # fmt: skip
    return report
