"""Training configuration: one dataclass, defaults < preset < config file < given options, resolved
in one place (``resolve``) for the command line and the Python API.

Unknown keys are errors (a typo must not silently train with a default).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from imgclf.errors import UsageError

__all__ = ["PRESETS", "Resolved", "TrainConfig", "load_config_file", "parse_duration", "preset_values", "resolve"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
# --augment: "auto", "none", or these parts joined by "+" (at most one of mixup and cutmix)
AUGMENTATION_PARTS = ("flip", "translate", "erase", "jitter", "trivial", "mixup", "cutmix")
CLASS_WEIGHTS = ("none", "balanced")
FINETUNE_MODES = ("full", "head", "linear-probe", "two-stage", "anytime")
LOG_KINDS = ("tensorboard", "mlflow")


@dataclass
class TrainConfig:
    model: str = "simple_cnn"
    epochs: int | None = None  # None: about 30,000 images seen, 3 to 30 epochs
    time_budget: float | None = None  # seconds for the whole run; epochs planned from measured speed
    batch_size: int = 128
    optimizer: str = "sgd"  # SGD with Nesterov momentum, or AdamW
    lr: float | None = None  # peak learning rate; None: 0.2 (SGD) or 2e-3 (AdamW) per 256 images
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW; never on norms/biases
    schedule: str = "onecycle"  # linear warmup then cosine decay; or cosine (short warmup); constant
    warmup_fraction: float | None = None  # share of all steps; None: 0.25 one-cycle, 0.05 cosine
    # None: 0.1 (Szegedy et al. 2016) when imgclf chooses the model itself and trains it from
    # scratch (on digits, test accuracy over seeds 0-4 went from 0.955-0.994 to 0.983-0.994, and
    # 0.983-1.0 with ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41); 0 for a model you name.
    label_smoothing: float | None = None
    class_weights: str = "none"  # "balanced": weight each class by n / (classes * count)
    early_stopping: int = 0  # stop after this many epochs without a better val accuracy; 0: off
    grad_clip: float = 0.0  # max gradient norm; 0: off
    drop_rate: float | None = None  # dropout before the classifier; None: the model's default
    ema: float = 0.0  # decay per step of an exponential moving average of the weights; 0: off
    drop_path: float = 0.0  # residual nets: chance of skipping the last block's branch (stochastic depth)
    augment: str = "auto"
    input_size: int | None = None  # None: chosen from the data and the model
    seed: int = 0  # seeds the weights, the shuffling, the augmentation and the split
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    threads: int | None = None  # CPU threads for PyTorch; None: PyTorch's default
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the training forward pass (its compile time counts)
    workers: int = 2  # decoding threads/processes
    max_memory_gb: float = 4.0  # decoded data above this streams from disk instead
    checkpoint_every_epoch: bool = True
    checkpoint_interval: float = 600.0  # seconds between mid-epoch checkpoints (0: at epoch ends only)
    sync_batchnorm: bool = False  # with several processes: batch statistics over the global batch
    pretrained: str | None = None  # "default": the model's built-in ImageNet weights; or a file
    # With pretrained weights: full, head, linear-probe, two-stage, or anytime (two-stage whose
    # fine-tuning runs only where the time left and the probe say it may pay; runners/train_stages).
    finetune: str = "full"
    # Linear probe: also embed the mirrored training images as extra views (kept where cross-validation
    # says they help). Off by default: on three photo folders cross-validation never kept them, and
    # they cost a third more time.
    probe_mirror: bool = False
    # Two-stage: train the stem and the first quarter of the stages too (by default they stay frozen:
    # general features, and the costliest part of the backward pass; engine/plan.plan_stages).
    unfreeze_all: bool = False
    max_train_per_class: int | None = None  # keep at most this many training images per class
    strict: bool = False  # fail on the first file that cannot be used, instead of skipping it
    max_bad_fraction: float = 0.1  # abort when more than this share of the files cannot be used
    preset: str = "none"  # "fast": the recipe of preset_values("fast"), recorded here
    # Run logs besides metrics.csv: "tensorboard", "mlflow" or both joined by ","; None: none.
    log: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _check_augment(self.augment)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _choice("finetune", self.finetune, FINETUNE_MODES)
        _choice("preset", self.preset, PRESETS)
        for kind in self.log_kinds():
            _choice("log", kind, LOG_KINDS)
        if self.finetune != "full" and self.pretrained is None:
            raise UsageError(f"--finetune {self.finetune} needs --pretrained (weights to start from)")
        if self.unfreeze_all and not self.starts_from_probe:
            raise UsageError(f"--unfreeze-all applies to --finetune two-stage or anytime, not {self.finetune}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise UsageError(f"--max-bad-fraction must be in [0, 1], not {self.max_bad_fraction}")
        if not self.checkpoint_interval >= 0:  # also refuses NaN
            raise UsageError(f"--checkpoint-interval must be 0 or more seconds, not {self.checkpoint_interval}")
        if self.max_train_per_class is not None:
            _positive("max_train_per_class", self.max_train_per_class)
        _positive("batch_size", self.batch_size)
        if self.epochs is not None:
            _positive("epochs", self.epochs)
        if self.time_budget is not None:
            if self.epochs is not None:
                raise UsageError("give --epochs or --time-budget, not both")
            if not self.time_budget > 0:
                raise UsageError(f"--time-budget must be positive, not {self.time_budget}")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"--lr must be above 0, not {self.lr}")
        if not 0.0 <= self.drop_path < 1.0:
            raise UsageError(f"--drop-path must be in [0, 1), not {self.drop_path}")
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"--ema must be in [0, 1) (a decay such as 0.999; 0: off), not {self.ema}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 0.5), not {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def starts_from_probe(self) -> bool:
        """Fine-tuning that starts from a linear probe's head (LP-FT) and never ships below it."""
        return self.finetune in ("two-stage", "anytime")

    def log_kinds(self) -> tuple[str, ...]:
        return tuple(kind.strip() for kind in (self.log or "").split(",") if kind.strip())

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def resolved_lr(self, processes: int = 1) -> float:
        """Peak learning rate: the given one, or 0.2 (SGD) / 2e-3 (AdamW) per 256 images of the
        global batch (batch_size x processes; 0.1 at batch 128, the CIFAR ResNet rate of He et
        al. 2016, scaled linearly as Goyal et al. 2017 do); a tenth of that when pretrained
        layers are trained too (full fine-tuning keeps what ImageNet taught)."""
        if self.lr is not None:
            return self.lr
        per_256 = 0.2 if self.optimizer == "sgd" else 2e-3
        if self.pretrained is not None and self.finetune == "full":
            per_256 /= 10
        return per_256 * self.batch_size * processes / 256

    def resolved_label_smoothing(self) -> float:
        return 0.0 if self.label_smoothing is None else self.label_smoothing

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.05

    def resolved_warmup_fraction(self) -> float:
        if self.warmup_fraction is not None:
            return self.warmup_fraction
        return {"onecycle": 0.25, "cosine": 0.05, "constant": 0.0}[self.schedule]


