"""A trained model is a bundle directory that describes itself (ARCHITECTURE.md section 1):

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
from pathlib import Path

import torch
from safetensors.torch import load_file

from imgclf import __version__
from imgclf.data.prepare import Preprocess
from imgclf.engine.checkpoint import atomic_write_bytes, atomic_write_tensors, state_dict_for_saving
from imgclf.errors import BundleError, ImgclfError
from imgclf.models import ImageClassifier, create_model

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "abstain_threshold",
    "bundle_temperature",
    "is_bundle",
    "load_bundle",
    "save_bundle",
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
    _write_json(
        directory / MODEL_FILE,
        {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **description, "versions": versions()},
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
    if int(description.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(
            f"{directory}: bundle format {description['format_version']} is newer than "
            f"this imgclf ({__version__}) reads; upgrade imgclf"
        )
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
