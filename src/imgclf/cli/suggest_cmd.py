"""imgclf suggest BUNDLE UNLABELLED... [--n 100] [--copy-to DIR] [--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import print_json, stdout_console
from imgclf.config import SUGGEST_STRATEGIES

ROWS_SHOWN = 30


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "suggest",
        help="rank unlabelled images by how much labelling them would help",
        description="Embed the unlabelled images with BUNDLE's backbone (only those not embedded before) and "
        "choose the N worth labelling first: by default the typical image of each group of similar images that "
        "holds no labelled image yet (the bundle's training data, or --labelled). With --copy-to, the chosen "
        "images are copied (the originals stay) into DIR/<predicted class>/, with DIR/suggested.csv, ready "
        "for imgclf review DIR.",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("sources", metavar="UNLABELLED", nargs="+", help="image files or folders (searched below)")
    parser.add_argument("--n", type=int, default=100, help="how many images to suggest (default: 100)")
    parser.add_argument("--strategy", choices=SUGGEST_STRATEGIES, default="typical",
                        help="typical (default), typical-unsure, weighted (uncertainty x distance), uncertainty, "
                        "diverse (core-set), random; measured against each other in BENCHMARKS.md")  # fmt: skip
    parser.add_argument("--labelled", metavar="DATA", help="the images labelled already (default: the data the "
                        "bundle was trained on, when it is still there)")  # fmt: skip
    parser.add_argument("--copy-to", metavar="DIR", help="copy the chosen images into DIR/<predicted class>/")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def _print(result: dict) -> None:
    console = stdout_console()
    console.print(f"{result['chosen']} of {result['images']:,} unlabelled images suggested ({result['strategy']}), "
                  f"in {result['seconds']:.1f} s", highlight=False)  # fmt: skip
    table = Table("rank", "file", "looks like", "confidence", "uncertainty")
    for row in result["suggestions"][:ROWS_SHOWN]:
        table.add_row(str(row["rank"]), row["file"], row["predicted"], f"{row['confidence']:.0%}",
                      f"{row['uncertainty']:.2f}")  # fmt: skip
    console.print(table)
    if result["copied_to"]:
        console.print(f"copied into {result['copied_to']}/<class>/ (listing: suggested.csv); confirm or relabel "
                      f"them with: imgclf review {result['copied_to']} --bundle {result['bundle']} --all",
                      highlight=False)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.suggest import run_suggest

    result = run_suggest(args.bundle, args.sources, n=args.n, strategy=args.strategy, copy_to=args.copy_to,
                         labelled=args.labelled, device=args.device)  # fmt: skip
    if args.json:
        print_json(result)
    else:
        _print(result)
    return 0
