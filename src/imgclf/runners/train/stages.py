"""Training a run's stages (or its linear probe), resuming where a training state left off.

``train_stages`` returns what training produced (``Trained``: the loop's final state, the plan
as it ended, a probe's embeddings); it never edits the ``TrainingRun`` it was given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from rich.console import Console

from imgclf.advise.photos import DEFAULT_RUN_SECONDS
from imgclf.data.augment import choose_augmentation
from imgclf.data.batches import MirroredBatches, eval_batch_size, make_batches
from imgclf.data.dataset import SINGLE_LABEL, FileSplit
from imgclf.data.prepare import TensorSplit, split_targets
from imgclf.engine.budget import MAX_EPOCHS, BudgetPlan
from imgclf.engine.checkpoint import StateOrigin, TrainingState
from imgclf.engine.evaluate import output_loss
from imgclf.engine.final import ModelOnData
from imgclf.engine.image_embeddings import ImageEmbeddingCache
from imgclf.engine.loop import FitSetup, FitState, Replan, fit
from imgclf.engine.observers import TrainObserver
from imgclf.engine.optim import create_schedule
from imgclf.engine.plan import RunPlan, Stage, plan_stages
from imgclf.engine.probe_run import run_linear_probe
from imgclf.engine.recipe import fit_setup
from imgclf.errors import UsageError
from imgclf.runners.train.setup import TrainingRun, plan_time_budget
from imgclf.transfer import freeze_for_finetuning

__all__ = [
    "ProbeStart",
    "Trained",
    "check_same_data",
    "choose_better",
    "data_identity",
    "linear_probe",
    "plan_anytime",
    "probe_is_saturated",
    "too_few_epochs",
    "train_stages",
]

REPLAN_AFTER_S = 3.0  # seconds of epochs before a time budget is re-planned from them
# Anytime runs: fine-tuning is skipped when fewer epochs than this fit in the time left after the
# probe, or when the probe's accuracy is already this high. Fine-tuning EfficientNet-Lite2 from the
# probe on 600 clothing photos (validation, probe 0.8444): 3 epochs 0.8356, 5 epochs 0.8444, 16
# epochs 0.8756 (bench/anytime.sh, BENCHMARKS.md).
MIN_FINETUNE_EPOCHS = 5
SATURATED_PROBE_ACCURACY = 0.99


@dataclass(frozen=True)
class Trained:
    state: FitState
    plan: RunPlan  # as training ended: a time budget may have re-planned the epochs
    embeddings: dict | None = None  # a linear probe's embeddings and targets of each split (unnormalized)
    # A multi-label probe's out-of-fold logits of the training images (its thresholds are chosen on them).
    held_out_logits: torch.Tensor | None = None
    # A run that started from a linear probe (two-stage, anytime): the probe's and the fine-tuned
    # model's validation accuracy, which one was kept and why (``choose_better``).
    decision: dict | None = None


@dataclass(frozen=True)
class ProbeStart:
    """The linear probe a two-stage or anytime run starts from: its outcome and a copy of the
    model's weights with its head (what is shipped if fine-tuning does not beat it)."""

    trained: Trained
    weights: dict[str, torch.Tensor]
    val_loss: float  # cross-entropy of the probe on the validation split

    @property
    def val_accuracy(self) -> float:
        return self.trained.state.best_val_accuracy

    @property
    def cv_accuracy(self) -> float | None:
        return self.trained.state.history[0].get("probe_cv_accuracy")


def data_identity(run: TrainingRun) -> dict:
    return {"source": run.dataset.name, "classes": run.dataset.classes,
            "fingerprints": run.dataset.split_info.get("fingerprints", {})}  # fmt: skip


def check_same_data(run: TrainingRun, state: TrainingState, force: bool) -> None:
    """A run resumes on the data it started with: the same classes and the same split files."""
    saved, now = state.data, data_identity(run)
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
                     train_targets, run.dataset.num_classes, run.device, run.augment_generator, run.world)  # fmt: skip


