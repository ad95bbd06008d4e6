"""The predict runner: files and folders in, top-k labels out; or millions of images in, rows
written to a Parquet, CSV or JSON lines file as they come (``run_predict_to_file``)."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from imgclf.data.layout import expand_image_paths
from imgclf.data.readers import ImageReader
from imgclf.engines import usable_cores
from imgclf.errors import ImgclfError
from imgclf.scale import PartWriter, Predictor, in_shard, list_sources, row_of, written_name
from imgclf.text import stderr_console

__all__ = ["run_predict", "run_predict_to_file"]


def run_predict(
    bundle_dir: str | Path | None,
    inputs: list[str],
    top_k: int = 5,
    device: str = "cpu",
    pretrained: tuple[str, str | None] | None = None,
    abstain: bool = True,
    tta: str = "none",
) -> list[dict]:
    """Top-k labels from a bundle, or from ``pretrained`` = (model name, weights file or None);
    ``tta="flip"``: each image averaged with its mirror image."""
    from imgclf.predictor import load, load_pretrained_classifier  # PyTorch: not needed for --output with ONNX

    if pretrained is not None:
        classifier = load_pretrained_classifier(*pretrained, device=device, tta=tta)
    else:
        classifier = load(bundle_dir, device=device, abstain=abstain, tta=tta)
    return classifier.predict([str(path) for path in expand_image_paths(inputs)], top_k=top_k)


ROWS_PER_PART = 512  # decoded, predicted and written together: memory stays flat, a kill loses one part
PROGRESS_EVERY_S = 5.0


def _decoded(predictor: Predictor, item: tuple[str, ImageReader, str]):
    """One source item decoded for the model, or the reason it cannot be."""
    name, reader, key = item
    try:
        return predictor.decode(reader.read(key), name)
    except ImgclfError as error:
        return {"error": getattr(error, "reason", str(error))}


def _predict_batch(predictor: Predictor, batch: list, decoded: list) -> list[dict]:
    """Rows of one batch: its decoded images through the model, the others' errors as they are."""
    answers: list[dict] = [item if isinstance(item, dict) else {} for item in decoded]
    good = [i for i, item in enumerate(decoded) if not isinstance(item, dict)]
    if good:
        for index, answer in zip(good, predictor.engine.predict([decoded[i] for i in good], predictor.top_k)):
            answers[index] = answer
    return [row_of(name, answer) for (name, _, _), answer in zip(batch, answers)]


class _DecodeChooser:
    """Decode a batch in this thread, one file after another, or spread over the thread pool:
    whichever the first batches show is faster per image. Pillow releases the interpreter lock
    while it decodes a photo, so threads pay there; a small file's decode is mostly Python, and
    threads only take turns with the lock (10,000 CIFAR-10 JPEGs of 32 px on 2 cores: 1.50 s one
    after another, 2.16 s in 2 threads)."""

    TRIALS = 2  # batches timed each way, after a first one each

    def __init__(self, pool: ThreadPoolExecutor, workers: int):
        self.pool = pool
        self.seconds_per_image: dict[str, list[float]] = {"in turn": [], "threads": []}
        self.chosen: str | None = None if workers > 1 else "in turn"
        self.batches = 0

    def decode(self, function, batch: list) -> list:
        mode = self.chosen or ("in turn", "threads")[self.batches % 2]
        started = time.perf_counter()
        decoded = [function(item) for item in batch] if mode == "in turn" else list(self.pool.map(function, batch))
        if self.chosen is None and self.batches >= 2:  # the first of each way also starts the model or the threads
            self.seconds_per_image[mode].append((time.perf_counter() - started) / len(batch))
            if all(len(times) >= self.TRIALS for times in self.seconds_per_image.values()):
                medians = {name: statistics.median(times) for name, times in self.seconds_per_image.items()}
                self.chosen = min(medians, key=medians.get)
        self.batches += 1
        return decoded


class _Progress:
    """A line on stderr every few seconds: images done, images/s, time left."""

    def __init__(self, total: int, console: Console):
        self.total, self.console, self.done = total, console, 0
        self.started = self.last = time.perf_counter()

    def step(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            self.console.print(f"{self.done:,} / {self.total:,} images, {rate:.0f} images/s, {left:.0f} s left",
                               highlight=False)  # fmt: skip


def run_predict_to_file(
    model: str | Path,
    sources: list[str],
    output: str | Path,
    top_k: int = 5,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    workers: int = 2,
    batch_size: int = 64,
    tta: str = "none",
    console: Console | None = None,
    rows_per_part: int = ROWS_PER_PART,
) -> dict:
    """Predict every image of ``sources`` (this shard's share) with a bundle or an exported ONNX
    file, writing rows to ``output`` as they come (see ``imgclf.scale``)."""
    started, console = time.perf_counter(), console or stderr_console()
    writer = PartWriter(output, resume)
    items = list_sources(sources)
    if shard is not None:
        items = [item for item in items if in_shard(item[0], *shard)]
    done = writer.done() if resume else set()
    todo = [item for item in items if written_name(item[0]) not in done]
    predictor = Predictor(model, top_k=top_k, threads=usable_cores(), tta=tta)
    console.print(f"{len(items):,} images{' in this shard' if shard else ''}; {len(done):,} done before, "
                  f"{len(todo):,} to go", highlight=False)  # fmt: skip
    progress = _Progress(len(todo), console)
    chunks = [todo[start : start + rows_per_part] for start in range(0, len(todo), rows_per_part)]
    # Each batch is decoded, then run on every core: on 2 cores that beat decoding one part ahead of
    # the model, where decoding and onnxruntime's threads fought over the cores (10,000 CIFAR-10
    # files: 1,687-1,944 images/s overlapped, 1,813-1,983 in turn).
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoder = _DecodeChooser(pool, workers)
        for chunk in chunks:
            rows: list[dict] = []
            for start in range(0, len(chunk), batch_size):
                batch = chunk[start : start + batch_size]
                rows += _predict_batch(predictor, batch, decoder.decode(lambda item: _decoded(predictor, item), batch))
            writer.write(rows)
            progress.step(len(chunk))
    path = writer.finish()
    seconds = time.perf_counter() - started
    return {"output": str(path), "images": len(items), "predicted_now": len(todo), "done_before": len(done),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "seconds": round(seconds, 2),
            "images_per_s": round(len(todo) / seconds, 1) if seconds else None}  # fmt: skip
