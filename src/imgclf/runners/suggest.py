"""``imgclf suggest BUNDLE UNLABELLED``: which unlabelled images to label next.

The images are embedded with the bundle's backbone (only those not embedded before), scored by
the bundle's calibrated probabilities, and chosen by ``engine.active`` (by default: the typical
image of each group of similar images that holds nothing labelled yet; see bench/suggest.py for
what each strategy bought on shared photo sets). With ``copy_to``, the chosen images are copied
(never moved) into ``copy_to/<predicted class>/`` for confirmation on the review page.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from imgclf.bundle import Bundle, load_bundle, recorded_data
from imgclf.data.dataset import FileSplit, load_dataset
from imgclf.data.layout import expand_image_paths
from imgclf.data.readers import FolderReader
from imgclf.engine.active import choose_for_labelling, uncertainty
from imgclf.engine.image_embeddings import ImageEmbeddingCache, embed_files
from imgclf.engine.probe import classifier_logits
from imgclf.engine.runtime import resolve_device
from imgclf.errors import DataError, ImgclfError, OutputError
from imgclf.files import atomic_write_bytes, free_path
from imgclf.predictor import Classifier
from imgclf.text import stderr_console

__all__ = ["run_suggest"]

LISTING = "suggested.csv"  # written into the copy-to folder: rank, file, copy, predicted, scores


def _labelled_embeddings(bundle: Bundle, labelled: str | None, cache, device, workers: int, console: Console):
    """The training images' embeddings (from the cache after ``train`` or ``update``), which the
    choice keeps away from; None when the data is not here."""
    source = labelled or recorded_data(bundle)
    if source is None:
        console.print("labelled images: the bundle's training data is not here; pass --labelled DATA to keep the "
                      "choice away from images labelled already", highlight=False)  # fmt: skip
        return None
    try:
        split = load_dataset(source, bundle.description.split_policy(), task=bundle.description.task).splits["train"]
    except ImgclfError as error:
        console.print(f"labelled images: {error}; choosing without them", highlight=False)
        return None
    if not isinstance(split, FileSplit):
        return None
    embedded = embed_files(bundle.model, bundle.preprocess, split.reader, split.keys, device, cache, workers)
    console.print(f"labelled images: {len(embedded.indices):,} training images of {source}", highlight=False)
    return embedded.embeddings.numpy()


def _copy(files: list[str], predicted: list[str], folder: Path) -> list[str]:
    """Copy each file into ``folder/<predicted>/`` under a free name; the originals stay."""
    copies = []
    for file, label in zip(files, predicted):
        target_folder = folder / label
        target_folder.mkdir(parents=True, exist_ok=True)
        target = free_path(target_folder / Path(file).name)
        shutil.copy2(file, target)
        copies.append(str(target))
    return copies


def _rows(bundle: Bundle, files: list[str], probabilities: np.ndarray, chosen: list[int]) -> list[dict]:
    unsure = uncertainty(probabilities, bundle.description.multi_label)
    rows = []
    for rank, index in enumerate(chosen, start=1):
        top = int(np.argmax(probabilities[index]))
        rows.append({"rank": rank, "file": files[index], "predicted": bundle.classes[top],
                     "confidence": round(float(probabilities[index, top]), 4),
                     "uncertainty": round(float(unsure[index]), 4)})  # fmt: skip
    return rows


def _write_listing(folder: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(folder / LISTING, text.getvalue().encode("utf-8"))


def run_suggest(
    bundle_dir: str | Path,
    sources: list[str],
    n: int = 100,
    strategy: str = "typical",
    copy_to: str | Path | None = None,
    labelled: str | None = None,
    device: str = "auto",
    workers: int = 2,
    console: Console | None = None,
) -> dict:
    """Rank the images in ``sources`` by how much labelling them would help; the best ``n`` first."""
    started, console = time.perf_counter(), console or stderr_console()
    if n < 1:
        raise DataError(f"--n must be at least 1, not {n}")
    if copy_to is not None and Path(copy_to).exists() and not Path(copy_to).is_dir():
        raise OutputError(f"{copy_to}: is a file; --copy-to names a folder")
    bundle = load_bundle(bundle_dir)
    paths = [str(path) for path in expand_image_paths(sources)]  # as given: relative ones stay relative
    if not paths:
        raise DataError(f"{' '.join(sources)}: no image files found")
    run_device = resolve_device(device)
    cache = ImageEmbeddingCache.for_model(bundle.model, bundle.preprocess)
    embedded = embed_files(bundle.model, bundle.preprocess, FolderReader(Path(".")), paths, run_device, cache, workers)
    if len(embedded.indices) == 0:
        raise DataError(f"{' '.join(sources)}: none of the {len(paths)} files could be read as an image")
    files = [paths[i] for i in embedded.indices]
    console.print(f"unlabelled: {len(files):,} images ({embedded.computed:,} embedded now, {embedded.from_cache:,} "
                  f"from the cache, {len(embedded.skipped)} unreadable)", highlight=False)  # fmt: skip
    probabilities = Classifier(bundle).calibrated(classifier_logits(bundle.model, embedded.embeddings)).numpy()
    anchors = _labelled_embeddings(bundle, labelled, cache, run_device, workers, console)
    chosen = choose_for_labelling(embedded.embeddings.numpy(), probabilities, n, anchors, strategy,
                                  bundle.description.multi_label)  # fmt: skip
    rows = _rows(bundle, files, probabilities, chosen)
    if copy_to is not None:
        for row, copy in zip(rows, _copy([row["file"] for row in rows], [row["predicted"] for row in rows],
                                         Path(copy_to))):  # fmt: skip
            row["copy"] = copy
        _write_listing(Path(copy_to), rows)
    return {"bundle": str(bundle.path), "strategy": strategy, "images": len(files), "chosen": len(rows),
            "suggestions": rows, "skipped": [{"file": f, "reason": r} for f, r in embedded.skipped],
            "copied_to": str(copy_to) if copy_to is not None else None,
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
