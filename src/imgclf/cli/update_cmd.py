"""imgclf update BUNDLE DATA [--output NEW] [--json]"""

from __future__ import annotations

import argparse

from imgclf.cli.output import print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "update",
        help="refit a bundle's last layer on DATA in seconds: new images, fixed labels, new classes",
        description="Refit BUNDLE's last layer, calibration and abstain rule on DATA without training again. "
        "Only images the backbone has not embedded before are embedded (a cache keyed by each file's content). "
        "Classes DATA adds are appended; DATA must still hold every class of BUNDLE. Prints the old classes' "
        "validation accuracy before and after. The new bundle records what it was updated from; BUNDLE is "
        "never changed.",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("data", metavar="DATA", help="a folder, archive, CSV or JSON lines listing, as for train")
    parser.add_argument("--output", metavar="NEW", help="where the new bundle goes (default: BUNDLE-updated, "
                        "then BUNDLE-updated-2 ...; an existing bundle is never overwritten)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default: 2)")
    parser.add_argument("--full-search", action="store_true", help="choose the regularization over the whole "
                        "grid, as train does (default: from the bundle's choice outward; 2-3x faster)")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="also write report.html into the new bundle "
                        "(imgclf report NEW DATA writes it later, with the worst mistakes)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _print(result: dict) -> None:
    console = stdout_console()
    added = ", ".join(result["added_classes"]) or "none"
    console.print(f"updated {result['updated_from']} -> {result['bundle']} in {result['seconds']:.1f} s "
                  f"({result['images_embedded']:,} images embedded, {result['images_from_cache']:,} from the cache)",
                  highlight=False)  # fmt: skip
    console.print(f"classes added: {added}", highlight=False)
    compared = result["old_classes_val"]
    console.print(f"old classes, {compared['images']:,} validation images, {compared['metric'].replace('_', ' ')}: "
                  f"before {_percent(compared['before'])}, after {_percent(compared['after'])}",
                  highlight=False)  # fmt: skip
    for name, accuracy in result["new_classes_val_accuracy"].items():
        console.print(f"new class {name}: validation accuracy {_percent(accuracy)}", highlight=False)
    test = result["test_accuracy"]
    console.print(f"all classes: validation accuracy {_percent(result['val_accuracy'])}"
                  + (f", test {_percent(test)}" if test is not None else ""), highlight=False)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.update import run_update

    result = run_update(
        args.bundle,
        args.data,
        output=args.output,
        device=args.device,
        workers=args.workers,
        report=args.report,
        full_search=args.full_search,
    )
    if args.json:
        print_json(result)
    else:
        _print(result)
    return 0
