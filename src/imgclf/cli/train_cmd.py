"""imgclf train DATA [options]"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from imgclf.cli.output import pretrained_source, print_json
from imgclf.config import Resolved, resolve, train_options


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
    """Every option of a TrainConfig, built from its declaration (``config.TrainConfig``), and
    --config (``lr-find`` takes the same ones as ``train``). Defaults stay None: "not given", so a
    config file or a preset can set what the command line leaves out."""
    for name, spec, default in train_options():
        if spec.cli == "none":
            continue
        flag = spec.flag or f"--{name.replace('_', '-')}"
        text = _help_text(spec, default)
        if spec.cli == "flag":
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        elif spec.cli == "off-flag":
            parser.add_argument(flag, dest=name, action="store_false", default=None, help=text)
        elif spec.cli == "optional-value":
            parser.add_argument(flag, dest=name, nargs="?", const="default", default=None, metavar=spec.metavar,
                                help=text)  # fmt: skip
        else:  # text: TrainConfig converts and checks it, naming the option, as for a file's values
            parser.add_argument(flag, dest=name, default=None, metavar=spec.metavar, help=text)
    parser.add_argument(
        "--config",
        help="YAML or JSON file of options, keys as the options (time_budget: 10m); "
        "options given here override it. A bundle's config.yaml repeats its run",
    )


def _help_text(spec, default) -> str:
    if spec.cli in ("flag", "off-flag"):
        return spec.help
    shown = (
        spec.default_help
        if spec.default_help is not None
        else ("" if default is None else f"{default:g}" if isinstance(default, float) else default)
    )
    return f"{spec.help} (default: {shown})" if shown != "" else spec.help


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
    options = {name: getattr(args, name) for name, spec, _ in train_options() if spec.cli != "none"}
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
        # A resumed run takes its configuration from its training state; with none to resume
        # (--resume auto on a fresh folder) the run is the one the plain command makes.
        choose_model=resolved.choose_model,
    )
    if args.json and "rank" not in result:  # under torchrun only rank 0 answers
        print_json(result)
    return 0
