"""The review page: a local FastAPI app that shows one doubtful image at a time with its label,
the suggested class and why it is shown (with a bundle: its Grad-CAM), and applies keep, relabel
and remove through the ``ReviewJournal`` at once (closing the tab loses nothing).

Keys: K keep, R remove, 1-9 relabel as the n-th class, S accept the suggestion, U undo the last
decision of this page, arrows move without deciding. Serves on loopback only.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from imgclf.errors import ImgclfError
from imgclf.review.journal import ReviewJournal
from imgclf.serve.review_page import REVIEW_PAGE

__all__ = ["create_review_app"]

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip


class Decision(BaseModel):
    id: int
    action: str  # keep, relabel, remove
    label: str | None = None


def _class_name(name: str | None) -> bool:
    """A name a class folder can have: not empty, hidden, a path or a parent reference."""
    return bool(name) and name.strip() == name and not name.startswith(".") and "/" not in name and "\\" not in name


class _Review:
    """The page's state: the items, the decisions made on this page, the journal that applies them."""

    def __init__(self, items: list, classes: list[str], journal: ReviewJournal):
        self.items, self.classes, self.journal = items, list(classes), journal
        self.decisions: dict[int, dict] = {}
        self.lock = threading.Lock()  # one change to the data at a time

    def item(self, identifier: int):
        if not 0 <= identifier < len(self.items):
            raise HTTPException(404, f"no item {identifier}")
        return self.items[identifier]

    def image_path(self, identifier: int) -> Path:
        """Where the image is now (a decision may have moved it)."""
        decided = self.decisions.get(identifier)
        if decided and decided.get("to"):
            return self.journal.root / decided["to"]
        return Path(self.item(identifier).path)

    def decide(self, decision: Decision) -> dict:
        entry = self.item(decision.id)
        with self.lock:
            if decision.id in self.decisions:
                raise HTTPException(409, f"{entry.file}: decided already (undo it first)")
            try:
                if decision.action == "keep":
                    done = self.journal.keep(entry.file)
                elif decision.action == "remove":
                    done = self.journal.remove(entry.file)
                elif decision.action == "relabel" and _class_name(decision.label):
                    done = self.journal.relabel(entry.file, decision.label)
                    if decision.label not in self.classes:  # a new class, made on the page
                        self.classes.append(decision.label)
                else:
                    raise HTTPException(422, f"unknown action {decision.action!r} or class {decision.label!r}")
            except ImgclfError as error:
                raise HTTPException(409, str(error)) from None
            self.decisions[decision.id] = done
        return {"id": decision.id, "decision": done}

    def undo(self, identifier: int) -> dict:
        entry = self.item(identifier)
        with self.lock:
            if identifier not in self.decisions:
                raise HTTPException(409, f"{entry.file}: nothing to undo")
            try:
                self.journal.undo_last(entry.file)
            except ImgclfError as error:
                raise HTTPException(409, str(error)) from None
            del self.decisions[identifier]
        return {"id": identifier, "decision": None}


def create_review_app(items: list, classes: list[str], journal: ReviewJournal, explain=None) -> FastAPI:
    """``items``: ``runners.review.ReviewItem``s; ``explain``: image path -> Grad-CAM PNG (None: no pictures)."""
    app = FastAPI(title="imgclf review", docs_url=None, redoc_url=None, openapi_url=None)
    review = _Review(items, classes, journal)
    app.get("/", response_class=HTMLResponse)(lambda: REVIEW_PAGE)
    app.post("/api/decide")(review.decide)
    app.post("/api/undo/{identifier}")(review.undo)

    @app.get("/api/items")
    def list_items() -> dict:
        shown = [{**entry.to_dict(), "decision": review.decisions.get(entry.id)} for entry in items]
        return {"data": str(journal.data), "classes": review.classes, "explain": explain is not None, "items": shown}

    @app.get("/api/image/{identifier}")
    def image(identifier: int) -> Response:
        path = review.image_path(identifier)
        try:
            return Response(path.read_bytes(), media_type=MEDIA_TYPES.get(path.suffix.lower(), "image/*"))
        except OSError:
            raise HTTPException(404, f"{path}: not readable") from None

    @app.get("/api/gradcam/{identifier}")
    def gradcam(identifier: int) -> Response:
        if explain is None:
            raise HTTPException(404, "start the review with --bundle for Grad-CAM pictures")
        try:
            return Response(explain(review.item(identifier).path), media_type="image/png")
        except (OSError, ImgclfError) as error:
            raise HTTPException(422, str(error)) from None

    return app
