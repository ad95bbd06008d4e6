"""Training configuration: one dataclass whose fields declare each option once (type, range, help
text and default, the command line is built from them), resolved in one place (``resolve``) for
the command line and the Python API: defaults < preset < config file < given options.

Every value is checked by type and range in ``check_option``, whichever way it arrives (command
line, YAML/JSON file, Python API, a bundle's ``config.yaml``, a training state): one line naming
the option (and the file), the bad value, and exit 2 before any data is read. Unknown keys are
errors (a typo must not silently train with a default).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from imgclf.errors import UsageError

__all__ = [
    "PRESETS",
    "Option",
    "Resolved",
    "TrainConfig",
    "check_option",
    "load_config_file",
    "parse_duration",
    "preset_values",
    "resolve",
    "train_options",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
# --augment: "auto", "none", or these parts joined by "+" (at most one of mixup and cutmix)
AUGMENTATION_PARTS = ("flip", "translate", "erase", "jitter", "trivial", "mixup", "cutmix")
CLASS_WEIGHTS = ("none", "balanced")
FINETUNE_MODES = ("full", "head", "linear-probe", "two-stage", "anytime")
LOG_KINDS = ("tensorboard", "mlflow")
PRESETS = ("none", "fast")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


# How ``imgclf suggest`` chooses images to label (engine.active; measured in BENCHMARKS.md).
SUGGEST_STRATEGIES = ("typical", "typical-unsure", "weighted", "uncertainty", "diverse", "random")


@dataclass(frozen=True)
class Option:
    """What one training option is: its type, the values it may take, and its help text.

    ``low``/``high`` bound numbers (``open_high``: the high end itself is not allowed);
    ``optional``: None means "imgclf chooses" (``default_help`` says what); ``cli``: how the
    command line gives it ("value", "flag" for a switch that turns it on, "off-flag" for one that
    turns it off, "none" for options only a file or the API sets)."""

    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    open_high: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    default_help: str | None = None
    cli: str = "value"
    flag: str | None = None
    metavar: str | None = None
    # For text options with a grammar: returns what the value must be when it is not (else None).
    rule: object = None

    def describe_range(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"in [{_number(self.low)}, {_number(self.high)}{')' if self.open_high else ']'}"
        if self.low is not None:
            return "at least 1" if self.kind is int and self.low == 1 else f"{_number(self.low)} or more"
        return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}[self.kind]


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def option(default, kind: type, help: str, **spec):
    """A TrainConfig field declared with its option's type, range and help (see ``Option``)."""
    return field(default=default, metadata={"option": Option(kind=kind, help=help, **spec)})


def check_option(name: str, value, where: str = ""):
    """``value`` converted to the option's type and checked against its range, or a UsageError that
    names the option (``where``: the file it came from) and the value. Numbers may arrive as text
    (the command line; YAML reads ``1e-9`` as a string); a whole-valued float is a whole number."""
    spec = OPTIONS[name]
    label = f"{where}: {name}" if where else f"--{name.replace('_', '-')}"
    if value is None:
        if spec.optional:
            return None
        raise UsageError(f"{label} needs a value ({spec.describe_range()}), not null")
    converted = _converted(spec.kind, value)
    if converted is None:
        kind = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}[spec.kind]
        raise UsageError(f"{label} must be {kind}, not {_shown_value(value)}")
    if spec.kind in (int, float) and not _within(spec, converted):
        raise UsageError(f"{label} must be {spec.describe_range()}, not {_number(converted)}")
    if spec.choices and converted not in spec.choices:
        raise UsageError(f"{label} must be {spec.describe_range()}, not {_shown_value(value)}")
    wanted = spec.rule(converted) if spec.rule is not None else None
    if wanted:
        raise UsageError(f"{label} must be {wanted}, not {_shown_value(value)}")
    return converted


def _converted(kind: type, value):
    if isinstance(value, bool):
        return value if kind is bool else None  # True is not the number 1 in a recipe
    if kind is bool:
        return None
    if kind is str:
        return value if isinstance(value, str) and value.strip() else None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    if kind is int:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return None
        return int(value)
    return float(value)


