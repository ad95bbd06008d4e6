"""The predict runner: files and folders in, top-k labels out; or millions of images in, rows
written to a Parquet, CSV or JSON lines file as they come (``run_predict_to_file``)."""

from __future__ import annotations

import collections
import gc
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from imgclf.data.layout import expand_image_paths
from imgclf.data.readers import ImageReader
from imgclf.engines import runs_on_onnxruntime, usable_cores
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


ROWS_PER_PART = 512  # rows saved together: memory stays flat, a kill loses the part being gathered
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

    # Batches timed each way, after a first one each. With 2 a single slow batch (another process
    # busy for a moment) chose threads in 1 run of 4 on 10,000 CIFAR-10 files, 0.2-0.4 s slower.
    TRIALS = 4
    # Threads are chosen only when clearly faster: where they fight over the lock their times
    # scatter (124-330 us an image against 109-181 in turn), and a lucky draw must not choose them.
    THREADS_MUST_TAKE = 0.8  # of the time per image in turn

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
                faster = medians["threads"] < self.THREADS_MUST_TAKE * medians["in turn"]
                self.chosen = "threads" if faster else "in turn"
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


def default_processes(model: str | Path) -> int:
    """Worker processes for ``run_predict_to_file``: one per core for an exported ONNX file, whose
    workers need only onnxruntime; one for a bundle (each process would load PyTorch)."""
    return usable_cores() if runs_on_onnxruntime(model) else 1


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
    processes: int | None = None,
) -> dict:
    """Predict every image of ``sources`` (this shard's share) with a bundle or an exported ONNX
    file, writing rows to ``output`` as they come (see ``imgclf.scale``). ``processes``: batches
    predicted side by side in that many worker processes (default: ``default_processes``);
    ``workers``: decoding threads where one process does it all."""
    started, console = time.perf_counter(), console or stderr_console()
    writer = PartWriter(output, resume)
    items = list_sources(sources)
    if shard is not None:
        items = [item for item in items if in_shard(item[0], *shard)]
    done = writer.done() if resume else set()
    todo = [item for item in items if written_name(item[0]) not in done]
    console.print(f"{len(items):,} images{' in this shard' if shard else ''}; {len(done):,} done before, "
                  f"{len(todo):,} to go", highlight=False)  # fmt: skip
    progress = _Progress(len(todo), console)
    chunks = [todo[start : start + rows_per_part] for start in range(0, len(todo), rows_per_part)]
    batches = [chunk[start : start + batch_size] for chunk in chunks for start in range(0, len(chunk), batch_size)]
    processes = max(1, min(processes or default_processes(model), len(batches)))
    threads = max(1, usable_cores() // processes)  # onnxruntime threads of each process's model calls
    predictor = Predictor(model, top_k=top_k, threads=threads, tta=tta)
    if processes > 1:
        batch_rows = _batches_in_processes(predictor, batches, processes)
    else:
        batch_rows = _batches_in_this_process(predictor, batches, workers)
    for chunk in chunks:  # a part is written once all its batches are back, in order
        rows: list[dict] = []
        while len(rows) < len(chunk):
            rows += next(batch_rows)
        writer.write(rows)
        progress.step(len(chunk))
    path = writer.finish()
    seconds = time.perf_counter() - started
    return {"output": str(path), "images": len(items), "predicted_now": len(todo), "done_before": len(done),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "seconds": round(seconds, 2),
            "images_per_s": round(len(todo) / seconds, 1) if seconds else None}  # fmt: skip


def _batches_in_this_process(predictor: Predictor, batches: list[list], workers: int) -> Iterator[list]:
    """Each batch's rows, in order: decoded (in turn or in threads), then run on every core. On 2
    cores that beat decoding ahead of the model in a thread, where decoding and onnxruntime's
    threads fought over the cores (10,000 CIFAR-10 files: 1,687-1,944 images/s overlapped,
    1,813-1,983 in turn)."""
    predictor.load()  # first: a model that cannot be loaded is the run's error, not each file's
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoder = _DecodeChooser(pool, workers)
        for batch in batches:
            yield _predict_batch(predictor, batch, decoder.decode(lambda item: _decoded(predictor, item), batch))


# Processes, not threads, share the cores between decoding and the model: decoding a small file
# is mostly Python, which threads take turns at. 10,000 CIFAR-10 files on 2 cores: 2.9 s in two
# processes of one onnxruntime thread each, 3.7 s in one process (decode, then two threads).
BATCHES_AHEAD_PER_PROCESS = 4  # batches queued for each worker: never idle, yet not the whole run


def _batches_in_processes(predictor: Predictor, batches: list[list], processes: int) -> Iterator[list]:
    """Each batch's rows, in order, predicted in ``processes`` worker processes that each load the
    model once (a batch at a time: the processes finish together). A worker that dies (killed,
    out of memory) stops the run with an error, never a hang; the parts written stay for ``--resume``."""
    import multiprocessing  # here: the command's start-up does not pay for them (7-11 ms)
    from concurrent.futures import ProcessPoolExecutor

    readers = list({id(reader): reader for _, reader, _ in (item for batch in batches for item in batch)}.values())
    index_of = {id(reader): index for index, reader in enumerate(readers)}
    # fork for an ONNX file: a worker starts in milliseconds with the modules already imported
    # (this process has not loaded the model: onnxruntime's threads would not survive a fork).
    # spawn for a bundle, whose PyTorch may have started OpenMP threads here (a forked child that
    # uses OpenMP then can hang), and where fork is not the usual way.
    forks = sys.platform == "linux" and runs_on_onnxruntime(predictor.source)
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork" if forks else "spawn"),
                               initializer=_start_worker, initargs=(predictor, readers))  # fmt: skip
    if forks:  # a forked worker's collector then leaves the objects it was forked with alone, shared
        gc.freeze()
    try:
        pending: collections.deque = collections.deque()
        for batch in batches:
            names = [(name, index_of[id(reader)], key) for name, reader, key in batch]  # readers went at start
            pending.append(pool.submit(_worker_batch, names))
            if len(pending) >= processes * BATCHES_AHEAD_PER_PROCESS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # stopped early (an error, Ctrl-C): the batches not started are dropped, not predicted
        pool.shutdown(wait=True, cancel_futures=True)
        if forks:
            gc.unfreeze()


_WORKER: dict = {}  # a worker process's own predictor and readers (set by _start_worker)
PARENT_CHECK_EVERY_S = 0.5


def _start_worker(predictor: Predictor, readers: list) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _WORKER.update(predictor=predictor, readers=readers)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker outlives a parent killed with kill -9, waiting forever on a queue whose other end
    it holds itself (fork copies it): it leaves once it has another parent."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_EVERY_S)
    os._exit(1)


def _worker_batch(names: list[tuple[str, int, str]]) -> list[dict]:
    """One batch's rows, its files decoded one after another."""
    predictor, readers = _WORKER["predictor"], _WORKER["readers"]
    predictor.load()  # first: a model that cannot be loaded is the run's error, not each file's
    batch = [(name, readers[index], key) for name, index, key in names]
    return _predict_batch(predictor, batch, [_decoded(predictor, item) for item in batch])
