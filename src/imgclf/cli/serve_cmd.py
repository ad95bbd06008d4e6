"""imgclf serve BUNDLE_OR_ONNX [--host 127.0.0.1] [--port 8000] [--token T] [limits]"""

from __future__ import annotations

import argparse
import os
import sys

TTA_HELP = "a bundle: flip averages each image with its mirror image (twice the compute; for photos) (default: none)"


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
        "--token",
        help="require 'Authorization: Bearer TOKEN' on everything but the page, /v1/health and /v1/ready "
        "(default: $IMGCLF_TOKEN when set, else none); other users see a --token in 'ps': prefer "
        "--token-file or $IMGCLF_TOKEN",
    )
    parser.add_argument("--token-file", help="read the token from the first line of this file")
    parser.add_argument(
        "--allowed-host",
        action="append",
        help="a Host header value to accept (repeatable); default on a loopback --host: localhost, 127.0.0.1 and "
        "[::1] with or without the port, which stops DNS-rebinding pages; default on other hosts: any",
    )
    parser.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body (default: 10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for decoding + inference (default: 10)")
    parser.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds for a request body to arrive (default: 30)"
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=64, help="requests being answered at once before 503 (default: 64)"
    )
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
    parser.add_argument("--tta", default="none", choices=("none", "flip"), help=TTA_HELP)
    _add_connection_options(parser)
    _add_capture_options(parser)
    parser.set_defaults(run=run)


def _add_capture_options(parser) -> None:
    """What ``--capture`` keeps (serve.capture)."""
    parser.add_argument("--capture", metavar="DIR", help="keep the images the model abstained on or was "
                        "unsure about in DIR (with DIR/captured.jsonl), for imgclf review and update; off by "
                        "default")  # fmt: skip
    parser.add_argument("--capture-unsure-below", type=float, default=0.6, metavar="P",
                        help="with --capture: keep answers whose top probability is under P "
                        "(default: 0.6)")  # fmt: skip
    parser.add_argument("--capture-per-minute", type=int, default=30, help="with --capture: images kept per "
                        "minute at most (default: 30)")  # fmt: skip
    parser.add_argument("--capture-max-files", type=int, default=1000, help="with --capture: files in DIR at "
                        "most (default: 1000)")  # fmt: skip
    parser.add_argument("--capture-max-mb", type=float, default=500.0, help="with --capture: megabytes in DIR "
                        "at most (default: 500)")  # fmt: skip


def _add_connection_options(parser) -> None:
    """How connections are parsed, timed and counted (serve.connections)."""
    parser.add_argument(
        "--head-timeout",
        type=float,
        default=HEAD_TIMEOUT_S,
        help="close a connection whose request head has not arrived this many seconds after it opened (or "
        f"after the previous answer): idle and slow-header clients (default: {HEAD_TIMEOUT_S:g}; h11 only)",
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=int,
        default=MAX_CONNECTIONS_PER_CLIENT,
        help="connections one client address may hold at once; more are answered 503 and closed "
        f"(default: {MAX_CONNECTIONS_PER_CLIENT}; h11 only; behind a proxy every client is the proxy: raise it)",
    )
    parser.add_argument(
        "--http",
        choices=("h11", "httptools"),
        default="h11",
        help="HTTP parser (default: h11, which refuses a request head over 16 KiB; httptools sets no such limit, "
        "so one client sending an endless header line can stall the server: only behind a proxy that limits "
        "headers)",
    )


HEAD_TIMEOUT_S = 10.0  # seconds; serve.connections says why
MAX_CONNECTIONS_PER_CLIENT = 32  # a browser opens 6 per server
HEADER_LIMIT_BYTES = 16 * 1024  # request line + headers; beyond it uvicorn answers 400 and closes the connection


