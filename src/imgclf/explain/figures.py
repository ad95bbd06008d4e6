"""The report's and ``explain``'s pictures, drawn with matplotlib's object API (no pyplot state,
no display needed) and returned as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgclf.explain.gradcam import Explanation, heat_overlay
from imgclf.text import for_plot

__all__ = [
    "class_counts_png",
    "confusion_matrix_png",
    "explanation_png",
    "lr_find_png",
    "overlay_png",
    "pareto_png",
    "probe_choice_png",
    "reliability_png",
    "training_curves_png",
]

DPI = 100
# Class names on axes get unreadable beyond this many classes: the report shows the table instead.
MAX_LABELLED_CLASSES = 30


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def training_curves_png(history: list[dict]) -> bytes:
    """Loss, accuracy and learning rate per epoch, training and validation side by side (the
    curves a record lacks, such as a linear probe's training loss, are left out)."""
    figure = Figure(figsize=(12, 3.4))
    panels = figure.subplots(1, 3)
    epochs = [record.get("epoch", index + 1) for index, record in enumerate(history)]
    curves = (
        (panels[0], "loss", (("train_loss", "train"), ("val_loss", "validation"))),
        (panels[1], "accuracy", (("train_accuracy", "train"), ("val_accuracy", "validation"))),
        (panels[2], "learning rate at epoch start", (("lr", "learning rate"),)),
    )
    for axes, title, series in curves:
        for key, label in series:
            if all(record.get(key) is not None for record in history):
                axes.plot(epochs, [record[key] for record in history], marker="o", label=label)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.get_lines() and title != curves[2][1]:
            axes.legend()
    return _png(figure)


def lr_find_png(rates: list[float], losses: list[float], suggestion: float | None, title: str) -> bytes:
    """The range test's smoothed training loss against the learning rate (log scale), with the
    suggested rate marked."""
    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.subplots()
    axes.plot(rates, losses, color="tab:blue")
    axes.set_xscale("log")
    axes.set_xlabel("peak learning rate")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title(title, fontsize=10)
    if suggestion is not None:
        axes.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2e}")
        axes.legend(loc="upper left")
    if losses:  # the blow-up at the end would flatten the useful part of the curve
        axes.set_ylim(min(losses) * 0.95, min(max(losses), losses[0] * 2.0) * 1.05)
    axes.grid(alpha=0.3)
    return _png(figure)


