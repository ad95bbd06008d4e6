"""How the server says no: one JSON shape for every error, and which refusals are paced.

A client that loops on a refused request (a wrong token, a body too large, an image that is not
one, a busy server) is answered a few times a second instead of hundreds: the guard holds such an
answer back after the request has given its slot up (``HELD_STATUSES``, ``ERROR_HOLD_S``; a 503
for its Retry-After time).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

__all__ = [
    "BUSY_RETRY_S",
    "ERROR_HOLD_S",
    "HELD_STATUSES",
    "REFUSED_HEADER",
    "HttpError",
    "busy",
    "error_response",
    "is_held",
]

BUSY_RETRY_S = 1  # Retry-After of a 503, and how long the refusal is held before it is sent
# Client errors a looping client can repeat cheaply (a wrong token, a body too large, an image
# that is not one, a bad parameter): answered after this many seconds, the slot given back first.
HELD_STATUSES, ERROR_HOLD_S = frozenset({401, 413, 415, 422}), 0.5
# A batch answer whose every file was refused says so in this header (value "all"), and is paced
# like a 415: the answer itself carries what the guard needs, no side channel between them.
REFUSED_HEADER = "x-imgclf-refused"


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def busy(reason: str) -> HttpError:
    return HttpError(503, f"{reason}; retry in {BUSY_RETRY_S} s", {"Retry-After": str(BUSY_RETRY_S)})


def is_held(start_message: dict) -> bool:
    """Whether an answer (its ASGI ``http.response.start``) is a refusal the guard paces."""
    if start_message.get("status") in HELD_STATUSES:
        return True
    return any(name.lower() == REFUSED_HEADER.encode() and value == b"all"
               for name, value in start_message.get("headers", []))  # fmt: skip
