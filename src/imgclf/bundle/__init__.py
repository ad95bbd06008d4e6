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
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from imgclf import __version__
from imgclf.bundle.description import BUNDLE_FORMAT, MODEL_FILE, BundleDescription, read_json_object
from imgclf.data.dataset import BUILTIN_DATASETS
from imgclf.data.prepare import Preprocess
from imgclf.engine.checkpoint import state_dict_for_saving
from imgclf.errors import BundleError, ImgclfError
from imgclf.files import atomic_write_bytes, atomic_write_tensors, file_sha256
from imgclf.models import ImageClassifier, create_model

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleDescription",
    "is_bundle",
    "load_bundle",
    "recorded_data",
    "save_bundle",
    "versions",
]

WEIGHTS_FILE, METRICS_FILE = "model.safetensors", "metrics.json"
CENTROIDS_FILE = "centroids.safetensors"


def versions() -> dict:
    return {"imgclf": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _write_json(path: Path, values: dict) -> None:
    atomic_write_bytes(path, (json.dumps(values, indent=2) + "\n").encode("utf-8"))


def save_bundle(
    directory: Path,
    model: ImageClassifier,
    description: BundleDescription,
    metrics: dict,
    centroids: torch.Tensor | None = None,
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
    written = {"sha256": checksums, "versions": versions(),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    _write_json(directory / MODEL_FILE, description.to_json(**written))
    return directory


def is_bundle(directory: Path) -> bool:
    return (Path(directory) / MODEL_FILE).is_file()


@dataclass
class Bundle:
    path: Path
    model: ImageClassifier  # in eval mode, on the CPU
    preprocess: Preprocess
    classes: list[str]
    description: BundleDescription  # model.json
    metrics: dict  # metrics.json (empty if the file is missing)
    centroids: torch.Tensor | None = None  # (classes, embedding size), from centroids.safetensors


def _check_digests(directory: Path, description: BundleDescription) -> None:
    """The tensor files hold the bytes model.json says were written (bundles from before digests
    were recorded have none to check)."""
    recorded = description.recorded_digests()
    for name in (WEIGHTS_FILE, CENTROIDS_FILE):
        path = directory / name
        if name in recorded and path.is_file() and file_sha256(path) != recorded[name]:
            raise BundleError(
                f"{path}: damaged or replaced (its SHA-256 differs from the one model.json recorded when it "
                "was written)"
            )


def _build_model(directory: Path, description: BundleDescription) -> ImageClassifier:
    try:
        model = create_model(description.architecture, **description.model_kwargs)
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
    description = BundleDescription.read(directory / MODEL_FILE)
    _check_digests(directory, description)
    model = _build_model(directory, description)
    try:
        preprocess, classes = description.preprocess, description.classes
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{directory / MODEL_FILE}: incomplete preprocessing or classes ({error})") from None
    metrics_path = directory / METRICS_FILE
    metrics = read_json_object(metrics_path) if metrics_path.exists() else {}
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


def recorded_data(bundle: Bundle) -> str | None:
    """The data the bundle was trained on, when it can still be read from here."""
    source = bundle.description.data_source
    if source and (source in BUILTIN_DATASETS or Path(source).exists()):
        return source
    return None
