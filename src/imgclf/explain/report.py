"""``report.html``: one self-contained page (every image embedded) that tells a person in a
minute what the model is good and bad at. Built from the bundle's own records (model.json,
metrics.json) plus pictures of the worst mistakes; no network, no scripts, no external files."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from imgclf.bundle.description import BundleDescription
from imgclf.explain.figures import (
    class_counts_png,
    confusion_matrix_png,
    probe_choice_png,
    reliability_png,
    training_curves_png,
)
from imgclf.explain.label_set_report import LABEL_SET_HEADINGS, label_set_bodies
from imgclf.text import for_html

__all__ = ["REPORT_FILE", "REPORT_SECTIONS", "GalleryItem", "render_report"]

REPORT_FILE = "report.html"
# (id, heading) of every section, in page order; tests check each is present.
REPORT_SECTIONS = (
    ("summary", "Summary"),
    ("dataset", "Data"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix"),
    ("per-class", "Per-class metrics"),
    ("calibration", "Calibration"),
    ("mistakes", "Worst mistakes"),
    ("model-card", "Model card"),
    ("choice", "Why this model"),
    ("configuration", "Configuration"),
)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5rem;color:#1d232a;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #e3e7ec;padding-bottom:.25rem;margin-top:2.2rem}
.sub{color:#5b6775;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{background:#f4f6f9;border-radius:8px;padding:.7rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.5rem}.card span{color:#5b6775;font-size:.85rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
td,th{border-bottom:1px solid #e3e7ec;padding:.25rem .7rem;text-align:right}
th{background:#f4f6f9}td:first-child,th:first-child{text-align:left}
tr.weak td{background:#fff1f0}
img{max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1rem}
.gallery figure{margin:0;border:1px solid #e3e7ec;border-radius:8px;padding:.4rem}
figcaption{font-size:.8rem;color:#5b6775;word-break:break-all}
pre{background:#f4f6f9;padding:.8rem;overflow-x:auto;font-size:.8rem}
.note{color:#5b6775;font-size:.9rem}
.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.4rem .7rem}
"""


