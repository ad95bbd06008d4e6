"""imgclf doctor DATA [--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check DATA: bad files, conversions, duplicates, imbalance",
        description="Inspect DATA as train would read it: every file used, converted (how) or skipped (why); "
        "exact duplicates within and across splits; class balance; sizes and modes per class.",
    )
    parser.add_argument("data", metavar="DATA")
    parser.add_argument("--seed", type=int, default=0, help="split seed, as for train (default: 0)")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON on stdout")
    parser.set_defaults(run=run)


def _print_report(report: dict) -> None:
    console = stdout_console()
    counts = report["counts"]
    console.print(
        f"{report['data']}: {len(report['classes'])} classes; {counts['used']} files used, "
        f"{counts['converted']} converted, {counts['skipped']} skipped, {len(report['ignored'])} ignored"
    )
    table = Table("class", *report["per_split"], title="images per class and split")
    for name in report["classes"]:
        table.add_row(name, *(str(report["per_split"][split].get(name, 0)) for split in report["per_split"]))
    console.print(table)
    for row in report["files"]:
        if row["status"] != "used":
            console.print(f"{row['status']}: {row['file']}: {row['detail']}")
    for warning in report["warnings"]:
        console.print(f"warning: {warning}")


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.doctor import run_doctor

    report = run_doctor(args.data, seed=args.seed, data_dir=args.data_dir)
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 0
