"""imgclf advise DATA [--device D] [--time-budget T] [--latency-ms X [--batch B]] [--max-params N]
[--interpretable] [--models a,b,c] [--json]"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table
from rich.text import Text

from imgclf.cli.output import format_count, print_json, stdout_console
from imgclf.text import for_terminal


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "advise",
        help="which model fits DATA, this machine and your budgets (measured here)",
        description="Profile DATA and this machine, measure each candidate model here (latency, training "
        "speed, memory, parameters, FLOPs), drop those that cannot meet the budgets, probe the most promising "
        "with short training runs and recommend one, with reasons.",
    )
    parser.add_argument("data", metavar="DATA")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--time-budget", help="training time you can spend (90s, 10m, 1.5h; default: plan for 10m)")
    parser.add_argument("--latency-ms", type=float, help="the most milliseconds one prediction may take (p95)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the latency budget (default: 1)")
    parser.add_argument("--max-params", type=int, help="the most parameters the model may have")
    parser.add_argument("--interpretable", action="store_true", help="only models that can be read layer by layer")
    parser.add_argument("--models", help="comma-separated candidates (default: one or two of each family)")
    parser.add_argument("--probes", type=int, default=4,
                        help="short training runs: the most promising and the fastest (default: 4)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="split and probe seed (default: 0)")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def build_options(args: argparse.Namespace):
    from imgclf.advise.advisor import DEFAULT_CANDIDATES, AdviseOptions
    from imgclf.config import parse_duration
    from imgclf.errors import UsageError

    if args.latency_ms is not None and not args.latency_ms > 0:
        raise UsageError(f"--latency-ms must be above 0, not {args.latency_ms}")
    for flag, value, least in (("--batch", args.batch, 1), ("--probes", args.probes, 0),
                               ("--max-params", args.max_params, 1)):  # fmt: skip
        if value is not None and value < least:
            raise UsageError(f"{flag} must be at least {least}, not {value}")
    models = tuple(name.strip() for name in args.models.split(",") if name.strip()) if args.models else None
    return AdviseOptions(
        device=args.device,
        time_budget=parse_duration(args.time_budget) if args.time_budget else None,
        latency_ms=args.latency_ms,
        batch=args.batch,
        max_params=args.max_params,
        interpretable=args.interpretable,
        models=models or DEFAULT_CANDIDATES,
        probes=args.probes,
        seed=args.seed,
    )


def _optional(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def print_advice(advice: dict) -> None:
    console = stdout_console()
    title = f"candidates measured here (latency at batch {advice['budgets']['latency_batch']})"
    with_onnx = any(row["onnx_latency_ms_p95"] is not None for row in advice["candidates"])
    onnx_columns = ["ORT ms p95"] if with_onnx else []
    table = Table("model", "params", "FLOPs", "px", "ms p50", "ms p95", *onnx_columns, "train img/s", "epochs", "MiB",
                  "probe", "verdict", title=title)  # fmt: skip
    for row in advice["candidates"]:
        name = f"{row['name']} (pretrained)" if row["pretrained"] else row["name"]
        verdict = "ok" if row["meets_budgets"] else row["rejected_because"][0]
        if name.split()[0] == advice["recommended"] and bool(row["pretrained"]) == advice["pretrained"]:
            name, verdict = Text(name, style="bold"), Text("recommended", style="bold green")
        table.add_row(
            name,
            format_count(row["params"]),
            format_count(row["flops"]),
            str(row["input_size"]),
            _optional(row["latency_ms_p50"], "{:.2f}"),
            _optional(row["latency_ms_p95"], "{:.2f}"),
            *([_optional(row["onnx_latency_ms_p95"], "{:.2f}")] if with_onnx else []),
            _optional(row["train_images_per_s"], "{:,.0f}"),
            _optional(row["epochs_in_budget"], "{:g}"),
            f"{row['memory_mb']:,.0f}",
            _optional(row["probe_accuracy"], "{:.1%}"),
            verdict,
        )
    console.print(table)
    title = advice["recommended"] or "nothing"
    if advice["pretrained"]:
        title += " from ImageNet weights (transfer learning)"
    console.print(Text.assemble("recommended: ", (for_terminal(title), "bold")))
    for reason in advice["reasons"]:
        console.print(f"  - {reason}")
    console.print(advice["resnet"])
    if advice["train_command"]:
        console.print(f"train it: {advice['train_command']}")


def run(args: argparse.Namespace) -> int:
    from imgclf.advise.advisor import run_advise

    advice = run_advise(args.data, build_options(args), data_dir=args.data_dir)
    if args.json:
        print_json(advice)
    else:
        print_advice(advice)
    if advice["recommended"] is None:  # an answer, not a usage error: 1, with the reason
        sys.stderr.write(for_terminal(f"imgclf advise: {advice['reasons'][-1]}") + "\n")
        return 1
    return 0
