"""imgclf report BUNDLE [DATA]"""

from __future__ import annotations

import argparse

from imgclf.cli.output import stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="regenerate the bundle's report.html",
        description="Write BUNDLE/report.html again: data summary, training curves, confusion matrix, "
        "per-class metrics, calibration, the worst mistakes with Grad-CAM, model card and configuration. "
        "The mistakes come from DATA's test split (default: the training data, when it is still there).",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("data", metavar="DATA", nargs="?")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.report import run_report

    path = run_report(args.bundle, args.data, data_dir=args.data_dir, device=args.device)
    stdout_console().print(f"report written to {path}")
    return 0
