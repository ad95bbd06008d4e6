"""The HTTP layer: FastAPI routes, limits and micro-batching around an engine (serve/engines.py).

Every limit answers with a JSON error ``{"error": {"status", "message"}}`` and the server keeps
serving: body too large (413, from Content-Length before reading, or while streaming), not an
allowed image by content (415), over the pixel limit (413), too slow (504), too many requests in
flight (503 with Retry-After), missing or wrong bearer token (401). No endpoint loads a model or
fetches a URL given by a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile

from imgclf.errors import BadImageError, UsageError
from imgclf.serve.engines import png_data_url
from imgclf.serve.page import PAGE

__all__ = ["ServeSettings", "create_app"]


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0  # decode + inference per request
    max_in_flight: int = 64  # requests being received or answered at once
    max_batch: int = 32  # images per model call when requests are batched together
    batch_window_ms: float = 0.0  # how long the first request of a batch waits for company (see _Batcher)
    token: str | None = None
    top_k: int = 5
    max_files: int = 64  # per /v1/predict/batch request
    workers: int | None = None  # model calls at once; None: what the engine can use (parallel_batches)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


class _GuardMiddleware:
    """Pure ASGI: counts requests in flight (503 beyond the limit) and caps the body size (413)
    before and while it streams in, so an oversized upload is never read whole."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.settings, self.in_flight = app, settings, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/predict"):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.settings.max_in_flight:
            response = _error(503, "too many requests in flight; retry shortly", {"Retry-After": "1"})
            return await response(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            return await _error(413, self._too_large())(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, self._counting(receive), send)
        except HttpError as error:  # raised by the counting receive: the body grew past the limit
            await _error(error.status, error.message)(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _too_large(self) -> str:
        return f"request body over the {self.settings.max_body_bytes:,} byte limit"

    def _counting(self, receive):
        received = 0

        async def wrapped():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.settings.max_body_bytes:
                raise HttpError(413, self._too_large())
            return message

        return wrapped


class _Batcher:
    """Collects images from concurrent requests and runs the model once per batch, in worker
    threads so the event loop keeps accepting requests. ``workers`` batches may run at once, each
    collected by its own task from the shared queue."""

    def __init__(self, engine, settings: ServeSettings):
        self.engine, self.settings = engine, settings
        self.workers = settings.workers or getattr(engine, "parallel_batches", 1)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.waiting = 0  # workers waiting for a first request
        self.executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        # Model calls get threads of their own: in asyncio's shared pool (cores + 4 threads) two
        # calls per core would leave decoding no thread from 4 cores on.
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imgclf-model")
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._run()) for _ in range(self.workers)]

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        return bool(self.tasks) and not any(task.done() for task in self.tasks)

    async def predict(self, image: np.ndarray, top_k: int) -> dict:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, top_k, future))
        return await future

    async def _next_batch(self) -> list:
        """The first request to arrive, plus this worker's share of those already queued.

        No fixed wait for company by default: under load requests queue up while the model runs,
        so batches form by themselves, and an idle server answers a lone request at once. The
        share splits the queue with the workers still waiting, so no core idles while another
        worker holds every request (measured with 8 clients on 2 cores and two workers: a 2 ms
        window left 0.35 of the cores idle and served 161 requests/s; this, 0.25 and 165)."""
        self.waiting += 1
        try:
            items = [await self.queue.get()]
        finally:
            self.waiting -= 1
        deadline = time.monotonic() + self.settings.batch_window_ms / 1000
        while len(items) < self.settings.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        share = math.ceil((len(items) + self.queue.qsize()) / (1 + self.waiting))
        while len(items) < min(share, self.settings.max_batch) and not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def _run(self) -> None:
        while True:
            items = await self._next_batch()
            live = [item for item in items if not item[2].cancelled()]
            if not live:
                continue
            top_k = max(item[1] for item in live)
            try:
                images, loop = [item[0] for item in live], asyncio.get_running_loop()
                rows = await loop.run_in_executor(self.executor, self.engine.predict, images, top_k)
            except Exception as error:  # noqa: BLE001 - one bad batch must not stop the batcher
                for _, _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, wanted, future), row in zip(live, rows):
                if not future.done():
                    future.set_result({**row, "top_k": row["top_k"][:wanted]})


