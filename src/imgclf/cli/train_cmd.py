"""imgclf train DATA [options]"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from imgclf.cli.output import pretrained_source, print_json
from imgclf.config import Resolved, resolve

# Command-line option -> TrainConfig field (None values mean "not given": keep the default).
_OPTIONS = (
    (
        "--model",
        "model",
        str,
        "model name from `imgclf models` (default: with --time-budget, the one `imgclf advise` recommends for "
        "the budget; else simple_cnn)",
    ),
    ("--epochs", "epochs", int, "epochs to train (default: about 30,000 images seen, 3 to 30)"),
    (
        "--log",
        "log",
        str,
        "also log the run to tensorboard (event files in the bundle's tensorboard/ folder), mlflow (MLflow's "
        "tracking store: MLFLOW_TRACKING_URI, else ./mlruns) or both: tensorboard,mlflow (metrics.csv is always "
        "written)",
    ),
    (
        "--preset",
        "preset",
        str,
        "fast: the recipe for small images (64 px and below) after the CIFAR-10 speed records: fastnet, "
        "large batches, label smoothing, weight averaging, 10 epochs; options you give override it",
    ),
    (
        "--time-budget",
        "time_budget",
        str,
        "finish the whole run within this time (90s, 10m, 1.5h): epochs and schedule planned from a warm-up",
    ),
    ("--batch-size", "batch_size", int, "images per step (default: 128)"),
    ("--optimizer", "optimizer", str, "sgd (Nesterov momentum) or adamw (default: sgd)"),
    ("--lr", "lr", float, "peak learning rate (default: 0.2 for SGD, 2e-3 for AdamW, per 256 images)"),
    (
        "--weight-decay",
        "weight_decay",
        float,
        "weight decay, never on norms and biases (default: 5e-4 SGD, 0.05 AdamW)",
    ),
    ("--schedule", "schedule", str, "onecycle, cosine or constant (default: onecycle)"),
    (
        "--label-smoothing",
        "label_smoothing",
        float,
        "label smoothing for the cross-entropy (default: 0.1 without --model, 0 with one)",
    ),
    ("--class-weights", "class_weights", str, "none or balanced, for imbalanced classes (default: none)"),
    ("--early-stopping", "early_stopping", int, "stop after N epochs without a better val accuracy (default: off)"),
    ("--grad-clip", "grad_clip", float, "clip the gradient norm to this value (default: off)"),
    ("--drop-rate", "drop_rate", float, "dropout before the classifier (default: the model's)"),
    (
        "--drop-path",
        "drop_path",
        float,
        "residual nets: stochastic depth, the last block's branch skipped with this chance in training, "
        "earlier blocks less (default: 0)",
    ),
    (
        "--ema",
        "ema",
        float,
        "keep an exponential moving average of the weights with this decay per step (e.g. 0.999) and "
        "validate and ship it (default: off)",
    ),
    (
        "--augment",
        "augment",
        str,
        "auto (per data kind), none, or parts joined by '+': flip, translate, erase, jitter, trivial "
        "(TrivialAugment), and one of mixup or cutmix (default: auto)",
    ),
    ("--input-size", "input_size", int, "input size in px (default: chosen from the data and model)"),
    ("--seed", "seed", int, "seed for weights, shuffling, augmentation and the split (default: 0)"),
    (
        "--val-fraction",
        "val_fraction",
        float,
        "share held out for validation when DATA has no val split (default: 0.1)",
    ),
    ("--test-fraction", "test_fraction", float, "share held out for testing when DATA has no splits (default: 0.1)"),
    ("--threads", "threads", int, "CPU threads for PyTorch (default: PyTorch's choice)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N (default: auto)"),
    ("--workers", "workers", int, "decoding threads / loader processes (default: 2)"),
    ("--max-memory-gb", "max_memory_gb", float, "decoded data above this size streams from disk (default: 4)"),
    (
        "--finetune",
        "finetune",
        str,
        "with --pretrained: full, head, linear-probe, two-stage, or anytime (the probe, then fine-tuning where the "
        "time left and the probe say it pays; the better of the two is kept) (default: full)",
    ),
    ("--max-train-per-class", "max_train_per_class", int, "use at most N training images per class"),
    ("--max-bad-fraction", "max_bad_fraction", float, "abort when more of the files cannot be used (default: 0.1)"),
    (
        "--checkpoint-interval",
        "checkpoint_interval",
        float,
        "seconds between checkpoints inside an epoch (default: 600; 0: at epoch ends only)",
    ),
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model on DATA and write a bundle",
        description="Train a classifier on DATA: an image folder (root/<class>/<image>, "
        "optionally with train/ val/ test/), a .zip/.tar.gz of one, a CSV of path,label, "
        "or a built-in: digits, fashion-mnist.",
    )
    parser.add_argument("data", metavar="DATA", nargs="?")
    add_config_options(parser)
    _add_flags(parser)
    parser.set_defaults(run=run)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Every option of a TrainConfig, and --config (``lr-find`` takes the same ones as ``train``)."""
    for flag, field, kind, text in _OPTIONS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument(
        "--pretrained",
        nargs="?",
        const="default",
        default=None,
        metavar="FILE",
        help="start from ImageNet weights: the model's built-in source (efficientnet_lite0 ships them; "
        "torchvision's cache for the others), or a .safetensors / .pth state dict FILE",
    )
    parser.add_argument("--probe-mirror", dest="probe_mirror", action="store_true", default=None,
                        help="linear probe: also embed the mirror image of each training image as an extra view, "
                        "kept where cross-validation says it helps (one more pass over the training "
                        "images)")  # fmt: skip
    parser.add_argument("--unfreeze-all", dest="unfreeze_all", action="store_true", default=None,
                        help="two-stage: train the stem and the first stages too (by default they keep their "
                        "pretrained weights; for images far from photos, such as scans or spectrograms)")  # fmt: skip
    parser.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no bf16 autocast on CUDA")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="torch.compile the training step (compiling takes a while and counts against a budget; "
                        "pays on GPUs and long runs)")  # fmt: skip
    parser.add_argument(
        "--config",
        help="YAML or JSON file of options, keys as the options (time_budget: 10m); "
        "options given here override it. A bundle's config.yaml repeats its run",
    )
    parser.add_argument("--strict", action="store_true", default=None, help="fail on the first unusable file")
    parser.add_argument(
        "--sync-batchnorm",
        dest="sync_batchnorm",
        action="store_true",
        default=None,
        help="with several GPU processes: batch-norm statistics over the global batch",
    )


