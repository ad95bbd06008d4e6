"""The HTTP layer: FastAPI routes around an engine, behind the guard.

A request's path through ``serve/``: ``guard`` (Host, token, the body read within its limits, a
slot) -> ``app`` (these routes: files decoded within ``resources.PixelBudget``) -> ``batcher`` (one
model call for many requests) -> ``engines`` (a bundle or an ONNX file, the ``Engine`` protocol);
``settings`` holds the limits and ``refusals`` the shape and pacing of every error.

Every limit answers with a JSON error ``{"error": {"status", "message"}}`` and the server keeps
serving: body too large (413, from Content-Length before reading, or while streaming), a body that
does not arrive in time (408), not an allowed image by content (415), over the pixel limit (413),
too slow (504), too many requests at once (503 with Retry-After), missing or wrong bearer token
(401), a Host header that is not this machine's on a loopback server (421). No endpoint loads a
model or fetches a URL given by a client.

The limits are shared by the whole server, so no client can use them up for the others:

- a POST body is read in full, within ``read_timeout_s``, *before* the request takes one of the
  ``max_in_flight`` slots: slow uploads wait in their own, larger pool (``max_receiving``) and
  cannot lock out clients whose bodies have arrived;
- decoding reserves the image's pixels from a budget the whole server shares
  (``max_decoding_pixels``), so a batch of small files that decode to huge images waits its turn
  instead of taking gigabytes at once;
- each image is decoded and resized in its request's own task; the shared model batch only ever
  holds images of the model's input size, so one bad image fails only its own request;
- Grad-CAM (``/v1/explain``) runs one at a time, with at most ``max_explain_waiting`` waiting;
- refusals are paced: a 503 is sent after its Retry-After second, a client error (401, 413, 415,
  422) half a second after the request has given its slot back, so a client that loops on a refused
  request makes the server answer a few a second instead of hundreds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.data.decode import probe_image
from imgclf.engines import Engine, png_data_url
from imgclf.errors import BadImageError, UsageError
from imgclf.serve.batcher import Batcher
from imgclf.serve.capture import Capture
from imgclf.serve.guard import Guard
from imgclf.serve.page import PAGE
from imgclf.serve.refusals import REFUSED_HEADER, HttpError, error_response
from imgclf.serve.resources import MemoryTrimmer, PixelBudget
from imgclf.serve.settings import ServeSettings, settings_json

__all__ = ["create_app"]

MAX_TOP_K_DIGITS = 6  # top_k is clamped to the class count; more digits than this is not a number we parse


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


def _bad_image(name: str, error: BadImageError) -> HttpError:
    status = 413 if "pixels" in error.reason else 415
    return HttpError(status, f"{name}: {error.reason}")


def _top_k(request: Request, settings: ServeSettings) -> int:
    value = request.query_params.get("top_k", str(settings.top_k))
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if not re.fullmatch(f"[0-9]{{1,{MAX_TOP_K_DIGITS}}}", value) or int(value) < 1:
        raise HttpError(422, f"top_k must be a positive integer, not {value[:20]!r}")
    return int(value)


class Service:
    """What the routes share: the engine, the micro-batcher, the decoding budget, the memory
    trimmer and the single Grad-CAM thread. Started and stopped with the app."""

    def __init__(self, engine: Engine, settings: ServeSettings, capture: Capture | None = None):
        self.engine, self.settings, self.capture = engine, settings, capture
        self.batcher = Batcher(engine, settings)
        self.trimmer = MemoryTrimmer()
        self.explain_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-explain")
        # Decoding threads, as many as asyncio's own pool has: the pixel budget releases an image's
        # share when its thread is done (resources.PixelBudget.run).
        self.decode_executor = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4),
                                                  thread_name_prefix="imgclf-decode")  # fmt: skip
        self.pixel_budget: PixelBudget | None = None  # made inside the running loop
        self.explain_gate: asyncio.Lock | None = None
        self.explain_rest_until = 0.0  # perf_counter() before which no Grad-CAM starts

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI):
        self.pixel_budget = PixelBudget(self.settings.max_decoding_pixels, self.decode_executor)
        self.explain_gate = asyncio.Lock()
        self.batcher.start()
        self.trimmer.start()
        yield
        self.trimmer.stop()
        self.batcher.stop()
        self.explain_executor.shutdown(wait=False, cancel_futures=True)
        self.decode_executor.shutdown(wait=False, cancel_futures=True)

    async def decoded(self, name: str, data: bytes) -> np.ndarray:
        """Decoded and prepared within the shared pixel budget; HttpError 413/415 for a bad image."""
        try:
            info = await asyncio.to_thread(probe_image, data, name, count_frames=False)  # the size is what counts
            pixels = info.width * info.height
            image = await self.pixel_budget.run(pixels, self.engine.decode, data, name)
        except BadImageError as error:
            raise _bad_image(name, error) from None
        self.trimmer.note(pixels)
        return image

    async def _answers(self, files: list[tuple[str, bytes]], top_k: int, many: bool) -> list[dict]:
        # A request's files are decoded one after another: a batch of 64 holds one decoding
        # thread at a time, so it cannot fill the pool ahead of every other client's image.
        images: list[np.ndarray | dict] = []
        for name, data in files:
            try:
                images.append(await self.decoded(name, data))
            except HttpError as error:
                if not many:
                    raise
                # One bad file in a batch fails only its own entry; the others keep their answers.
                images.append({"error": {"status": error.status, "message": error.message}})
        rows = await asyncio.gather(
            *(self.batcher.predict(image, top_k) for image in images if not isinstance(image, dict))
        )
        answers = iter(rows)
        answered = [{"file": name, **(image if isinstance(image, dict) else next(answers))}
                    for (name, _), image in zip(files, images)]  # fmt: skip
        if self.capture is not None:  # written in a thread of its own; the answer does not wait for it
            loop = asyncio.get_running_loop()
            for (name, data), answer in zip(files, answered):
                loop.run_in_executor(None, self.capture.offer, data, answer, name)
        return answered

    async def predict_files(self, request: Request, many: bool) -> list[dict]:
        settings = self.settings
        top_k = _top_k(request, settings)
        files = await _image_bytes(request)
        if len(files) > (settings.max_files if many else 1):
            raise HttpError(422, f"at most {settings.max_files if many else 1} file(s) per request")
        try:
            return await asyncio.wait_for(self._answers(files, top_k, many), settings.timeout_s)
        except TimeoutError:
            raise HttpError(504, f"decoding and inference took over {settings.timeout_s:g} s") from None

    async def explain_png(self, request: Request) -> bytes:
        name, data = (await _image_bytes(request))[0]
        loop = asyncio.get_running_loop()

        async def make() -> bytes:
            image = await self.decoded(name, data)
            async with self.explain_gate:
                return await self._explain_when_quiet(loop, image)

        try:
            return await asyncio.wait_for(make(), self.settings.timeout_s)
        except UsageError as error:
            raise HttpError(501, str(error)) from None
        except TimeoutError:
            raise HttpError(504, f"the explanation took over {self.settings.timeout_s:g} s") from None

    async def _explain_when_quiet(self, loop, image: np.ndarray) -> bytes:
        """Grad-CAM yields to predictions: it starts when none waits or runs, and after each one
        its thread rests as long as the explanation took, so a flood of explanations takes at most
        half of the server's time from the clients that only want labels."""
        await asyncio.sleep(max(0.0, self.explain_rest_until - time.perf_counter()))
        await self.batcher.wait_quiet(self.settings.timeout_s)
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self.explain_executor, self.engine.explain_png, image)
        finally:
            self.explain_rest_until = 2 * time.perf_counter() - started


