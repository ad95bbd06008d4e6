"""Training a run's stages (or its linear probe), resuming where a training state left off.

``train_stages`` returns what training produced (``Trained``: the loop's final state, the plan
as it ended, a probe's embeddings); it never edits the ``TrainingRun`` it was given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from rich.console import Console

from imgclf.data.augment import choose_augmentation
from imgclf.data.batches import MirroredBatches, eval_batch_size, make_batches
from imgclf.data.prepare import split_targets
from imgclf.engine.budget import MAX_EPOCHS
from imgclf.engine.checkpoint import fit_state_from, save_fit_state
from imgclf.engine.loop import FitSetup, FitState, Replan, fit
from imgclf.engine.observers import TrainObserver
from imgclf.engine.optim import create_schedule
from imgclf.engine.plan import RunPlan, Stage, plan_stages
from imgclf.engine.probe_run import run_linear_probe
from imgclf.engine.recipe import fit_setup
from imgclf.errors import UsageError
from imgclf.runners.train_setup import TrainingRun
from imgclf.transfer import freeze_for_finetuning

__all__ = ["Trained", "check_same_data", "data_identity", "linear_probe", "train_stages"]

REPLAN_AFTER_S = 3.0  # seconds of epochs before a time budget is re-planned from them


@dataclass(frozen=True)
class Trained:
    state: FitState
    plan: RunPlan  # as training ended: a time budget may have re-planned the epochs
    embeddings: dict | None = None  # a linear probe's embeddings and targets of each split (unnormalized)


def data_identity(run: TrainingRun) -> dict:
    return {"source": run.dataset.name, "classes": run.dataset.classes,
            "fingerprints": run.dataset.split_info.get("fingerprints", {})}  # fmt: skip


def check_same_data(run: TrainingRun, meta: dict, force: bool) -> None:
    """A run resumes on the data it started with: the same classes and the same split files."""
    saved, now = meta.get("data"), data_identity(run)
    if saved is None or force:
        return
    if saved["classes"] != now["classes"]:
        raise UsageError(f"--resume: the classes differ from the interrupted run's ({', '.join(saved['classes'])}); "
                         "pass --force to resume anyway")  # fmt: skip
    if saved["fingerprints"] != now["fingerprints"]:
        raise UsageError(f"--resume: the images of {now['source']} differ from those the run started with "
                         f"({saved['source']}); pass --force to resume anyway")  # fmt: skip


def _stage_setup(run: TrainingRun, stage: Stage) -> FitSetup:
    train_targets = split_targets(run.prepared.splits["train"])
    return fit_setup(run.config, run.model, stage, len(run.train_batches), run.preprocess, run.plan.augmentation,
                     train_targets, run.dataset.num_classes, run.device, run.augment_generator, run.world,
                     run.plan.stop_at)  # fmt: skip


def _resume_stage(run: TrainingRun, saved: dict, setup: FitSetup, stage_index: int, stage: Stage) -> FitState:
    """Restore weights, best epoch and RNG states; the optimizer and schedule only when the
    checkpoint was written inside this stage (at a stage boundary the new stage starts fresh,
    exactly as it does in an uninterrupted run)."""
    meta = saved["meta"]
    run.model.load_state_dict(saved["model"])
    state = fit_state_from(saved)
    torch.set_rng_state(saved["rng"]["torch"])
    run.augment_generator.set_state(saved["rng"]["augment"])
    batches_done = int(state.epoch_progress.get("batches_done", 0))
    if meta.get("stage", 0) == stage_index and (meta["epoch"] > stage.start_epoch or batches_done):
        setup.optimizer.load_state_dict(saved["optimizer"])
        if setup.ema is not None and saved.get("ema"):
            setup.ema.load_state_dict(saved["ema"])
        steps_per_epoch = len(run.train_batches)
        steps_done = (meta["epoch"] - stage.start_epoch) * steps_per_epoch + batches_done
        setup.scheduler = create_schedule(setup.optimizer, stage.epochs * steps_per_epoch, run.config.schedule,
                                          run.config.resolved_warmup_fraction(), last_step=steps_done - 1)  # fmt: skip
    return state


def _finished_state(run: TrainingRun, saved: dict, console: Console) -> FitState:
    """The state was written after the last epoch (the run died in its final evaluation or while
    writing the bundle): no epoch is left to train, so the run ends as the uninterrupted one did,
    with the weights it chose (the best epoch's), not the freshly initialised model."""
    run.model.load_state_dict(saved["model"])
    state = fit_state_from(saved)
    if state.best_weights is not None:
        run.model.load_state_dict(state.best_weights)
    console.print(f"every epoch was already trained ({state.epoch}); finishing the run from its saved weights")
    return state


def _checkpoint_saver(run: TrainingRun, setup: FitSetup, stage_index: int, replanner: BudgetReplanner | None):
    def save_checkpoint(state: FitState) -> None:
        epochs = replanner.plan.epochs if replanner is not None else run.plan.epochs
        run_meta = {
            "stage": stage_index,
            "world_size": run.world.size,
            # A resumed run finishes the planned epochs; the budget was this process's to keep.
            "config": {**run.config.to_dict(), "epochs": epochs, "time_budget": None},
            "data": data_identity(run),
        }
        rng = {"torch": torch.get_rng_state(), "augment": run.augment_generator.get_state()}
        ema_state = setup.ema.state_dict() if setup.ema is not None else None
        save_fit_state(run.output, run.model, setup.optimizer, state, rng, run_meta, ema_state)

    return save_checkpoint


class BudgetReplanner:
    """After the first epoch, the epochs that fit before the deadline at the speed just seen (the
    warm-up's few seconds over- or underestimate it), answered to the loop as a ``Replan`` (the
    schedule laid over them, so it ends at the deadline instead of being cut off or ending
    early). ``plan``: the run's plan as re-planned so far."""

    def __init__(self, plan: RunPlan, steps_per_epoch: int, console: Console):
        self.plan, self.steps_per_epoch, self.console = plan, steps_per_epoch, console
        self.replanned, self.fit_started = False, time.perf_counter()

    def __call__(self, state: FitState, epoch_seconds: float, checkpoint_seconds: float) -> Replan | None:
        # Once, from an epoch after the first (which pays one-time costs) and after enough
        # seconds of epochs that the last one's time is not noise.
        plan, budget = self.plan, self.plan.budget
        if self.replanned or plan.stop_at is None or state.epoch < 2:
            return None
        if time.perf_counter() - self.fit_started < REPLAN_AFTER_S:
            return None
        self.replanned = True
        deadline = plan.stop_at + budget.final_seconds
        measured_final = budget.final_seconds_from(state.history[-1].get("val_seconds", 0.0), checkpoint_seconds)
        final_seconds = max(budget.final_seconds, measured_final)
        if final_seconds > budget.final_seconds:  # stop training earlier: the final phase needs the time
            self.console.print(f"time budget: the final evaluation will take about {final_seconds:.1f} s "
                               f"(planned {budget.final_seconds:.1f} s)")  # fmt: skip
        stop_at = deadline - final_seconds
        remaining = stop_at - time.perf_counter()
        epochs = max(state.epoch, min(MAX_EPOCHS, state.epoch + int(remaining // epoch_seconds)))
        if epochs != plan.epochs:
            self.console.print(f"time budget: epochs take {epoch_seconds:.1f} s here (planned "
                               f"{budget.seconds_per_epoch:.1f} s): {epochs} epochs in all instead of "
                               f"{plan.epochs}")  # fmt: skip
            budget = replace(budget, replanned_epochs=epochs)
        self.plan = plan.replanned(epochs, stop_at, replace(budget, final_seconds=final_seconds))
        return Replan(epochs, epochs * self.steps_per_epoch, stop_at)


def train_stages(run: TrainingRun, saved: dict | None, observer: TrainObserver, console: Console) -> Trained:
    """Run each stage in turn; ``saved`` is the training state to resume from, if any."""
    stages = plan_stages(run.config, run.plan.epochs, run.world.size)
    meta = saved["meta"] if saved is not None else {}
    resume_epoch = meta.get("epoch", 0)
    ended_early = bool(meta.get("stopped_early")) and meta.get("stage", 0) == len(stages) - 1
    if saved is not None and (resume_epoch >= stages[-1].end_epoch or ended_early):
        return Trained(_finished_state(run, saved, console), run.plan)
    state = FitState()
    replanner = None
    if run.plan.budget is not None and len([stage for stage in stages if not stage.probe]) == 1:
        replanner = BudgetReplanner(run.plan, len(run.train_batches), console)
    for index, stage in enumerate(stages):
        if stage.probe:  # on a resume the saved weights hold the head it set
            if saved is None:
                console.print(f"{stage.name}")
                linear_probe(run, console, splits=("train", "val"))
            continue
        if resume_epoch >= stage.end_epoch:
            continue
        setup = _stage_setup(run, stage)
        resumed_inside = saved is not None and saved["meta"].get("stage", 0) == index
        if saved is not None:
            state, saved = _resume_stage(run, saved, setup, index, stage), None
        if len(stages) > 1 or run.weights is not None:
            console.print(f"{stage.name}: epochs {stage.start_epoch + 1}-{stage.end_epoch}, peak lr {stage.lr:.3g}")
        if not resumed_inside:  # a new stage judges early stopping afresh
            state.stopped_early, state.epochs_without_improvement = False, 0
        # Only rank 0 writes; several processes checkpoint at epoch ends only, so a run can resume
        # with another number of processes.
        writes = run.config.checkpoint_every_epoch and run.world.is_main
        saver = _checkpoint_saver(run, setup, index, replanner) if writes else None
        interval = 0.0 if run.world.distributed else run.config.checkpoint_interval
        state = fit(setup, run.train_batches, run.val_batches, stage.end_epoch, run.dataset.classes, observer,
                    state=state, early_stopping=run.config.early_stopping, save_checkpoint=saver,
                    checkpoint_interval=interval, replan=replanner)  # fmt: skip
    return Trained(state, replanner.plan if replanner is not None else run.plan)


def linear_probe(run: TrainingRun, console: Console, splits: tuple[str, ...] = ("train", "val", "test")) -> Trained:
    """The backbone frozen, each of ``splits`` embedded once (cached on disk), a logistic
    regression fitted on the embeddings and set as the classifier."""
    freeze_for_finetuning(run.model, train_backbone=False)
    batch = eval_batch_size(run.preprocess.input_size)
    splits = {name: make_batches(split, batch, workers=run.config.workers)
              for name, split in run.prepared.splits.items() if name in splits}  # fmt: skip
    key = {
        "model": run.config.model,
        "weights": run.weights.source,
        "preprocess": run.preprocess.to_dict(),
        "data": run.dataset.name,
        "fingerprints": run.dataset.split_info.get("fingerprints", {}),
        "split_info": {k: v for k, v in run.dataset.split_info.items() if k.startswith("max_")},
    }
    # Mirror images as extra training views where flips keep the class (cross-validation decides).
    flips_keep_class = choose_augmentation(
        run.config.augment, run.dataset.kind, run.preprocess.channels, run.preprocess.input_size
    ).flip  # as augmentation decides it for a run long enough to augment
    flipped = MirroredBatches(splits["train"]) if flips_keep_class and run.config.probe_mirror else None
    probe_run = run_linear_probe(run.model, splits, run.preprocess, run.device, key, run.dataset.num_classes,
                                 run.config.seed, console, flipped)  # fmt: skip
    return Trained(probe_run.state, run.plan, probe_run.embeddings)
