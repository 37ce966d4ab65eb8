// magnet_fast web page: no build step, no external resources. Talks to /v1/models and /v1/generate.
"use strict";
const $ = (id) => document.getElementById(id);
let models = [];

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function slug(text) {
  return (text || "unconditional").toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 40) || "prompt";
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models");
    const data = await r.json();
    models = data.models || [];
  } catch (e) {
    setStatus("could not list the models: " + e, true);
    return;
  }
  const select = $("model");
  select.textContent = "";
  for (const m of models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = `${m.name} (${m.kind})`;
    if (m.default) opt.selected = true;
    select.appendChild(opt);
  }
  onModelChange();
}

function onModelChange() {
  const m = models.find((x) => x.name === $("model").value);
  if (!m) return;
  $("duration").max = m.max_duration_s;
  const notice = $("notice");
  notice.hidden = !m.notice;
  notice.textContent = m.notice ? "Note: " + m.notice : "";
}

async function generate(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  const unconditional = $("unconditional").checked;
  if (!text && !unconditional) {
    setStatus("type a prompt (or tick unconditional)", true);
    return;
  }
  const body = { model: $("model").value, text: unconditional ? null : text, format: "wav" };
  const duration = parseFloat($("duration").value);
  if (!Number.isNaN(duration)) body.duration = duration;
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  const button = $("generate");
  button.disabled = true;
  setStatus("generating...");
  const t0 = performance.now();
  try {
    const r = await fetch("/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      try { message = r.status + ": " + (await r.json()).error; } catch (_) { /* not JSON */ }
      setStatus(message, true);
      return;
    }
    const blob = await r.blob();
    const ms = performance.now() - t0;
    addResult(body, r.headers, blob, ms);
    setStatus("");
  } catch (e) {
    setStatus("request failed: " + e, true);
  } finally {
    button.disabled = false;
  }
}

function addResult(body, headers, blob, ms) {
  const url = URL.createObjectURL(blob);
  const seed = headers.get("X-Seed");
  const li = document.createElement("li");
  li.className = "result";
  const prompt = document.createElement("div");
  prompt.className = "prompt";
  prompt.textContent = body.text === null ? "(unconditional)" : body.text;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${body.model} · seed ${seed} · ${headers.get("X-Audio-Seconds")} s of audio · ` +
    `latency ${(ms / 1000).toFixed(2)} s (queue ${headers.get("X-Queue-Ms")} ms, batch of ${headers.get("X-Batch-Size")})`;
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "auto";
  audio.src = url;
  const link = document.createElement("a");
  link.href = url;
  link.download = `${slug(body.text)}_seed${seed}.wav`;
  link.textContent = "download WAV";
  li.append(prompt, meta, audio, link);
  $("results").prepend(li);
}

$("model").addEventListener("change", onModelChange);
$("form").addEventListener("submit", generate);
loadModels();
