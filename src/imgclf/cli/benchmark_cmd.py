"""imgclf benchmark BUNDLE [--data DATA] [--formats pytorch,onnx,...] [--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import print_json, stdout_console

# runners.export.benchmark.FORMAT_ROWS (not imported: the parser must not load PyTorch)
FORMAT_NAMES = ("pytorch", "onnx", "onnx-int8", "openvino", "openvino-int8", "tflite", "tflite-int8")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "benchmark",
        help="what each deployment format costs: size, accuracy, agreement, latency, throughput",
        description="Build every format this machine can run as imgclf export builds it (the same parity checks) "
        "and measure each on the validation images: file size, accuracy, agreement with the bundle, batch-1 "
        "latency (median, 95th percentile) and batch-32 throughput. A format that cannot be built here gets its "
        "reason instead of numbers. Nothing is written.",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("--data", metavar="DATA", help="validation and calibration images (default: the training data)")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--formats", default=",".join(FORMAT_NAMES),
                        help=f"comma-separated, from {', '.join(FORMAT_NAMES)} (default: all)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.export.benchmark import run_benchmark

    formats = tuple(name.strip() for name in args.formats.split(",") if name.strip())
    result = run_benchmark(args.bundle, data=args.data, data_dir=args.data_dir, formats=formats)
    if args.json:
        print_json(result)
        return 0
    table = Table("format", "MB", "accuracy", "agreement", "p50 ms", "p95 ms", "images/s (batch 32)", "note",
                  title=f"{result['bundle']}: {result['images']}, {result['cpu']}")  # fmt: skip
    for row in result["rows"]:
        table.add_row(row["format"], _number(row["size_mb"], 1), _number(row["accuracy"], 4),
                      _number(row["agreement"], 4), _number(row["p50_ms"], 2), _number(row["p95_ms"], 2),
                      _number(row["images_per_s"], 0), row["note"])  # fmt: skip
    stdout_console().print(table)
    return 0
