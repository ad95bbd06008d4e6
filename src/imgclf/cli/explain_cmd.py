"""imgclf explain BUNDLE IMAGE... --output DIR [--json]"""

from __future__ import annotations

import argparse

from imgclf.cli.output import per_file_exit_code, print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "explain",
        help="Grad-CAM and saliency pictures: where the model looked",
        description="Write one PNG per image: the image as the model sees it, its Grad-CAM overlay (on the "
        "model's last feature map) and its saliency map, titled with the predicted label and, for images "
        "in a class folder, the true one.",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.explain import run_explain

    results = run_explain(args.bundle, args.images, args.output, device=args.device)
    if args.json:
        print_json(results)
    else:
        console = stdout_console()
        for result in results:
            if "labels" in result:  # a multi-label bundle: the labels given, one Grad-CAM each
                given = " + ".join(result["labels"]) or "none of the labels"
                console.print(f"{result['path']}: {given} -> {result['output']}")
            elif "error" not in result:
                truth = f", true {result['true_label']}" if result["true_label"] else ""
                console.print(
                    f"{result['path']}: {result['label']} ({result['probability']:.3f}{truth}) -> {result['output']}"
                )
    return per_file_exit_code("explain", results)
