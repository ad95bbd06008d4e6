"""The guard in front of every route (pure ASGI): the Host check, the bearer token, and for a POST
its body read in full within its limits (size, time, the shared receiving pool) before the request
takes one of the ``max_in_flight`` slots; refusals paced (``serve.refusals``).

Slow uploads wait in their own, larger pool (``max_receiving``) and cannot lock out clients whose
bodies have arrived; /v1/explain is refused before its body is read when too many wait.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from imgclf.serve.refusals import BUSY_RETRY_S, ERROR_HOLD_S, HELD_STATUSES, HttpError, busy, error_response, is_held
from imgclf.serve.settings import ServeSettings

__all__ = ["OPEN_PATHS", "Guard"]

OPEN_PATHS = frozenset({"/", "/v1/health", "/v1/ready"})  # answered without the token
# On every answer: no page may frame this one (clickjacking), no browser guesses a type other than
# the one sent, nothing is cached (answers describe a user's images), no address leaks onward.
PROTECTIVE_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
)


class Guard:
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
        return await self._guarded(scope, receive, _with_protective_headers(send))

    async def _guarded(self, scope, receive, send):
        try:
            self._check_framing(scope)
            self._check_host(scope)
            if scope["path"] not in OPEN_PATHS:
                self._check_token(scope)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send)
            explain = scope["path"] == "/v1/explain"
            if explain and self.explaining > self.settings.max_explain_waiting:  # refused before its body is read
                raise busy("too many explanations being made")
            body = await self._read_body(scope, receive)
        except HttpError as error:
            return await self._refuse(error, scope, receive, send)
        if body is None:  # the client went away mid-upload: nobody to answer
            return None
        if self.in_flight >= self.settings.max_in_flight:
            return await self._refuse(busy("too many requests in flight"), scope, receive, send)
        if explain and self.explaining > self.settings.max_explain_waiting:  # others arrived meanwhile
            return await self._refuse(busy("too many explanations being made"), scope, receive, send)
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
            if message["type"] == "http.response.start" and is_held(message) and not released:
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

    def _check_framing(self, scope) -> None:
        """A request with both Content-Length and Transfer-Encoding is framed two ways, and a
        proxy in front may read it the other way (request smuggling): refused, and the connection
        closed, rather than guessing."""
        names = {name for name, _ in scope["headers"]}
        if b"content-length" in names and b"transfer-encoding" in names:
            raise HttpError(400, "both Content-Length and Transfer-Encoding: ambiguous framing refused",
                            {"Connection": "close"})  # fmt: skip

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
            raise busy("too many uploads arriving at once")
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
                    raise busy("too many bytes arriving at once")
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
        await error_response(error.status, error.message, error.headers)(scope, receive, send)

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


def _with_protective_headers(send):
    async def protected(message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(name, value) for name, value in PROTECTIVE_HEADERS if name not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return protected
