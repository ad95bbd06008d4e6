"""What a server is allowed to do: its limits (``ServeSettings``) and the hosts it answers to."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

__all__ = ["ServeSettings", "is_loopback", "loopback_hosts", "settings_json"]


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
    batch_window_ms: float = 0.0  # how long the first request of a batch waits for company (see Batcher)
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None  # Host header values accepted; None: any
    top_k: int = 5
    max_files: int = 64  # per /v1/predict/batch request
    workers: int | None = None  # model calls at once; None: what the engine can use (parallel_batches)


def settings_json(settings: ServeSettings) -> dict:
    """The limits as ``/v1/metadata`` shows them (the token left out)."""
    values = json.loads(json.dumps(settings.__dict__))
    values.pop("token")
    return values


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
