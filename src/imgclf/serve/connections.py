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
use up the file limit the others need. Browsers open 6 per server."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeadTimedH11Protocol", "head_timed_protocol"]


class HeadTimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that sends no complete request head in time."""

    head_timeout_s = 10.0  # a browser or curl sends its request head within milliseconds of connecting
    max_per_client = 32
    open_per_client: Counter  # this server's open connections per client address (head_timed_protocol)
    _head_timer: asyncio.TimerHandle | None = None
    _client: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else None
        if client is not None and self.open_per_client[client] >= self.max_per_client:
            transport.write(_too_many(self.max_per_client))
            transport.close()
            return
        if client is not None:
            self._client = client
            self.open_per_client[client] += 1
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answering():  # a whole request head has arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()  # the next request's head gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._client is not None:
            self.open_per_client[self._client] -= 1
            if self.open_per_client[self._client] <= 0:
                del self.open_per_client[self._client]
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
    values = {"head_timeout_s": float(seconds), "max_per_client": int(max_per_client), "open_per_client": Counter()}
    return type("HeadTimedH11Protocol", (HeadTimedH11Protocol,), values)