def probe_choice_png(scores: list[dict], chosen_c: float) -> bytes:
    """A linear probe's choice: accuracy against the inverse regularization strength C (log
    axis), cross-validated on train (or on validation where that chose), with and without the
    mirrored views, the chosen C marked."""
    figure = Figure(figsize=(6.5, 3.4))
    axes = figure.subplots()
    key = "cv_accuracy" if all(row.get("cv_accuracy") is not None for row in scores) else "val_accuracy"
    where = "cross-validated on train" if key == "cv_accuracy" else "validation"
    for mirrored in (False, True):
        rows = sorted((row for row in scores if bool(row.get("flipped_views")) == mirrored), key=lambda r: r["c"])
        if rows:
            label = f"{where}{', with mirrored views' if mirrored else ''}"
            axes.plot([r["c"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    axes.axvline(chosen_c, color="grey", linestyle="--", label=f"chosen C = {chosen_c:g}")
    axes.set_xscale("log")
    axes.set_xlabel("C (inverse regularization strength)")
    axes.set_ylabel("accuracy")
    axes.set_title("linear probe: accuracy against regularization")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def confusion_matrix_png(confusion: list[list[int]], classes: list[str]) -> bytes:
    """Row-normalized confusion matrix (share of each true class), counts written in the cells."""
    counts = np.asarray(confusion, dtype=np.int64)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(14.0, 2.5 + 0.45 * len(classes))
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.subplots()
    image = axes.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    if len(classes) <= MAX_LABELLED_CLASSES:
        ticks = np.arange(len(classes))
        names = [for_plot(name) for name in classes]
        axes.set_xticks(ticks, names, rotation=60, ha="right")
        axes.set_yticks(ticks, names)
        for (row, column), count in np.ndenumerate(counts):
            if count:
                colour = "white" if rows[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    return _png(figure)


def reliability_png(bins: list[dict], ece: float | None, ece_uncalibrated: float | None) -> bytes:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    figure = Figure(figsize=(4.6, 4.2))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    if bins:
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        widths = [b["high"] - b["low"] for b in bins]
        axes.bar(centres, [b["accuracy"] for b in bins], width=widths, edgecolor="black", alpha=0.7, label="accuracy")
        axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="tab:red",
                  markersize=4, label="mean confidence")  # fmt: skip
    title = "reliability" if ece is None else f"reliability: ECE {ece:.3f}"
    if ece_uncalibrated is not None:
        title += f" ({ece_uncalibrated:.3f} before scaling)"
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def pr_curves_png(curves: dict[str, dict], operating: dict[str, dict]) -> bytes:
    """Precision against recall for each label (``curves``: label -> {"precision", "recall"}),
    with a dot where the label's threshold puts it (``operating``: label -> precision, recall)."""
    figure = Figure(figsize=(6.4, 4.6))
    axes = figure.subplots()
    colours = [f"C{index % 10}" for index in range(len(curves))]
    for colour, (label, curve) in zip(colours, curves.items()):
        axes.plot(curve["recall"], curve["precision"], color=colour, linewidth=1.2, label=for_plot(label))
        point = operating.get(label)
        if point is not None:
            axes.plot([point["recall"]], [point["precision"]], "o", color=colour, markersize=5)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.set_title("precision-recall per label (dots: the chosen thresholds)", fontsize=10)
    axes.legend(loc="lower left", fontsize=7, ncol=2)
    return _png(figure)


def class_counts_png(class_counts: dict[str, list[int]], classes: list[str]) -> bytes:
    """Images per class, one bar per split."""
    figure = Figure(figsize=(min(14.0, 3 + 0.4 * len(classes)), 3.4))
    axes = figure.subplots()
    positions = np.arange(len(classes))
    width = 0.8 / max(1, len(class_counts))
    for offset, (split, counts) in enumerate(class_counts.items()):
        axes.bar(positions + offset * width, counts, width=width, label=split)
    if len(classes) <= MAX_LABELLED_CLASSES:
        axes.set_xticks(positions + width * (len(class_counts) - 1) / 2, [for_plot(name) for name in classes],
                        rotation=60, ha="right")  # fmt: skip
    axes.set_ylabel("images")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def stacked_png(pictures: list[bytes]) -> bytes:
    """PNG pictures one under the other, as one PNG."""
    from PIL import Image

    images = [Image.open(io.BytesIO(picture)).convert("RGB") for picture in pictures]
    canvas = Image.new("RGB", (max(image.width for image in images), sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def explanation_png(explanation: Explanation, predicted: str, true: str | None, source: str = "") -> bytes:
    """The image, its Grad-CAM overlay and its saliency map, titled with the labels."""
    figure = Figure(figsize=(7.5, 2.9))
    image_axes, cam_axes, saliency_axes = figure.subplots(1, 3)
    pixels = explanation.pixels
    shown = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    image_axes.imshow(shown, cmap="gray" if pixels.shape[2] == 1 else None, interpolation="nearest")
    image_axes.set_title("input", fontsize=9)
    height, width = explanation.feature_map_size
    cam_axes.imshow(heat_overlay(pixels, explanation.cam), interpolation="nearest")
    cam_axes.set_title(f"Grad-CAM ({height}x{width} feature map)", fontsize=9)
    saliency_axes.imshow(explanation.saliency, cmap="hot", interpolation="nearest")
    saliency_axes.set_title("saliency (input gradient)", fontsize=9)
    for axes in (image_axes, cam_axes, saliency_axes):
        axes.set_axis_off()
    truth = "unknown" if true is None else for_plot(true)
    verdict = "" if true is None else ("  (correct)" if true == predicted else "  (wrong)")
    title = f"predicted: {for_plot(predicted)} ({explanation.probability:.2f})   true: {truth}{verdict}"
    if source:
        title = f"{for_plot(source, limit=80)}\n{title}"
    figure.suptitle(title, fontsize=10)
    return _png(figure)


SERVED_PICTURE_PX = 224  # each half of the server's picture, whatever the model's input size


def overlay_png(explanation: Explanation) -> bytes:
    """The input and its Grad-CAM overlay side by side, drawn with Pillow alone: the server's
    picture. Rendering a matplotlib figure took a few hundred milliseconds of the interpreter's
    lock per call, which other clients' requests waited on (bench/serve_attack.py)."""
    from PIL import Image

    pixels = explanation.pixels
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    pictures = (rgb, heat_overlay(pixels, explanation.cam))
    halves = [Image.fromarray(np.ascontiguousarray(picture)) for picture in pictures]
    size = (SERVED_PICTURE_PX, SERVED_PICTURE_PX)
    resample = Image.Resampling.NEAREST if max(pixels.shape[:2]) < 64 else Image.Resampling.BILINEAR  # crisp digits
    canvas = Image.new("RGB", (2 * SERVED_PICTURE_PX + 8, SERVED_PICTURE_PX), (255, 255, 255))
    for index, half in enumerate(halves):
        canvas.paste(half.resize(size, resample), (index * (SERVED_PICTURE_PX + 8), 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def pareto_png(rows: list[dict], title: str) -> bytes:
    """Test accuracy against latency (log scale) per model; the Pareto front joined by a line,
    dominated models in grey with the model that beats them."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    scored = [row for row in rows if row.get("accuracy") is not None and row.get("latency_ms") is not None]
    front = sorted((row for row in scored if row["dominated_by"] is None), key=lambda row: row["latency_ms"])
    if front:
        axes.plot([r["latency_ms"] for r in front], [r["accuracy"] for r in front], color="tab:blue", zorder=1,
                  label="Pareto front")  # fmt: skip
    for row in scored:
        dominated = row["dominated_by"] is not None
        axes.scatter(row["latency_ms"], row["accuracy"], color="0.6" if dominated else "tab:blue", zorder=2)
        label = f"{row['name']}" + (f"\n(dominated by {row['dominated_by']})" if dominated else "")
        axes.annotate(label, (row["latency_ms"], row["accuracy"]), textcoords="offset points", xytext=(6, 4),
                      fontsize=8, color="0.45" if dominated else "black")  # fmt: skip
    axes.set_xscale("log")
    axes.margins(x=0.25, y=0.12)  # room for the labels right of and above the points
    axes.set_xlabel("latency at batch 1, ms (p50, this machine)")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if len(front) > 1:
        axes.legend(loc="best")
    return _png(figure)
