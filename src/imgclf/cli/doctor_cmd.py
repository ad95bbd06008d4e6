"""imgclf doctor DATA [--labels [--output DIR]] [--json]"""

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
    parser.add_argument("--task", choices=("multi-label",), default=None,
                        help="multi-label: read every CSV label cell as a set of labels separated by ';' or "
                        "spaces (default: a 'labels' or 'tags' column whose cells hold several labels is "
                        "multi-label)")  # fmt: skip
    parser.add_argument("--labels", action="store_true",
                        help="also rank the training images whose label the data disagrees with (likely "
                        "mislabelled), from out-of-sample predictions and cleanlab; never moves a file")  # fmt: skip
    parser.add_argument("--output", metavar="DIR",
                        help="with --labels: write label_issues.csv, .json and .html (a gallery) here "
                        "(default: runs/<data>-labels)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the full result as JSON on stdout")
    parser.set_defaults(run=run)


LABEL_ROWS_SHOWN = 15


def _class_table(check: dict) -> Table:
    table = Table("rank", "file", "label", "looks like", "confidence", title="least trustworthy labels first")
    for row in check["issues"][:LABEL_ROWS_SHOWN]:
        mark = " *" if row["flagged"] else ""
        table.add_row(str(row["rank"]), row["file"], f"{row['label']} ({row['label_probability']:.0%})",
                      row["suggested"] + mark, f"{row['suggested_probability']:.0%}")  # fmt: skip
    return table


def _label_set_table(check: dict) -> Table:
    table = Table(
        "rank", "file", "labels", "likely missing", "likely wrong", title="least trustworthy label sets first"
    )
    for row in check["issues"][:LABEL_ROWS_SHOWN]:
        mark = " *" if row["flagged"] else ""
        table.add_row(
            str(row["rank"]) + mark,
            row["file"],
            row["labels"].replace(";", " "),
            row["likely_missing"].replace(";", ", ") or "-",
            row["likely_wrong"].replace(";", ", ") or "-",
        )
    return table


def _print_label_issues(check: dict) -> None:
    console = stdout_console()
    console.print(f"labels: {check['images']} training images checked ({check['method']}) in {check['seconds']:.0f} s; "
                  f"{check['flagged']} flagged as likely mislabelled")  # fmt: skip
    console.print(_label_set_table(check) if check["issues"] and "labels" in check["issues"][0] else
                  _class_table(check))  # fmt: skip
    files = check.get("files", {})
    console.print(f"* flagged by cleanlab. Full list: {files.get('csv')}; gallery: {files.get('html')}")


def _print_report(report: dict) -> None:
    console = stdout_console()
    counts = report["counts"]
    multi = report.get("multi_label")
    kind = f"multi-label, {len(report['classes'])} labels" if multi else f"{len(report['classes'])} classes"
    console.print(
        f"{report['data']}: {kind}; {counts['used']} files used, "
        f"{counts['converted']} converted, {counts['skipped']} skipped, {len(report['ignored'])} ignored"
    )
    if multi:
        _print_label_sets(console, multi)
    table = Table("label" if multi else "class", *report["per_split"],
                  title=f"images per {'label' if multi else 'class'} and split")  # fmt: skip
    for name in report["classes"]:
        table.add_row(name, *(str(report["per_split"][split].get(name, 0)) for split in report["per_split"]))
    console.print(table)
    for row in report["files"]:
        if row["status"] != "used":
            console.print(f"{row['status']}: {row['file']}: {row['detail']}")
    for warning in report["warnings"]:
        console.print(f"warning: {warning}")


def _print_label_sets(console, multi: dict) -> None:
    per_image = multi["labels_per_image"]
    without = ", ".join(f"{split} {count}" for split, count in multi["images_without_labels"].items())
    console.print(f"labels per image: {per_image['mean']:.2f} on average, at most {per_image['max']}; "
                  f"images with no label: {without}")  # fmt: skip
    pairs = "; ".join(f"{' + '.join(pair['labels'])} ({pair['images']})" for pair in multi["co_occurrence"][:5])
    if pairs:
        console.print(f"most frequent together: {pairs}")


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.doctor import run_doctor

    report = run_doctor(args.data, seed=args.seed, data_dir=args.data_dir, task=args.task)
    if args.labels:
        from imgclf.engine.run_folder import default_output
        from imgclf.runners.label_issues import run_label_check

        output = args.output or default_output(args.data, "labels")
        report["label_issues"] = run_label_check(args.data, args.seed, args.data_dir, output)
    if args.json:
        print_json(report)
        return 0
    _print_report(report)
    if args.labels:
        _print_label_issues(report["label_issues"])
    return 0
