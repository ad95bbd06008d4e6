"""A trained model is a bundle directory that describes itself:

- ``model.safetensors``: the weights, nothing else (nothing is ever unpickled);
- ``model.json``: architecture and its arguments, class names, preprocessing, training
  configuration, data and split description, metrics, versions;
- ``metrics.json``: final validation/test metrics and the per-epoch history;
- ``centroids.safetensors`` (optional): each class's mean embedding, for ``predict`` to abstain
  on images unlike every class (see ``imgclf.explain.calibration``).

``load_bundle`` rebuilds the model and its preprocessing from these files alone.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from imgclf import __version__
from imgclf.data.dataset import BUILTIN_DATASETS, SplitPolicy
from imgclf.data.prepare import Preprocess
from imgclf.engine.checkpoint import state_dict_for_saving
from imgclf.errors import BundleError, ImgclfError
from imgclf.files import atomic_write_bytes, atomic_write_tensors, file_sha256
from imgclf.models import ImageClassifier, create_model

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "abstain_threshold",
    "bundle_temperature",
    "is_bundle",
    "load_bundle",
    "recorded_data",
    "save_bundle",
    "split_policy",
    "versions",
]

BUNDLE_FORMAT = "imgclf-bundle"
FORMAT_VERSION = 1
WEIGHTS_FILE, MODEL_FILE, METRICS_FILE = "model.safetensors", "model.json", "metrics.json"
CENTROIDS_FILE = "centroids.safetensors"


def versions() -> dict:
    return {"imgclf": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _write_json(path: Path, values: dict) -> None:
    atomic_write_bytes(path, (json.dumps(values, indent=2) + "\n").encode("utf-8"))


def save_bundle(
    directory: Path, model: ImageClassifier, description: dict, metrics: dict, centroids: torch.Tensor | None = None
) -> Path:
    """Write the bundle files atomically; ``description`` becomes model.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_tensors(directory / WEIGHTS_FILE, state_dict_for_saving(model), metadata={"format": "pt"})
    if centroids is not None:
        atomic_write_tensors(directory / CENTROIDS_FILE, {"centroids": centroids.contiguous().float()})
    else:
        (directory / CENTROIDS_FILE).unlink(missing_ok=True)  # never pair new weights with old centroids
    _write_json(directory / METRICS_FILE, metrics)
    # model.json comes last and names the digests of the tensor files: a reader that finds it
    # finds the files it describes, and notices when their bytes are not the ones written.
    checksums = {name: file_sha256(directory / name) for name in (WEIGHTS_FILE, CENTROIDS_FILE)
                 if (directory / name).is_file()}  # fmt: skip
    _write_json(
        directory / MODEL_FILE,
        {
            "format": BUNDLE_FORMAT,
            "format_version": FORMAT_VERSION,
            **description,
            "sha256": checksums,
            "versions": versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return directory


def is_bundle(directory: Path) -> bool:
    return (Path(directory) / MODEL_FILE).is_file()


@dataclass
class Bundle:
    path: Path
    model: ImageClassifier  # in eval mode, on the CPU
    preprocess: Preprocess
    classes: list[str]
    description: dict  # model.json
    metrics: dict  # metrics.json (empty if the file is missing)
    centroids: torch.Tensor | None = None  # (classes, embedding size), from centroids.safetensors


def bundle_temperature(bundle: Bundle) -> float:
    """The calibration temperature fitted at training (1.0 for bundles made before calibration)."""
    return float((bundle.description.get("calibration") or {}).get("temperature", 1.0))


def abstain_threshold(bundle: Bundle) -> float | None:
    """The confidence below which ``predict`` withholds a label; None: always answer."""
    value = (bundle.description.get("calibration") or {}).get("abstain_threshold")
    return None if value is None else float(value)


def _read_json(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path.parent}: not a model bundle ({path.name} is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: unreadable ({error})") from None
    if not isinstance(values, dict):
        raise BundleError(f"{path}: unreadable (not a JSON object)")
    return values


MAX_INPUT_SIZE = 2048  # px; a hand-edited 1,000,000 would make the first forward pass allocate 20 GB
MAX_CLASSES = 100_000
RESIZE_MODES = ("shorter_side_center_crop",)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


class _Checker:
    """Checks model.json's values before anything is built from them: every bad value is one
    BundleError naming the file, the key and the value."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, expected: str, value) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise BundleError(f"{self.path}: {key} must be {expected}, not {shown}")

    def integer(self, key: str, value, low: int, high: int) -> int:
        if not _is_int(value) or not low <= value <= high:
            self.fail(key, f"an integer from {low} to {high:,}", value)
        return value

    def number(self, key: str, value, low: float, high: float, low_open: bool = False) -> float:
        if not _is_number(value) or value < low or value > high or (low_open and value == low):
            self.fail(key, f"a number in {'(' if low_open else '['}{low:g}, {high:g}]", value)
        return value

    def mapping(self, key: str, value) -> dict:
        if not isinstance(value, dict):
            self.fail(key, "an object", value)
        return value


def _check_description(path: Path, description: dict) -> None:
    check = _Checker(path)
    if not _is_int(description.get("format_version")) or description["format_version"] < 1:
        check.fail("format_version", "a positive integer", description.get("format_version"))
    if not isinstance(description.get("architecture"), str):
        check.fail("architecture", "a model name", description.get("architecture"))
    kwargs = check.mapping("model_kwargs", description.get("model_kwargs"))
    classes = description.get("classes")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        check.fail("classes", "a list of class names", classes)
    if len(set(classes)) != len(classes):
        check.fail("classes", "unique names", classes)
    num_classes = check.integer("model_kwargs.num_classes", kwargs.get("num_classes"), 2, MAX_CLASSES)
    if num_classes != len(classes):
        check.fail("model_kwargs.num_classes", f"the number of classes ({len(classes)})", num_classes)
    channels = kwargs.get("in_chans", 3)
    if channels not in (1, 3) or not _is_int(channels):
        check.fail("model_kwargs.in_chans", "1 or 3", channels)
    if "input_size" in kwargs:
        check.integer("model_kwargs.input_size", kwargs["input_size"], 1, MAX_INPUT_SIZE)
    for key in ("drop_rate", "drop_path_rate"):
        if kwargs.get(key) is not None:
            check.number(f"model_kwargs.{key}", kwargs[key], 0.0, 0.99)
    _check_preprocess(check, check.mapping("preprocess", description.get("preprocess")), channels)
    calibration = description.get("calibration")
    if calibration is not None:
        _check_calibration(check, check.mapping("calibration", calibration))


def _check_preprocess(check: _Checker, preprocess: dict, channels: int) -> None:
    size = check.integer("preprocess.input_size", preprocess.get("input_size"), 1, MAX_INPUT_SIZE)
    if preprocess.get("channels") != channels:
        check.fail("preprocess.channels", f"the model's in_chans ({channels})", preprocess.get("channels"))
    for key in ("mean", "std"):
        values = preprocess.get(key)
        if not isinstance(values, list) or len(values) != channels:
            check.fail(f"preprocess.{key}", f"a list of {channels} number(s)", values)
        for value in values:
            check.number(f"preprocess.{key}", value, -10.0 if key == "mean" else 0.0, 10.0, low_open=key == "std")
    if preprocess.get("resize", RESIZE_MODES[0]) not in RESIZE_MODES:
        check.fail("preprocess.resize", " or ".join(RESIZE_MODES), preprocess.get("resize"))
    if preprocess.get("resize_size") is not None:
        check.integer("preprocess.resize_size", preprocess["resize_size"], size, 2 * MAX_INPUT_SIZE)


def _check_calibration(check: _Checker, calibration: dict) -> None:
    check.number("calibration.temperature", calibration.get("temperature", 1.0), 0.0, 1000.0, low_open=True)
    if calibration.get("abstain_threshold") is not None:
        check.number("calibration.abstain_threshold", calibration["abstain_threshold"], 0.0, 1.0)
    if calibration.get("abstain_distance_threshold") is not None:
        check.number("calibration.abstain_distance_threshold", calibration["abstain_distance_threshold"], 0.0, 4.0)


def _check_digests(directory: Path, description: dict) -> None:
    """The tensor files hold the bytes model.json says were written (bundles from before digests
    were recorded have none to check)."""
    recorded = description.get("sha256") or {}
    if not isinstance(recorded, dict):
        raise BundleError(f"{directory / MODEL_FILE}: sha256 must be an object of file digests")
    for name in (WEIGHTS_FILE, CENTROIDS_FILE):
        path = directory / name
        if name in recorded and path.is_file() and file_sha256(path) != recorded[name]:
            raise BundleError(
                f"{path}: damaged or replaced (its SHA-256 differs from the one model.json recorded when it "
                "was written)"
            )


def _build_model(directory: Path, description: dict) -> ImageClassifier:
    try:
        model = create_model(description["architecture"], **description["model_kwargs"])
    except (KeyError, TypeError) as error:
        raise BundleError(f"{directory / MODEL_FILE}: incomplete model description ({error})") from None
    except ImgclfError as error:
        raise BundleError(f"{directory / MODEL_FILE}: {error}") from None
    try:
        weights = load_file(str(directory / WEIGHTS_FILE))
    except FileNotFoundError:
        raise BundleError(f"{directory}: not a model bundle ({WEIGHTS_FILE} is missing)") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise BundleError(f"{directory / WEIGHTS_FILE}: unreadable weights ({error})") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise BundleError(f"{directory / WEIGHTS_FILE}: weights do not fit the architecture ({first})") from None
    return model.eval()


def load_bundle(directory: str | Path) -> Bundle:
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory")
    description = _read_json(directory / MODEL_FILE)
    if description.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{directory / MODEL_FILE}: not an imgclf bundle description")
    version = description.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise BundleError(
            f"{directory}: bundle format {version} is newer than this imgclf ({__version__}) reads; upgrade imgclf"
        )
    _check_description(directory / MODEL_FILE, description)
    _check_digests(directory, description)
    model = _build_model(directory, description)
    try:
        preprocess = Preprocess.from_dict(description["preprocess"])
        classes = list(description["classes"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{directory / MODEL_FILE}: incomplete preprocessing or classes ({error})") from None
    metrics_path = directory / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.exists() else {}
    return Bundle(directory, model, preprocess, classes, description, metrics, _read_centroids(directory, classes))


def _read_centroids(directory: Path, classes: list[str]) -> torch.Tensor | None:
    path = directory / CENTROIDS_FILE
    if not path.is_file():
        return None
    try:
        centroids = load_file(str(path))["centroids"]
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise BundleError(f"{path}: unreadable ({error})") from None
    if centroids.ndim != 2 or centroids.shape[0] != len(classes):
        raise BundleError(f"{path}: holds {tuple(centroids.shape)} centroids for {len(classes)} classes")
    return centroids


def split_policy(description: dict) -> SplitPolicy:
    """The split the bundle was trained with, so imgclf remakes the same test set."""
    split = description.get("data", {}).get("split", {})
    training = description.get("training", {})
    return SplitPolicy(
        seed=int(split.get("seed", training.get("seed", 0))),
        val_fraction=float(split.get("val_fraction", training.get("val_fraction", 0.1))),
        test_fraction=float(split.get("test_fraction", training.get("test_fraction", 0.1))),
    )


def recorded_data(bundle: Bundle) -> str | None:
    """The data the bundle was trained on, when it can still be read from here."""
    source = bundle.description.get("data", {}).get("source")
    if source and (source in BUILTIN_DATASETS or Path(source).exists()):
        return source
    return None
