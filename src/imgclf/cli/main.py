"""``imgclf <command>``: parses arguments, builds a config, calls one runner; nothing else.

User mistakes (ImgclfError) print one line on stderr and exit with code 2, never a traceback.
``--json`` prints the machine-readable result on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import errno
import sys

from imgclf import __version__
from imgclf.cli import (
    advise_cmd,
    benchmark_cmd,
    compare_cmd,
    doctor_cmd,
    evaluate_cmd,
    explain_cmd,
    export_cmd,
    lr_find_cmd,
    models_cmd,
    predict_cmd,
    report_cmd,
    review_cmd,
    serve_cmd,
    suggest_cmd,
    train_cmd,
    update_cmd,
)
from imgclf.errors import ImgclfError
from imgclf.text import for_terminal

__all__ = ["build_parser", "main"]

COMMANDS = (
    train_cmd,
    lr_find_cmd,
    evaluate_cmd,
    predict_cmd,
    explain_cmd,
    report_cmd,
    export_cmd,
    benchmark_cmd,
    serve_cmd,
    models_cmd,
    advise_cmd,
    compare_cmd,
    doctor_cmd,
    update_cmd,
    suggest_cmd,
    review_cmd,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(for_terminal(f"imgclf {self.prog.split()[-1]}: error: {message} (see --help)") + "\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgclf", description="Train, evaluate and run image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-launch themselves
    try:
        return int(args.run(args) or 0)
    except ImgclfError as error:
        sys.stderr.write(for_terminal(f"imgclf {args.command}: error: {error}") + "\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"imgclf {args.command}: interrupted\n")
        return 130
    except OSError as error:
        if error.errno not in CANNOT_WRITE:
            raise
        # A full disk or a read-only folder mid-run: one line; what was written before (the last
        # training state, written atomically) is intact and --resume continues from it.
        where = f" {error.filename}" if error.filename else ""
        sys.stderr.write(for_terminal(f"imgclf {args.command}: error: cannot write{where}: {error.strerror}") + "\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
