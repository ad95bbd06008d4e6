"""imgclf export BUNDLE [--format onnx|openvino|tflite|web] [--quantize int8] [--output FILE] [--layout nhwc|nchw]
[--json]"""

from __future__ import annotations

import argparse

from rich.table import Table

from imgclf.cli.output import print_json, stdout_console


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="ONNX with the preprocessing inside, checked against PyTorch",
        description="Export BUNDLE to ONNX (opset 18, dynamic batch): raw uint8 pixels in, logits and calibrated "
        "probabilities out; class names and the input contract in the model's metadata. The export fails unless "
        "onnxruntime agrees with PyTorch on at least 99.9%% of the validation images' top-1 labels.",
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("--format", default="onnx", choices=("onnx", "openvino", "tflite", "web"),
                        help="onnx; openvino: the same graph as OpenVINO IR (model.xml + model.bin), "
                        "checked against PyTorch the same way, needs pip install 'imgclf[openvino]'; tflite: a LiteRT "
                        "file for phones (images at the model's size in), checked the same way, needs pip install "
                        "'imgclf[litert]'; web: a folder "
                        "with a page that classifies images in the browser, offline (onnxruntime-web from npm) "
                        "(default: onnx)")  # fmt: skip
    parser.add_argument("--onnxruntime-web", metavar="DIR",
                        help="--format web: onnxruntime-web's dist folder (default: $IMGCLF_ONNXRUNTIME_WEB, or "
                        "node_modules/onnxruntime-web/dist here or above)")  # fmt: skip
    parser.add_argument("--quantize", choices=("int8",),
                        help="int8: for onnx, openvino and web, static quantization calibrated on training images; "
                        "for tflite, LiteRT's dynamic range int8 (no calibration)")  # fmt: skip
    parser.add_argument("--output", metavar="FILE",
                        help="default: BUNDLE/model.onnx (BUNDLE/model.int8.onnx; .xml for openvino; the folder "
                        "BUNDLE/web for web)")  # fmt: skip
    parser.add_argument("--layout", default="nhwc", choices=("nhwc", "nchw"), help="pixel layout (default: nhwc)")
    parser.add_argument("--data", metavar="DATA", help="validation and calibration images (default: the training data)")
    parser.add_argument("--data-dir", help="folder with the IDX files for fashion-mnist")
    parser.add_argument("--tta", default="none", choices=("none", "flip"),
                        help="flip: the graph averages each image with its mirror image, as predict --tta flip "
                        "(twice the compute; for photos) (default: none)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.runners.export import run_export

    result = run_export(
        args.bundle,
        args.output,
        quantize=args.quantize,
        layout=args.layout,
        data=args.data,
        data_dir=args.data_dir,
        format=args.format,
        tta=args.tta,
        onnxruntime_web=args.onnxruntime_web,
    )
    if args.json:
        print_json(result)
        return 0
    table = Table("latency (ms, this CPU)", *result["latency_ms"]["batch_1"], title=result["output"])
    for batch, row in result["latency_ms"].items():
        table.add_row(batch.replace("_", " "), *(f"{value:.3f}" for value in row.values()))
    stdout_console().print(table)
    return 0