def _resume_stage(run: TrainingRun, saved: TrainingState, setup: FitSetup, stage_index: int, stage: Stage) -> FitState:
    """Restore weights, best epoch and RNG states; the optimizer and schedule only when the
    checkpoint was written inside this stage (at a stage boundary the new stage starts fresh,
    exactly as it does in an uninterrupted run)."""
    state = saved.restore(run.model, run.augment_generator)
    batches_done = int(state.epoch_progress.get("batches_done", 0))
    if saved.stage == stage_index and (saved.epoch > stage.start_epoch or batches_done):
        saved.restore_optimizer(setup.recipe.optimizer, setup.recipe.ema)
        steps_per_epoch = len(run.train_batches)
        steps_done = (saved.epoch - stage.start_epoch) * steps_per_epoch + batches_done
        recipe = setup.recipe
        recipe.scheduler = create_schedule(recipe.optimizer, stage.epochs * steps_per_epoch, run.config.schedule,
                                           run.config.resolved_warmup_fraction(), last_step=steps_done - 1)  # fmt: skip
    return state


def _finished_state(run: TrainingRun, saved: TrainingState, console: Console) -> FitState:
    """The state was written after the last epoch (the run died in its final evaluation or while
    writing the bundle): no epoch is left to train, so the run ends as the uninterrupted one did,
    with the weights it chose (the best epoch's), not the freshly initialised model."""
    run.model.load_state_dict(saved.weights)
    state = saved.fit
    if state.best_weights is not None:
        run.model.load_state_dict(state.best_weights)
    console.print(f"every epoch was already trained ({state.epoch}); finishing the run from its saved weights")
    return state


def _checkpoint_saver(run: TrainingRun, setup: FitSetup, stage_index: int, replanner: BudgetReplanner | None):
    def save_checkpoint(state: FitState) -> None:
        epochs = replanner.plan.epochs if replanner is not None else run.plan.epochs
        origin = StateOrigin(stage_index, run.world.size, run.what_ran(epochs).to_finish(), data_identity(run))
        rng = {"torch": torch.get_rng_state(), "augment": run.augment_generator.get_state()}
        ema_state = setup.recipe.ema.state_dict() if setup.recipe.ema is not None else None
        TrainingState.write(run.output, run.model, setup.recipe.optimizer, state, rng, origin, ema_state)

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


def train_stages(
    run: TrainingRun,
    saved: TrainingState | None,
    observer: TrainObserver,
    console: Console,
    started: float | None = None,
) -> Trained:
    """Run each stage in turn; ``saved`` is the training state to resume from, if any.
    ``started``: the run's start (``time.perf_counter()``), from which an anytime run's budget counts.

    A run that starts from a linear probe fits it first (on a resume too: its embeddings come from
    the cache, and the end compares against it); an anytime run then plans fine-tuning in the time
    left, or ships the probe (``plan_anytime``). At the end the better of the probe and the
    fine-tuned model is kept (``choose_better``)."""
    probe = probe_start(run, console) if run.config.starts_from_probe else None
    if probe is not None and run.config.finetune == "anytime" and saved is None:
        run, skipped = plan_anytime(run, probe, started if started is not None else time.perf_counter(), console)
        if skipped is not None:
            console.print(f"kept: the linear probe (fine-tuning skipped: {skipped})", highlight=False)
            decision = _decision(probe, None, "probe", f"fine-tuning skipped: {skipped}")
            return replace(probe.trained, plan=run.plan, decision=decision)
    trained = _train_epochs(run, saved, observer, console, probe)
    return choose_better(run, probe, trained, console) if probe is not None else trained


