"""The prediction server, tested over real HTTP against a uvicorn process on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from serving import TOKEN, Server, digit_png, multipart


@pytest.fixture(scope="module")
def server(digits_bundle):
    running = Server(digits_bundle, "--token", TOKEN, "--max-body-mb", "0.05", "--max-in-flight", "2")
    yield running
    running.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_real_image_gets_its_label(server):
    for index in (0, 1, 2, 3):
        data, truth = digit_png(index)
        body, headers = multipart([("file", "digit.png", data)])
        status, result, _ = server.request("/v1/predict", body, {**headers, **AUTH})
        assert status == 200 and result["top_k"][0]["label"] == truth
        status, raw, _ = server.request("/v1/predict?top_k=2", data, AUTH)  # the raw body works too
        assert status == 200 and raw["top_k"][0]["label"] == truth and len(raw["top_k"]) == 2
    body, headers = multipart([("files", "a.png", digit_png(0)[0]), ("files", "b.png", digit_png(1)[0])])
    status, results, _ = server.request("/v1/predict/batch", body, {**headers, **AUTH})
    assert status == 200 and [r["top_k"][0]["label"] for r in results] == ["0", "1"]


def test_a_batch_whose_every_file_is_refused_says_so_and_is_paced(server):
    """Every file refused: each entry has its error, the answer says "all" in a header, and it
    comes after the pause a refused single image gets; one readable file lifts both."""
    junk = multipart([("files", "a.txt", b"not an image"), ("files", "b.txt", b"nor this")])
    started = time.monotonic()
    status, results, headers = server.request("/v1/predict/batch", junk[0], {**junk[1], **AUTH})
    waited = time.monotonic() - started
    assert status == 200 and all(result["error"]["status"] == 415 for result in results)
    assert headers.get("x-imgclf-refused") == "all" and waited >= 0.5
    mixed = multipart([("files", "a.txt", b"not an image"), ("files", "b.png", digit_png(1)[0])])
    status, results, headers = server.request("/v1/predict/batch", mixed[0], {**mixed[1], **AUTH})
    assert status == 200 and "x-imgclf-refused" not in {name.lower() for name in headers}
    assert results[1]["top_k"][0]["label"] == "1"


def test_limits_answer_with_json_errors_and_the_server_stays_up(server):
    cases = {
        "no token": (digit_png(0)[0], {}, 401),
        "wrong token": (digit_png(0)[0], {"Authorization": "Bearer nope"}, 401),
        "body too large": (b"\0" * 60_000, AUTH, 413),
        "not an image": (b"<html>hello</html>", AUTH, 415),
        "pixel bomb": (_bomb_png(), AUTH, 413),
        "empty body": (b"", AUTH, 422),
        "multipart without file": (multipart([("other", "x.png", b"1")])[0], AUTH, 422),
    }
    for name, (body, headers, expected) in cases.items():
        if name == "multipart without file":
            headers = {**headers, **multipart([])[1]}
            body = body.replace(body.split(b"\r\n")[0], b"--" + headers["Content-Type"].split("=")[1].encode())
        status, result, _ = server.request("/v1/predict", body, headers)
        assert status == expected, (name, result)
        assert result["error"]["status"] == expected and result["error"]["message"], name
        assert server.alive(), name
    status, result, _ = server.request("/v1/predict?top_k=zero", digit_png(0)[0], AUTH)
    assert status == 422 and "top_k" in result["error"]["message"]
    assert server.get("/v1/metadata")[0] == 401  # the model card and the API description need the token too
    assert server.get("/openapi.json")[0] == 401 and server.get("/docs")[0] == 401
    assert server.request("/v1/metadata", headers=AUTH, method="GET")[1]["auth_required"] is True
    assert server.get("/v1/health") == (200, {"status": "ok", "auth_required": True})  # open, for the page


def _bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 megapixels in a few kB
    return buffer.getvalue()


class _SlowEngine:
    """Holds each model call for a while, so requests pile up in flight."""

    parallel_batches = 1

    def decode(self, data, source):
        return np.zeros((4, 4, 3), np.uint8)

    def predict(self, images, top_k):
        time.sleep(0.5)
        return [{"label": "x", "top_k": [{"label": "x", "probability": 1.0}]} for _ in images]


async def _asgi_call(app, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    """One request straight through the ASGI app (no sockets): its status and JSON body."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else await asyncio.sleep(3600)

    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload), dict((k.decode(), v.decode()) for k, v in start["headers"])


