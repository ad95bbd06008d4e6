"""imgclf lr-find DATA [train options] [--steps N] [--start LR] [--end LR] [--output DIR]"""

from __future__ import annotations

import argparse

from imgclf.cli.output import pretrained_source, print_json
from imgclf.cli.train_cmd import add_config_options, build_config


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "lr-find",
        help="the learning-rate range test: which rate the run `imgclf train DATA` would take",
        description="Train a copy of the model `imgclf train DATA` (with the same options) would train for up to "
        "--steps steps while the rate grows from --start to --end; print the suggested rate and write its curve "
        "(lr_find.png), the numbers (lr_find.csv) and the answer (lr_find.json) to --output (a range test's own files "
        "there are replaced, never a file imgclf did not write).",
    )
    parser.add_argument("data", metavar="DATA")
    add_config_options(parser)
    parser.add_argument("--steps", type=int, default=100, help="training steps at most (default: 100)")
    parser.add_argument("--start", type=float, default=1e-7, help="the first peak rate tried (default: 1e-7)")
    parser.add_argument("--end", type=float, default=10.0, help="the last peak rate tried (default: 10)")
    parser.add_argument("--output", "-o", help="folder for the files (default: runs/lr-find-<data>-<model>)")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.lr_find import run_lr_find

    args.pretrained = pretrained_source(args.pretrained, [args.data])
    resolved = build_config(args)
    result = run_lr_find(args.data, resolved.config, output=args.output,
                         data_dir=args.data_dir, steps=args.steps, start=args.start, end=args.end,
                         choose_model=resolved.choose_model)  # fmt: skip
    if args.json:
        print_json(result)
    return 0