def _train_epochs(run: TrainingRun, saved: TrainingState | None, observer: TrainObserver, console: Console,
                  probe: ProbeStart | None) -> Trained:  # fmt: skip
    stages = plan_stages(run.config, run.plan.epochs, run.world.size)
    resume_epoch = saved.epoch if saved is not None else 0
    ended_early = saved is not None and saved.fit.stopped_early and saved.stage == len(stages) - 1
    if saved is not None and (resume_epoch >= stages[-1].end_epoch or ended_early):
        return Trained(_finished_state(run, saved, console), run.plan)
    state = FitState()
    replanner = None
    if run.plan.budget is not None and len([stage for stage in stages if not stage.probe]) == 1:
        replanner = BudgetReplanner(run.plan, len(run.train_batches), console)
    for index, stage in enumerate(stages):
        if stage.probe or resume_epoch >= stage.end_epoch:  # the probe: fitted by train_stages
            continue
        setup = _stage_setup(run, stage)
        resumed_inside = saved is not None and saved.stage == index
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
        # After a probe the validation split chooses no epoch: it judges probe against fine-tuning.
        state = fit(setup, run.train_batches, run.val_batches, stage.end_epoch, run.dataset.classes, observer,
                    state=state, early_stopping=run.config.early_stopping, save_checkpoint=saver,
                    checkpoint_interval=interval, replan=replanner, choose_epoch=probe is None,
                    start=(probe.val_accuracy, probe.val_loss) if probe is not None else None,
                    stop_at=run.plan.stop_at)  # fmt: skip
    return Trained(state, replanner.plan if replanner is not None else run.plan)


def probe_start(run: TrainingRun, console: Console) -> ProbeStart:
    """Stage 1 of a run that starts from a probe: the head fitted on the frozen backbone."""
    console.print(plan_stages(run.config, 1, run.world.size)[0].name)
    trained = linear_probe(run, console, splits=("train", "val"))
    weights = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
    on_data = ModelOnData(run.model, run.prepared.splits, run.preprocess, run.device, embeddings=trained.embeddings)
    logits, targets, _ = on_data.outputs("val", embeddings=False)  # from the cached embeddings: no pass
    return ProbeStart(trained, weights, output_loss(logits, targets))


def plan_anytime(
    run: TrainingRun, probe: ProbeStart, started: float, console: Console
) -> tuple[TrainingRun, str | None]:
    """After the probe, what the rest of the budget buys: the epochs of fine-tuning that fit (this
    machine's measured speed), unless too few fit to pay or the probe leaves almost nothing to
    gain. Returns the run with its plan, and why fine-tuning is skipped (None: it runs)."""
    budget_s = run.config.time_budget or DEFAULT_RUN_SECONDS
    saturated = probe_is_saturated(probe.cv_accuracy, probe.val_accuracy)
    if saturated is not None:
        return run, saturated
    config = run.config if run.config.time_budget else replace(run.config, time_budget=budget_s)
    plan = plan_time_budget(replace(run, config=config), started, console, probe_done=True)
    skipped = too_few_epochs(plan.budget, plan.epochs)
    return replace(run, plan=plan if skipped is None else run.plan), skipped


def probe_is_saturated(cv_accuracy: float | None, val_accuracy: float) -> str | None:
    """Why fine-tuning cannot pay after a probe this accurate (None: it may). Both estimates must
    say so: on grey steel-surface photos the probe cross-validated at 0.995 on train and scored
    0.976 on validation, where fine-tuned networks reach 0.99."""
    if cv_accuracy is not None and min(cv_accuracy, val_accuracy) >= SATURATED_PROBE_ACCURACY:
        return (f"the probe reaches {cv_accuracy:.4f} in cross-validation on the training images and "
                f"{val_accuracy:.4f} on validation: fine-tuning has less than {1 - SATURATED_PROBE_ACCURACY:.0%} "
                "of errors left to remove")  # fmt: skip
    return None


