"""Connections the server closes on its own: one whose request head has not fully arrived within
``HEAD_TIMEOUT_S`` of the connection opening (or of the previous answer on a kept-alive
connection). uvicorn closes idle kept-alive connections but never one that has sent nothing yet:
100 sockets opened and left silent used up the server's file limit and locked every other client
out, no token needed; a client trickling its header in a byte at a time held a connection the
same way. A request whose head has arrived is timed by the guard instead (its body must arrive
within ``--read-timeout``).

Connections per client: one address may hold at most ``max_per_client`` connections at once
(``--max-connections-per-client``); a connection over it is answered 503 in the server's JSON
error shape and closed before anything is read, so one client opening sockets in a loop cannot
use up the file limit the others need. Browsers open 6 per server.

That answer is held for ``REFUSAL_HOLD_S`` (reading paused) while the server has file descriptors
to spare: under half its soft file limit in connections. A client reopening every refused socket
at once otherwise reconnected about 10,000 times a second, and the refusals alone took most of
the event loop (normal clients' p95 7.7x). Held, each of its sockets comes back once a second.
Past half the limit, refusals are answered at once again, so holding them never spends the
descriptors the limit is there to keep."""

from __future__ import annotations

import asyncio
import json
import resource
from collections import Counter
from dataclasses import dataclass, field

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["REFUSAL_HOLD_S", "ConnectionBook", "HeadTimedH11Protocol", "head_timed_protocol"]

REFUSAL_HOLD_S = 1.0  # as long as the Retry-After the refusal sends


@dataclass
class ConnectionBook:
    """One server's connections: open ones per client address, and refusals being held."""

    open_per_client: Counter = field(default_factory=Counter)
    held_refusals: int = 0
    # File descriptors the server may spend holding refusals and open connections together.
    spare_descriptors: int = field(default_factory=lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)

    def may_hold_refusal(self) -> bool:
        return self.open_per_client.total() + self.held_refusals < self.spare_descriptors


class HeadTimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that sends no complete request head in time."""

    head_timeout_s = 10.0  # a browser or curl sends its request head within milliseconds of connecting
    max_per_client = 32
    book: ConnectionBook  # this server's connections, shared by its protocols (head_timed_protocol)
    _head_timer: asyncio.TimerHandle | None = None
    _client: str | None = None
    _held_refusal: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else None
        if client is not None and self.book.open_per_client[client] >= self.max_per_client:
            self._refuse(transport)
            return
        if client is not None:
            self._client = client
            self.book.open_per_client[client] += 1
        self._arm_head_timer()

    def _refuse(self, transport: asyncio.Transport) -> None:
        if not self.book.may_hold_refusal():
            self._answer_refusal()
            return
        transport.pause_reading()
        self.book.held_refusals += 1
        self._held_refusal = self.loop.call_later(REFUSAL_HOLD_S, self._answer_refusal)

    def _answer_refusal(self) -> None:
        self._release_held_refusal()
        if not self.transport.is_closing():
            self.transport.write(_too_many(self.max_per_client))
            self.transport.close()

    def _release_held_refusal(self) -> None:
        if self._held_refusal is not None:
            self._held_refusal.cancel()
            self._held_refusal = None
            self.book.held_refusals -= 1

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answering():  # a whole request head has arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()  # the next request's head gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._release_held_refusal()
        if self._client is not None:
            self.book.open_per_client[self._client] -= 1
            if self.book.open_per_client[self._client] <= 0:
                del self.book.open_per_client[self._client]
            self._client = None
        super().connection_lost(exc)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._close_without_head)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _close_without_head(self) -> None:
        if not self._answering() and not self.transport.is_closing():
            self.transport.close()


def _too_many(limit: int) -> bytes:
    body = json.dumps({"error": {"status": 503, "message": f"this client already holds {limit} connections to the "
                                 "server; close some and retry"}}).encode()  # fmt: skip
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "retry-after: 1\r\nconnection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


def head_timed_protocol(seconds: float, max_per_client: int = 32) -> type[HeadTimedH11Protocol]:
    """The protocol class uvicorn builds each connection from, with this head timeout and limit
    of connections per client (counted per server: each class has its own counter)."""
    values = {"head_timeout_s": float(seconds), "max_per_client": int(max_per_client), "book": ConnectionBook()}
    return type("HeadTimedH11Protocol", (HeadTimedH11Protocol,), values)
