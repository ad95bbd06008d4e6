"""The web page at ``/``: drop or choose an image, see the top-k bars, the Grad-CAM picture and
the model card. One static string, no external scripts or fonts (it works offline)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:900px;margin:0 auto;padding:1.5rem;
color:#1d232a}
#drop{border:2px dashed #9aa7b4;border-radius:10px;padding:2rem;text-align:center;cursor:pointer}
#drop.over{background:#eef4fb;border-color:#3b7dd8}
.row{display:flex;gap:1.5rem;flex-wrap:wrap;margin-top:1rem}
#preview{max-width:220px;max-height:220px;image-rendering:pixelated}
.bar{display:flex;align-items:center;gap:.5rem;margin:.2rem 0}
.bar span.name{width:9rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar div.fill{background:#3b7dd8;height:1rem;border-radius:3px}
#label{font-size:1.6rem;font-weight:700;margin:.4rem 0}
#error{color:#b42318}
#card td{padding:.15rem .6rem;border-bottom:1px solid #e3e7ec}
#cam{max-width:100%}
</style></head><body>
<h1>imgclf</h1>
<p id="model">loading the model card...</p>
<p id="auth" hidden>This server needs a token: <input id="token" type="password" placeholder="bearer token"></p>
<label id="drop" for="file">Drop an image here, or click to choose one
<input id="file" type="file" accept="image/*" hidden></label>
<div class="row">
  <img id="preview" alt="">
  <div><div id="label"></div><div id="reason"></div><div id="bars"></div><div id="error"></div></div>
</div>
<div id="explain"></div>
<h2>Model card</h2><table id="card"></table>
<script>
const $ = (id) => document.getElementById(id);
let meta = null;
function headers() {
  const token = $("token").value;
  return token ? {"Authorization": "Bearer " + token} : {};
}
function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
async function loadMetadata() {
  const health = await (await fetch("/v1/health")).json();
  $("auth").hidden = !health.auth_required;
  const response = await fetch("/v1/metadata", {headers: headers()});
  if (!response.ok) { $("model").textContent = "enter the token to use this server"; return; }
  const m = await response.json();
  meta = m; $("card").textContent = "";
  $("model").textContent = `${m.architecture} (${m.kind}), ${m.classes.length} classes`;
  const rows = [["architecture", m.architecture], ["classes", m.classes.join(", ")],
                ["input", JSON.stringify(m.input)], ["parameters", m.params ?? "n/a"],
                ["test accuracy", m.metrics ? m.metrics.test_accuracy : "n/a"]];
  for (const [key, value] of rows) {
    const tr = document.createElement("tr"); tr.append(cell(key), cell(String(value))); $("card").append(tr);
  }
}
loadMetadata();
$("token").addEventListener("change", loadMetadata);
async function send(file) {
  $("error").textContent = ""; $("label").textContent = "..."; $("bars").textContent = ""; $("reason").textContent = "";
  $("explain").textContent = "";
  $("preview").src = URL.createObjectURL(file);
  const form = new FormData(); form.append("file", file);
  const response = await fetch("/v1/predict", {method: "POST", body: form, headers: headers()});
  const body = await response.json();
  if (!response.ok) { $("label").textContent = ""; $("error").textContent = body.error.message; return; }
  $("label").textContent = body.label === null ? "no label (abstained)" : body.label;
  if (body.abstained) $("reason").textContent = body.abstained;
  for (const item of body.top_k) {
    const bar = document.createElement("div"); bar.className = "bar";
    const name = document.createElement("span"); name.className = "name"; name.textContent = item.label;
    const fill = document.createElement("div"); fill.className = "fill";
    fill.style.width = (item.probability * 300) + "px";
    const value = document.createElement("span"); value.textContent = item.probability.toFixed(3);
    bar.append(name, fill, value); $("bars").append(bar);
  }
  if (meta && meta.explain) {
    const form2 = new FormData(); form2.append("file", file);
    const explained = await fetch("/v1/explain", {method: "POST", body: form2, headers: headers()});
    if (explained.ok) { const img = document.createElement("img"); img.id = "cam"; img.alt = "Grad-CAM";
      img.src = (await explained.json()).png; $("explain").append(img); }
  }
}
$("file").addEventListener("change", () => { if ($("file").files[0]) send($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
</script></body></html>
"""
