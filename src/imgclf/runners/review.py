"""``imgclf review DATA``: what the review page walks, its Grad-CAM pictures, and ``--undo``.

The queue, most doubtful first:

- the label finder's (``doctor --labels``) ranking: images whose label the data disagrees with;
- with a bundle, every image of DATA it abstains on, is unsure about (confidence under
  UNSURE_BELOW) or puts in another class than its label.

Files already decided (in the review journal) are left out, so a review can stop and go on.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from imgclf.bundle import load_bundle
from imgclf.data.dataset import SINGLE_LABEL, FileSplit, load_dataset
from imgclf.engines import BundleEngine
from imgclf.errors import ImgclfError, UsageError
from imgclf.predictor import Classifier
from imgclf.review.journal import ReviewJournal, open_journal
from imgclf.runners.label_issues import run_label_check
from imgclf.text import stderr_console

__all__ = ["ReviewItem", "build_queue", "review_queue", "run_undo"]

UNSURE_BELOW = 0.6  # a bundle's calibrated confidence under which an image is shown
LABEL_FINDER_AT_LEAST = 20  # the label finder's flagged images, and at least this many of its ranking


@dataclass
class ReviewItem:
    id: int
    file: str  # as the journal names it: relative to the data folder, or a listing's path cell
    path: str  # the file on disk, for the page to show
    label: str
    suggested: str | None
    confidence: float | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _label_finder(data: str, root: Path, seed: int, console: Console) -> list[dict]:
    try:
        check = run_label_check(data, seed=seed, console=console)
    except ImgclfError as error:  # too few images to cross-validate: the other sources still apply
        console.print(f"label finder: {error}; not used", highlight=False)
        return []
    rows = [row for row in check["issues"] if "label" in row]  # label sets: no single label to change
    shown = [row for rank, row in enumerate(rows) if row["flagged"] or rank < LABEL_FINDER_AT_LEAST]
    return [{"path": row["file"], "label": row["label"], "suggested": row["suggested"],
             "confidence": row["suggested_probability"],
             "reason": f"the label finder: looks like {row['suggested']} ({row['suggested_probability']:.0%}), "
                       f"labelled {row['label']} ({row['label_probability']:.0%})"} for row in shown]  # fmt: skip


def _bundle_doubts(bundle_dir: str, data: str, journal_root: Path) -> list[dict]:
    bundle = load_bundle(bundle_dir)
    dataset = load_dataset(data, bundle.description.split_policy(), task=bundle.description.task)
    if dataset.task != "single-label":
        return []
    classifier, found = Classifier(bundle), []
    for split in dataset.splits.values():
        if not isinstance(split, FileSplit):
            continue
        paths = [split.reader.describe(key) for key in split.keys]
        for path, target, result in zip(paths, split.targets, classifier.predict(paths, top_k=2)):
            label = dataset.classes[int(target)]
            top = result.get("top_k") or [{}]
            guess, confidence = top[0].get("label"), top[0].get("probability")
            if result.get("abstained"):
                reason = f"the model abstains: {result['abstained']}"
            elif guess != label:
                reason = f"the model says {guess} ({confidence:.0%}), labelled {label}"
            elif confidence is not None and confidence < UNSURE_BELOW:
                reason = f"the model is unsure ({confidence:.0%} for {guess})"
            else:
                continue
            found.append({"path": path, "label": label, "suggested": guess, "confidence": confidence,
                          "reason": reason})  # fmt: skip
    return sorted(found, key=lambda row: row["confidence"] or 0.0)


def _every_image(data: str) -> list[dict]:
    """Every image of DATA, to confirm (``review --all``: the images ``suggest`` copied out)."""
    dataset, rows = load_dataset(data), []
    for split in dataset.splits.values():
        if isinstance(split, FileSplit):
            rows += [{"path": split.reader.describe(key), "label": dataset.classes[int(target)], "suggested": None,
                      "confidence": None, "reason": "to confirm"}
                     for key, target in zip(split.keys, split.targets)]  # fmt: skip
    return rows


def build_queue(data: str, journal: ReviewJournal, bundle: str | None = None, seed: int = 0,
                console: Console | None = None, every_image: bool = False) -> list[ReviewItem]:  # fmt: skip
    """The images to review, the label finder's first, then the bundle's doubts, then (with
    ``every_image``) all the others; each file once."""
    rows = _label_finder(data, journal.root, seed, console or stderr_console())
    if bundle is not None:
        rows += _bundle_doubts(bundle, data, journal.root)
    if every_image:
        rows += _every_image(data)
    decided, items, seen = journal.decided(), [], set()
    for row in rows:
        file = os.path.relpath(row["path"], journal.root)
        if file in seen or file in decided or not Path(row["path"]).is_file():
            continue
        seen.add(file)
        items.append(ReviewItem(len(items), file, str(Path(row["path"]).resolve()), row["label"], row["suggested"],
                                row["confidence"], row["reason"]))  # fmt: skip
    return items


def run_undo(data: str) -> dict:
    journal = open_journal(data)
    undone = journal.undo()
    return {"data": data, "undone": undone}


def _explainer(bundle_dir: str):
    """Image path -> Grad-CAM PNG of the bundle's decision (the server's picture)."""
    engine = BundleEngine(Classifier(load_bundle(bundle_dir)))
    return lambda path: engine.explain_png(engine.classifier.prepare(path))


def review_queue(data: str, bundle: str | None = None, seed: int = 0, console: Console | None = None,
                 every_image: bool = False):  # fmt: skip
    """What the review page needs: the items, the classes, the journal and the Grad-CAM maker."""
    console = console or stderr_console()
    journal = open_journal(data)
    dataset = load_dataset(data)
    if dataset.task != SINGLE_LABEL:
        raise UsageError(f"{data}: review relabels images of one class each; for label sets, imgclf doctor "
                         f"{data} --labels lists the likely missing and wrong labels")  # fmt: skip
    items = build_queue(data, journal, bundle, seed, console, every_image)
    return items, dataset.classes, journal, _explainer(bundle) if bundle else None
