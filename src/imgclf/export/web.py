"""``imgclf export BUNDLE --format web``: a static folder that classifies images in the browser,
offline: ``index.html``, the exported ONNX graph (its preprocessing inside), ``contract.json``
(classes, input contract, how to decide) and onnxruntime-web's WebAssembly build, copied from an
npm install (``npm install onnxruntime-web``). Nothing is fetched from anywhere else; any static
file server serves it (``python -m http.server -d FOLDER``), since browsers do not load
WebAssembly from ``file://``.

The page decodes each dropped image with the browser's own decoder into RGB (or grey, by Pillow's
luma weights) pixels at the image's own size, and the graph resizes and crops them as imgclf does;
its answers follow the bundle's rule (top-k and abstaining, or each label at its threshold).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from imgclf.errors import OutputError, UsageError
from imgclf.files import current_umask

__all__ = ["ORT_WEB_FILES", "check_web_target", "find_onnxruntime_web", "write_web_folder"]

# onnxruntime-web's files the page needs: the WebAssembly build's script and its SIMD binary
# with the loader it imports (threads are not used: they need cross-origin isolation headers).
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
ORT_WEB_ENV = "IMGCLF_ONNXRUNTIME_WEB"


def find_onnxruntime_web(given: str | Path | None = None) -> Path:
    """The ``dist`` folder of an onnxruntime-web npm install: ``given``, else $IMGCLF_ONNXRUNTIME_WEB,
    else ``node_modules/onnxruntime-web/dist`` here or in a parent folder."""
    candidates = [Path(given)] if given else []
    if os.environ.get(ORT_WEB_ENV):
        candidates.append(Path(os.environ[ORT_WEB_ENV]))
    here = Path.cwd().resolve()
    candidates += [folder / "node_modules" / "onnxruntime-web" / "dist" for folder in (here, *here.parents)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ORT_WEB_FILES):
            return folder
    where = f"{given}: does not hold {', '.join(ORT_WEB_FILES)}" if given else "no onnxruntime-web install found"
    raise UsageError(
        f"--format web copies onnxruntime-web's WebAssembly files into the folder ({where}): run "
        "`npm install onnxruntime-web` here, or pass --onnxruntime-web node_modules/onnxruntime-web/dist"
    )


def check_web_target(target: Path) -> None:
    """The folder is new or empty: nothing of the user's is ever replaced."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"{target}: already exists and is not an empty folder; name a new folder for the web page")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{target}: cannot write there ({error.strerror or error})") from None