def _check_token(request: Request, settings: ServeSettings) -> None:
    if settings.token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
        raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")


async def _image_bytes(request: Request) -> list[tuple[str, bytes]]:
    """The uploaded files: multipart fields ``file``/``files``, or the raw body as one image."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        uploads = [value for key, value in form.multi_items() if key in ("file", "files")]
        files = [
            (upload.filename or "upload", await upload.read()) for upload in uploads if isinstance(upload, UploadFile)
        ]
        if not files:
            raise HttpError(422, "multipart request without a 'file' field")
        return files
    body = await request.body()
    if not body:
        raise HttpError(422, "empty request: send an image as the body or as the multipart field 'file'")
    return [("body", body)]


def _decode(engine, name: str, data: bytes) -> np.ndarray:
    try:
        return engine.decode(data, name)
    except BadImageError as error:
        status = 413 if "pixels" in error.reason else 415
        raise HttpError(status, f"{name}: {error.reason}") from None


def _top_k(request: Request, settings: ServeSettings) -> int:
    value = request.query_params.get("top_k", str(settings.top_k))
    if not value.isdigit() or int(value) < 1:
        raise HttpError(422, f"top_k must be a positive integer, not {value!r}")
    return int(value)


def create_app(engine, settings: ServeSettings = ServeSettings()) -> FastAPI:  # noqa: B008 - frozen
    batcher = _Batcher(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="imgclf", description="Image classification with an imgclf model.", version="1", lifespan=lifespan
    )

    @app.exception_handler(HttpError)
    async def http_error(_: Request, error: HttpError) -> JSONResponse:
        return _error(error.status, error.message, error.headers)

    async def predict_files(request: Request, many: bool) -> list[dict]:
        _check_token(request, settings)
        top_k = _top_k(request, settings)
        files = await _image_bytes(request)
        if len(files) > (settings.max_files if many else 1):
            raise HttpError(422, f"at most {settings.max_files if many else 1} file(s) per request")

        async def one(name: str, data: bytes) -> dict:
            image = await asyncio.to_thread(_decode, engine, name, data)
            return {"file": name, **await batcher.predict(image, top_k)}

        try:
            return await asyncio.wait_for(asyncio.gather(*(one(n, d) for n, d in files)), settings.timeout_s)
        except TimeoutError:
            raise HttpError(504, f"decoding and inference took over {settings.timeout_s:g} s") from None

    @app.post("/v1/predict", summary="top-k labels for one image (multipart field 'file' or the raw body)")
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse((await predict_files(request, many=False))[0])

    @app.post("/v1/predict/batch", summary="top-k labels for several images (multipart fields 'files')")
    async def predict_batch(request: Request) -> JSONResponse:
        return JSONResponse(await predict_files(request, many=True))

    @app.post("/v1/explain", summary="Grad-CAM picture for one image, as a PNG data URL")
    async def explain(request: Request) -> JSONResponse:
        _check_token(request, settings)
        name, data = (await _image_bytes(request))[0]
        image = await asyncio.to_thread(_decode, engine, name, data)
        try:
            png = await asyncio.wait_for(asyncio.to_thread(engine.explain_png, image), settings.timeout_s)
        except UsageError as error:
            raise HttpError(501, str(error)) from None
        return JSONResponse({"png": png_data_url(png)})

    @app.get("/v1/health", summary="the process is up")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/ready", summary="the model is loaded and the batcher runs")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": batcher.running}, status_code=200 if batcher.running else 503)

    @app.get("/v1/metadata", summary="classes, input contract and model card")
    async def metadata() -> dict:
        limits = {**settings_json(settings), "workers": batcher.workers}
        return {**engine.metadata, "auth_required": settings.token is not None, "limits": limits}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return _GuardMiddleware(app, settings)


def settings_json(settings: ServeSettings) -> dict:
    values = json.loads(json.dumps(settings.__dict__))
    values.pop("token")
    return values
