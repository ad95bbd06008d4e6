"""The web page at ``/``: drop, paste, choose or photograph images; see each with its top-k bars and
its Grad-CAM picture; read the model card in words; copy a ``curl`` line for this server. One
static string, no external scripts or fonts (it works offline). Several images go to the batch
endpoint and come back as a grid; with ``--token`` the page asks for it once per browser tab."""

# The look the server's page and the review page share (colours are each page's own).
SHARED_STYLE = """*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--ink);background:#f7f9fb}
header{background:#fff;border-bottom:1px solid var(--line);padding:1rem 1.5rem}
header h1{margin:0;font-size:1.35rem}
header p{margin:.25rem 0 0;color:var(--muted)}
main{max-width:1100px;margin:0 auto;padding:1.25rem 1.5rem;display:grid;gap:1.25rem;
grid-template-columns:minmax(0,2fr) minmax(0,1fr);align-items:start}
"""

PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root{--ink:#1d232a;--muted:#5b6672;--line:#dde3ea;--accent:#2f6fd0;--soft:#eef4fb;--bad:#b42318}
"""
    + SHARED_STYLE
    + """main>div{display:grid;gap:1.25rem;align-content:start;min-width:0}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:1rem 1.25rem}
section h2{font-size:1.05rem;margin:0 0 .75rem}
#drop{display:block;border:2px dashed #9aa7b4;border-radius:10px;padding:1.75rem 1rem;text-align:center;cursor:pointer;
background:#fbfcfe}
#drop.over{background:var(--soft);border-color:var(--accent)}
#drop strong{display:block;font-size:1.1rem;margin-bottom:.35rem}
#drop span{color:var(--muted)}
.actions{display:flex;gap:.6rem;flex-wrap:wrap;margin-top:.75rem}
button,.button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:6px;padding:.4rem .8rem;
cursor:pointer;color:var(--ink)}
button:hover,.button:hover{border-color:var(--accent)}
#message{margin:.75rem 0 0;color:var(--bad);min-height:1.2em}
#results{display:grid;gap:1rem;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));margin-top:1rem}
.result{border:1px solid var(--line);border-radius:8px;padding:.75rem;background:#fff}
.result .pictures{display:flex;gap:.5rem}
.result .pictures figure{margin:0;flex:1;min-width:0;text-align:center}
.result img{max-width:100%;max-height:180px;border-radius:4px}
.result figcaption{font-size:.75rem;color:var(--muted)}
.result .label{font-size:1.25rem;font-weight:700;margin:.5rem 0 .2rem;overflow-wrap:anywhere}
.result .why{font-size:.85rem;color:var(--muted);margin:0 0 .4rem}
.result .error{color:var(--bad)}
.bar{display:grid;grid-template-columns:minmax(0,7rem) 1fr 3.2rem;align-items:center;gap:.4rem;margin:.2rem 0;
font-size:.85rem}
.bar .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{background:#edf1f5;border-radius:3px;height:.8rem}
.bar .fill{background:var(--accent);height:100%;border-radius:3px}
.bar .value{text-align:right;font-variant-numeric:tabular-nums}
#card dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem .8rem;margin:0}
#card dt{color:var(--muted)}
#card dd{margin:0;overflow-wrap:anywhere}
#code pre{background:#1d232a;color:#e8edf2;padding:.75rem;border-radius:6px;overflow-x:auto;font-size:.8rem;
white-space:pre-wrap;word-break:break-all}
#auth{display:none}
#auth.shown{display:block}
#auth input{font:inherit;padding:.35rem;border:1px solid var(--line);border-radius:6px;width:100%;margin:.4rem 0}
@media (max-width:760px){main{grid-template-columns:1fr;padding:1rem}header{padding:.9rem 1rem}}
</style></head><body>
<header><h1>imgclf</h1><p id="model">Loading the model...</p></header>
<main>
<div>
<section id="auth"><h2>This server needs a token</h2>
<p>Enter the token it was started with; this tab keeps it until you close it.</p>
<input id="token" type="password" autocomplete="off" placeholder="token"><button id="use-token">Use token</button></section>
<section id="classify"><h2>Classify images</h2>
<label id="drop" for="file"><strong>Drop images here</strong>
<span>or click to choose, or paste an image (Ctrl+V / Cmd+V)</span>
<input id="file" type="file" accept="image/*" multiple hidden></label>
<div class="actions"><label class="button" id="camera-button" for="camera" hidden>Take a photo</label>
<input id="camera" type="file" accept="image/*" capture="environment" hidden>
<button id="clear" type="button">Clear results</button></div>
<p id="message" role="alert"></p>
<div id="results"></div></section>
</div>
<div>
<section id="card"><h2>About this model</h2><dl id="facts"><dt>model</dt><dd>loading...</dd></dl></section>
<section id="code"><h2>Use it from code</h2><p>One image (the answer is JSON):</p><pre id="curl-one"></pre>
<p>Several images at once:</p><pre id="curl-many"></pre></section>
</div>
</main>
<script>
const $ = (id) => document.getElementById(id);
let meta = null;
const TOKEN_KEY = "imgclf-token";
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function headers() { return token() ? {"Authorization": "Bearer " + token()} : {}; }
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
const percent = (value) => (100 * value).toFixed(1) + "%";
function explainError(status, body, file) {
  const server = body && body.error ? body.error.message : "";
  const name = file ? file.name + ": " : "";
  if (status === 401) return "The token was not accepted. Enter the token this server was started with.";
  if (status === 413) {
    const limit = meta && meta.limits ? " (the limit is " + (meta.limits.max_body_bytes / 1048576).toFixed(0) + " MB)" : "";
    return name + "this file is too large for the server" + limit + ".";
  }
  if (status === 415) return name + "this is not an image the server can read (" + server + ").";
  if (status === 503) return "The server is busy right now; try again in a moment.";
  if (status === 504) return name + "the server took too long to answer.";
  if (status === 422) return name + "the request was not accepted (" + server + ").";
  return name + (server || "the request failed (HTTP " + status + ").");
}
function words(m) {
  const facts = [["model", m.architecture + (m.pretrained ? ", started from " + m.pretrained : "")]];
  if (m.finetune) facts.push(["training", m.finetune === "linear-probe" ? "a linear probe on its ImageNet features" : m.finetune + " fine-tuning"]);
  const multi = m.task === "multi-label";  // several labels per image: F1 and mAP, not accuracy
  facts.push([multi ? "labels" : "classes", m.classes.length + ": " + m.classes.join(", ")]);
  const size = m.input.size ? m.input.size + " x " + m.input.size + " px" : "any size (resized inside)";
  facts.push(["input", size + ", " + (m.input.channels === 1 ? "grayscale" : "colour")]);
  if (m.params) facts.push(["parameters", Number(m.params).toLocaleString("en-US")]);
  const s = m.metrics || {};
  if (multi && s.val_macro_f1 !== undefined) {
    const split = s.test_macro_f1 !== null && s.test_macro_f1 !== undefined ? "test" : "val";
    facts.push(["macro-F1", percent(s[split + "_macro_f1"]) + " on its " + (split === "test" ? "test" : "validation") + " split; mAP " + percent(s[split + "_map"])]);
  } else if (s.test_accuracy !== null && s.test_accuracy !== undefined) facts.push(["accuracy", percent(s.test_accuracy) + " on its test split"]);
  else if (s.val_accuracy !== null && s.val_accuracy !== undefined) facts.push(["accuracy", percent(s.val_accuracy) + " on its validation split (no test split" + (s.val_chose ? "; optimistic: it chose " + s.val_chose : "") + ")"]);
  const c = m.calibration;
  if (c && c.temperature) {
    let text = "temperature " + c.temperature.toFixed(2) + "; calibration error " + c.val_ece_after.toFixed(3) + " (was " + c.val_ece_before.toFixed(3) + ")";
    if (c.abstain_threshold !== null && c.abstain_threshold !== undefined) text += "; it gives no label below confidence " + c.abstain_threshold.toFixed(2) + " or for images unlike every class";
    facts.push(["calibration", text]);
  }
  if (m.quantization) facts.push(["quantization", String(m.quantization.mode || "int8")]);
  if (m.trained) facts.push(["trained", new Date(m.trained).toLocaleDateString("en-GB", {year: "numeric", month: "long", day: "numeric"})]);
  return facts;
}
function showCard(m) {
  const kind = m.task === "multi-label" ? " labels (several per image)" : " classes";
  $("model").textContent = m.architecture + " - " + m.classes.length + kind + (m.kind === "onnx" ? " (ONNX)" : "");
  const list = $("facts"); list.textContent = "";
  for (const [key, value] of words(m)) list.append(element("dt", "", key), element("dd", "", value));
  const auth = m.auth_required ? ' -H "Authorization: Bearer $IMGCLF_TOKEN"' : "";
  $("curl-one").textContent = "curl" + auth + " -F file=@photo.jpg " + location.origin + "/v1/predict";
  $("curl-many").textContent = "curl" + auth + " -F files=@a.jpg -F files=@b.jpg " + location.origin + "/v1/predict/batch";
}
async function loadMetadata() {
  const health = await (await fetch("/v1/health")).json();
  $("auth").classList.toggle("shown", health.auth_required && !token());
  if (health.auth_required && !token()) { $("model").textContent = "Enter the token to use this server."; return; }
  const response = await fetch("/v1/metadata", {headers: headers()});
  if (!response.ok) {
    sessionStorage.removeItem(TOKEN_KEY); $("auth").classList.add("shown");
    $("message").textContent = explainError(response.status, await response.json()); return;
  }
  $("message").textContent = ""; $("auth").classList.remove("shown");
  meta = await response.json();
  showCard(meta);
}
$("use-token").addEventListener("click", () => { sessionStorage.setItem(TOKEN_KEY, $("token").value); loadMetadata(); });
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") $("use-token").click(); });
function bars(topK) {
  const box = element("div", "bars");
  for (const item of topK) {
    const bar = element("div", "bar");
    const track = element("div", "track"); const fill = element("div", "fill");
    fill.style.width = (100 * item.probability).toFixed(1) + "%"; track.append(fill);
    bar.append(element("span", "name", item.label), track, element("span", "value", percent(item.probability)));
    box.append(bar);
  }
  return box;
}
function resultCard(file) {
  const card = element("article", "result");
  const pictures = element("div", "pictures"); const figure = element("figure");
  const image = element("img"); image.alt = file.name; image.src = URL.createObjectURL(file);
  figure.append(image, element("figcaption", "", file.name)); pictures.append(figure); card.append(pictures);
  card.append(element("div", "label", "...")); $("results").prepend(card);
  return card;
}
function showAnswer(card, answer) {
  const label = card.querySelector(".label");
  if (answer.error) { label.textContent = ""; card.append(element("p", "error", answer.error)); return false; }
  if (answer.labels !== undefined) {  // a multi-label model: the set it gives, maybe empty
    label.textContent = answer.labels.length ? answer.labels.join(" + ") : "None of the labels";
    if (answer.abstained) card.append(element("p", "why", "The model gives no labels (" + answer.abstained + ")."));
    else card.append(element("p", "why", "Each label is given at or above its own threshold; the bars show every label's probability."));
  } else if (answer.label === null) {
    label.textContent = "No label";
    card.append(element("p", "why", "The model is not sure enough to name a class (" + answer.abstained + "). The bars show what it would have guessed."));
  } else label.textContent = answer.label;
  card.append(bars(answer.top_k));
  return true;
}
async function explain(card, file) {
  if (!meta || !meta.explain) return;
  const form = new FormData(); form.append("file", file);
  const response = await fetch("/v1/explain", {method: "POST", body: form, headers: headers()});
  if (!response.ok) return;
  const figure = element("figure", "cam"); const image = element("img"); image.alt = "Grad-CAM of " + file.name;
  image.src = (await response.json()).png;
  figure.append(image, element("figcaption", "", "where it looked (Grad-CAM)"));
  card.querySelector(".pictures").append(figure);
}
async function send(files) {
  files = Array.from(files).filter(Boolean);
  if (!files.length) return;
  $("message").textContent = "";
  const cards = files.map(resultCard);
  const form = new FormData();
  const many = files.length > 1;
  for (const file of files) form.append(many ? "files" : "file", file);
  let response, body;
  try {
    response = await fetch(many ? "/v1/predict/batch" : "/v1/predict", {method: "POST", body: form, headers: headers()});
    body = await response.json();
  } catch (error) { $("message").textContent = "The server did not answer (" + error + ")."; cards.forEach((c) => c.remove()); return; }
  if (!response.ok) {
    $("message").textContent = explainError(response.status, body, many ? null : files[0]);
    cards.forEach((c) => c.remove()); if (response.status === 401) loadMetadata(); return;
  }
  const answers = many ? body : [body];
  for (let i = 0; i < files.length; i++) {
    const answer = answers[i];
    const shown = answer.error ? {error: explainError(answer.error.status, {error: answer.error}, files[i])} : answer;
    if (showAnswer(cards[i], shown)) await explain(cards[i], files[i]);
  }
}
$("file").addEventListener("change", () => { send($("file").files); $("file").value = ""; });
$("camera").addEventListener("change", () => { send($("camera").files); $("camera").value = ""; });
$("clear").addEventListener("click", () => { $("results").textContent = ""; $("message").textContent = ""; });
if (navigator.mediaDevices && /Android|iPhone|iPad|Mobile/.test(navigator.userAgent)) $("camera-button").hidden = false;
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files); });
document.addEventListener("paste", (e) => {
  const files = Array.from(e.clipboardData ? e.clipboardData.files : []);
  if (files.length) { e.preventDefault(); send(files); }
});
loadMetadata();
</script></body></html>
"""
)
