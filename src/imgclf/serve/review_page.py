"""The review page: one static string in the server page's look, no external scripts or fonts."""

from imgclf.serve.page import SHARED_STYLE

REVIEW_PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root{--ink:#1d232a;--muted:#5b6672;--line:#dde3ea;--accent:#2f6fd0;--soft:#eef4fb;--bad:#b42318;--good:#1a7f37}
"""
    + SHARED_STYLE
    + """section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:1rem 1.25rem;
min-width:0}
section h2{font-size:1.05rem;margin:0 0 .75rem}
#pictures{display:flex;gap:.75rem;flex-wrap:wrap}
#pictures img{max-width:100%;max-height:300px;border-radius:6px;border:1px solid var(--line)}
#file{color:var(--muted);word-break:break-all;font-size:.9rem}
#reason{margin:.5rem 0}
.actions{display:flex;gap:.5rem;flex-wrap:wrap;margin-top:.75rem}
button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:6px;padding:.4rem .8rem;cursor:pointer;
color:var(--ink)}
button:hover{border-color:var(--accent)}
button.primary{background:var(--accent);color:#fff;border-color:var(--accent)}
kbd{font-size:.8em;border:1px solid var(--line);border-radius:3px;padding:0 .25em;margin-left:.3em;color:var(--muted)}
button.primary kbd{color:#fff;border-color:#ffffff99}
#message{min-height:1.2em;color:var(--bad);margin:.5rem 0 0}
#done{color:var(--good)}
ol{margin:0;padding-left:2.6rem;max-height:70vh;overflow:auto}
li{cursor:pointer;margin:.15rem 0;word-break:break-all}
li.current{font-weight:600}
li .state{color:var(--muted);font-size:.85em;margin-left:.3em}
@media (max-width:760px){main{grid-template-columns:minmax(0,1fr)}}
</style></head>
<body>
<header><h1>Review labels</h1><p id="summary">loading...</p></header>
<main>
<section id="card"><h2 id="title">-</h2>
<div id="pictures"><img id="image" alt="the image under review"><img id="gradcam" alt="Grad-CAM" hidden></div>
<p id="file"></p><p id="reason"></p>
<div class="actions">
<button id="keep" class="primary">Keep<kbd>K</kbd></button>
<button id="accept">Accept suggestion<kbd>S</kbd></button>
<button id="remove">Remove<kbd>R</kbd></button>
<button id="undo">Undo<kbd>U</kbd></button>
<button id="new-class">New class<kbd>N</kbd></button>
<button id="previous">Previous<kbd>&larr;</kbd></button><button id="next">Next<kbd>&rarr;</kbd></button>
</div>
<p>Relabel as:</p><div class="actions" id="classes"></div>
<p id="message" role="status"></p><p id="done"></p>
</section>
<section><h2>Queue</h2><ol id="queue"></ol></section>
</main>
<script>
"use strict";
let state = {items: [], classes: [], explain: false}, current = 0;
const $ = (id) => document.getElementById(id);
function describe(decision) {
  if (!decision) return "";
  if (decision.action === "relabel") return "relabelled " + decision.label;
  return decision.action === "remove" ? "removed" : "kept";
}
function render() {
  const items = state.items, decided = items.filter((item) => item.decision).length;
  $("summary").textContent = state.data + ": " + decided + " of " + items.length + " decided. " +
    "Files are moved, never deleted; imgclf review DATA --undo puts everything back.";
  $("queue").replaceChildren(...items.map((item, index) => {
    const row = document.createElement("li");
    row.textContent = item.file;
    const mark = document.createElement("span");
    mark.className = "state";
    mark.textContent = describe(item.decision);
    row.append(mark);
    row.className = index === current ? "current" : "";
    row.onclick = () => { current = index; render(); };
    return row;
  }));
  $("done").textContent = items.length && decided === items.length ? "Every image is decided." : "";
  const item = items[current];
  if (!item) { $("title").textContent = "Nothing to review"; $("image").hidden = true; return; }
  $("title").textContent = (current + 1) + " / " + items.length + ": labelled " + item.label;
  // With a bundle, the Grad-CAM picture holds the image and its heat map side by side.
  $("image").hidden = state.explain;
  if (!state.explain) $("image").src = "/api/image/" + item.id + "?v=" + encodeURIComponent(describe(item.decision));
  $("gradcam").hidden = !state.explain;
  if (state.explain) $("gradcam").src = "/api/gradcam/" + item.id;
  $("file").textContent = item.file;
  $("reason").textContent = item.reason + (item.decision ? " - " + describe(item.decision) : "");
  $("accept").disabled = !item.suggested || item.suggested === item.label;
  $("accept").firstChild.textContent = item.suggested ? "Accept " + item.suggested : "Accept suggestion";
}
async function call(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
    body: body ? JSON.stringify(body) : undefined});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.detail || response.statusText);
  return answer;
}
async function decide(action, label) {
  const item = state.items[current];
  if (!item) return;
  $("message").textContent = "";
  try {
    const answer = await call("/api/decide", {id: item.id, action: action, label: label || null});
    item.decision = answer.decision;
    if (current < state.items.length - 1) current += 1;
  } catch (error) { $("message").textContent = error.message; }
  render();
}
async function undo() {
  const item = state.items[current];
  $("message").textContent = "";
  try { await call("/api/undo/" + item.id); item.decision = null; }
  catch (error) { $("message").textContent = error.message; }
  render();
}
function relabelButtons() {
  $("classes").replaceChildren(...state.classes.map((name, index) => {
    const button = document.createElement("button");
    button.className = "class";
    button.dataset.label = name;
    button.textContent = name;
    if (index < 9) { const key = document.createElement("kbd"); key.textContent = index + 1; button.append(key); }
    button.onclick = () => decide("relabel", name);
    return button;
  }));
}
$("keep").onclick = () => decide("keep");
$("remove").onclick = () => decide("remove");
$("accept").onclick = () => decide("relabel", state.items[current].suggested);
$("undo").onclick = undo;
$("new-class").onclick = async () => {
  const name = (window.prompt("New class name") || "").trim();
  if (!name) return;
  await decide("relabel", name);
  if (!state.classes.includes(name)) { state.classes.push(name); relabelButtons(); }
};
$("previous").onclick = () => { current = Math.max(0, current - 1); render(); };
$("next").onclick = () => { current = Math.min(state.items.length - 1, current + 1); render(); };
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "k") decide("keep");
  else if (key === "r") decide("remove");
  else if (key === "s" && !$("accept").disabled) $("accept").click();
  else if (key === "u") undo();
  else if (key === "n") $("new-class").click();
  else if (key === "arrowleft") $("previous").click();
  else if (key === "arrowright") $("next").click();
  else if (/^[1-9]$/.test(key) && state.classes[Number(key) - 1]) decide("relabel", state.classes[Number(key) - 1]);
});
fetch("/api/items").then((response) => response.json()).then((answer) => {
  state = answer;
  current = Math.max(0, state.items.findIndex((item) => !item.decision));
  relabelButtons();
  render();
});
</script>
</body></html>
"""
)