def test_too_many_requests_in_flight_get_503_with_retry_after():
    from imgclf.serve.app import create_app
    from imgclf.serve.settings import ServeSettings

    guard = create_app(_SlowEngine(), ServeSettings(max_in_flight=2))
    png = digit_png(0)[0]

    async def scenario():
        async with guard.app.router.lifespan_context(guard.app):
            return await asyncio.gather(*(_asgi_call(guard, "POST", "/v1/predict", png) for _ in range(4)))

    answers = asyncio.run(scenario())
    assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503]
    busy = [(body, headers) for status, body, headers in answers if status == 503]
    assert all("in flight" in body["error"]["message"] and headers["retry-after"] == "1" for body, headers in busy)


def test_an_exported_onnx_file_is_served_the_same_way(digits_bundle, tmp_path):
    from imgclf.cli.main import main

    assert main(["export", str(digits_bundle), "--output", str(tmp_path / "m.onnx")]) == 0
    onnx_server = Server(tmp_path / "m.onnx")
    try:
        data, truth = digit_png(5)
        status, result, _ = onnx_server.request("/v1/predict", data)
        assert status == 200 and result["top_k"][0]["label"] == truth
        metadata = onnx_server.get("/v1/metadata")[1]
        assert metadata["kind"] == "onnx"
        assert metadata["limits"]["workers"] == 2 * len(os.sched_getaffinity(0))  # two one-thread calls per core
    finally:
        onnx_server.stop()


def test_an_exported_onnx_file_abstains_where_the_bundle_does(digits_bundle, tmp_path):
    from imgclf.cli.main import main
    from imgclf.engines import open_engine

    assert main(["export", str(digits_bundle), "--output", str(tmp_path / "m.onnx")]) == 0
    bundle_engine, onnx_engine = open_engine(digits_bundle), open_engine(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    images = [digit_png(index)[0] for index in range(20)]
    for _ in range(20):  # noise: the bundle withholds a label for most of these
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    answers = {}
    for name, engine in (("bundle", bundle_engine), ("onnx", onnx_engine)):
        decoded = [engine.decode(data, f"image{index}") for index, data in enumerate(images)]
        answers[name] = [row["label"] for row in engine.predict(decoded, top_k=3)]
    assert answers["bundle"].count(None) >= 5  # the rule is exercised, not vacuously equal
    assert answers["onnx"] == answers["bundle"]


class _SlowEchoEngine:
    """Answers each image with its own first pixel as the label, slowly, and records its calls."""

    parallel_batches = 2

    def __init__(self):
        self.batches, self.running, self.most_running, self.threads = [], 0, 0, set()
        self.lock = threading.Lock()

    def predict(self, images, top_k):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.batches.append(len(images))
            self.threads.add(threading.current_thread().name.split("_")[0])
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return [{"label": str(int(image[0, 0, 0])), "top_k": [{"label": str(int(image[0, 0, 0]))}]} for image in images]


def test_concurrent_requests_are_batched_over_parallel_workers_and_each_gets_its_own_answer():
    import asyncio

    from imgclf.serve.batcher import Batcher
    from imgclf.serve.settings import ServeSettings

    engine = _SlowEchoEngine()
    images = [np.full((4, 4, 3), value, np.uint8) for value in range(40)]

    async def scenario():
        batcher = Batcher(engine, ServeSettings())
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(image, top_k=1) for image in images))
        finally:
            batcher.stop()

    answers = asyncio.run(scenario())
    assert [answer["label"] for answer in answers] == [str(value) for value in range(40)]
    assert engine.most_running == 2  # the engine's two workers ran side by side, never more
    assert sum(engine.batches) == 40 and max(engine.batches) > 1  # and requests shared model calls
    assert max(engine.batches) <= 20  # the queue was split between the workers, not held by one
    assert engine.threads == {"imgclf-model"}  # its own threads: never short of asyncio's shared pool


