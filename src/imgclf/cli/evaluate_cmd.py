"""imgclf evaluate BUNDLE DATA [--split test] [--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="accuracy, per-class metrics, calibration and confusion matrix",
        description="Evaluate a bundle on DATA. The test split by default: the one "
        "recorded in the bundle when imgclf made the split.",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("data", metavar="DATA")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--tta", default="none", choices=("none", "flip"),
                        help="test-time augmentation: flip averages each image with its mirror")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def _print_label_sets(console, metrics: dict) -> None:
    """A multi-label bundle's scores: overall, then per label at the bundle's thresholds."""
    console.print(f"{metrics['split']} split: {metrics['num_images']:,} images; macro-F1 {metrics['macro_f1']:.4f}, "
                  f"micro-F1 {metrics['micro_f1']:.4f}, mAP {metrics['map'] or 0:.4f}, exact label sets "
                  f"{metrics['exact_match']:.4f}, Hamming loss {metrics['hamming_loss']:.4f}",
                  highlight=False)  # fmt: skip
    table = Table("label", "threshold", "precision", "recall", "f1", "AP", "support")
    for (name, row), threshold in zip(metrics["per_class"].items(), metrics["thresholds"]):
        ap = "n/a" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        table.add_row(name, f"{threshold:.3f}", f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      ap, str(row["support"]))  # fmt: skip
    console.print(table)


def _print_report(metrics: dict) -> None:
    console = stdout_console()
    if metrics.get("task") == "multi-label":
        return _print_label_sets(console, metrics)
    top5 = metrics["top5_accuracy"]
    console.print(
        f"{metrics['split']} split: {metrics['num_images']:,} images, accuracy "
        f"{metrics['accuracy']:.4f}"
        + (f", top-5 {top5:.4f}" if top5 is not None else "")
        + (" (with flip test-time augmentation)" if metrics.get("tta") == "flip" else "")
    )
    table = Table("class", "precision", "recall", "f1", "support")
    for name, row in metrics["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(table)
    if metrics.get("ece") is not None:
        console.print(
            f"calibration: ECE {metrics['ece']:.4f} with temperature {metrics['temperature']:.3f} "
            f"({metrics['ece_uncalibrated']:.4f} without)"
        )
    if metrics.get("most_confused"):
        pairs = ", ".join(f"{p['true']} as {p['predicted']} ({p['count']})" for p in metrics["most_confused"][:5])
        console.print(f"most confused: {pairs}")
    matrix = Table("true \\ predicted", *metrics["classes"], title="confusion matrix")
    for name, row in zip(metrics["classes"], metrics["confusion_matrix"]):
        matrix.add_row(name, *(str(count) for count in row))
    console.print(matrix)


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.evaluate import run_evaluate

    metrics = run_evaluate(
        args.bundle, args.data, split=args.split, data_dir=args.data_dir, device=args.device, tta=args.tta
    )
    if args.json:
        print_json(metrics)
    else:
        _print_report(metrics)
    return 0