def too_few_epochs(budget: BudgetPlan | None, epochs: int) -> str | None:
    """Why the fine-tuning epochs that fit are too few to pay (None: enough fit)."""
    if budget is not None and budget.fits and epochs >= MIN_FINETUNE_EPOCHS:
        return None
    epoch_s = budget.seconds_per_epoch if budget is not None else float("nan")
    return (f"{epochs if budget is not None and budget.fits else 0} epoch(s) of fine-tuning ({epoch_s:.0f} s each "
            f"here) fit in the time left; it takes {MIN_FINETUNE_EPOCHS} to pay")  # fmt: skip


def choose_better(run: TrainingRun, probe: ProbeStart, tuned: Trained, console: Console) -> Trained:
    """The probe or the fine-tuned model, whichever is more accurate on the validation split (which
    neither chose on: the probe's strength was chosen by cross-validation on train, fine-tuning
    kept its last epoch); a tie keeps the probe."""
    tuned_accuracy = tuned.state.best_val_accuracy if tuned.state.best_weights is not None else None
    if tuned_accuracy is not None and tuned_accuracy > probe.val_accuracy:
        decision = _decision(probe, tuned, "fine-tuned", f"more accurate on the validation split "
                             f"({tuned_accuracy:.4f} against the probe's {probe.val_accuracy:.4f})")  # fmt: skip
        console.print(f"kept: the fine-tuned model ({decision['why']})", highlight=False)
        return replace(tuned, decision=decision)
    why = ("fine-tuning trained no epoch" if tuned_accuracy is None else
           f"fine-tuning did not beat it on the validation split ({tuned_accuracy:.4f} against "
           f"{probe.val_accuracy:.4f})")  # fmt: skip
    console.print(f"kept: the linear probe ({why})", highlight=False)
    run.model.load_state_dict(probe.weights)
    return replace(probe.trained, plan=tuned.plan, decision=_decision(probe, tuned, "probe", why))


def _decision(probe: ProbeStart, tuned: Trained | None, kept: str, why: str) -> dict:
    """What model.json, the report and the output say about the choice."""
    finetuned = None
    if tuned is not None:
        history = tuned.state.history
        finetuned = {"epochs": len(history), "val_accuracy": tuned.state.best_val_accuracy if history else None,
                     "val_accuracy_by_epoch": [record.get("val_accuracy") for record in history],
                     "rollbacks": tuned.state.rollbacks}  # fmt: skip
    return {"kept": kept, "why": why, "probe": {"val_accuracy": probe.val_accuracy, "cv_accuracy": probe.cv_accuracy},
            "finetuned": finetuned, "judged_on": "val"}  # fmt: skip


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
    # Multi-label probes take no extra views: a regression per label is fitted on the images themselves.
    mirror = flips_keep_class and run.config.probe_mirror and run.dataset.task == SINGLE_LABEL
    flipped = MirroredBatches(splits["train"]) if mirror else None
    probe_run = run_linear_probe(run.model, splits, run.preprocess, run.device, key, run.dataset.num_classes,
                                 run.config.seed, console, flipped)  # fmt: skip
    if run.world.is_main:
        _remember_embeddings(run, probe_run.embeddings)
    return Trained(probe_run.state, run.plan, probe_run.embeddings, probe_run.probe.held_out_logits)


def _remember_embeddings(run: TrainingRun, embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add each split's embeddings to the per-image cache (``update`` and ``suggest`` then embed
    only new files). A streaming split that skipped a bad file no longer lines up with its keys:
    it is left out rather than guessed."""
    cache = ImageEmbeddingCache.for_model(run.model, run.preprocess)
    for name, (features, _) in embeddings.items():
        files, prepared = run.dataset.splits.get(name), run.prepared.splits.get(name)
        if not isinstance(files, FileSplit) or prepared is None:
            continue  # built-in arrays have no files to key by
        keys = prepared.keys if isinstance(prepared, TensorSplit) else prepared.split.keys
        if len(keys) == len(features):
            cache.remember(files.reader, keys, features, run.config.workers)