def _within(spec: Option, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if spec.low is not None and value < spec.low:
        return False
    return spec.high is None or value < spec.high or (value == spec.high and not spec.open_high)


def _shown_value(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _augment_rule(mode: str) -> str | None:
    if mode in ("auto", "none"):
        return None
    parts = mode.split("+")
    unknown = [part for part in parts if part not in AUGMENTATION_PARTS]
    if unknown or len(set(parts) & {"mixup", "cutmix"}) > 1:
        return (f"auto, none, or parts joined by '+' from {', '.join(AUGMENTATION_PARTS)} "
                "(at most one of mixup and cutmix)")  # fmt: skip
    return None


def _log_rule(kinds: str) -> str | None:
    given = [kind.strip() for kind in kinds.split(",") if kind.strip()]
    if not given or any(kind not in LOG_KINDS for kind in given):
        return f"{', '.join(LOG_KINDS)} or both joined by ','"
    return None


def _model_rule(name: str) -> str | None:
    from imgclf.models import get_model_spec  # the zoo's registry: torch loads only when a recipe is checked

    try:
        get_model_spec(name)
    except UsageError as error:  # "unknown model 'resnet81'; did you mean resnet18?"
        return f"a model from `imgclf models` ({error})"
    return None


def _device_rule(device: str) -> str | None:
    return None if DEVICE_PATTERN.fullmatch(device) else "auto, cpu, cuda or cuda:N"


@dataclass
class TrainConfig:
    """One run's recipe. Each field declares its option once: the command line's help and the
    checks are built from it."""

    model: str = option("simple_cnn", str, "model name from `imgclf models`", rule=_model_rule,
                        default_help="with --time-budget, the one `imgclf advise` recommends for the budget; "
                        "else simple_cnn")  # fmt: skip
    epochs: int | None = option(None, int, "epochs to train", low=1, high=100_000, optional=True,
                                default_help="about 30,000 images seen, 3 to 30")  # fmt: skip
    # Run logs besides metrics.csv; None: none.
    log: str | None = option(None, str, "also log the run to tensorboard (event files in the bundle's tensorboard/ "
                             "folder), mlflow (MLflow's tracking store: MLFLOW_TRACKING_URI, else ./mlruns) or both: "
                             "tensorboard,mlflow (metrics.csv is always written)", optional=True,
                             rule=_log_rule)  # fmt: skip
    preset: str = option("none", str, "fast: the recipe for small images (64 px and below) after the CIFAR-10 speed "
                         "records: fastnet, large batches, label smoothing, weight averaging, 10 epochs; options you "
                         "give override it", choices=PRESETS, default_help="")  # fmt: skip
    # Seconds for the whole run; epochs planned from the measured speed.
    time_budget: float | None = option(None, float, "finish the whole run within this time (90s, 10m, 1.5h): epochs "
                                       "and schedule planned from a warm-up", low=1e-3, high=30 * 24 * 3600.0,
                                       optional=True, default_help="")  # fmt: skip
    batch_size: int = option(128, int, "images per step", low=1, high=65_536)
    optimizer: str = option("sgd", str, "sgd (Nesterov momentum) or adamw", choices=OPTIMIZERS)
    # Peak learning rate; None: 0.2 (SGD) or 2e-3 (AdamW) per 256 images (resolved_lr).
    lr: float | None = option(None, float, "peak learning rate", low=1e-9, high=100.0, optional=True,
                              default_help="0.2 for SGD, 2e-3 for AdamW, per 256 images")  # fmt: skip
    momentum: float = option(0.9, float, "SGD momentum (Nesterov)", low=0.0, high=1.0, open_high=True, cli="none")
    weight_decay: float | None = option(None, float, "weight decay, never on norms and biases", low=0.0, high=1.0,
                                        open_high=True, optional=True,
                                        default_help="5e-4 SGD, 0.05 AdamW")  # fmt: skip
    # onecycle: linear warmup then cosine decay; cosine: a short warmup; constant.
    schedule: str = option("onecycle", str, "onecycle, cosine or constant", choices=SCHEDULES)
    # Share of all steps; None: 0.25 one-cycle, 0.05 cosine.
    warmup_fraction: float | None = option(None, float, "share of the steps spent warming up", low=0.0, high=1.0,
                                           open_high=True, optional=True, cli="none")  # fmt: skip
    # None: 0.1 (Szegedy et al. 2016) when imgclf chooses the model itself and trains it from
    # scratch (on digits, test accuracy over seeds 0-4 went from 0.955-0.994 to 0.983-0.994, and
    # 0.983-1.0 with ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41); 0 for a model you name.
    label_smoothing: float | None = option(None, float, "label smoothing for the cross-entropy", low=0.0, high=1.0,
                                           open_high=True, optional=True,
                                           default_help="0.1 without --model, 0 with one")  # fmt: skip
    # "balanced": weight each class by n / (classes * count)
    class_weights: str = option("none", str, "none or balanced, for imbalanced classes", choices=CLASS_WEIGHTS)
    early_stopping: int = option(0, int, "stop after N epochs without a better val accuracy", low=0, high=100_000,
                                 default_help="off")  # fmt: skip
    grad_clip: float = option(0.0, float, "clip the gradient norm to this value", low=0.0, high=1e6,
                              default_help="off")  # fmt: skip
    drop_rate: float | None = option(None, float, "dropout before the classifier", low=0.0, high=1.0, open_high=True,
                                     optional=True, default_help="the model's")  # fmt: skip
    drop_path: float = option(0.0, float, "residual nets: stochastic depth, the last block's branch skipped with this "
                              "chance in training, earlier blocks less", low=0.0, high=1.0, open_high=True)  # fmt: skip
    # Decay per step of an exponential moving average of the weights; 0: off.
    ema: float = option(0.0, float, "keep an exponential moving average of the weights with this decay per step "
                        "(e.g. 0.999) and validate and ship it", low=0.0, high=1.0, open_high=True,
                        default_help="off")  # fmt: skip
    augment: str = option("auto", str, "auto (per data kind), none, or parts joined by '+': flip, translate, erase, "
                          "jitter, trivial (TrivialAugment), and one of mixup or cutmix",
                          rule=_augment_rule)  # fmt: skip
    input_size: int | None = option(None, int, "input size in px", low=8, high=4096, optional=True,
                                    default_help="chosen from the data and model")  # fmt: skip
    seed: int = option(0, int, "seed for weights, shuffling, augmentation and the split", low=0, high=2**32 - 1)
    val_fraction: float = option(0.1, float, "share held out for validation when DATA has no val split", low=0.0,
                                 high=0.5, open_high=True)  # fmt: skip
    test_fraction: float = option(0.1, float, "share held out for testing when DATA has no splits", low=0.0,
                                  high=0.5, open_high=True)  # fmt: skip
    threads: int | None = option(None, int, "CPU threads for PyTorch", low=1, high=4096, optional=True,
                                 default_help="PyTorch's choice")  # fmt: skip
    device: str = option("auto", str, "auto, cpu, cuda or cuda:N", rule=_device_rule)
    workers: int = option(2, int, "decoding threads / loader processes", low=0, high=1024)
    max_memory_gb: float = option(4.0, float, "decoded data above this size streams from disk", low=0.0, high=1e6,
                                  default_help="4")  # fmt: skip
    # With pretrained weights: full, head, linear-probe, two-stage, or anytime (two-stage whose
    # fine-tuning runs only where the time left and the probe say it may pay; runners/train/stages).
    finetune: str = option("full", str, "with --pretrained: full, head, linear-probe, two-stage, or anytime (the "
                           "probe, then fine-tuning where the time left and the probe say it pays; the better of the "
                           "two is kept)", choices=FINETUNE_MODES)  # fmt: skip
    max_train_per_class: int | None = option(None, int, "use at most N training images per class", low=1,
                                             high=10**9, optional=True, default_help="")  # fmt: skip
    max_bad_fraction: float = option(0.1, float, "abort when more of the files cannot be used", low=0.0, high=1.0)
    checkpoint_interval: float = option(600.0, float, "seconds between checkpoints inside an epoch", low=0.0,
                                        high=1e9, default_help="600; 0: at epoch ends only")  # fmt: skip
    checkpoint_every_epoch: bool = option(True, bool, "write a training state after every epoch", cli="none")
    # "default": the model's built-in ImageNet weights; or a file (the command line's --pretrained
    # takes an optional FILE, so it is added by hand: cli/train_cmd.py).
    pretrained: str | None = option(None, str, "start from ImageNet weights: the model's built-in source "
                                    "(efficientnet_lite0 ships them; torchvision's cache for the others), or a "
                                    ".safetensors / .pth state dict FILE", optional=True, cli="optional-value",
                                    metavar="FILE", default_help="")  # fmt: skip
    # Linear probe: also embed the mirrored training images as extra views (kept where cross-validation
    # says they help). Off by default: on three photo folders cross-validation never kept them, and
    # they cost a third more time.
    probe_mirror: bool = option(False, bool, "linear probe: also embed the mirror image of each training image as an "
                                "extra view, kept where cross-validation says it helps (one more pass over the "
                                "training images)", cli="flag")  # fmt: skip
    # Two-stage: train the stem and the first quarter of the stages too (by default they stay frozen:
    # general features, and the costliest part of the backward pass; engine/plan.plan_stages).
    unfreeze_all: bool = option(False, bool, "two-stage: train the stem and the first stages too (by default they "
                                "keep their pretrained weights; for images far from photos, such as scans or "
                                "spectrograms)", cli="flag")  # fmt: skip
    amp: bool = option(True, bool, "no bf16 autocast on CUDA", cli="off-flag", flag="--no-amp")
    # torch.compile the training forward pass (its compile time counts)
    compile: bool = option(False, bool, "torch.compile the training step (compiling takes a while and counts against "
                           "a budget; pays on GPUs and long runs)", cli="flag")  # fmt: skip
    strict: bool = option(False, bool, "fail on the first unusable file", cli="flag")
    sync_batchnorm: bool = option(False, bool, "with several GPU processes: batch-norm statistics over the global "
                                  "batch", cli="flag")  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "") -> None:
        """Each value by type and range (converted where it arrived as text), then the rules that
        tie options together."""
        if isinstance(self.time_budget, str):  # "10m" through the API
            self.time_budget = parse_duration(self.time_budget)
        for name in OPTIONS:
            setattr(self, name, check_option(name, getattr(self, name), where))
        if self.finetune != "full" and self.pretrained is None:
            raise UsageError(f"--finetune {self.finetune} needs --pretrained (weights to start from)")
        if self.unfreeze_all and not self.starts_from_probe:
            raise UsageError(f"--unfreeze-all applies to --finetune two-stage or anytime, not {self.finetune}")
        if self.time_budget is not None and self.epochs is not None:
            raise UsageError("give --epochs or --time-budget, not both")

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


# Each option's declaration, in the order the fields are written (the command line lists them so).
OPTIONS: dict[str, Option] = {item.name: item.metadata["option"] for item in fields(TrainConfig)}


def train_options() -> list[tuple[str, Option, object]]:
    """(field name, declaration, default) of every training option, for building a command line."""
    return [(item.name, OPTIONS[item.name], None if item.default is MISSING else item.default)
            for item in fields(TrainConfig)]  # fmt: skip


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


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, not {value!r}")


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
    for key, value in values.items():
        if key == "time_budget" and isinstance(value, str):
            try:
                value = parse_duration(value)
            except UsageError:
                raise UsageError(
                    f"{path}: time_budget must look like 90s, 10m or 1.5h, not {_shown_value(value)}"
                ) from None
        if key == "pretrained" and isinstance(value, bool):
            continue  # true: the model's built-in weights (resolve)
        values[key] = check_option(key, value, str(path))
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