@dataclass
class GalleryItem:
    """One wrongly classified image with its explanation picture."""

    png: bytes
    caption: str


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{for_html(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _section(section_id: str, body: str, multi_label: bool = False) -> str:
    heading = (LABEL_SET_HEADINGS if multi_label else {}).get(section_id) or dict(REPORT_SECTIONS)[section_id]
    return f'<section id="{section_id}"><h2>{for_html(heading)}</h2>\n{body}\n</section>'


def _table(header: list[str] | None, rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = f"<tr>{''.join(f'<th>{for_html(cell)}</th>' for cell in header)}</tr>" if header else ""
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{for_html(str(cell))}</td>" for cell in row) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _evaluated(metrics: dict) -> tuple[str, dict]:
    """The split the report is about: test when there is one, validation otherwise."""
    for name in ("test", "val"):
        if metrics.get(name, {}).get("accuracy") is not None:
            return name, metrics[name]
    return "val", metrics.get("val", {})


def _findings(description: BundleDescription, split: str, evaluated: dict) -> list[str]:
    """The sentences a reader needs first: overall, best and worst classes, confusions, skips."""
    findings = []
    chose = description.summary.get("val_chose")
    if split == "val" and chose:
        findings.append(f"No test split: the validation accuracy is optimistic, since the validation split chose "
                        f"{chose}.")  # fmt: skip
    elif split == "val" and chose is not None:
        findings.append("No test split; nothing was chosen on the validation split, so its accuracy is a fair "
                        "estimate for new images like these.")  # fmt: skip
    per_class = evaluated.get("per_class", {})
    if per_class:
        ranked = sorted(per_class.items(), key=lambda item: item[1]["f1"])
        worst, best = ranked[0], ranked[-1]
        findings.append(
            f"Strongest class: {best[0]} (F1 {best[1]['f1']:.2f}); weakest: {worst[0]} "
            f"(F1 {worst[1]['f1']:.2f}, recall {worst[1]['recall']:.2f} on {worst[1]['support']} images)."
        )
    confused = evaluated.get("most_confused", [])
    if confused:
        pairs = "; ".join(f"{c['true']} taken for {c['predicted']} ({c['count']}x)" for c in confused[:3])
        findings.append(f"Most frequent mistakes on the {split} split: {pairs}.")
    elif per_class:
        findings.append(f"No mistakes on the {split} split.")
    if evaluated.get("ece") is not None:
        findings.append(
            f"Confidence is calibrated to within {evaluated['ece']:.3f} on average (ECE; "
            f"{evaluated['ece_uncalibrated']:.3f} before temperature scaling with T = {evaluated['temperature']:.2f})."
        )
    data = description.data
    skipped = data.get("skipped", [])
    if skipped:
        findings.append(f"{len(skipped)} files could not be used and were skipped (listed under Data).")
    findings.extend(f"Data warning: {warning}" for warning in data.get("warnings", []))
    return findings


def _summary(description: BundleDescription, metrics: dict) -> str:
    split, evaluated = _evaluated(metrics)
    summary = metrics.get("summary", {})
    cards = [(_percent(evaluated.get("accuracy")), f"{split} accuracy ({evaluated.get('num_images', 0):,} images)")]
    if split != "val":
        cards.append((_percent(summary.get("val_accuracy")), "validation accuracy"))
    if summary.get("cv_accuracy") is not None:
        cards.append((_percent(summary["cv_accuracy"]), "cross-validated on train"))
    if evaluated.get("top5_accuracy") is not None:
        cards.append((_percent(evaluated["top5_accuracy"]), f"{split} top-5 accuracy"))
    if evaluated.get("ece") is not None:
        cards.append((f"{evaluated['ece']:.3f}", "calibration error (ECE)"))
    cards.append((f"{description.params or 0:,}", "parameters"))
    card_html = "".join(f'<div class="card"><b>{for_html(value)}</b><span>{for_html(label)}</span></div>'
                        for value, label in cards)  # fmt: skip
    findings = "".join(f"<li>{for_html(line)}</li>" for line in _findings(description, split, evaluated))
    return f'<div class="cards">{card_html}</div><ul>{findings}</ul>'


def _dataset(description: BundleDescription) -> str:
    data, classes = description.data, description.classes
    _, size, _ = description.input_shape
    sizes = ", ".join(f"{name} {count:,}" for name, count in data.get("sizes", {}).items())
    low, high = (data.get("shorter_side_range") or [None, None])[:2]
    side = f"{low}-{high} px" if low is not None and low != high else f"{data.get('native_size')} px"
    split = data.get("split", {})
    split_text = split.get("method", "given")
    kinds = "labels" if description.multi_label else "classes"
    if split.get("method") == "stratified":
        split_text += f" (seed {split.get('seed')}, val {split.get('val_fraction')}, test {split.get('test_fraction')})"
    parts = [
        f"<p>Source <code>{for_html(str(data.get('source')))}</code> ({for_html(str(data.get('kind')))}): "
        f"{len(classes)} {kinds}; images per split: {for_html(sizes)}; split: {for_html(split_text)}. "
        f"Shorter image side {for_html(side)}, {'grayscale' if data.get('channels') == 1 else 'colour'}; "
        f"the model sees {size} x {size} px.</p>"
    ]
    for warning in data.get("warnings", []):
        parts.append(f'<p class="warn">Warning: {for_html(warning)}</p>')
    counts = data.get("class_counts")
    if counts:
        parts.append(_image(class_counts_png(counts, classes), "images per class and split"))
    skipped = data.get("skipped", [])
    if skipped:
        parts.append(f"<p>{len(skipped)} files skipped:</p>")
        parts.append(_table(["file", "reason"], [[item["file"], item["reason"]] for item in skipped]))
    else:
        parts.append("<p>No files were skipped: every image decoded.</p>")
    if data.get("ignored"):
        parts.append(f'<p class="note">{data["ignored"]} non-image files or junk folders were ignored.</p>')
    return "\n".join(parts)


def _kept(description: BundleDescription) -> str:
    """A run that started from a linear probe: the probe against fine-tuning, and which was kept."""
    kept = description.kept
    if not kept:
        return ""
    probe, tuned = kept["probe"], kept.get("finetuned")
    rows = [["linear probe", _percent(probe["val_accuracy"]), "-" if probe.get("cv_accuracy") is None else
             _percent(probe["cv_accuracy"]), "kept" if kept["kept"] == "probe" else ""]]  # fmt: skip
    if tuned is not None:
        epochs = f"fine-tuned ({tuned['epochs']} epochs"
        epochs += f", {tuned['rollbacks']} rolled back)" if tuned.get("rollbacks") else ")"
        rows.append([epochs, _percent(tuned.get("val_accuracy")), "-", "kept" if kept["kept"] == "fine-tuned" else ""])
    score = "labels right at p = 0.5, val" if description.multi_label else "validation accuracy"
    table = _table(["model", score, "cross-validated on train", ""], rows)
    return (f"<p>Kept: the {'fine-tuned model' if kept['kept'] == 'fine-tuned' else 'linear probe'} "
            f"({for_html(kept['why'])}).</p>{table}")  # fmt: skip


def _training(description: BundleDescription, metrics: dict) -> str:
    return _kept(description) + _curves(description, metrics)


def _curves(description: BundleDescription, metrics: dict) -> str:
    history = metrics.get("history", [])
    summary = metrics.get("summary", {})
    if history and history[0].get("probe_scores"):
        return _probe_training(description, history[0])
    if not history:
        return '<p class="note">No per-epoch history.</p>'
    best = summary.get("best_epoch")
    note = f"Best validation accuracy at epoch {best} of {summary.get('epochs_run')}; its weights were kept."
    if summary.get("stopped_early"):
        note += " Training stopped early."
    if description.seconds is not None:
        note += f" Whole run: {description.seconds:.1f} s on {description.training_device}."
    return f"<p>{for_html(note)}</p>" + _image(training_curves_png(history), "training curves")


def _probe_training(description: BundleDescription, record: dict) -> str:
    """A linear probe has no epochs: what was chosen instead, and on what."""
    how = "on the validation split"
    if record.get("probe_chosen_on") == "cross-validation":
        how = f"by {record.get('probe_folds') or 'k'}-fold cross-validation on the training images"
    views = " Mirror images of the training images were added as views." if record.get("probe_flipped_views") else ""
    note = (f"A linear probe: a logistic regression on the frozen network's embeddings, its regularization "
            f"C = {record.get('probe_c')} chosen {how}.{views}")  # fmt: skip
    if record.get("probe_label_c"):  # multi-label: a regression per label, each with its own C
        note = (f"A linear probe: a logistic regression per label on the frozen network's embeddings, each label's "
                f"regularization C chosen {how} (C per label: "
                f"{', '.join(f'{c:g}' for c in record['probe_label_c'])}; the figure: the share of labels right "
                "at probability 0.5 for each C).")  # fmt: skip
    if description.seconds is not None:
        note += f" Whole run: {description.seconds:.1f} s on {description.training_device}."
    return f"<p>{for_html(note)}</p>" + _image(
        probe_choice_png(record["probe_scores"], record["probe_c"]), "probe accuracy against C"
    )


def _per_class(evaluated: dict) -> str:
    per_class = evaluated.get("per_class", {})
    rows, css = [], []
    for name, row in per_class.items():
        rows.append([name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", row["support"]])
        css.append("weak" if row["f1"] < (evaluated.get("accuracy") or 0) - 0.05 else "")
    note = '<p class="note">Rows shaded red: F1 more than 5 points below overall accuracy.</p>'
    return _table(["class", "precision", "recall", "F1", "support"], rows, css) + note


def _confusion(split: str, evaluated: dict, classes: list[str]) -> str:
    if not evaluated.get("confusion_matrix"):
        return '<p class="note">No evaluated images.</p>'
    parts = [f"<p>{for_html(split)} split; rows are the true class, each row sums to 1.</p>"]
    parts.append(_image(confusion_matrix_png(evaluated["confusion_matrix"], classes), "confusion matrix"))
    confused = evaluated.get("most_confused", [])
    if confused:
        parts.append(
            _table(["true", "predicted as", "images"], [[c["true"], c["predicted"], c["count"]] for c in confused])
        )
    return "\n".join(parts)


def _calibration(description: BundleDescription, evaluated: dict) -> str:
    calibration = description.calibration
    parts = [_image(reliability_png(evaluated.get("reliability", []), evaluated.get("ece"),
                                    evaluated.get("ece_uncalibrated")), "reliability diagram")]  # fmt: skip
    if calibration:
        text = (
            f"Temperature T = {calibration['temperature']:.3f}, fitted on {calibration['val_images']} validation "
            f"images: validation ECE {calibration['val_ece_before']:.3f} before, {calibration['val_ece_after']:.3f} "
            "after. "
        )
        if calibration.get("abstain_threshold") is not None:
            text += (
                f"predict abstains (label null) below confidence {calibration['abstain_threshold']:.3f} "
                f"(the rule: {calibration['abstain_rule']}); it answers for "
                f"{_percent(calibration['val_coverage'])} of validation images, "
                f"{_percent(calibration['val_accuracy_when_answering'])} of those correctly."
            )
        parts.insert(0, f"<p>{for_html(text)}</p>")
    return "\n".join(parts)


def _mistakes(gallery: list[GalleryItem] | str, multi_label: bool = False) -> str:
    if isinstance(gallery, str):
        return f'<p class="note">{for_html(gallery)}</p>'
    if not gallery:
        return "<p>No mistakes to show: every evaluated image was classified correctly.</p>"
    figures = "".join(
        f"<figure>{_image(item.png, item.caption)}<figcaption>{for_html(item.caption)}</figcaption></figure>"
        for item in gallery
    )
    intro = (
        "<p>The wrong predictions the model was most confident about. Grad-CAM shows the regions that raised "
        "the predicted class (red is strongest); saliency shows the pixels it is most sensitive to.</p>"
    )
    if multi_label:
        intro = ("<p>The images whose label sets are most wrong (each wrong label weighted by how sure the model "
                 "was). Grad-CAM shows the regions that raised the label missed or invented most confidently (red "
                 "is strongest); saliency shows the pixels it is most sensitive to.</p>")  # fmt: skip
    return intro + f'<div class="gallery">{figures}</div>'


def _model_card(description: BundleDescription, card: dict) -> str:
    rows = [
        ["architecture", description.architecture],
        ["parameters", f"{description.params or 0:,}"],
        ["input", " x ".join(str(side) for side in description.input_shape)],
    ]
    if card.get("flops") is not None:
        rows.append(["FLOPs per image", f"{card['flops']:,}"])
    if card.get("latency"):
        latency = card["latency"]
        rows.append([f"latency, batch 1 ({card.get('latency_device', 'cpu')})",
                     f"p50 {latency['p50_ms']:.2f} ms, p95 {latency['p95_ms']:.2f} ms"])  # fmt: skip
    if card.get("layers"):
        rows.append(["layers", ", ".join(f"{name} x{count}" for name, count in card["layers"].items())])
    rows.append(["starting weights", description.pretrained_source or "random initialization"])
    rows.append(["trained with", ", ".join(f"{k} {v}" for k, v in description.versions.items())])
    return _table(None, rows)


def _configuration(description: BundleDescription) -> str:
    return f"<pre>{for_html(json.dumps(description.configuration(), indent=2))}</pre>"


def _choice(description: BundleDescription) -> str:
    """The advisor's reasons and measurements when it chose the model; else who did."""
    advice = description.advisor
    if not advice:
        return (f"<p>Chosen by the user: <code>{for_html(description.architecture)}</code>. "
                "<code>imgclf advise DATA</code> measures the alternatives on this machine.</p>")  # fmt: skip
    reasons = "".join(f"<li>{for_html(reason)}</li>" for reason in advice.get("reasons", []))
    rows = []
    for row in advice.get("candidates", []):
        name = f"{row['name']} (pretrained)" if row.get("pretrained") else row["name"]
        speed = row.get("train_images_per_s")
        probe = row.get("probe_accuracy")
        verdict = "chosen" if row["name"] == advice["recommended"] and bool(row.get("pretrained")) == advice[
            "pretrained"] else ("ok" if not row["rejected_because"] else row["rejected_because"][0])  # fmt: skip
        rows.append([name, f"{row['params']:,}", "-" if speed is None else f"{speed:,.0f}",
                     "-" if probe is None else _percent(probe), verdict])  # fmt: skip
    table = _table(["model", "parameters", "training images/s here", "probe accuracy", "verdict"], rows)
    return (f"<p>The advisor chose <b>{for_html(advice['recommended'])}</b> for the time budget:</p><ul>{reasons}</ul>"
            f"<p>{for_html(advice.get('resnet', ''))}</p>{table}")  # fmt: skip


def render_report(description: BundleDescription, metrics: dict, gallery: list[GalleryItem] | str, card: dict) -> str:
    """The whole page. ``gallery``: the worst mistakes, or a sentence saying why there are none
    to show; ``card``: measured model facts (``flops``, ``latency``, ``latency_device``, ``layers``)."""
    split, evaluated = _evaluated(metrics)
    classes = description.classes
    multi = description.multi_label  # its own summary, curves, metrics and calibration (label_set_report)
    bodies = {
        "summary": "" if multi else _summary(description, metrics),
        "dataset": _dataset(description),
        "training": _training(description, metrics),
        "confusion": "" if multi else _confusion(split, evaluated, classes),
        "per-class": "" if multi else _per_class(evaluated),
        "calibration": "" if multi else _calibration(description, evaluated),
        "mistakes": _mistakes(gallery, description.multi_label),
        "model-card": _model_card(description, card),
        "choice": _choice(description),
        "configuration": _configuration(description),
    }
    if description.multi_label:
        bodies.update(label_set_bodies(split, evaluated, description, _table, _image))
    sections = "\n".join(_section(section_id, bodies[section_id], description.multi_label)
                         for section_id, _ in REPORT_SECTIONS)  # fmt: skip
    title = f"{description.architecture} on {description.data_source}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>imgclf report: {for_html(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>imgclf report</h1>"
        f'<p class="sub">{for_html(title)}</p>\n{sections}\n</body></html>\n'
    )
