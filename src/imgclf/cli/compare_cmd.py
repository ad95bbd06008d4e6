"""imgclf compare DATA --models a,b,c [--time-budget 2m] [--output DIR] [--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import format_count, print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compare",
        help="train several models under the same budget and rank them",
        description="Train each model on DATA with the same options and time budget, then print a "
        "leaderboard (accuracy, macro-F1, training time, latency, parameters, FLOPs) and write a Pareto "
        "plot of accuracy against latency that marks dominated models.",
    )
    parser.add_argument("data", metavar="DATA")
    parser.add_argument("--models", required=True, help="comma-separated model names (see imgclf models)")
    parser.add_argument("--time-budget", help="training time per model (90s, 10m, 1.5h)")
    parser.add_argument("--epochs", type=int, help="epochs per model instead of a time budget")
    parser.add_argument("--seed", type=int, default=0, help="seed for every run (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--output", "-o", default="runs/compare", help="folder for the bundles, compare.json "
                        "and pareto.png (default: runs/compare)")  # fmt: skip
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def print_leaderboard(result: dict) -> None:
    console = stdout_console()
    table = Table("#", "model", "accuracy", "macro-F1", "train s", "epochs", "ms p50", "params", "FLOPs", "Pareto",
                  title=f"{result['data']}: leaderboard")  # fmt: skip
    for rank, row in enumerate(result["leaderboard"], start=1):
        if "error" in row:
            table.add_row(str(rank), row["name"], "failed", "", "", "", "", "", "", row["error"][:60])
            continue
        front = "front" if row["dominated_by"] is None else f"dominated by {row['dominated_by']}"
        table.add_row(str(rank), row["name"], f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}",
                      f"{row['train_seconds']:.1f}", str(row["epochs"]), f"{row['latency_ms']:.2f}",
                      format_count(row["params"]), format_count(row["flops"]), front)  # fmt: skip
    console.print(table)
    console.print(f"accuracy on the test split (validation where there is none); plot: {result['plot']}")


def run(args: argparse.Namespace) -> int:
    from imgclf.config import TrainConfig, parse_duration
    from imgclf.runners.compare import run_compare

    base = TrainConfig(
        time_budget=parse_duration(args.time_budget) if args.time_budget else None,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
    )
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    result = run_compare(args.data, models, base, args.output, data_dir=args.data_dir)
    if args.json:
        print_json(result)
    else:
        print_leaderboard(result)
    return 1 if any("error" in row for row in result["leaderboard"]) else 0
