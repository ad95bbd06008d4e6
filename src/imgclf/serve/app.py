"""The HTTP layer: FastAPI routes, limits and micro-batching around an engine (serve/engines.py).

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
import ctypes
import ctypes.util
import hmac
import ipaddress
import json
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.data.decode import probe_image
from imgclf.errors import BadImageError, UsageError
from imgclf.serve.engines import png_data_url
from imgclf.serve.page import PAGE

__all__ = ["ServeSettings", "create_app", "is_loopback"]

OPEN_PATHS = frozenset({"/", "/v1/health", "/v1/ready"})  # answered without the token
BUSY_RETRY_S = 1  # Retry-After of a 503, and how long the refusal is held before it is sent
# Client errors a looping client can repeat cheaply (a wrong token, a body too large, an image
# that is not one, a bad parameter): answered after this many seconds, the slot given back first.
HELD_STATUSES, ERROR_HOLD_S = frozenset({401, 413, 415, 422}), 0.5
ALL_REFUSED = "imgclf.all_refused"  # scope key: a batch whose every file was refused, held the same way
MAX_TOP_K_DIGITS = 6  # top_k is clamped to the class count; more digits than this is not a number we parse


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0  # decode + inference per request
    read_timeout_s: float = 30.0  # for the whole body to arrive (10 MB at 3 Mbit/s)
    max_in_flight: int = 64  # requests being answered at once (bodies received)
    max_receiving: int = 256  # requests whose bodies are still arriving
    max_receiving_bytes: int = 256 * 1024 * 1024  # body bytes buffered by those, all together
    max_decoding_pixels: int = 128_000_000  # pixels being decoded at once, all requests together
    max_explain_waiting: int = 2  # /v1/explain calls waiting behind the one running
    max_batch: int = 32  # images per model call when requests are batched together
    batch_window_ms: float = 0.0  # how long the first request of a batch waits for company (see _Batcher)
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None  # Host header values accepted; None: any
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
    """Pure ASGI, in front of every route: the Host check, the token, and for POST requests the
    body read in full within its limits (size, time, the shared receiving pool) before the request
    counts as in flight. The route then gets the buffered body as a single message."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.settings = app, settings
        self.in_flight = self.receiving = self.receiving_bytes = 0
        self.explaining = 0  # /v1/explain calls being answered (one runs, the others wait)
        self.holding = 0  # answers being held back (see _hold)
        self.expected_auth = f"Bearer {settings.token}".encode() if settings.token is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._check_host(scope)
            if scope["path"] not in OPEN_PATHS:
                self._check_token(scope)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send)
            explain = scope["path"] == "/v1/explain"
            if explain and self.explaining > self.settings.max_explain_waiting:  # refused before its body is read
                raise _busy("too many explanations being made")
            body = await self._read_body(scope, receive)
        except HttpError as error:
            return await self._refuse(error, scope, receive, send)
        if body is None:  # the client went away mid-upload: nobody to answer
            return None
        if self.in_flight >= self.settings.max_in_flight:
            return await self._refuse(_busy("too many requests in flight"), scope, receive, send)
        if explain and self.explaining > self.settings.max_explain_waiting:  # others arrived meanwhile
            return await self._refuse(_busy("too many explanations being made"), scope, receive, send)
        self.in_flight += 1
        self.explaining += explain
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1
                self.explaining -= explain

        async def held_send(message) -> None:
            # A request refused for its content (413, 415, 422) gives its slot back at once and
            # gets the answer a moment later: a client looping on bad images is paced instead of
            # making the server refuse hundreds a second while other clients wait.
            refused = message.get("status") in HELD_STATUSES or scope.get(ALL_REFUSED)
            if message["type"] == "http.response.start" and refused and not released:
                release()
                await self._hold(ERROR_HOLD_S)
            await send(message)

        try:
            await self.app(scope, _replay(body, receive), held_send)
        finally:
            release()

    async def _hold(self, seconds: float) -> None:
        """Wait before an answer, unless as many answers as --max-in-flight are already waiting
        (each may keep its request's body in memory)."""
        if self.holding >= self.settings.max_in_flight:
            return
        self.holding += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.holding -= 1

    def _check_host(self, scope) -> None:
        allowed = self.settings.allowed_hosts
        if allowed is None:
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        if host not in allowed:
            raise HttpError(421, f"Host {host[:100]!r} is not this server's (allowed: {', '.join(allowed)})")

    def _check_token(self, scope) -> None:
        if self.expected_auth is None:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")  # raw bytes: a UTF-8 token compares as sent
        if not hmac.compare_digest(given, self.expected_auth):
            raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")

    async def _read_body(self, scope, receive) -> bytes | None:
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            raise HttpError(413, self._too_large())
        if self.receiving >= self.settings.max_receiving:
            raise _busy("too many uploads arriving at once")
        self.receiving += 1
        chunks: list[bytes] = []
        received = 0
        deadline = time.monotonic() + self.settings.read_timeout_s
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    waited = self.settings.read_timeout_s
                    raise HttpError(408, f"the request body did not arrive within {waited:g} s") from None
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                received += len(chunk)
                self.receiving_bytes += len(chunk)
                if received > self.settings.max_body_bytes:
                    raise HttpError(413, self._too_large())
                if self.receiving_bytes > self.settings.max_receiving_bytes:
                    raise _busy("too many bytes arriving at once")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.receiving -= 1
            self.receiving_bytes -= received

    async def _refuse(self, error: HttpError, scope, receive, send) -> None:
        if error.status == 503:
            # Held for the Retry-After time before the answer: a client that retries at once
            # (a flood of /v1/explain) is paced to one request per second per connection, instead
            # of making the server answer a thousand refusals a second while others wait.
            await self._hold(BUSY_RETRY_S)
        elif error.status in HELD_STATUSES:  # a wrong token, a body too large: paced the same way
            await self._hold(ERROR_HOLD_S)
        await _error(error.status, error.message, error.headers)(scope, receive, send)

    def _too_large(self) -> str:
        return f"request body over the {self.settings.max_body_bytes:,} byte limit"


