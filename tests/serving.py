"""A real ``imgclf serve`` process on loopback, and the requests the server tests send it."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, model: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "imgclf", "serve", str(model), "--port", str(self.port), *options]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.get("/v1/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.process.stderr.read().decode()[-2000:]}")

    def request(self, path: str, body: bytes | None = None, headers: dict | None = None, method: str = "POST"):
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), dict(error.headers)

    def get(self, path: str):
        return self.request(path, method="GET")[:2]

    def alive(self) -> bool:
        return self.get("/v1/health")[0] == 200 and self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = []
    for field, name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def digit_png(index: int) -> tuple[bytes, str]:
    digits = load_digits()
    pixels = np.clip(digits.images[index] * 16, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), str(digits.target[index])
