"""``serve --capture DIR``: keep the images the model abstained on or was unsure about, for the
review page and the next ``update``.

Opt-in. Capped three ways, so a flood of odd images cannot fill a disk: files kept at most per
minute, files in all, and megabytes in all (counted from what is in DIR when the server starts).
Each image is written atomically as ``DIR/<abstained|unsure>/<time>-<sha256 prefix><suffix>`` (the
same bytes twice are kept once) with a line in ``DIR/captured.jsonl``: the file, when, the answer.
A capture that cannot be written is counted and skipped; it never fails the request.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from imgclf.files import atomic_write_bytes

__all__ = ["Capture", "CaptureLimits"]

SUFFIXES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"RIFF": ".webp", b"BM": ".bmp"}


@dataclass(frozen=True)
class CaptureLimits:
    unsure_below: float = 0.6  # calibrated confidence under which a single-label answer is kept
    per_minute: int = 30
    max_files: int = 1000
    max_megabytes: float = 500.0


def _suffix(data: bytes) -> str:
    return next((suffix for magic, suffix in SUFFIXES.items() if data.startswith(magic)), ".img")


def why_kept(answer: dict, unsure_below: float) -> str | None:
    """ "abstained", "unsure" or None (an answer the model is sure of, or an error)."""
    if "error" in answer:
        return None
    if answer.get("abstained"):
        return "abstained"
    top = answer.get("top_k") or []
    if "labels" not in answer and top and top[0].get("probability", 1.0) < unsure_below:
        return "unsure"
    return None


class Capture:
    """Keeps images under the limits (thread-safe: requests are answered concurrently)."""

    def __init__(self, folder: str | Path, limits: CaptureLimits = CaptureLimits()):  # noqa: B008 - frozen
        self.folder, self.limits = Path(folder), limits
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = [path for path in self.folder.glob("*/*") if path.is_file()]
        self.files, self.bytes = len(existing), sum(path.stat().st_size for path in existing)
        self.recent: list[float] = []
        self.skipped = {"rate": 0, "full": 0, "error": 0}
        self.lock = threading.Lock()

    def _room(self, size: int) -> bool:
        now = time.monotonic()
        self.recent = [moment for moment in self.recent if now - moment < 60]
        if len(self.recent) >= self.limits.per_minute:
            self.skipped["rate"] += 1
            return False
        if self.files >= self.limits.max_files or self.bytes + size > self.limits.max_megabytes * 1e6:
            self.skipped["full"] += 1
            return False
        self.recent.append(now)
        self.files, self.bytes = self.files + 1, self.bytes + size
        return True

    def offer(self, data: bytes, answer: dict, name: str = "") -> Path | None:
        """Keep ``data`` when ``answer`` is one to review and the limits allow; returns the file kept."""
        reason = why_kept(answer, self.limits.unsure_below)
        if reason is None:
            return None
        with self.lock:
            if not self._room(len(data)):
                return None
            moment = datetime.now(timezone.utc)
            path = self.folder / reason / (f"{moment:%Y%m%dT%H%M%S}-{hashlib.sha256(data).hexdigest()[:16]}"
                                           f"{_suffix(data)}")  # fmt: skip
            try:
                atomic_write_bytes(path, data)
                record = {"file": str(path.relative_to(self.folder)), "name": name, "time": moment.isoformat(),
                          "reason": reason, "answer": answer}  # fmt: skip
                with open(self.folder / "captured.jsonl", "a") as listing:
                    listing.write(json.dumps(record) + "\n")
            except OSError:
                self.skipped["error"] += 1
                return None
            return path
