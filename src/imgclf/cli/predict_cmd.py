"""imgclf predict BUNDLE FILE_OR_DIR... [--top-k K] [--json]"""

from __future__ import annotations

import argparse
import sys

from imgclf.cli.output import print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="top-k labels for images",
        description="Predict labels for image files and folders (searched recursively).",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("inputs", metavar="FILE_OR_DIR", nargs="+")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.errors import UsageError
    from imgclf.runners.predict import run_predict

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    results = run_predict(args.bundle, args.inputs, top_k=args.top_k, device=args.device)
    failed = [result for result in results if "error" in result]
    if args.json:
        print_json(results)
    else:
        console = stdout_console()
        for result in results:
            if "error" not in result:
                labels = ", ".join(f"{item['label']} {item['probability']:.3f}" for item in result["top_k"])
                console.print(f"{result.get('path', '?')}: {labels}")
    for result in failed:
        sys.stderr.write(f"imgclf predict: error: {result['path']}: {result['error']}\n")
    if not results:
        sys.stderr.write("imgclf predict: error: no image files found in the given folders\n")
        return 2
    return 1 if failed else 0