def write_web_folder(target: Path, model_bytes: bytes, contract: dict, ort_web: Path) -> None:
    """Write the page's folder next to ``target`` and rename it into place once complete."""
    check_web_target(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; the page's folder is served to browsers
        (staging / "model.onnx").write_bytes(model_bytes)
        (staging / "contract.json").write_text(json.dumps(contract, indent=1), encoding="utf-8")
        (staging / "index.html").write_text(PAGE, encoding="utf-8")
        for name in ORT_WEB_FILES:
            shutil.copyfile(ort_web / name, staging / name)
        if target.exists():
            target.rmdir()  # empty (checked): the complete folder takes its place
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>imgclf: classify images in the browser</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:960px;padding:1.5rem;
color:#1b1f24}
#drop{display:block;border:2px dashed #8a94a6;border-radius:10px;padding:2rem;text-align:center;cursor:pointer}
#drop.over{background:#eef4ff}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem;margin-top:1rem}
.result{border:1px solid #d8dde6;border-radius:10px;padding:.8rem}
.result img{max-width:100%;max-height:160px;display:block;margin:0 auto .5rem}
.label{font-weight:700;font-size:1.1rem;overflow-wrap:anywhere}
.bar{display:grid;grid-template-columns:1fr 90px 3.5rem;gap:.4rem;font-size:.85rem;align-items:center}
.track{background:#e9edf3;height:.6rem;border-radius:.3rem}.fill{background:#2f6fd0;height:100%;border-radius:.3rem}
.why,.note{color:#5b6472;font-size:.85rem}.error{color:#b3261e}
</style></head><body>
<h1>Classify images</h1><p class="note" id="model">loading the model...</p>
<label id="drop" for="file"><strong>Drop images here</strong> or click to choose
<input id="file" type="file" accept="image/*" multiple hidden></label>
<div id="results"></div>
<script src="ort.wasm.min.js"></script>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let session = null, contract = null;
function element(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
async function start() {
  ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation headers a plain server does not send
  ort.env.wasm.wasmPaths = new URL("./", location.href).href;
  contract = await (await fetch("contract.json")).json();
  session = await ort.InferenceSession.create("model.onnx", {executionProviders: ["wasm"]});
  const kind = contract.task === "multi-label" ? " labels (several per image)" : " classes";
  $("model").textContent = contract.architecture + " - " + contract.classes.length + kind
    + ", running here in your browser";
  document.body.dataset.ready = "yes";
}
async function pixelsOf(file) {
  const bitmap = await createImageBitmap(file, {imageOrientation: "from-image"});
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff";  // transparency on white, as imgclf composites it
  context.fillRect(0, 0, bitmap.width, bitmap.height);
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const channels = contract.input.channels, count = bitmap.width * bitmap.height;
  const data = new Uint8Array(count * channels);
  for (let i = 0; i < count; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (channels === 1) data[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;  // Pillow's "L"
    else { data[3 * i] = r; data[3 * i + 1] = g; data[3 * i + 2] = b; }
  }
  const nhwc = contract.input.layout === "NHWC";
  const shape = nhwc ? [1, bitmap.height, bitmap.width, channels] : [1, channels, bitmap.height, bitmap.width];
  return new ort.Tensor("uint8", nhwc ? data : toPlanes(data, count, channels), shape);
}
function toPlanes(data, count, channels) {
  const planes = new Uint8Array(data.length);
  for (let i = 0; i < count; i++) for (let c = 0; c < channels; c++) planes[c * count + i] = data[channels * i + c];
  return planes;
}
function decide(probabilities, distance) {
  const classes = contract.classes, abstain = contract.abstain || {};
  const order = [...probabilities.keys()].sort((a, b) => probabilities[b] - probabilities[a]);
  const top = order.slice(0, 5).map((i) => ({label: classes[i], probability: probabilities[i]}));
  const far = distance !== null && abstain.distance_threshold !== null && abstain.distance_threshold !== undefined
    && distance > abstain.distance_threshold;
  if (contract.task === "multi-label") {
    const labels = far ? [] : order.filter((i) => probabilities[i] >= contract.thresholds[i]).map((i) => classes[i]);
    return {labels, top_k: top, abstained: far ? "unlike the training images of every label" : null};
  }
  if (far) return {label: null, top_k: top, abstained: "unlike the training images of " + classes[order[0]]};
  if (abstain.confidence_threshold !== null && abstain.confidence_threshold !== undefined
      && probabilities[order[0]] < abstain.confidence_threshold) {
    return {label: null, top_k: top, abstained: "not sure enough"};
  }
  return {label: classes[order[0]], top_k: top, abstained: null};
}
async function classify(file) {
  const card = element("article", "result"); card.dataset.file = file.name;
  const image = element("img"); image.alt = file.name; image.src = URL.createObjectURL(file);
  card.append(image, element("div", "label", "..."), element("div", "why", file.name));
  $("results").append(card);
  try {
    const feeds = {}; feeds[contract.input.name] = await pixelsOf(file);
    const outputs = await session.run(feeds);
    const distance = outputs.centroid_distance ? outputs.centroid_distance.data[0] : null;
    show(card, decide(Array.from(outputs.probabilities.data), distance));
  } catch (error) {
    card.querySelector(".label").textContent = "";
    card.append(element("p", "error", file.name + ": cannot be read as an image (" + error.message + ")"));
  }
  card.dataset.done = "yes";
}
function show(card, answer) {
  const label = card.querySelector(".label");
  if (answer.labels !== undefined) {
    label.textContent = answer.labels.length ? answer.labels.join(" + ") : "None of the labels";
  }
  else label.textContent = answer.label === null ? "No label" : answer.label;
  if (answer.abstained) card.append(element("p", "why", "No answer: " + answer.abstained));
  for (const item of answer.top_k) {
    const row = element("div", "bar"), track = element("div", "track"), fill = element("div", "fill");
    fill.style.width = (100 * item.probability).toFixed(1) + "%"; track.append(fill);
    row.append(element("span", "", item.label), track, element("span", "", (100 * item.probability).toFixed(1) + "%"));
    card.append(row);
  }
}
async function classifyAll(files) { for (const file of files) await classify(file); }
$("file").addEventListener("change", (event) => classifyAll([...event.target.files]));
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault(); $("drop").classList.remove("over"); classifyAll([...event.dataTransfer.files]);
});
start().catch((error) => { $("model").textContent = "The model could not be loaded: " + error.message; });
</script></body></html>
"""
