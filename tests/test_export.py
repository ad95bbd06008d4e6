"""ONNX export: the file alone (onnxruntime + numpy + Pillow, no imgclf) predicts what imgclf does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from conftest import write_class_folder
from imgclf.cli.main import main


@pytest.fixture(scope="module")
def given_split_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A bundle trained on root/train and root/val of 16 x 20 px (non-square) images."""
    root = tmp_path_factory.mktemp("export")
    classes = ["left", "right", "top"]
    write_class_folder(root / "data" / "train", classes, per_class=30, size=20, seed=0)
    write_class_folder(root / "data" / "val", classes, per_class=10, size=20, seed=1)
    for image in (root / "data").rglob("*.png"):  # crop to 20 wide x 16 high: the graph must crop too
        with Image.open(image) as opened:
            opened.crop((0, 2, 20, 18)).save(image)
    assert main(["train", str(root / "data"), "--model", "simple_cnn", "--epochs", "3", "--augment", "none",
                 "--output", str(root / "bundle")]) == 0  # fmt: skip
    return root / "bundle", root / "data"


def test_onnx_alone_gives_the_same_top1_as_imgclf_predict(given_split_bundle, tmp_path, capsys):
    bundle, data = given_split_bundle
    capsys.readouterr()
    assert main(["export", str(bundle), "--output", str(tmp_path / "model.onnx"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["top1_agreement"] >= 0.999 and result["opset"] >= 17
    assert set(result["latency_ms"]["batch_1"]) == {"pytorch_eager", "onnxruntime_fp32"}
    val_files = sorted((data / "val").rglob("*.png"))
    assert main(["predict", str(bundle), *map(str, val_files), "--no-abstain", "--json"]) in (0, 1)
    expected = [item["top_k"][0]["label"] for item in json.loads(capsys.readouterr().out)]

    # From here on: onnxruntime, numpy and Pillow only, driven by the model's own metadata.
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    classes = json.loads(metadata["imgclf.classes"])
    contract = json.loads(metadata["imgclf.input"])
    assert contract["dtype"] == "uint8" and contract["layout"] == "NHWC"
    description = json.loads((bundle / "model.json").read_text())["preprocess"]
    assert contract["shorter_side"] == max(description["input_size"], description["resize_size"] or 0)
    mode = "RGB" if contract["channels"] == 3 else "L"
    got = []
    for file in val_files:
        with Image.open(file) as image:
            pixels = np.asarray(image.convert(mode)).reshape(image.height, image.width, contract["channels"])
        logits, probabilities = session.run(["logits", "probabilities"], {contract["name"]: pixels[None]})
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        got.append(classes[int(logits.argmax())])
    assert got == expected


def test_int8_export_reports_its_accuracy_change_and_runs(given_split_bundle, tmp_path, capsys):
    bundle, data = given_split_bundle
    capsys.readouterr()
    command = ["export", str(bundle), "--quantize", "int8", "--layout", "nchw", "--output", str(tmp_path / "q.onnx")]
    assert main([*command, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["int8"]
    assert result["calibration_images"] > 0
    assert abs(result["int8_accuracy"] - result["fp32_accuracy"]) <= 0.1 and result["top1_agreement"] >= 0.9
    session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert "int8" in json.loads(metadata["imgclf.quantization"]) and "7 bits" in metadata["imgclf.quantization"]
    checked = json.loads(metadata["imgclf.int8_checked_on"])  # where its accuracy was measured
    assert checked["cpu"] and checked["int8_accuracy"] == result["int8_accuracy"]
    pixels = np.zeros((3, 3, 16, 20), dtype=np.uint8)  # NCHW, any size: resized in the graph
    assert session.run(["probabilities"], {"pixels": pixels})[0].shape == (3, 3)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    dequantized = {output for node in graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert convolutions and all(node.input[1] in dequantized for node in convolutions)  # int8 weights
    (classifier,) = [node for node in graph.node if node.op_type in ("Gemm", "MatMul")][-1:]
    assert classifier.input[1] not in dequantized  # the logits' layer stays float: no flipped near-ties


def test_export_refuses_bad_options_clearly(given_split_bundle, capsys):
    bundle, _ = given_split_bundle
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(bundle), "--layout", "hwc"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["export", str(bundle.parent / "no-bundle")]) == 2
    assert "no such bundle" in capsys.readouterr().err


# Run by the test below under an emulated AVX2-only CPU: the int8 and fp32 files' answers on the
# validation images (NCHW uint8, any size: the graph resizes).
_AGREEMENT_SCRIPT = """
import sys
import numpy as np, onnxruntime
from PIL import Image
fp32, int8, *images = sys.argv[1:]
answers = []
for path in (fp32, int8):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    pixels = [np.asarray(Image.open(image).convert("RGB")).transpose(2, 0, 1)[None] for image in images]
    answers.append([int(session.run(["logits"], {"pixels": p})[0].argmax()) for p in pixels])
print(np.mean(np.asarray(answers[0]) == np.asarray(answers[1])))
"""


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs Debian's qemu-user (make test installs it)")
def test_int8_agrees_with_fp32_on_a_cpu_without_vnni(given_split_bundle, tmp_path, capsys):
    """onnxruntime's int8 kernels differ between CPUs (AVX2's saturate where VNNI's do not): the
    exported files run under qemu as a Haswell (AVX2, FMA, no AVX-512, no VNNI). With full-range
    int8 weights this agreement was 0.67 there for two of three seeds, and 1.0 here."""
    bundle, data = given_split_bundle
    for name, extra in (("fp32.onnx", []), ("int8.onnx", ["--quantize", "int8"])):
        assert main(["export", str(bundle), "--layout", "nchw", "--output", str(tmp_path / name), *extra]) == 0
    images = [str(path) for path in sorted((data / "val").rglob("*.png"))]
    command = ["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", _AGREEMENT_SCRIPT,
               str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), *images]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert float(completed.stdout.strip().splitlines()[-1]) >= 0.95


OPENVINO_CHECK = r"""
import sys
import numpy as np
import openvino
from sklearn.datasets import load_digits
import imgclf
from imgclf.export.openvino_ir import OpenVinoSession, read_contract

bundle, *targets = sys.argv[1:]
pixels = (load_digits().images[:64] * 255 / 16).round().astype(np.uint8)[:, :, :, None]
expected = imgclf.load(bundle).predict_proba(list(pixels)).argmax(1)
for target in targets:  # one line each: the share of the 64 digits labelled as the bundle labels them
    model = openvino.Core().read_model(target)
    contract = read_contract(model)
    assert contract["classes"] == [str(digit) for digit in range(10)] and contract["input"]["layout"] == "NHWC"
    session = OpenVinoSession(model, "f32")  # as exported and checked (the default is bf16 on some CPUs)
    probabilities = session.run(["probabilities"], {session.get_inputs()[0].name: pixels})[0]
    print(float(np.mean(probabilities.argmax(1) == expected)))
"""


def _openvino_agreements(bundle: Path, targets: list[Path]) -> list[float]:
    check = subprocess.run([sys.executable, "-c", OPENVINO_CHECK, str(bundle), *map(str, targets)],
                           capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    return [float(line) for line in check.stdout.strip().splitlines()[-len(targets) :]]


def test_openvino_ir_carries_the_preprocessing_and_the_contract_and_agrees_with_pytorch(digits_bundle, tmp_path):
    """--format openvino: model.xml + model.bin beside it, checked against PyTorch like the ONNX
    file, with the class names and where it was checked inside; it answers raw pixels as the
    bundle does. In child processes: OpenVINO loaded into the test process (its own threading
    runtime beside PyTorch's) crashed a later streaming test there."""
    target = tmp_path / "digits.xml"
    export = [sys.executable, "-m", "imgclf", "export", str(digits_bundle), "--format", "openvino", "--output",
              str(target), "--json"]  # fmt: skip
    finished = subprocess.run(export, capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert target.is_file() and target.with_suffix(".bin").is_file()
    assert _openvino_agreements(digits_bundle, [target]) == [pytest.approx(1.0, abs=0.02)]


# What an app does with nothing but the runtime, under qemu as a Haswell: the pixels and the
# bundle's labels are made natively and passed in a file (importing PyTorch and scikit-learn
# under emulation took most of a minute per run); one line out per model: its labels.
EMULATED_OPENVINO = r"""
import sys
import numpy as np
import openvino

pixels = np.load(sys.argv[1])
for target in sys.argv[2:]:
    compiled = openvino.Core().compile_model(target, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    probabilities = next(iter(compiled([pixels]).values()))
    print(" ".join(str(label) for label in np.asarray(probabilities).argmax(1)))
"""

EMULATED_LITERT = r"""
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

pixels = np.load(sys.argv[1])
for target in sys.argv[2:]:
    runner = Interpreter(model_path=target).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    print(" ".join(str(int(runner(**{name: image[None]})["output_1"][0].argmax())) for image in pixels))
"""


def _emulated_agreements(bundle: Path, script: str, targets: list[Path], folder: Path) -> list[float]:
    """The share of 64 digits each of ``targets`` labels as the bundle does, run by ``script``
    under ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA; no AVX-512, VNNI or AMX)."""
    from sklearn.datasets import load_digits

    import imgclf

    pixels = (load_digits().images[:64] * 255 / 16).round().astype(np.uint8)[:, :, :, None]
    expected = imgclf.load(bundle).predict_proba(list(pixels)).argmax(1)
    np.save(folder / "pixels.npy", pixels)
    check = subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", script,
                            str(folder / "pixels.npy"), *map(str, targets)],
                           capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    lines = check.stdout.strip().splitlines()[-len(targets) :]
    return [float(np.mean(np.array(line.split(), dtype=int) == expected)) for line in lines]


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs Debian's qemu-user (make test installs it)")
def test_openvino_irs_answer_the_same_on_an_avx2_only_cpu(digits_bundle, tmp_path):
    """The float and the int8 IR written here, run under qemu as a Haswell: OpenVINO picks other
    kernels there (its int8 ones without VNNI), and the labels must stay the bundle's (both 100%
    here and there)."""
    targets = [tmp_path / "float.xml", tmp_path / "int8.xml"]
    for target, extra in zip(targets, ([], ["--quantize", "int8"])):  # in children, as the test above says why
        export = [sys.executable, "-m", "imgclf", "export", str(digits_bundle), "--format", "openvino", "--output",
                  str(target), *extra]  # fmt: skip
        finished = subprocess.run(export, capture_output=True, text=True, timeout=600, check=False)
        assert finished.returncode == 0, finished.stderr[-2000:]
    agreements = _emulated_agreements(digits_bundle, EMULATED_OPENVINO, targets, tmp_path)
    assert agreements[0] >= 0.98 and agreements[1] >= 0.95, agreements


def test_a_flip_averaged_export_answers_as_predict_tta_flip(given_split_bundle, tmp_path, capsys):
    """``export --tta flip``: the graph averages each image with its mirror image, and its logits
    match ``imgclf.load(bundle, tta="flip")``'s (without the flip they differ on these
    left/right images)."""
    import imgclf

    bundle, data = given_split_bundle
    capsys.readouterr()
    assert main(["export", str(bundle), "--tta", "flip", "--output", str(tmp_path / "flip.onnx"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] == "flip" and result["parity"]["top1_agreement"] >= 0.999
    session = onnxruntime.InferenceSession(str(tmp_path / "flip.onnx"), providers=["CPUExecutionProvider"])
    contract = json.loads(session.get_modelmeta().custom_metadata_map["imgclf.input"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["imgclf.tta"]) == "flip"
    files = sorted((data / "val").rglob("*.png"))[:6]
    with_flip, without = imgclf.load(bundle, tta="flip"), imgclf.load(bundle)
    for file in files:
        with Image.open(file) as image:
            pixels = np.asarray(image.convert("RGB"))
        (probabilities,) = session.run(["probabilities"], {contract["name"]: pixels[None]})
        assert probabilities[0] == pytest.approx(with_flip.predict_proba([file])[0], abs=1e-3)
    plain = np.array([without.predict_proba([file])[0] for file in files])
    flipped = np.array([with_flip.predict_proba([file])[0] for file in files])
    assert np.abs(plain - flipped).max() > 0.01  # the mirror changes these images' answers


def test_the_server_averages_with_the_mirror_when_asked(given_split_bundle, tmp_path):
    """``serve --tta flip`` on a bundle: the same probabilities as ``imgclf.load(bundle, tta="flip")``;
    on an ONNX file the flag is refused (the file does what it was exported with)."""
    import imgclf
    from imgclf.engines import open_engine
    from imgclf.errors import UsageError

    bundle, data = given_split_bundle
    engine = open_engine(bundle, tta="flip")
    assert engine.metadata["tta"] == "flip"
    file = sorted((data / "val").rglob("*.png"))[0]
    prepared = engine.decode(file.read_bytes(), file.name)
    (answer,) = engine.predict([prepared], top_k=3)
    expected = imgclf.load(bundle, tta="flip").predict([file], top_k=3)[0]
    assert answer["top_k"] == expected["top_k"]
    assert main(["export", str(bundle), "--output", str(tmp_path / "m.onnx")]) == 0
    with pytest.raises(UsageError, match="export the ONNX file with --tta flip"):
        open_engine(tmp_path / "m.onnx", tta="flip")


LITERT_CHECK = r"""
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits
import imgclf
from imgclf.export.litert import read_contract

target, bundle = sys.argv[1], sys.argv[2]
data = open(target, "rb").read()
contract = read_contract(data)
assert contract["classes"] == [str(digit) for digit in range(10)], contract["classes"]
size = contract["preprocess"]["input_size"]
assert contract["input"]["shape"] == f"1 x {size} x {size} x 1", contract["input"]
# What an app does with nothing but LiteRT's interpreter: images at the contract's size in.
runner = Interpreter(model_content=data).get_signature_runner()
name = next(iter(runner.get_input_details()))
pixels = (load_digits().images[:64] * 255 / 16).round().astype(np.uint8)
assert pixels.shape[1] == size
labels = [int(runner(**{name: image[None, :, :, None]})["output_1"][0].argmax()) for image in pixels]
expected = imgclf.load(bundle).predict_proba(list(pixels[:, :, :, None])).argmax(1)
print(float(np.mean(np.asarray(labels) == expected)))
"""


def _litert_export(bundle: Path, target: Path, extra: tuple[str, ...] = ()) -> dict:
    export = [sys.executable, "-m", "imgclf", "export", str(bundle), "--format", "tflite", "--output", str(target),
              "--json", *extra]  # fmt: skip
    finished = subprocess.run(export, capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(finished.stdout)
    assert result["litert_parity"]["top1_agreement"] == 1.0  # the float file, checked before any quantizing
    return result


def _litert_agreement(bundle: Path, target: Path) -> float:
    """The share of 64 digits an app with LiteRT's interpreter alone labels as the bundle does."""
    check = subprocess.run([sys.executable, "-c", LITERT_CHECK, str(target), str(bundle)],
                           capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    return float(check.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def litert_files(digits_bundle, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The digits bundle exported to LiteRT in float and in int8, with the int8 export's report."""
    folder = tmp_path_factory.mktemp("litert")
    float_file, int8_file = folder / "digits.tflite", folder / "digits.int8.tflite"
    assert _litert_export(digits_bundle, float_file)["latency_ms"]["batch_1"]["litert"] > 0
    return float_file, int8_file, _litert_export(digits_bundle, int8_file, ("--quantize", "int8"))


def test_a_litert_file_carries_the_contract_and_answers_as_the_bundle(digits_bundle, litert_files):
    """--format tflite: checked against PyTorch at export (refused below 99.9%), the class names
    and the input contract in the file's metadata; an app with LiteRT's interpreter alone gets the
    bundle's labels. In child processes, as OpenVINO: LiteRT brings its own native runtime."""
    assert _litert_agreement(digits_bundle, litert_files[0]) == 1.0


def test_litert_export_refuses_what_it_does_not_build(digits_bundle, capsys):
    assert main(["export", str(digits_bundle), "--format", "tflite", "--layout", "nchw"]) == 2
    assert "--format tflite writes an NHWC file" in capsys.readouterr().err


def test_an_int8_litert_file_reports_its_accuracy_change_and_answers_alike(digits_bundle, litert_files):
    """--format tflite --quantize int8: the float file is checked first, then quantized (dynamic
    range, the classifier in float); its accuracy change is measured and written into the file's
    contract, and an app with LiteRT alone gets (nearly) the bundle's labels. Digits over
    training seeds 0-2: int8 agreed with the bundle on 100% of these 64 images (both CPUs)."""
    from imgclf.export.litert import read_contract

    float_file, target, result = litert_files
    report = result["int8"]
    assert report["method"] == "dynamic range" and abs(report["int8_accuracy"] - report["fp32_accuracy"]) <= 0.02
    assert result["latency_ms"]["batch_1"]["litert_int8"] > 0
    assert target.stat().st_size < float_file.stat().st_size / 2  # int8 weights
    contract = read_contract(target.read_bytes())
    assert contract["quantization"].startswith("int8 dynamic range")
    checked = contract["int8_checked_on"]
    assert checked["int8_accuracy"] == report["int8_accuracy"] and checked["cpu"]
    assert _litert_agreement(digits_bundle, target) >= 0.95


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs Debian's qemu-user (make test installs it)")
def test_litert_files_answer_the_same_on_an_avx2_only_cpu(digits_bundle, litert_files, tmp_path):
    """The float and the int8 file, run under qemu as a Haswell: XNNPACK picks other kernels there
    (its int8 ones too), and the labels must stay the bundle's (float) or nearly (int8)."""
    float_file, int8_file, _ = litert_files
    agreements = _emulated_agreements(digits_bundle, EMULATED_LITERT, [float_file, int8_file], tmp_path)
    assert agreements[0] == 1.0 and agreements[1] >= 0.95, agreements


def test_benchmark_measures_every_format_in_one_table(digits_bundle):
    """imgclf benchmark: each format built as the export builds it, measured on the same
    validation images; in a child process (OpenVINO and LiteRT bring their own runtimes)."""
    command = [sys.executable, "-m", "imgclf", "benchmark", str(digits_bundle), "--json"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = {row["format"]: row for row in json.loads(finished.stdout)["rows"]}
    assert list(rows) == ["pytorch", "onnx", "onnx-int8", "openvino", "openvino-int8", "tflite", "tflite-int8"]
    for row in rows.values():
        assert not row["note"].startswith("not measured"), row
        assert row["size_mb"] > 0 and row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] and row["images_per_s"] > 0
    # float formats answer as the bundle does; int8 and OpenVINO's bf16 may move a near-tie
    assert rows["onnx"]["agreement"] == rows["tflite"]["agreement"] == 1.0
    assert rows["onnx"]["accuracy"] == rows["pytorch"]["accuracy"] == rows["tflite"]["accuracy"]
    for name in ("onnx", "openvino", "tflite"):
        int8 = rows[f"{name}-int8"]
        assert int8["size_mb"] < rows[name]["size_mb"] and int8["agreement"] >= 0.9, (name, int8)


def test_benchmark_refuses_unknown_formats(digits_bundle, capsys):
    assert main(["benchmark", str(digits_bundle), "--formats", "onnx,coreml"]) == 2
    assert "unknown coreml" in capsys.readouterr().err


OPENVINO_FIXED_SIZE_CHECK = r"""
import dataclasses, io, json, sys
from pathlib import Path
import numpy as np
import openvino
import torch
from rich.console import Console
from imgclf.bundle import load_bundle, recorded_data
from imgclf.export.onnx_graph import with_preprocessing
from imgclf.export.openvino_ir import read_contract
from imgclf.export.quantize import quantized_network
from imgclf.runners.export import _contract, _network_proto, _raw_images, _write_openvino

bundle, target = load_bundle(sys.argv[1]), Path(sys.argv[2])
pre, network, temperature = bundle.preprocess, _network_proto(bundle), bundle.description.temperature
val = _raw_images(bundle, recorded_data(bundle), None, "val", 2000)
# A graph whose own preprocessing is not imgclf's (as OpenVINO's antialiased resize is not, on photos):
shifted = dataclasses.replace(pre, mean=tuple(m + 0.3 for m in pre.mean))
drifted = with_preprocessing(network, shifted, "nhwc", temperature)
networks = {False: network}
int8 = None
if sys.argv[3] == "int8":  # the int8 network, calibrated on training images, drifted the same way
    train = _raw_images(bundle, recorded_data(bundle), None, "train", 256)
    calibration = pre.normalize(torch.from_numpy(np.stack([pre.prepare_pixels(p) for p in train.pixels]))).numpy()
    networks[True] = quantized_network(network, calibration)
    int8 = with_preprocessing(networks[True], shifted, "nhwc", temperature)
fixed = lambda quantized: with_preprocessing(networks[quantized], pre, "nhwc", temperature, resize=False)
console = Console(file=io.StringIO())
_, parity, report = _write_openvino(bundle, drifted, _contract(bundle, "nhwc", int8 is not None), target, val, "nhwc",
                                    console, fixed, int8)
model = openvino.Core().read_model(target)
contract = read_contract(model)
print(json.dumps({"agreement": parity["top1_agreement"], "shape": contract["input"]["shape"],
                  "said": "resized first as its contract says" in " ".join(console.file.getvalue().split()),
                  "int8_ops": sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()),
                  "report": report, "checked": contract.get("int8_checked_on")}))
"""


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_openvino_takes_images_at_the_input_size_where_its_resize_disagrees(digits_bundle, tmp_path, precision):
    """OpenVINO's antialiased resize is not imgclf's on photos the graph must shrink: the export
    then writes the IR without the resize (images at the input size in, the contract says how to
    resize first) rather than refusing. Here a graph with drifted preprocessing stands in for the
    disagreeing resize, so the fallback is exercised on any CPU. An int8 IR is checked the same
    way in float, then written from the int8 network without the resize, its accuracy change
    against the float IR measured and kept in its contract."""
    target = tmp_path / "digits.xml"
    check = subprocess.run([sys.executable, "-c", OPENVINO_FIXED_SIZE_CHECK, str(digits_bundle), str(target),
                            precision], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert (result["agreement"], result["shape"], result["said"]) == (1.0, "N x 8 x 8 x 1", True)
    assert target.is_file() and target.with_suffix(".bin").is_file()
    if precision == "float":
        assert result["int8_ops"] == 0 and result["report"] is None and result["checked"] is None
        return
    report = result["report"]
    assert result["int8_ops"] > 0 and report["runtime"] == "OpenVINO"
    assert abs(report["int8_accuracy"] - report["fp32_accuracy"]) <= 0.02 and report["top1_agreement"] >= 0.95
    assert result["checked"]["int8_accuracy"] == report["int8_accuracy"] and result["checked"]["cpu"]
