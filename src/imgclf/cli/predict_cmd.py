"""imgclf predict (BUNDLE | --model NAME --pretrained [FILE]) FILE_OR_DIR... [--top-k K] [--json]"""

from __future__ import annotations

import argparse

from imgclf.cli.output import per_file_exit_code, pretrained_source, print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="top-k labels for images",
        usage="imgclf predict (BUNDLE | --model NAME --pretrained [FILE]) FILE_OR_DIR... [options]",
        description="Predict labels for image files and folders (searched recursively), with a trained "
        "bundle, or with a zoo model's ImageNet weights (--model NAME --pretrained).",
    )
    parser.add_argument("paths", metavar="BUNDLE FILE_OR_DIR", nargs="*")
    parser.add_argument("--model", help="predict with this zoo model's ImageNet weights instead of a bundle")
    parser.add_argument(
        "--pretrained",
        nargs="?",
        const="default",
        metavar="FILE",
        help="with --model: the built-in ImageNet weights, or a weights FILE",
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    parser.add_argument(
        "--no-abstain",
        dest="abstain",
        action="store_false",
        help="always name a label, even below the confidence threshold chosen on validation",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--tta", default="none", choices=("none", "flip"),
                        help="flip: average each image with its mirror image (twice the compute; for photos, whose "
                        "class survives a mirror, not for text or digits) (default: none)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def _verdict(result: dict) -> str:
    if "labels" in result:  # a multi-label bundle: the set (maybe empty)
        if result.get("abstained"):
            return "no labels (abstained)"
        return " + ".join(result["labels"]) if result["labels"] else "none of the labels"
    return "no label (abstained)" if result["label"] is None else result["label"]


def run(args: argparse.Namespace) -> int:
    from imgclf.errors import UsageError
    from imgclf.runners.predict import run_predict

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    args.pretrained = pretrained_source(args.pretrained, args.paths)
    if args.model is not None:
        bundle, inputs = None, args.paths
        if args.pretrained is None:
            raise UsageError("--model needs --pretrained: an untrained model predicts nothing useful")
    elif len(args.paths) < 2:
        raise UsageError("give a BUNDLE and at least one FILE_OR_DIR (or --model NAME --pretrained)")
    else:
        bundle, inputs = args.paths[0], args.paths[1:]
    pretrained = (args.model, None if args.pretrained == "default" else args.pretrained) if args.model else None
    results = run_predict(
        bundle, inputs, top_k=args.top_k, device=args.device, pretrained=pretrained, abstain=args.abstain, tta=args.tta
    )
    if args.json:
        print_json(results)
    else:
        console = stdout_console()
        for result in results:
            if "error" not in result:
                labels = ", ".join(f"{item['label']} {item['probability']:.3f}" for item in result["top_k"])
                console.print(f"{result.get('path', '?')}: {_verdict(result)} | {labels}")
    return per_file_exit_code("predict", results)
