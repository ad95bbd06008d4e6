"""imgclf serve BUNDLE_OR_ONNX [--host 127.0.0.1] [--port 8000] [--token T] [limits]"""

from __future__ import annotations

import argparse
import os


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="HTTP prediction server with a web page",
        description="Serve a bundle or an exported .onnx file over HTTP (FastAPI + uvicorn): POST /v1/predict, "
        "/v1/predict/batch, /v1/explain; GET /v1/health, /v1/ready, /v1/metadata; the page at /; OpenAPI at /docs.",
    )
    parser.add_argument("model", metavar="BUNDLE_OR_ONNX")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="default: 8000")
    parser.add_argument(
        "--token", help="require 'Authorization: Bearer TOKEN' (default: $IMGCLF_TOKEN when set, else none)"
    )
    parser.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body (default: 10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for decoding + inference (default: 10)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="requests at once before 503 (default: 64)")
    parser.add_argument("--max-batch", type=int, default=32, help="images per model call (default: 32)")
    parser.add_argument(
        "--workers",
        type=int,
        help="model calls at once (default: for an .onnx file two per core divided by --threads; 1 for a bundle, "
        "whose PyTorch forward pass already uses every core)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime threads per model call, .onnx files only (default: 1)"
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from imgclf.errors import UsageError
    from imgclf.serve.app import ServeSettings, create_app
    from imgclf.serve.engines import open_engine

    for name in ("max_body_mb", "timeout", "max_in_flight", "max_batch", "workers", "threads"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    settings = ServeSettings(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
        max_batch=args.max_batch,
        workers=args.workers,
        token=args.token or os.environ.get("IMGCLF_TOKEN") or None,
    )
    app = create_app(open_engine(args.model, threads=args.threads), settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=not args.no_access_log)
    return 0