POSITIVE_OPTIONS = ("max_body_mb", "timeout", "read_timeout", "head_timeout", "max_connections_per_client",
                    "max_in_flight", "max_batch", "workers", "threads", "capture_per_minute", "capture_max_files",
                    "capture_max_mb")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from imgclf.engines import open_engine
    from imgclf.errors import UsageError
    from imgclf.serve.app import create_app
    from imgclf.serve.connections import head_timed_protocol
    from imgclf.serve.settings import ServeSettings, is_loopback, loopback_hosts

    for name in POSITIVE_OPTIONS:
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, not {args.port}")
    if args.allowed_host:
        allowed = tuple(host.lower() for host in args.allowed_host)
    else:
        allowed = loopback_hosts(args.port) if is_loopback(args.host) else None
    settings = ServeSettings(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        timeout_s=args.timeout,
        read_timeout_s=args.read_timeout,
        max_in_flight=args.max_in_flight,
        max_batch=args.max_batch,
        workers=args.workers,
        token=_token(args),
        allowed_hosts=allowed,
    )
    warning = open_host_warning(args.host, args.allowed_host, settings.token)
    if warning:
        print(warning, file=sys.stderr)
    app = create_app(open_engine(args.model, threads=args.threads, tta=args.tta), settings, _capture(args))
    # h11, not httptools: httptools sets no limit on a header line, so one connection sending an
    # endless header held the server (predictions went from 7 ms to 10-19 s); h11 refuses a request
    # whose head is over HEADER_LIMIT_BYTES. Throughput cost: BENCHMARKS.md (serving).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=not args.no_access_log,
        http=(
            head_timed_protocol(args.head_timeout, args.max_connections_per_client) if args.http == "h11" else args.http
        ),  # fmt: skip
        h11_max_incomplete_event_size=HEADER_LIMIT_BYTES,
        log_config=server_log_config(),
    )
    return 0


def _capture(args: argparse.Namespace):
    if args.capture is None:
        return None
    from imgclf.serve.capture import Capture, CaptureLimits

    limits = CaptureLimits(args.capture_unsure_below, args.capture_per_minute, args.capture_max_files,
                           args.capture_max_mb)  # fmt: skip
    return Capture(args.capture, limits)


def server_log_config() -> dict:
    """uvicorn's logging, with every handler showing messages and their arguments as text (a
    request path can carry terminal escapes)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["text_only"] = {"()": "imgclf.text.TerminalTextFilter"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "text_only"]
    return config


def _token(args: argparse.Namespace) -> str | None:
    from imgclf.errors import UsageError

    if args.token_file:
        try:
            token = open(args.token_file, encoding="utf-8").readline().strip()  # noqa: SIM115 - one line
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--token-file {args.token_file}: cannot read ({error})") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file}: the first line is empty")
        return token
    if args.token:
        print("note: a --token is visible to other users of this machine (ps); --token-file or $IMGCLF_TOKEN keep "
              "it private", file=sys.stderr)  # fmt: skip
    if args.token is not None and not args.token.strip():
        raise UsageError("--token is empty: give a token, or leave --token out to serve without one")
    from_environment = os.environ.get("IMGCLF_TOKEN")
    if not args.token and from_environment is not None and not from_environment.strip():
        print("warning: IMGCLF_TOKEN is set but empty: the server asks no client for a token", file=sys.stderr)
    return args.token or (from_environment or "").strip() or None


def open_host_warning(host: str, allowed_hosts, token: str | None) -> str | None:
    """What to say when the server listens beyond this machine: every machine that reaches it may
    use the model (the Host check guards loopback servers from web pages only)."""
    from imgclf.serve.settings import is_loopback

    if is_loopback(host):
        return None
    reach = f"every machine that can reach {host}" if host not in ("0.0.0.0", "::") else "every machine on its networks"
    checks = [] if allowed_hosts else ["no Host check (--allowed-host)"]
    if token is None:
        checks.append("no token (--token-file or $IMGCLF_TOKEN)")
    missing = f"; {' and '.join(checks)}" if checks else ""
    return f"warning: serving on {host}: {reach} can send images to this model{missing}"