def _replay(body: bytes, receive):
    """A receive callable that gives the buffered body once, then waits on the real one (which
    says when the client disconnects)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _busy(reason: str) -> HttpError:
    return HttpError(503, f"{reason}; retry in {BUSY_RETRY_S} s", {"Retry-After": str(BUSY_RETRY_S)})


class _PixelBudget:
    """Pixels being decoded at once, all requests together: a request waits until its image's
    pixels fit (an image over the whole budget waits until nothing else is decoding)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int):
        pixels = min(pixels, self.limit)
        async with self.changed:
            await self.changed.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            async with self.changed:
                self.used -= pixels
                self.changed.notify_all()


class _MemoryTrimmer:
    """Hands freed memory back to the system after a burst of large images: glibc keeps freed
    decode buffers in its arenas (its effect alone is not measured: bench/serve_attack.py measures
    the server with it, +5% a minute after an attack). Runs
    ``malloc_trim(0)`` once decoding has been quiet for a moment after at least ``after_pixels``."""

    def __init__(self, after_pixels: int = 50_000_000, quiet_s: float = 2.0):
        self.after_pixels, self.quiet_s = after_pixels, quiet_s
        self.decoded_pixels, self.last_decode = 0, time.monotonic()
        library = ctypes.util.find_library("c")
        self.trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
        self.task: asyncio.Task | None = None

    def note(self, pixels: int) -> None:
        self.decoded_pixels += pixels
        self.last_decode = time.monotonic()

    def start(self) -> None:
        if self.trim is not None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.quiet_s)
            quiet = time.monotonic() - self.last_decode >= self.quiet_s
            if quiet and self.decoded_pixels >= self.after_pixels:
                self.decoded_pixels = 0
                await asyncio.to_thread(self.trim, 0)


