"""imgclf review DATA [--bundle B] [--port 8010] | imgclf review DATA --undo"""

from __future__ import annotations

import argparse
import sys

from imgclf.cli.output import print_json


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "review",
        help="a local page to keep, relabel or remove doubtful images; --undo puts everything back",
        description="Walk the images worth a look on a local page: likely label errors (the label finder of "
        "doctor --labels) and, with --bundle, images the model abstains on, is unsure about or disagrees with, "
        "with their Grad-CAM. Keys: K keep, R remove, 1-9 relabel, N a new class, S accept the suggestion, "
        "U undo. Changes are moves, never deletions (removed files go to DATA/.imgclf-review/trash), logged in "
        "DATA/.imgclf-review/journal.jsonl; imgclf review DATA --undo restores the tree exactly. Works on "
        "folders, CSV and JSON lines listings; archives are read-only.",
    )
    parser.add_argument("data", metavar="DATA")
    parser.add_argument("--bundle", metavar="BUNDLE", help="also show the images this model doubts, with Grad-CAM")
    parser.add_argument("--all", action="store_true", help="show every image, after the doubtful ones (to confirm "
                        "the images imgclf suggest --copy-to sorted by predicted class)")  # fmt: skip
    parser.add_argument("--undo", action="store_true", help="undo every change the review made to DATA")
    parser.add_argument("--port", type=int, default=8010, help="default: 8010")
    parser.add_argument("--seed", type=int, default=0, help="split seed of the label finder (default: 0)")
    parser.add_argument("--json", action="store_true", help="with --undo: print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.undo:
        from imgclf.runners.review import run_undo

        result = run_undo(args.data)
        print_json(result) if args.json else print(f"{args.data}: {result['undone']} change(s) undone")
        return 0
    import uvicorn

    from imgclf.runners.review import review_queue
    from imgclf.serve.review import create_review_app

    items, classes, journal, explain = review_queue(args.data, bundle=args.bundle, seed=args.seed, every_image=args.all)
    app, count = create_review_app(items, classes, journal, explain), len(items)
    # Loopback only: the page moves files in DATA, which nobody else should be able to do.
    print(f"review: {count} images to look at on http://127.0.0.1:{args.port}/ (Ctrl+C to stop)", file=sys.stderr)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0
