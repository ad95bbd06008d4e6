"""The report's sections for a multi-label bundle: the scores a label set is judged by (macro and
micro F1, mAP, exact label sets, Hamming loss), per-label precision-recall curves with each
label's threshold, how errors co-occur, and the per-label calibration. ``explain.report`` puts
them where the single-label page has its accuracy, confusion matrix and reliability diagram."""

from __future__ import annotations

from collections.abc import Callable

from imgclf.bundle.description import BundleDescription
from imgclf.explain.figures import pr_curves_png
from imgclf.text import for_html

__all__ = ["LABEL_SET_HEADINGS", "label_set_bodies"]

# Headings that differ from the single-label page's, by section id.
LABEL_SET_HEADINGS = {"confusion": "Precision-recall and error pairs", "per-class": "Per-label metrics"}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _cards(split: str, evaluated: dict, description: BundleDescription) -> str:
    cards = [
        (_percent(evaluated.get("macro_f1")), f"{split} macro-F1 ({evaluated.get('num_images', 0):,} images)"),
        (_percent(evaluated.get("map")), f"{split} mAP (threshold-free)"),
        (_percent(evaluated.get("micro_f1")), f"{split} micro-F1"),
        (_percent(evaluated.get("exact_match")), f"{split}: whole label set right"),
        (f"{description.params or 0:,}", "parameters"),
    ]
    return "".join(f'<div class="card"><b>{for_html(value)}</b><span>{for_html(label)}</span></div>'
                   for value, label in cards)  # fmt: skip


def _findings(split: str, evaluated: dict, description: BundleDescription) -> list[str]:
    chosen_on = description.calibration.get("thresholds_chosen_on", "val")
    findings = [f"Multi-label: {len(description.classes)} labels, a sigmoid per label; each label is given when "
                f"its probability reaches its own threshold, chosen on {chosen_on}."]  # fmt: skip
    if split == "val" and chosen_on == "val":
        findings.append("No test split, and the thresholds were chosen on the validation split: its F1 scores are "
                        "optimistic (mAP does not depend on the thresholds).")  # fmt: skip
    per_label = {name: row for name, row in evaluated.get("per_class", {}).items() if row["support"]}
    if per_label:
        ranked = sorted(per_label.items(), key=lambda item: item[1]["f1"])
        (worst, low), (best, high) = ranked[0], ranked[-1]
        findings.append(f"Strongest label: {best} (F1 {high['f1']:.2f}); weakest: {worst} (F1 {low['f1']:.2f}, "
                        f"recall {low['recall']:.2f} on {low['support']} images).")  # fmt: skip
    pairs = evaluated.get("error_pairs", [])
    if pairs:
        shown = "; ".join(f"{p['missed']} missed where {p['given_instead']} was given ({p['images']}x)"
                          for p in pairs[:3])  # fmt: skip
        findings.append(f"Errors that come together on the {split} split: {shown}.")
    if evaluated.get("hamming_loss") is not None:
        findings.append(f"{_percent(1 - evaluated['hamming_loss'])} of all (image, label) decisions are right "
                        f"(Hamming loss {evaluated['hamming_loss']:.3f}).")  # fmt: skip
    return findings


def _summary(split: str, evaluated: dict, description: BundleDescription, table) -> str:
    findings = "".join(f"<li>{for_html(line)}</li>" for line in _findings(split, evaluated, description))
    data = description.data
    warnings = "".join(f"<li>{for_html('Data warning: ' + warning)}</li>" for warning in data.get("warnings", []))
    return f'<div class="cards">{_cards(split, evaluated, description)}</div><ul>{findings}{warnings}</ul>'


def _curves(split: str, evaluated: dict, table, image) -> str:
    curves = evaluated.get("pr_curves", {})
    if not curves:
        return '<p class="note">No evaluated images.</p>'
    operating = {name: row for name, row in evaluated.get("per_class", {}).items() if name in curves}
    parts = [
        f"<p>{for_html(split)} split: each label's precision against its recall as its threshold moves; the dot "
        "is the threshold the model uses.</p>",
        image(pr_curves_png(curves, operating), "precision-recall curves"),
    ]
    pairs = evaluated.get("error_pairs", [])
    if pairs:
        parts.append(
            "<p>Label errors that happen on the same images: the label the image carries but the model "
            "missed, and the label it gave although the image does not carry it.</p>"
        )
        parts.append(table(["missed", "given instead", "images"],
                           [[p["missed"], p["given_instead"], p["images"]] for p in pairs]))  # fmt: skip
    return "\n".join(parts)


def _per_label(evaluated: dict, description: BundleDescription, table) -> str:
    thresholds = description.label_thresholds
    rows, css = [], []
    for (name, row), threshold in zip(evaluated.get("per_class", {}).items(), thresholds):
        ap = "n/a" if row.get("average_precision") is None else f"{row['average_precision']:.3f}"
        rows.append([name, f"{threshold:.3f}", f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                     ap, row["support"]])  # fmt: skip
        css.append("weak" if row["support"] and row["f1"] < (evaluated.get("macro_f1") or 0) - 0.1 else "")
    note = ('<p class="note">Rows shaded red: F1 more than 10 points below the macro-F1. A label is given at or above '
            "its threshold (a calibrated probability).</p>")  # fmt: skip
    return table(["label", "threshold", "precision", "recall", "F1", "AP", "support"], rows, css) + note


def _calibration(description: BundleDescription, table) -> str:
    calibration = description.calibration
    if not calibration:
        return '<p class="note">No calibration recorded.</p>'
    rows = [[name, f"{t:.3f}", f"{p:.3f}"] for name, t, p in
            zip(description.classes, description.label_temperatures, description.label_thresholds)]  # fmt: skip
    text = (f"A temperature per label fitted on {calibration.get('val_images', 0)} validation images (probability = "
            f"sigmoid(logit / T)); thresholds chosen on {calibration.get('thresholds_chosen_on', 'val')}. "
            f"The rule: {calibration.get('abstain_rule', '')}.")  # fmt: skip
    if calibration.get("val_ece_after") is not None:
        text += (f" Mean calibration error of the labels on validation: {calibration['val_ece_before']:.3f} before the "
                 f"temperatures, {calibration['val_ece_after']:.3f} after (fitted there: optimistic).")  # fmt: skip
    return f"<p>{for_html(text)}</p>" + table(["label", "temperature T", "threshold"], rows)


def label_set_bodies(split: str, evaluated: dict, description: BundleDescription, table: Callable,
                     image: Callable) -> dict[str, str]:  # fmt: skip
    """The section bodies that replace the single-label ones, by section id."""
    return {
        "summary": _summary(split, evaluated, description, table),
        "confusion": _curves(split, evaluated, table, image),
        "per-class": _per_label(evaluated, description, table),
        "calibration": _calibration(description, table),
    }
