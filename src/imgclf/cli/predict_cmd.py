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
    _add_at_scale_options(parser)
    parser.set_defaults(run=run)


def _add_at_scale_options(parser) -> None:
    """Many images: rows written to a file as they come (runners.predict.run_predict_to_file)."""
    parser.add_argument("--output", metavar="FILE", help="write one row per image to FILE (.parquet, .csv or "
                        ".jsonl) as the run goes, instead of printing; BUNDLE may then be an exported .onnx file, "
                        "and sources may be folders, archives, CSV listings or .txt lists of paths")  # fmt: skip
    parser.add_argument("--shard", metavar="I/N", help="with --output: this job's share of the images (by a hash of "
                        "each path: N jobs with I = 0 ... N-1 cover every image once)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="with --output: go on from the rows an interrupted "
                        "run wrote (none twice, none missing)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="with --output: images per model call "
                        "(default: 64)")  # fmt: skip
    parser.add_argument("--processes", type=int, metavar="N", help="with --output: worker processes predicting "
                        "batches side by side, each loading the model once (default: one per core for an .onnx "
                        "file, 1 for a bundle)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="with --output and one process: decoding threads "
                        "(default: 2)")  # fmt: skip
    parser.add_argument("--rows-per-part", type=int, default=512, help="with --output: rows saved together; a "
                        "crash loses at most the part being gathered (default: 512)")  # fmt: skip


def _verdict(result: dict) -> str:
    if "labels" in result:  # a multi-label bundle: the set (maybe empty)
        if result.get("abstained"):
            return "no labels (abstained)"
        return " + ".join(result["labels"]) if result["labels"] else "none of the labels"
    return "no label (abstained)" if result["label"] is None else result["label"]


def _predict_to_file(args: argparse.Namespace) -> int:
    from imgclf.errors import UsageError
    from imgclf.runners.predict import run_predict_to_file
    from imgclf.scale import parse_shard

    if args.model is not None or len(args.paths) < 2:
        raise UsageError("with --output, give a BUNDLE or an exported .onnx file and at least one source")
    for name in ("batch_size", "workers", "rows_per_part", "processes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    shard = parse_shard(args.shard) if args.shard else None
    result = run_predict_to_file(args.paths[0], args.paths[1:], args.output, top_k=args.top_k, shard=shard,
                                 resume=args.resume, workers=args.workers, batch_size=args.batch_size,
                                 tta=args.tta, rows_per_part=args.rows_per_part,
                                 processes=args.processes)  # fmt: skip
    if args.json:
        print_json(result)
    else:
        stdout_console().print(f"{result['predicted_now']:,} images predicted in {result['seconds']:.1f} s "
                               f"({result['images_per_s']} images/s); rows: {result['output']}",
                               highlight=False)  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    from imgclf.errors import UsageError
    from imgclf.runners.predict import run_predict

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    if args.output is not None:
        return _predict_to_file(args)
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