PRESETS = ("none", "fast")
FAST_PRESET_MAX_SIZE = 64  # px: the fast preset's network pools 8x; larger images need another model


def preset_values(name: str, cuda: bool) -> dict:
    """Training options a preset sets (options given on the command line or in a config file
    override them). "fast", for images of 64 px and below, after the CIFAR-10 speed records
    (Page 2018; Jordan 2024): a compact residual network (``fastnet``, half as wide on CPUs),
    large batches, label smoothing 0.2 and an exponential moving average of the weights; the
    automatic augmentation (flips and 4 px shifts for colour images); 10 epochs unless
    --epochs or --time-budget says otherwise."""
    _choice("preset", name, PRESETS)
    if name == "none":
        return {}
    return {
        "model": "fastnet" if cuda else "fastnet_small",
        "batch_size": 512 if cuda else 256,
        "label_smoothing": 0.2,
        "ema": 0.99,
        "preset": "fast",
    }


def parse_duration(text: str | float | int) -> float:
    """Seconds from "90", "90s", "10m", "1.5h" (or a number)."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*", str(text).lower())
        if match is None:
            raise UsageError(f"--time-budget must look like 90s, 10m or 1.5h, not {text!r}")
        unit = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[match.group(2) or "s"]
        seconds = float(match.group(1)) * unit
    if not seconds > 0 or not math.isfinite(seconds):
        raise UsageError(f"--time-budget must be positive, not {text!r}")
    return seconds


def _check_augment(mode: str) -> None:
    if mode in ("auto", "none"):
        return
    parts = mode.split("+")
    unknown = [part for part in parts if part not in AUGMENTATION_PARTS]
    if unknown or len(set(parts) & {"mixup", "cutmix"}) > 1:
        raise UsageError(
            f"--augment must be auto, none, or parts joined by '+' from {', '.join(AUGMENTATION_PARTS)} "
            f"(at most one of mixup and cutmix), not {mode!r}"
        )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, not {value!r}")


def _positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}")


def load_config_file(path: str | Path) -> dict:
    """Options from a YAML (``.yaml``, ``.yml``) or JSON file, keys as in TrainConfig (or as the
    command-line options, ``time-budget`` or ``time_budget``); the command line overrides them.
    Unknown keys are refused, naming the key and the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"{path}: cannot read config file ({error.strerror or error})") from None
    values = _parse_config_text(path, text)
    if not isinstance(values, dict):
        raise UsageError(f"{path}: a config file holds keys and values (a mapping), not {type(values).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    known = {field.name for field in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        close = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        hints = [f"{key}" + (f" (did you mean {close[key][0]}?)" if close[key] else "") for key in unknown]
        raise UsageError(f"{path}: unknown key(s): {', '.join(hints)}")
    return values


def _parse_config_text(path: Path, text: str):
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise UsageError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from None


PRESET_EPOCHS = 10  # a preset's run without epochs or a time budget
# Options that mean the user chose what to train; without any of them imgclf chooses.
CHOOSING_OPTIONS = ("model", "preset", "pretrained", "finetune")


@dataclass(frozen=True)
class Resolved:
    """A run's configuration as resolved from what the user gave, and whether imgclf chooses
    the model (nothing in ``CHOOSING_OPTIONS`` was given)."""

    config: TrainConfig
    choose_model: bool


def resolve(options: dict | None = None, config_file: str | Path | None = None) -> Resolved:
    """The one place options become a ``TrainConfig``, for the command line and the Python API
    alike: a config file's values, under ``options`` (None values are "not given"); a preset's
    recipe under both (it depends on whether a GPU is used); ``pretrained=True`` meaning the
    model's built-in weights; durations such as "90s" or "10m" parsed."""
    values = load_config_file(config_file) if config_file is not None else {}
    values.update({key: value for key, value in (options or {}).items() if value is not None})
    choose_model = not set(CHOOSING_OPTIONS) & set(values)
    if values.get("pretrained") is True:
        values["pretrained"] = "default"  # the model's built-in ImageNet weights
    elif values.get("pretrained") is False:
        values.pop("pretrained")
    preset = values.get("preset", "none")
    if preset != "none":  # the preset's recipe, under what the user gave
        values = {**preset_values(preset, _wants_cuda(values.get("device", "auto"))), **values}
        if values.get("epochs") is None and values.get("time_budget") is None:
            values["epochs"] = PRESET_EPOCHS
    if values.get("time_budget") is not None:
        values["time_budget"] = parse_duration(values["time_budget"])
    return Resolved(TrainConfig.from_dict(values), choose_model)


def _wants_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch  # only a preset asks, and only then is torch worth importing here

    return torch.cuda.is_available()
