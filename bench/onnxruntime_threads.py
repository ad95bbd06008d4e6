"""How onnxruntime alone spends the cores on one model: threads per call, callers, batch size.

    .venv/bin/python bench/onnxruntime_threads.py MODEL.onnx [--seconds 8]

MODEL.onnx: a file from `imgclf export` (uint8 pixels in; its metadata gives the layout). Each
row runs for --seconds with random 32 x 32 pixels (the graph resizes them) and prints images/s.
This is the measurement behind the server's default of one onnxruntime thread per model call
(imgclf/engines.py, BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from serve_throughput import run_clients  # bench/ is the script's folder: first on sys.path

from imgclf.export.runtime import onnx_session

# (label, onnxruntime threads per call or None for its default, concurrent callers, batch size)
SETTINGS = (
    ("default threads, 8 callers, batch 1", None, 8, 1),
    ("default threads, 1 caller, batch 1", None, 1, 1),
    ("default threads, 1 caller, batch 4", None, 1, 4),
    ("default threads, 1 caller, batch 8", None, 1, 8),
    ("default threads, 2 callers, batch 4", None, 2, 4),
    ("1 thread, 2 callers, batch 1", 1, 2, 1),
    ("1 thread, 2 callers, batch 4", 1, 2, 4),
    ("1 thread, 8 callers, batch 1", 1, 8, 1),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    sessions = {threads: onnx_session(args.model, threads=threads) for threads in (None, 1)}
    contract = json.loads(sessions[1].get_modelmeta().custom_metadata_map["imgclf.input"])
    rng = np.random.default_rng(0)
    for label, threads, callers, batch in SETTINGS:
        shape = (batch, 32, 32, contract["channels"])
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        if contract["layout"] == "NCHW":
            pixels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        session = sessions[threads]
        feed = {session.get_inputs()[0].name: pixels}
        calls = run_clients(lambda s=session, f=feed: s.run(None, f), args.seconds, callers)
        rate = calls["requests_per_s"] * batch
        print(f"{label:40s} {rate:7.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
