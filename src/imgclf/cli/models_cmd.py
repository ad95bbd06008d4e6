"""imgclf models [--input-size N] [--measure] [--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import format_count, print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "models",
        help="the model zoo: parameters, FLOPs, input sizes",
        description="List the models with parameters at their default configuration "
        "and FLOPs of one forward pass at --input-size (default: each model's own).",
    )
    parser.add_argument("--input-size", type=int, help="input size in px for FLOPs and latency")
    parser.add_argument("--measure", action="store_true", help="also measure forward latency at batch 1 and 32 here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.errors import UsageError
    from imgclf.runners.models import run_models

    if args.input_size is not None and args.input_size < 8:
        raise UsageError(f"--input-size must be at least 8, not {args.input_size}")
    rows = run_models(input_size=args.input_size, measure=args.measure)
    if args.json:
        print_json(rows)
        return 0
    columns = ["name", "family", "params", "FLOPs", "at px", "default px", "in chans", "classes"]
    if args.measure:
        columns += ["ms @1", "ms @32"]
    table = Table(*columns)
    for row in rows:
        cells = [
            row["name"],
            row["family"],
            f"{row['params']:,}",
            format_count(row["flops"]),
            str(row["flops_input_size"]),
            str(row["input_size"]),
            str(row["in_chans"]),
            str(row["num_classes"]),
        ]
        if args.measure:
            cells += [f"{row['latency_ms_batch1']:.2f}", f"{row['latency_ms_batch32']:.1f}"]
        table.add_row(*cells)
    stdout_console().print(table)
    return 0
