"""Normal clients while the server is under attack: errors, latency and memory.

    .venv/bin/python bench/serve_attack.py [--bundle BUNDLE] [--image IMAGE] [--seconds 20]

Without --bundle, a digits bundle is trained first (a few seconds). The server runs as
``imgclf serve`` on 127.0.0.1; this script is both the normal clients and the attackers:

1. unloaded: 4 normal clients, each POSTing one real image to /v1/predict every 100 ms;
2. under attack, the same clients while at once: 10 connections sending one endless header line,
   64 slow uploads (1 byte every 3 s), 20 clients looping on /v1/explain, and 3 clients looping on
   "poison" images (a 4,000,000 x 1 px PNG of a few kB, and 64 of them in one batch request);
   and (``--attacks`` names them) 100 idle sockets reopened as soon as they are closed ("idle"),
   3 clients looping on a 6.6 MB GIF of 440,000 one-pixel frames ("gif"), and 3 clients looping on
   damaged files, a truncated PNG and a truncated GIF ("damaged");
3. a minute after the attack ends: the server's resident memory against its size before.

Reports requests, errors, p50/p95 latency for each phase, the CPU seconds the server and the
attacking process used (all on the same cores), and the server's memory (RSS) before, at the end
of the attack and a minute after.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

NORMAL_CLIENTS = 4
NORMAL_INTERVAL_S = 0.1  # each normal client sends a request every 100 ms (10 per second)
ATTACKS = ("header", "slow", "explain", "poison")
MORE_ATTACKS = ("idle", "gif", "damaged")
GIF_FRAMES = 440_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc; clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# The attackers connect from another loopback address than the normal clients: the server limits
# connections per client address, and attackers and users do not share one.
ATTACKER_ADDRESS = "127.0.0.2"


def post(url: str, body: bytes, headers: dict | None = None, timeout: float = 60, source: str | None = None) -> int:
    """POST ``body``; the answer's status, or 0 when no answer came (``source``: the local address)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout,
                                            source_address=(source, 0) if source else None)  # fmt: skip
    try:
        connection.request("POST", parsed.path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0  # no answer at all
    finally:
        connection.close()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    head = (
        '--{}\r\nContent-Disposition: form-data; name="files"; filename="{}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    parts = [head.format(boundary, name).encode() + data + b"\r\n" for name, data in files]
    content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), content_type


def normal_clients(url: str, image: bytes, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            status = post(url + "/v1/predict", image)
            elapsed = time.perf_counter() - started
            with lock:
                (latencies.append(elapsed * 1000) if status == 200 else errors.append(status))
            time.sleep(max(0.0, NORMAL_INTERVAL_S - elapsed))

    threads = [threading.Thread(target=client) for _ in range(NORMAL_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)
    return {"requests": len(latencies) + len(errors), "errors": len(errors), "error_statuses": sorted(set(errors)),
            "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1) if ordered else None}  # fmt: skip


class Attack:
    def __init__(self, port: int, image: bytes, kinds: tuple[str, ...] = ATTACKS):
        self.port, self.image, self.kinds, self.stop = port, image, kinds, threading.Event()
        self.threads: list[threading.Thread] = []
        self.counts = {"explain": {}, "poison": {}, "header_refused": 0, "slow_answered": {}, "gif": {}, "damaged": {},
                       "idle_closed_by_server": 0, "idle_refused": 0}  # fmt: skip
        self.lock = threading.Lock()

    def count(self, kind: str, status: int) -> None:
        with self.lock:
            self.counts[kind][status] = self.counts[kind].get(status, 0) + 1

    def endless_header(self) -> None:
        while not self.stop.is_set():
            try:
                connection = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                                      source_address=(ATTACKER_ADDRESS, 0))
                connection.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
                while not self.stop.is_set():
                    connection.sendall(b"a" * 4096)
                    time.sleep(0.01)
            except OSError:
                with self.lock:
                    self.counts["header_refused"] += 1

    def slow_upload(self) -> None:
        try:
            connection = socket.create_connection(("127.0.0.1", self.port), timeout=60,
                                                  source_address=(ATTACKER_ADDRESS, 0))
            connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
            while not self.stop.is_set():
                connection.sendall(b"x")
                if self.stop.wait(3):
                    break
            connection.settimeout(0.1)
            answer = connection.recv(20)
            self.count("slow_answered", int(answer[9:12]) if answer[:5] == b"HTTP/" else 0)
        except OSError:
            self.count("slow_answered", 0)

    def idle(self) -> None:
        """A silent socket, opened again each time the server closes it (or refuses it)."""
        while not self.stop.is_set():
            try:
                connection = socket.create_connection(("127.0.0.1", self.port), timeout=1,
                                                      source_address=(ATTACKER_ADDRESS, 0))
            except OSError:
                with self.lock:
                    self.counts["idle_refused"] += 1
                self.stop.wait(0.2)
                continue
            while not self.stop.is_set():
                try:
                    if connection.recv(1024) == b"":
                        with self.lock:
                            self.counts["idle_closed_by_server"] += 1
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            connection.close()

    def loop_on(self, kind: str, bodies: list[bytes]) -> None:
        while not self.stop.is_set():
            for body in bodies:
                self.count(kind, post(f"http://127.0.0.1:{self.port}/v1/predict", body, source=ATTACKER_ADDRESS))

    def explain(self) -> None:
        while not self.stop.is_set():
            self.count("explain", post(f"http://127.0.0.1:{self.port}/v1/explain", self.image, source=ATTACKER_ADDRESS))

    def poison(self, body: bytes, headers: dict, path: str) -> None:
        while not self.stop.is_set():
            self.count("poison", post(f"http://127.0.0.1:{self.port}{path}", body, headers, source=ATTACKER_ADDRESS))

    def start(self) -> None:
        strip = io.BytesIO()
        Image.new("L", (4_000_000, 1), 200).save(strip, format="PNG", optimize=True)
        batch, batch_headers = multipart([(f"s{i}.png", strip.getvalue()) for i in range(64)])
        targets = {"header": [self.endless_header] * 10, "slow": [self.slow_upload] * 64,
                   "explain": [self.explain] * 20}  # fmt: skip
        self.threads = [threading.Thread(target=target, daemon=True) for kind in self.kinds
                        for target in targets.get(kind, [])]  # fmt: skip
        if "gif" in self.kinds:
            self.threads += [threading.Thread(target=self.loop_on, args=("gif", [frame_heavy_gif()]), daemon=True)
                             for _ in range(3)]  # fmt: skip
        if "damaged" in self.kinds:
            self.threads += [threading.Thread(target=self.loop_on, args=("damaged", damaged_files()), daemon=True)
                             for _ in range(3)]  # fmt: skip
        self.threads += [threading.Thread(target=self.idle, daemon=True) for _ in range(100) if "idle" in self.kinds]
        if "poison" in self.kinds:
            self.threads += [threading.Thread(target=self.poison, args=(strip.getvalue(), {}, "/v1/predict"),
                                              daemon=True) for _ in range(2)]  # fmt: skip
            self.threads.append(threading.Thread(target=self.poison, args=(batch, batch_headers, "/v1/predict/batch"),
                                                 daemon=True))  # fmt: skip
        for thread in self.threads:
            thread.start()

    def finish(self) -> dict:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return self.counts


def frame_heavy_gif(frames: int = GIF_FRAMES) -> bytes:
    """A GIF of ``frames`` 1 x 1 frames, 15 bytes each: counting them is the server's work."""
    header = b"GIF89a" + bytes([1, 0, 1, 0, 0x80, 0, 0]) + bytes([0, 0, 0, 255, 255, 255])
    frame = bytes([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0x02, 0x02, 0x44, 0x01, 0x00])
    return header + frame * frames + b"\x3b"


def damaged_files() -> list[bytes]:
    """A photo-sized PNG and a GIF, each cut off halfway."""
    files = []
    for kind in ("PNG", "GIF"):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(buffer, kind)
        files.append(buffer.getvalue()[: buffer.tell() // 2])
    return files


def normal_image() -> bytes:
    from sklearn.datasets import load_digits

    pixels = np.clip(load_digits().images[0] * 16, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digits_bundle(folder: Path) -> tuple[Path, bytes]:
    subprocess.run([sys.executable, "-m", "imgclf", "train", "digits", "--model", "simple_cnn", "--epochs", "15",
                    "--output", str(folder / "digits")], check=True, capture_output=True)  # fmt: skip
    return folder / "digits", normal_image()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle")
    parser.add_argument("--image", help="an image for the normal clients (default: a digit)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle-seconds", type=float, default=60.0, help="wait before the last memory reading")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"which attacks, comma-separated, of {', '.join(ATTACKS + MORE_ATTACKS)} "
                        f"(default: {','.join(ATTACKS)})")  # fmt: skip
    parser.add_argument("--attack-port", type=int, help=argparse.SUPPRESS)  # the attackers' own process
    parser.add_argument("--attack-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack_port:
        attack = Attack(args.attack_port, b"", tuple(args.attacks.split(",")))
        attack.image = normal_image()
        attack.start()
        time.sleep(args.attack_seconds)
        counts = attack.finish()
        print(json.dumps({**counts, "attacker_cpu_s": round(time.process_time(), 1)}))
        return
    with tempfile.TemporaryDirectory() as work:
        if args.bundle:
            bundle, image = Path(args.bundle), Path(args.image).read_bytes()
        else:
            bundle, image = digits_bundle(Path(work))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "imgclf", "serve", str(bundle), "--port", str(port), "--no-access-log"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(url + "/v1/ready", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.3)
            normal_clients(url, image, 3)  # warm-up
            result = {"bundle": str(bundle), "rss_mb_before": round(rss_mb(server.pid), 1)}
            cpu = cpu_seconds(server.pid)
            result["unloaded"] = normal_clients(url, image, args.seconds)
            result["unloaded"]["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu, 1)
            cpu = cpu_seconds(server.pid)
            # The attackers run in a process of their own, so their threads do not slow the
            # normal clients' measurements through this interpreter's lock.
            attackers = subprocess.Popen([sys.executable, __file__, "--attack-port", str(port),
                                          "--attack-seconds", str(args.seconds + 2), "--attacks", args.attacks],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)  # fmt: skip
            time.sleep(1)
            result["under_attack"] = normal_clients(url, image, args.seconds)
            result["under_attack"]["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu, 1)
            result["rss_mb_end_of_attack"] = round(rss_mb(server.pid), 1)
            result["attack_answers"] = json.loads(attackers.communicate(timeout=120)[0])
            time.sleep(args.settle_seconds)
            result["rss_mb_a_minute_later"] = round(rss_mb(server.pid), 1)
            result["p95_ratio"] = round(result["under_attack"]["p95_ms"] / result["unloaded"]["p95_ms"], 2)
            result["rss_ratio_a_minute_later"] = round(result["rss_mb_a_minute_later"] / result["rss_mb_before"], 3)
            print(json.dumps(result, indent=2))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
