"""The compare runner: train each model on the same data under the same budget, then rank them
(accuracy, macro-F1, training time, latency, size) and draw accuracy against latency."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.text import Text

from imgclf.advise.pareto import mark_dominated
from imgclf.bundle import load_bundle
from imgclf.config import TrainConfig
from imgclf.errors import ImgclfError, UsageError
from imgclf.explain.figures import pareto_png
from imgclf.files import atomic_write_bytes
from imgclf.models import count_flops, get_model_spec
from imgclf.models.info import measure_latency
from imgclf.runners.train import run_train
from imgclf.text import stderr_console

__all__ = ["run_compare"]

LATENCY_SECONDS = 2.0  # timing per model (at least 5 passes)


def _split_metrics(metrics: dict) -> tuple[str, dict]:
    split = "test" if (metrics.get("test") or {}).get("accuracy") is not None else "val"
    return split, metrics[split]


def _leaderboard_row(name: str, bundle_dir: Path, result: dict) -> dict:
    """The trained bundle's numbers: accuracy and macro-F1 on the test split (validation when
    there is none), latency measured here at batch 1, parameters and FLOPs."""
    bundle = load_bundle(bundle_dir)
    split, metrics = _split_metrics(bundle.metrics)
    size, channels = bundle.preprocess.input_size, bundle.preprocess.channels
    latency = measure_latency(bundle.model, 1, channels, size, repeats=30, warmup=1, max_seconds=LATENCY_SECONDS)
    f1_scores = [values["f1"] for values in metrics["per_class"].values()]
    return {
        "name": name,
        "accuracy": metrics["accuracy"],
        "macro_f1": round(float(np.mean(f1_scores)), 4),
        "split": split,
        "train_seconds": result["seconds"],
        "epochs": result["epochs"],
        "latency_ms": latency["p50_ms"],
        "latency_ms_p95": latency["p95_ms"],
        "params": bundle.description.params,
        "flops": count_flops(bundle.model, channels, size),
        "input_size": size,
        "bundle": str(bundle_dir),
    }


def run_compare(
    data: str,
    models: list[str],
    base: TrainConfig,
    output: str | Path,
    data_dir=None,
    console: Console | None = None,
) -> dict:
    """Train every model of ``models`` with ``base``'s options into ``output/<model>`` and rank
    them; a model that fails is listed with its error and the others go on."""
    console = console or stderr_console()
    if len(models) < 2:
        raise UsageError("--models needs at least two models to compare (comma-separated)")
    for name in models:
        get_model_spec(name)  # an unknown name fails before hours of training
    output = Path(output)
    rows = []
    for name in models:
        console.rule(f"{name}")
        try:
            result = run_train(data, replace(base, model=name), output=output / name, overwrite=True,
                               data_dir=data_dir, console=console)  # fmt: skip
            rows.append(_leaderboard_row(name, output / name, result))
        except ImgclfError as error:
            console.print(Text(f"{name} failed: ", style="bold red"), str(error), sep="")
            rows.append({"name": name, "error": str(error)})
        _save(output, data, base, rows)  # partial results survive an interrupted comparison
    mark_dominated(rows)
    rows.sort(key=lambda row: -(row.get("accuracy") or -1))
    return _save(output, data, base, rows, with_plot=True)


def _save(output: Path, data: str, base: TrainConfig, rows: list[dict], with_plot: bool = False) -> dict:
    result = {
        "data": data,
        "time_budget_s": base.time_budget,
        "leaderboard": rows,
        "json": str(output / "compare.json"),
        "plot": str(output / "pareto.png") if with_plot else None,
    }
    output.mkdir(parents=True, exist_ok=True)
    if with_plot:
        budget = f", {base.time_budget:g} s each" if base.time_budget else ""
        atomic_write_bytes(output / "pareto.png", pareto_png(rows, f"{data}: accuracy against latency{budget}"))
    atomic_write_bytes(output / "compare.json", json.dumps(result, indent=2).encode())
    return result
