"""What a finished run leaves: the bundle (weights, model.json, metrics.json, centroids), the
report, and the ``train --json`` answer."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from imgclf.bundle import Bundle, BundleDescription, save_bundle
from imgclf.config import TrainConfig
from imgclf.engine.final import FinalEvaluation
from imgclf.engine.loop import FitState
from imgclf.explain.bundle_report import mistakes_gallery, write_report
from imgclf.files import atomic_write_bytes
from imgclf.models import count_parameters
from imgclf.runners.train.data import describe_data
from imgclf.runners.train.setup import TrainingRun
from imgclf.runners.train.stages import Trained

__all__ = ["CONFIG_FILE", "train_result", "write_config_yaml", "write_run_bundle", "write_run_report"]

CONFIG_FILE = "config.yaml"
LABEL_SET_SUMMARY = ("macro_f1", "micro_f1", "map", "exact_match")  # what a multi-label run reports


def _validation_chose(state: FitState, decision: dict | None = None) -> str:
    """What the validation split chose ("" when nothing): its accuracy is optimistic when it chose."""
    if decision is not None and decision["finetuned"] is not None:
        return "between the linear probe and the fine-tuned model"
    record = state.history[0] if state.history else {}
    if "probe_chosen_on" in record:
        return "" if record["probe_chosen_on"] == "cross-validation" else "the probe's regularization"
    return "the epoch whose weights were kept" if len(state.history) > 1 else ""


def _summary(state: FitState, final: dict, decision: dict | None = None) -> dict:
    cv_accuracy = state.history[0].get("probe_cv_accuracy") if state.history else None
    label_sets = {}
    if final["val"].get("task") == "multi-label":  # accuracy: the share of labels decided right
        label_sets = {f"{split}_{key}": final[split][key] if split in final else None
                      for split in ("val", "test") for key in LABEL_SET_SUMMARY}  # fmt: skip
        label_sets["thresholds_chosen_on"] = final["val"]["thresholds_chosen_on"]
    return {
        **label_sets,
        "val_accuracy": final["val"]["accuracy"],
        "val_chose": _validation_chose(state, decision),
        "cv_accuracy": decision["probe"]["cv_accuracy"] if decision is not None else cv_accuracy,
        "test_accuracy": final["test"]["accuracy"] if "test" in final else None,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
    }


def _description(
    run: TrainingRun, trained: Trained, evaluation: FinalEvaluation, summary: dict, seconds: float
) -> BundleDescription:
    config, preprocess, world = run.config, run.preprocess, run.world
    return BundleDescription(
        {
            "architecture": config.model,
            "model_kwargs": run.model_kwargs,
            "params": count_parameters(run.model),
            "classes": run.dataset.classes,
            "task": run.dataset.task,
            "input_size": preprocess.input_size,
            "in_chans": preprocess.channels,
            "preprocess": preprocess.to_dict(),
            "augmentation": trained.plan.augmentation.to_dict(),
            "calibration": evaluation.calibration,
            "pretrained": {**run.weights.describe(), "finetune": config.finetune} if run.weights else None,
            "training": run.what_ran(trained.plan.epochs).described(),
            "data": describe_data(run.dataset, run.profile, run.prepared),
            "time_budget": None if trained.plan.budget is None else trained.plan.budget.to_dict(),
            "advisor": run.advice,
            # Runs that start from a linear probe: the probe against fine-tuning, and which was kept.
            "kept": trained.decision,
            "distributed": {
                "processes": world.size,
                "backend": world.backend,
                "batch_per_process": config.batch_size,
                "global_batch": config.batch_size * world.size,
                "lr_rule": "peak lr per 256 images of the global batch (linear scaling)",
            },
            "metrics": summary,
            "seconds": round(seconds, 2),
        }
    )


def write_run_bundle(run: TrainingRun, trained: Trained, evaluation: FinalEvaluation, seconds: float) -> Bundle:
    summary = _summary(trained.state, evaluation.metrics, trained.decision)
    description = _description(run, trained, evaluation, summary, seconds)
    metrics = {**evaluation.metrics, "summary": summary, "history": trained.state.history}
    save_bundle(run.output, run.model.cpu(), description, metrics, evaluation.centroids)
    write_config_yaml(run.output / CONFIG_FILE, run.what_ran(trained.plan.epochs).recipe())
    return Bundle(run.output, run.model.eval(), run.preprocess, run.dataset.classes, description, metrics,
                  evaluation.centroids)  # fmt: skip


def write_config_yaml(path: Path, config: TrainConfig) -> None:
    """The resolved configuration, as a file ``--config`` reads back: the same run again."""
    import yaml

    header = "# imgclf train DATA --config this-file repeats the run (options given with it override it)\n"
    atomic_write_bytes(path, (header + yaml.safe_dump(config.to_dict(), sort_keys=False)).encode("utf-8"))


def write_run_report(run: TrainingRun, bundle: Bundle, evaluation: FinalEvaluation, console: Console) -> None:
    """report.html from what the run holds in memory; a failure here never loses the bundle."""
    split = "test" if len(evaluation.logits.get("test", ((), ()))[1]) else "val"
    try:
        gallery = mistakes_gallery(bundle, run.prepared.splits[split], *evaluation.logits[split])
        path = write_report(bundle, gallery)
    except Exception as error:  # noqa: BLE001 - the report is a view of a bundle already safely written
        console.print(f"warning: the report could not be written ({error}); the bundle is complete. "
                      f"Try: imgclf report {run.output}")  # fmt: skip
        return
    console.print(f"report: {path}")


RESULT_KEYS = ("val_accuracy", "test_accuracy", "cv_accuracy", "val_chose", "thresholds_chosen_on")


def _label_set_line(summary: dict, honesty: str) -> str:
    """A multi-label run's scores: F1 at the chosen thresholds, mAP, and whole sets right."""
    split = "test" if summary["test_macro_f1"] is not None else "val"
    optimistic = " (optimistic: the thresholds were chosen on it)" if (
        split == "val" and summary["thresholds_chosen_on"] == "val") else honesty  # fmt: skip
    return (
        f"{split}: macro-F1 {summary[f'{split}_macro_f1']:.4f}, micro-F1 {summary[f'{split}_micro_f1']:.4f}, "
        f"mAP {summary[f'{split}_map'] or 0:.4f}, exact label sets {summary[f'{split}_exact_match']:.4f}"
        f"{optimistic}; thresholds per label chosen on {summary['thresholds_chosen_on']} (accuracy below: the "
        "share of labels decided right)"
    )