def _add_error_handlers(app: FastAPI) -> None:
    """Every error body is {"error": {"status", "message"}}, FastAPI's own 404/405/422 too."""

    @app.exception_handler(HttpError)
    async def http_error(_: Request, error: HttpError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(
            422, "; ".join(str(item.get("msg", item)) for item in error.errors()) or "invalid request"
        )


def _add_prediction_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/predict", summary="top-k labels for one image (multipart field 'file' or the raw body)")
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse((await service.predict_files(request, many=False))[0])

    @app.post(
        "/v1/predict/batch",
        summary="top-k labels for several images (multipart fields 'files'); a file that cannot be read gets "
        "an 'error' entry of its own",
    )
    async def predict_batch(request: Request) -> JSONResponse:
        answers = await service.predict_files(request, many=True)
        refused = all("error" in answer for answer in answers)  # nothing in it could be read: paced like a 415
        return JSONResponse(answers, headers={REFUSED_HEADER: "all"} if refused else None)

    @app.post("/v1/explain", summary="Grad-CAM picture for one image, as a PNG data URL")
    async def explain(request: Request) -> JSONResponse:
        return JSONResponse({"png": png_data_url(await service.explain_png(request))})


def _add_status_routes(app: FastAPI, service: Service) -> None:
    settings, batcher = service.settings, service.batcher

    @app.get("/v1/health", summary="the process is up")
    async def health() -> dict:
        return {"status": "ok", "auth_required": settings.token is not None}

    @app.get("/v1/ready", summary="the model is loaded and the batcher runs")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": batcher.running}, status_code=200 if batcher.running else 503)

    @app.get("/v1/metadata", summary="classes, input contract and model card")
    async def metadata() -> dict:
        limits = {**settings_json(settings), "workers": batcher.workers}
        return {**service.engine.metadata, "auth_required": settings.token is not None, "limits": limits}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)


def create_app(
    engine: Engine,
    settings: ServeSettings = ServeSettings(),  # noqa: B008 - frozen
    capture: Capture | None = None,
) -> FastAPI:
    """The FastAPI app for ``engine``, behind the guard (host, token, body limits, pacing);
    ``capture``: where the images the model doubts are kept (``serve --capture``)."""
    service = Service(engine, settings, capture)
    app = FastAPI(title="imgclf", description="Image classification with an imgclf model.", version="1",
                  lifespan=service.lifespan)  # fmt: skip
    _add_error_handlers(app)
    _add_prediction_routes(app, service)
    _add_status_routes(app, service)
    return Guard(app, settings)
