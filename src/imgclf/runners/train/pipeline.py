"""The train runner, top to bottom: the output folder checked and held, the configuration read
(or chosen, without ``--model``), the run assembled and planned once, its stages trained (or a
linear probe fitted), then the final evaluation, the bundle and the report.

The pieces live where they belong: the folder in ``engine/run_folder``, the training state in
``engine/checkpoint``, the plan in ``engine/plan``, the loop's setup in ``engine/recipe``, the
final evaluation in ``engine/final``; here and in ``train_setup``, ``train_stages`` and
``train_output`` only what joins the configuration to them.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from imgclf.bundle import CENTROIDS_FILE, METRICS_FILE, MODEL_FILE, WEIGHTS_FILE
from imgclf.config import TrainConfig
from imgclf.distributed import init_from_environment, shutdown
from imgclf.engine.checkpoint import PREVIOUS_STATE_FILE, STATE_FILE, TrainingState, has_training_state
from imgclf.engine.final import ModelOnData, final_evaluation
from imgclf.engine.image_embeddings import ImageEmbeddingCache
from imgclf.engine.loop import StopRequested
from imgclf.engine.observers import ProgressObserver, TrainObserver
from imgclf.engine.run_folder import check_output, check_writable, claim, default_output, output_lock
from imgclf.engine.run_logs import CSV_FILE, TENSORBOARD_FOLDER, Observers, create_run_logs
from imgclf.engine.runtime import resolve_device, stop_on_signals
from imgclf.errors import UsageError
from imgclf.explain.report import REPORT_FILE
from imgclf.models import get_model_spec
from imgclf.runners.train.choose_model import automatic_config
from imgclf.runners.train.data import check_trainable, scan_training_data
from imgclf.runners.train.output import CONFIG_FILE, train_result, write_run_bundle, write_run_report
from imgclf.runners.train.setup import (
    TrainingRun,
    announce,
    assemble,
    check_preset,
    check_world,
    plan_time_budget,
    set_threads,
)
from imgclf.runners.train.stages import Trained, check_same_data, linear_probe, train_stages
from imgclf.text import stderr_console

__all__ = ["RUN_FILES", "run_train"]

# Everything a run may write in its folder (recorded there as imgclf's before it writes them).
RUN_FILES = (WEIGHTS_FILE, MODEL_FILE, METRICS_FILE, CENTROIDS_FILE, CONFIG_FILE, REPORT_FILE, CSV_FILE,
             TENSORBOARD_FOLDER, STATE_FILE, PREVIOUS_STATE_FILE)  # fmt: skip


def run_train(
    data: str,
    config: TrainConfig,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool | str = False,
    data_dir: str | Path | None = None,
    observer: TrainObserver | None = None,
    console: Console | None = None,
    force: bool = False,
    choose_model: bool = False,
) -> dict:
    """Train a model on DATA and write a bundle; returns the ``train --json`` result.
    ``resume``: True (or "always") continues the run in ``output``; "auto" continues it if it has
    a training state and starts a new run otherwise. ``choose_model``: the advisor picks the model
    (and transfer learning) for the time budget, inside that budget."""
    started = time.perf_counter()
    console = console or stderr_console()
    if resume == "auto":  # restart loops: continue when there is something to continue
        if output is None:
            raise UsageError("--resume auto needs --output (the folder whose run to continue)")
        resume = has_training_state(Path(output))
    if output is None and (resume or not choose_model):  # else: named after the model the advisor picks
        output = default_output(data, config.model)
    if output is not None:
        output = Path(output)
        check_output(output, overwrite, bool(resume))
        check_writable(output)
    else:  # the advisor names the folder after its choice: its parent must take it, checked before any data is read
        check_writable(default_output(data, "model").parent)
    saved = TrainingState.latest(output, console.print) if resume else None
    advice, scanned = None, None
    if saved is not None:
        config = saved.config
        console.print(f"resuming {output} (configuration from its training state)")
    elif choose_model:
        scanned = scan_training_data(data, config, data_dir)  # read once: choosing, then training
        check_trainable(data, *scanned)
        config, advice = automatic_config(data, config, data_dir, console, scanned, started)
    if output is None:
        output = default_output(data, config.model)
        check_output(output, overwrite, False)
    get_model_spec(config.model)  # an unknown model fails before any data is read
    device = resolve_device(config.device)
    world = init_from_environment(device)
    try:
        if not world.is_main:
            console = Console(file=io.StringIO())  # one voice: rank 0 speaks for the run
        if device.type == "cuda" and world.distributed:
            device = torch.device("cuda", world.local_rank)
        check_world(config, world, saved, device)
        set_threads(config, world, device)
        run = assemble(data, config, output, data_dir, console, world, device, scanned, advice)
        return _plan_and_train(run, data, saved, observer, console, force, started)
    finally:
        shutdown(world)


def _plan_and_train(run: TrainingRun, data: str, saved, observer, console: Console, force: bool, started: float):
    check_preset(run, data)
    # A probe has no epochs; an anytime run plans its fine-tuning after its probe (train_stages).
    if run.config.time_budget is not None and run.config.finetune not in ("linear-probe", "anytime"):
        run = replace(run, plan=plan_time_budget(run, started, console))
    if saved is not None:
        check_same_data(run, saved, force)
    announce(run, console)
    with contextlib.ExitStack() as held:
        logs = Observers()  # only rank 0 logs
        if run.world.is_main:
            held.enter_context(output_lock(run.output))
            claim(run.output, RUN_FILES)
            history = saved.fit.history if saved is not None else None
            logs = create_run_logs(run.config.log_kinds(), run.output, history)
            held.callback(logs.close)
            logs.on_run_start(run.config.to_dict())
        if run.config.finetune == "linear-probe":
            trained = linear_probe(run, console)
        else:
            observers = Observers(observer or ProgressObserver(console), logs)
            trained = _train_until_stopped(run, saved, observers, console, started)
        if not run.world.is_main:
            return {"bundle": str(run.output), "model": run.config.model, "epochs": trained.state.epoch,
                    "rank": run.world.rank}  # fmt: skip
        return _finish(run, trained, console, started, logs)


def _train_until_stopped(run: TrainingRun, saved, observers: Observers, console: Console, started: float) -> Trained:
    """The stages, where Ctrl-C or SIGTERM ends training and the run ships the best weights so far
    (one process only: several stop together through torchrun)."""
    signals = contextlib.nullcontext() if run.world.distributed else stop_on_signals(console.print, StopRequested)
    try:
        with signals:
            return train_stages(run, saved, observers, console, started)
    except StopRequested:  # outside the epochs (the probe, the set-up): nothing trained to ship yet
        raise KeyboardInterrupt from None


def _finish(run: TrainingRun, trained: Trained, console: Console, started: float, logs: Observers) -> dict:
    """Final evaluation, bundle, report, and the answer."""
    # A kept linear probe: the noise images' embeddings go to the per-image cache for ``update``.
    cache = ImageEmbeddingCache.for_model(run.model, run.preprocess) if trained.embeddings is not None else None
    on_data = ModelOnData(run.model, run.prepared.splits, run.preprocess, run.device, run.config.amp,
                          run.config.workers, trained.embeddings, trained.held_out_logits, cache)  # fmt: skip
    evaluation = final_evaluation(on_data, run.dataset.classes, run.config.seed)
    bundle = write_run_bundle(run, trained, evaluation, time.perf_counter() - started)
    write_run_report(run, bundle, evaluation, console)
    logs.on_run_end(run.output, bundle.classes, bundle.metrics)
    return train_result(run, trained, bundle.metrics["summary"], time.perf_counter() - started, console)