def _format(value: float | None) -> str:
    return "n/a (no test split)" if value is None else f"{value:.4f}"


def train_result(run: TrainingRun, trained: Trained, summary: dict, seconds: float, console: Console) -> dict:
    """The last lines a run prints, and the ``train --json`` answer."""
    config = run.config
    honesty = ""
    if summary["test_accuracy"] is None:
        chose = summary["val_chose"]
        honesty = f" (optimistic: it chose {chose})" if chose else " (nothing was chosen on it)"
    test, val = _format(summary["test_accuracy"]), _format(summary["val_accuracy"])
    if "val_macro_f1" in summary:
        console.print(_label_set_line(summary, honesty), highlight=False)
    console.print(f"test accuracy {test}, val accuracy {val}{honesty}; bundle written to {run.output} in "
                  f"{seconds:.1f}s")  # fmt: skip
    result = {
        "bundle": str(run.output),
        "model": config.model,
        "epochs": trained.state.epoch,
        "seconds": round(seconds, 2),
        "metrics": {
            key: value for key, value in summary.items() if key in RESULT_KEYS or key.endswith(LABEL_SET_SUMMARY)
        },  # fmt: skip
    }
    if trained.decision is not None:
        result["kept"] = {key: trained.decision[key] for key in ("kept", "why")}
    if run.advice is not None:
        result["advisor"] = {key: run.advice[key] for key in ("recommended", "pretrained", "reasons")}
    if config.time_budget is not None:
        console.print(f"time budget: used {seconds:.1f} s of {config.time_budget:g} s "
                      f"({seconds / config.time_budget:.0%})")  # fmt: skip
        budget = trained.plan.budget
        result["time_budget"] = {
            "budget_s": config.time_budget,
            "planned_epochs": budget.epochs if budget else None,
            "replanned_epochs": budget.replanned_epochs if budget else None,
            "used_s": round(seconds, 2),
        }
    return result