def test_serve_refuses_bad_options_and_sources_by_name(digits_bundle, tmp_path, capsys):
    from imgclf.cli.main import main

    assert main(["serve", str(digits_bundle), "--workers", "0"]) == 2
    assert "--workers must be positive" in capsys.readouterr().err
    assert main(["serve", str(digits_bundle), "--threads", "-1"]) == 2
    assert "--threads must be positive" in capsys.readouterr().err
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"not loaded")
    assert main(["serve", str(pickle)]) == 2
    assert f"{pickle}: not a bundle folder or an .onnx file" in capsys.readouterr().err


class _SlowDecodeEngine(_SlowEngine):
    """Decoding takes 0.6 s; records when each decode starts and ends."""

    def __init__(self):
        self.decodes: list[tuple[float, float]] = []

    def decode(self, data, source):
        started = time.monotonic()
        time.sleep(0.6)
        self.decodes.append((started, time.monotonic()))
        return np.zeros((4, 4, 3), np.uint8)


def test_a_timed_out_request_keeps_its_decoding_budget_until_its_decode_ends():
    """The first request times out after 0.4 s while its decode runs on for 0.6 s; the budget
    (one image) must not let the second request's decode start before the first one's ended."""
    from imgclf.serve.app import create_app
    from imgclf.serve.settings import ServeSettings

    engine = _SlowDecodeEngine()
    png = digit_png(0)[0]
    guard = create_app(engine, ServeSettings(timeout_s=0.4, max_decoding_pixels=64))  # one 8x8 digit at a time

    async def scenario():
        async with guard.app.router.lifespan_context(guard.app):
            first = await _asgi_call(guard, "POST", "/v1/predict", png)
            second = await _asgi_call(guard, "POST", "/v1/predict", png)
            await asyncio.sleep(1.5)  # let the second decode finish too
            return first, second

    (first_status, _, _), (second_status, _, _) = asyncio.run(scenario())
    assert first_status == 504 and second_status == 504
    (first_start, first_end), (second_start, _) = sorted(engine.decodes)
    assert second_start >= first_end - 0.01  # never two decodes over the budget at once


def test_an_open_host_or_an_empty_token_is_said_out_loud(monkeypatch, capsys):
    from imgclf.cli.main import main
    from imgclf.cli.serve_cmd import open_host_warning

    assert open_host_warning("127.0.0.1", None, None) is None
    warning = open_host_warning("0.0.0.0", None, None)
    assert "every machine on its networks" in warning and "no token" in warning and "no Host check" in warning
    assert "no token" not in open_host_warning("0.0.0.0", ["model.example"], "secret")
    assert main(["serve", "runs/none", "--token", " "]) == 2
    assert "--token is empty" in capsys.readouterr().err


def test_capture_keeps_doubted_images_within_its_limits(digits_bundle, tmp_path):
    """Every answer counts as unsure under a threshold above 1; three images, two kept a minute."""
    folder = tmp_path / "captured"
    running = Server(digits_bundle, "--capture", str(folder), "--capture-unsure-below", "1.01",
                     "--capture-per-minute", "2")  # fmt: skip
    try:
        for index in range(3):
            status, _, _ = running.request("/v1/predict", digit_png(index)[0])
            assert status == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(folder.glob("unsure/*.png"))) < 2:
            time.sleep(0.1)
    finally:
        running.stop()
    kept = sorted(folder.glob("unsure/*.png"))
    assert len(kept) == 2
    assert {path.read_bytes() for path in kept} <= {digit_png(index)[0] for index in range(3)}
    records = [json.loads(line) for line in (folder / "captured.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(record["reason"] == "unsure" and record["answer"]["top_k"] for record in records)


def test_capture_keeps_nothing_the_model_is_sure_of_and_stops_when_full(tmp_path):
    from imgclf.serve.capture import Capture, CaptureLimits

    capture = Capture(tmp_path, CaptureLimits(unsure_below=0.6, per_minute=100, max_files=1))
    sure = {"label": "cat", "top_k": [{"label": "cat", "probability": 0.95}]}
    assert capture.offer(b"\x89PNG sure", sure) is None
    assert capture.offer(b"\x89PNG odd", {"label": None, "abstained": "unlike", "top_k": []}).suffix == ".png"
    assert capture.offer(b"\x89PNG odd 2", {"label": None, "abstained": "unlike", "top_k": []}) is None  # full
    assert capture.skipped["full"] == 1 and capture.offer(b"x", {"error": "unreadable"}) is None