QUIET_POLL_S = 0.002  # how often lower-priority work looks for a moment without predictions


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
        self.busy = 0  # model calls running now
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

    async def wait_quiet(self, seconds: float) -> None:
        """Until no prediction waits or runs (at most ``seconds``): lower-priority work goes then."""
        deadline = time.monotonic() + seconds
        while (self.busy or not self.queue.empty()) and time.monotonic() < deadline:
            await asyncio.sleep(QUIET_POLL_S)

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
                self.busy += 1
                try:
                    rows = await loop.run_in_executor(self.executor, self.engine.predict, images, top_k)
                finally:
                    self.busy -= 1
            except Exception as error:  # noqa: BLE001 - one bad batch must not stop the batcher
                for _, _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, wanted, future), row in zip(live, rows):
                if not future.done():
                    future.set_result({**row, "top_k": row["top_k"][:wanted]})


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> tuple[str, ...]:
    """The Host values a browser sends to a server on this machine (a DNS-rebinding page sends its
    own domain instead)."""
    names = ("localhost", "127.0.0.1", "[::1]")
    return names + tuple(f"{name}:{port}" for name in names)


class _Service:
    """What the routes share: the engine, the micro-batcher, the decoding budget, the memory
    trimmer and the single Grad-CAM thread. Started and stopped with the app."""

    def __init__(self, engine, settings: ServeSettings):
        self.engine, self.settings = engine, settings
        self.batcher = _Batcher(engine, settings)
        self.trimmer = _MemoryTrimmer()
        self.explain_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-explain")
        self.pixel_budget: _PixelBudget | None = None  # made inside the running loop
        self.explain_gate: asyncio.Lock | None = None
        self.explain_rest_until = 0.0  # perf_counter() before which no Grad-CAM starts

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI):
        self.pixel_budget = _PixelBudget(self.settings.max_decoding_pixels)
        self.explain_gate = asyncio.Lock()
        self.batcher.start()
        self.trimmer.start()
        yield
        self.trimmer.stop()
        self.batcher.stop()
        self.explain_executor.shutdown(wait=False, cancel_futures=True)

    async def decoded(self, name: str, data: bytes) -> np.ndarray:
        """Decoded and prepared within the shared pixel budget; HttpError 413/415 for a bad image."""
        try:
            info = await asyncio.to_thread(probe_image, data, name)
            pixels = info.width * info.height
            async with self.pixel_budget.reserve(pixels):
                image = await asyncio.to_thread(self.engine.decode, data, name)
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
        return [{"file": name, **(image if isinstance(image, dict) else next(answers))}
                for (name, _), image in zip(files, images)]  # fmt: skip

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
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(str(item.get("msg", item)) for item in error.errors()) or "invalid request")


def _add_prediction_routes(app: FastAPI, service: _Service) -> None:
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
        if all("error" in answer for answer in answers):  # nothing in it could be read: paced like a 415
            request.scope[ALL_REFUSED] = True
        return JSONResponse(answers)

    @app.post("/v1/explain", summary="Grad-CAM picture for one image, as a PNG data URL")
    async def explain(request: Request) -> JSONResponse:
        return JSONResponse({"png": png_data_url(await service.explain_png(request))})


def _add_status_routes(app: FastAPI, service: _Service) -> None:
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


def create_app(engine, settings: ServeSettings = ServeSettings()) -> FastAPI:  # noqa: B008 - frozen
    """The FastAPI app for ``engine``, behind the guard (host, token, body limits, pacing)."""
    service = _Service(engine, settings)
    app = FastAPI(title="imgclf", description="Image classification with an imgclf model.", version="1",
                  lifespan=service.lifespan)  # fmt: skip
    _add_error_handlers(app)
    _add_prediction_routes(app, service)
    _add_status_routes(app, service)
    return _GuardMiddleware(app, settings)


def settings_json(settings: ServeSettings) -> dict:
    values = json.loads(json.dumps(settings.__dict__))
    values.pop("token")
    return values