def _add_flags(parser: argparse.ArgumentParser) -> None:
    """What ``train`` has besides the configuration: its output, resuming, launching."""
    parser.add_argument("--output", "-o", help="bundle folder (default: runs/<data>-<model>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a bundle already in --output")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="always",
        default=None,
        choices=("always", "auto"),
        help="continue the run in --output from its last checkpoint; `--resume auto` continues it when there "
        "is one and starts a new run otherwise (for restart loops)",
    )
    parser.add_argument("--force", action="store_true", help="with --resume: continue even if DATA changed")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train with N processes on this machine (torchrun --standalone --nproc-per-node N; one per GPU); "
        "for several machines run torchrun yourself (see README)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def build_config(args: argparse.Namespace) -> Resolved:
    """The options given on the command line, resolved as the Python API resolves them."""
    options = {field: getattr(args, field) for _, field, _, _ in _OPTIONS}
    flags = ("amp", "probe_mirror", "unfreeze_all", "compile", "pretrained", "strict", "sync_batchnorm")
    options.update({name: getattr(args, name) for name in flags})
    return resolve(options, args.config)


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip_next = [], False
    for item in argv:
        if skip_next:
            skip_next = False
        elif item == "--nproc":
            skip_next = True
        elif not item.startswith("--nproc="):
            kept.append(item)
    return kept


def launch_with_torchrun(processes: int, argv: list[str]) -> int:
    """Run this same command under PyTorch's launcher with ``processes`` local processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run([*command, "-m", "imgclf", *_without_nproc(argv)], check=False).returncode


def run(args: argparse.Namespace) -> int:
    from imgclf.errors import UsageError
    from imgclf.runners.train import run_train

    if args.nproc is not None:
        if args.nproc < 1:
            raise UsageError(f"--nproc must be at least 1, not {args.nproc}")
        if args.nproc > 1 and "RANK" not in os.environ:  # not yet under torchrun
            return launch_with_torchrun(args.nproc, args.argv)
    positionals = [args.data] if args.data else []
    args.pretrained = pretrained_source(args.pretrained, positionals)
    if len(positionals) != 1:
        raise UsageError("give one DATA: a folder, an archive, a CSV file, digits or fashion-mnist")
    args.data = positionals[0]
    resolved = build_config(args)
    result = run_train(
        args.data,
        resolved.config,
        output=args.output,
        overwrite=args.overwrite,
        resume=args.resume,
        data_dir=args.data_dir,
        force=args.force,
        choose_model=resolved.choose_model and not args.resume,
    )
    if args.json and "rank" not in result:  # under torchrun only rank 0 answers
        print_json(result)
    return 0
