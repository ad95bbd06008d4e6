"""``model.json``: what a bundle is, read, checked and written in one place.

``BundleDescription`` is the only code that knows model.json's keys: readers use its accessors
(the architecture, the classes, the preprocessing, calibration, provenance, the split it was
trained on), and the bundle writer turns it back into JSON. Nested records keep the schema of
the code that wrote them (``data``: ``runners.train.data.describe_data``; ``calibration``:
``explain.calibration``; ``kept``: the training stages' decision; ``advisor``: the advisor's
answer) and are handed out whole, as read-only copies.

Every value something is built from is checked before use: a bad one is one BundleError naming
the file, the key and the value (a hand-edited or damaged model.json never reaches a traceback).
Bundles written by earlier versions load: a missing calibration means temperature 1 and no
abstaining, a missing ``created`` date is None.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from imgclf.data.dataset import MULTI_LABEL, SINGLE_LABEL, TASKS, SplitPolicy
from imgclf.data.prepare import Preprocess
from imgclf.errors import BundleError

__all__ = ["BUNDLE_FORMAT", "FORMAT_VERSION", "MODEL_FILE", "BundleDescription"]

BUNDLE_FORMAT = "imgclf-bundle"
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
MAX_INPUT_SIZE = 2048  # px; a hand-edited 1,000,000 would make the first forward pass allocate 20 GB
MAX_CLASSES = 100_000
RESIZE_MODES = ("shorter_side_center_crop",)
# What the report shows as the run's configuration.
CONFIGURATION_SECTIONS = ("training", "augmentation", "preprocess", "pretrained")


class BundleDescription:
    """A bundle's model.json, checked; built for a new bundle with ``BundleDescription(values)``
    (the writer adds the format, digests, versions and date) or read with ``read``."""

    def __init__(self, values: dict):
        self._values = copy.deepcopy(values)

    @classmethod
    def read(cls, path: Path) -> BundleDescription:
        """model.json at ``path``, its format, version and every value checked."""
        from imgclf import __version__

        values = read_json_object(path)
        if values.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path}: not an imgclf bundle description")
        version = values.get("format_version")
        if _is_int(version) and version > FORMAT_VERSION:
            raise BundleError(f"{path.parent}: bundle format {version} is newer than this imgclf ({__version__}) "
                              "reads; upgrade imgclf")  # fmt: skip
        _check_description(path, values)
        return cls(values)

    def to_json(self, **written: object) -> dict:
        """The values to write, with the format first and ``written`` (digests, versions, date) last."""
        return {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **self._values, **written}

    def _get(self, key: str, default=None):
        value = self._values.get(key)
        return default if value is None else copy.deepcopy(value)

    # What the model is.
    @property
    def architecture(self) -> str:
        return self._values["architecture"]

    @property
    def model_kwargs(self) -> dict:
        return self._get("model_kwargs", {})

    @property
    def classes(self) -> list[str]:
        return list(self._values["classes"])

    @property
    def params(self) -> int | None:
        return self._values.get("params")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self._values["preprocess"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the model's input."""
        size = self._values["preprocess"]["input_size"]
        return self._values["preprocess"]["channels"], size, size

    # How it decides.
    @property
    def task(self) -> str:
        """ "single-label" (one class per image, softmax) or "multi-label" (any number of labels,
        a sigmoid per label); bundles from before multi-label are single-label."""
        return self._values.get("task", SINGLE_LABEL)

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def label_temperatures(self) -> list[float]:
        """Multi-label: each label's temperature (probability = sigmoid(logit / T))."""
        return [float(t) for t in self.calibration.get("temperatures") or [1.0] * len(self.classes)]

    @property
    def label_thresholds(self) -> list[float]:
        """Multi-label: each label's probability threshold (a label is given at or above it)."""
        return [float(p) for p in self.calibration.get("thresholds") or [0.5] * len(self.classes)]

    @property
    def calibration(self) -> dict:
        """The calibration record (temperature, the abstain rule and what they were fitted on); {}: none."""
        return self._get("calibration", {})

    @property
    def temperature(self) -> float:
        """The calibration temperature fitted at training (1.0 for bundles made before calibration)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def abstain_threshold(self) -> float | None:
        """The confidence below which a prediction withholds its label; None: always answer."""
        return self._calibration_number("abstain_threshold")

    @property
    def abstain_distance_threshold(self) -> float | None:
        """The embedding distance beyond which an image is flagged as unlike the training data."""
        return self._calibration_number("abstain_distance_threshold")

    def _calibration_number(self, key: str) -> float | None:
        value = self.calibration.get(key)
        return None if value is None else float(value)

    # Where it came from.
    @property
    def pretrained(self) -> dict | None:
        """The starting weights (source, file, finetune mode); None: random initialization."""
        return self._get("pretrained")

    @property
    def pretrained_source(self) -> str | None:
        return (self.pretrained or {}).get("source")

    @property
    def finetune(self) -> str | None:
        return (self.pretrained or {}).get("finetune")

    @property
    def created(self) -> str | None:
        return self._values.get("created")

    @property
    def versions(self) -> dict:
        return self._get("versions", {})

    @property
    def seconds(self) -> float | None:
        return self._values.get("seconds")

    @property
    def training(self) -> dict:
        """The resolved training configuration, with the epochs, rates and device that ran."""
        return self._get("training", {})

    @property
    def training_device(self) -> str:
        return str(self.training.get("device", "?"))

    @property
    def summary(self) -> dict:
        """The run's headline numbers: val/test/cross-validated accuracy and what validation chose."""
        return self._get("metrics", {})

    @property
    def data(self) -> dict:
        """What the data was (source, kind, sizes, split, class counts, skipped files, warnings)."""
        return self._get("data", {})

    @property
    def data_source(self) -> str | None:
        return self.data.get("source")

    @property
    def kept(self) -> dict | None:
        """A run from a linear probe: the probe against fine-tuning, and which was kept."""
        return self._get("kept")

    @property
    def advisor(self) -> dict | None:
        """The advisor's answer when it chose the model; None when the user did."""
        return self._get("advisor")

    def configuration(self) -> dict:
        """The run's recipe as the report shows it."""
        return {key: self._get(key) for key in CONFIGURATION_SECTIONS}

    def split_policy(self) -> SplitPolicy:
        """The split the bundle was trained with, so imgclf remakes the same test set."""
        split, training = self.data.get("split", {}), self.training
        return SplitPolicy(
            seed=int(split.get("seed", training.get("seed", 0))),
            val_fraction=float(split.get("val_fraction", training.get("val_fraction", 0.1))),
            test_fraction=float(split.get("test_fraction", training.get("test_fraction", 0.1))),
        )

    def split_fingerprint(self, split: str) -> str | None:
        """The fingerprint of a split's file list at training time (None: not recorded)."""
        return self.data.get("split", {}).get("fingerprints", {}).get(split)

    def recorded_digests(self) -> dict:
        """SHA-256 of the tensor files, as written (none in bundles from before digests)."""
        return self._get("sha256", {})


def read_json_object(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path.parent}: not a model bundle ({path.name} is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: unreadable ({error})") from None
    if not isinstance(values, dict):
        raise BundleError(f"{path}: unreadable (not a JSON object)")
    return values


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
    if description.get("task", SINGLE_LABEL) not in TASKS:
        check.fail("task", " or ".join(TASKS), description.get("task"))
    calibration = description.get("calibration")
    if calibration is not None:
        _check_calibration(check, check.mapping("calibration", calibration))
        if description.get("task") == MULTI_LABEL:
            _check_label_calibration(check, calibration, len(classes))
    if description.get("sha256") is not None:
        check.mapping("sha256", description["sha256"])


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


def _check_label_calibration(check: _Checker, calibration: dict, labels: int) -> None:
    for key, low, high in (("temperatures", 0.0, 1000.0), ("thresholds", 0.0, 1.0)):
        values = calibration.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != labels:
            check.fail(f"calibration.{key}", f"a list of {labels} numbers (one per label)", values)
        for value in values:
            check.number(f"calibration.{key}", value, low, high, low_open=key == "temperatures")
