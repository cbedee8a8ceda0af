// unmask serve: the page. Plain JavaScript, charts drawn as SVG; it talks to /api only.
"use strict";

const page = document.getElementById("page");
let stopPolling = () => {};

const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const pct = (v) => (v == null ? "n/a" : `${(100 * v).toFixed(2)}%`);
const num = (v, digits = 4) => (v == null ? "n/a" : Number(v).toFixed(digits));
const big = (v) => (v == null ? "n/a" : Number(v).toLocaleString("en-US"));

async function api(path, body) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(data.error || `${response.status}`);
  return data;
}

function showError(where, error) {
  where.innerHTML = `<div class="error" data-testid="error">${esc(error.message || error)}</div>`;
}

// ---------------------------------------------------------------- charts

const COLORS = ["#2f6fb0", "#d08c2c", "#2e8b57", "#8e44ad", "#b23b3b"];

function niceRange(values) {
  let low = Math.min(...values), high = Math.max(...values);
  if (!isFinite(low)) return [0, 1];
  if (low === high) { low -= Math.abs(low) * 0.1 || 0.5; high += Math.abs(high) * 0.1 || 0.5; }
  const pad = (high - low) * 0.08;
  // Quantities that cannot go below zero (rates, losses, speeds) get no axis below zero.
  return [low >= 0 ? Math.max(0, low - pad) : low - pad, high + pad];
}

function lineChart(title, series, { format = (v) => v.toPrecision(3), testid = "" } = {}) {
  const width = 360, height = 190, left = 52, right = 10, top = 10, bottom = 24;
  const drawn = series.filter((s) => s.points.length);
  const xs = drawn.flatMap((s) => s.points.map((p) => p[0]));
  const ys = drawn.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = xs.length ? [Math.min(...xs, 0), Math.max(...xs, 1)] : [0, 1];
  const [y0, y1] = niceRange(ys.length ? ys : [0, 1]);
  const X = (x) => left + ((x - x0) / (x1 - x0 || 1)) * (width - left - right);
  const Y = (y) => top + (1 - (y - y0) / (y1 - y0 || 1)) * (height - top - bottom);
  let svg = `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(title)}">`;
  for (let k = 0; k <= 4; k++) {
    const y = y0 + ((y1 - y0) * k) / 4;
    svg += `<line x1="${left}" x2="${width - right}" y1="${Y(y)}" y2="${Y(y)}" stroke="#eef0f3"/>`;
    // An empty chart gets no scale: numbers on it would be made up.
    if (drawn.length) svg += `<text x="${left - 6}" y="${Y(y) + 4}" text-anchor="end" font-size="10" fill="#6b7785">${esc(format(y))}</text>`;
  }
  if (drawn.length) {
    svg += `<text x="${width - right}" y="${height - 6}" text-anchor="end" font-size="10" fill="#6b7785">step ${esc(big(x1))}</text>`;
    svg += `<text x="${left}" y="${height - 6}" font-size="10" fill="#6b7785">${esc(big(x0))}</text>`;
  }
  drawn.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const path = s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg += `<polyline fill="none" stroke="${color}" stroke-width="1.8" points="${path}" data-series="${esc(s.name)}"/>`;
    if (s.dots || s.points.length < 40) s.points.forEach((p) => (svg += `<circle cx="${X(p[0])}" cy="${Y(p[1])}" r="${s.dots ? 3 : 1.6}" fill="${color}"/>`));
  });
  if (!drawn.length) svg += `<text x="${width / 2}" y="${height / 2}" text-anchor="middle" fill="#6b7785" font-size="12">no points yet</text>`;
  svg += "</svg>";
  const legend = series.map((s, i) => `<span><i style="background:${s.color || COLORS[i % COLORS.length]}"></i>${esc(s.name)}</span>`).join("");
  const count = series.length ? series[0].points.length : 0;
  return `<div class="chart" data-testid="${esc(testid)}" data-points="${count}"><h3>${esc(title)}</h3>${svg}<div class="legend">${legend}</div></div>`;
}

function barChart(labels, values, format) {
  const width = 300, height = 150, top = 16, bottom = 22, high = Math.max(...values.filter(isFinite), 1e-9) * 1.15;
  const barWidth = 70;
  let svg = `<svg viewBox="0 0 ${width} ${height}">`;
  values.forEach((v, i) => {
    const x = 40 + i * (barWidth + 50), h = ((height - top - bottom) * (isFinite(v) ? v : 0)) / high;
    svg += `<rect x="${x}" y="${height - bottom - h}" width="${barWidth}" height="${h}" fill="${COLORS[i]}" rx="3"/>`;
    svg += `<text x="${x + barWidth / 2}" y="${height - bottom - h - 4}" text-anchor="middle" font-size="11">${esc(format(v))}</text>`;
    svg += `<text x="${x + barWidth / 2}" y="${height - 6}" text-anchor="middle" font-size="11" fill="#6b7785">${esc(labels[i])}</text>`;
  });
  return svg + "</svg>";
}

// ---------------------------------------------------------------- runs

async function runsPage() {
  page.innerHTML = `<h1>Runs</h1><div id="runs" class="card">loading…</div>`;
  const box = document.getElementById("runs");
  const refresh = async () => {
    try {
      const { runs, fine_tuning = [] } = await api("/api/runs");
      const leftOut = fine_tuning.length ? `<p class="muted" data-testid="fine-tuning-left-out">Not shown: ${fine_tuning.length} fine-tuning
        folder(s) (${fine_tuning.map(esc).join(", ")}), whose loss is a task's and whose head is not an MLM head; their results are in their
        <code>summary.json</code>.</p>` : "";
      if (!runs.length) {
        box.innerHTML = `<p class="muted">No runs under the folders this server was given. Start one with <code>unmask train</code>.</p>${leftOut}`;
        return;
      }
      box.innerHTML = leftOut + `<table data-testid="runs-table"><thead><tr><th>run</th><th>state</th><th>step</th><th>tokens</th>
        <th>held-out loss</th><th>top-1</th><th>top-5</th></tr></thead><tbody>${runs.map((r) => `
        <tr class="clickable" data-run="${esc(r.id)}" onclick="location.hash='#/run/${encodeURIComponent(r.id)}'">
          <td>${esc(r.label)}</td><td><span class="state ${esc(r.state)}">${esc(r.state)}</span></td>
          <td>${big(r.step)}${r.max_steps ? ` / ${big(r.max_steps)}` : r.time_budget ? ` (${esc(r.time_budget)})` : ""}</td>
          <td>${big(r.tokens)}</td><td>${r.last_eval ? num(r.last_eval.loss) : "n/a"}</td>
          <td>${r.last_eval ? pct(r.last_eval.accuracy) : "n/a"}</td><td>${r.last_eval ? pct(r.last_eval.top5_accuracy) : "n/a"}</td></tr>`).join("")}
        </tbody></table>`;
    } catch (e) { showError(box, e); }
  };
  await refresh();
  const timer = setInterval(refresh, 3000);
  stopPolling = () => clearInterval(timer);
}

function runCharts(records, downstream = {}) {
  const steps = records.filter((r) => r.loss !== undefined && r.step !== undefined);
  const evals = records.filter((r) => r.eval_loss != null);
  const series = (rows, key) => rows.filter((r) => r[key] != null).map((r) => [r.step, r[key]]);
  // `eval_accuracy@NAME` is a store's held-out split; `eval_loss@lenN` the held-out set at another window length.
  const tagged = (prefix) => [...new Set(evals.flatMap((r) => Object.keys(r).filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length))))];
  const sources = tagged("eval_accuracy@").filter((name) => !/(^|@)len\d+$/.test(name));
  const lengths = tagged("eval_loss@len").filter((n) => /^\d+$/.test(n)).sort((a, b) => a - b);
  return [
    lineChart("MLM loss", [{ name: "training", points: series(steps, "loss"), color: "#9aa5b1" }, { name: "held-out", points: series(evals, "eval_loss"), dots: true }], { testid: "chart-loss" }),
    lineChart("Held-out masked-token accuracy", [{ name: "top-1", points: series(evals, "eval_accuracy"), dots: true }, { name: "top-5", points: series(evals, "eval_top5_accuracy"), dots: true }], { format: (v) => `${(100 * v).toFixed(0)}%`, testid: "chart-accuracy" }),
    // Several --data stores: each store's held-out split on its own (`eval_accuracy@NAME`).
    ...(sources.length ? [lineChart("Held-out top-1 per source", sources.map((name) => ({ name, points: series(evals, `eval_accuracy@${name}`), dots: true })),
      { format: (v) => `${(100 * v).toFixed(0)}%`, testid: "chart-sources" })] : []),
    // A run continued at a longer context: the held-out loss at its own length and at the others.
    ...(lengths.length ? [lineChart("Held-out loss by window length", [{ name: "training length", points: series(evals, "eval_loss"), dots: true },
      ...lengths.map((n) => ({ name: `${n} tokens`, points: series(evals, `eval_loss@len${n}`), dots: true }))], { testid: "chart-lengths" })] : []),
    lineChart("Learning rate", [{ name: "lr", points: series(steps, "lr") }], { format: (v) => v.toExponential(1), testid: "chart-lr" }),
    lineChart("Gradient norm", [{ name: "norm (before clipping)", points: series(steps, "grad_norm") }], { testid: "chart-grad" }),
    lineChart("Masking rate", [{ name: "real", points: series(steps, "mask_rate") }, { name: "scheduled", points: series(steps, "mask_prob") }], { format: (v) => `${(100 * v).toFixed(1)}%`, testid: "chart-mask" }),
    lineChart("Tokens per second", [{ name: "tokens/s", points: series(steps, "tokens_per_s") }], { format: (v) => big(Math.round(v)), testid: "chart-speed" }),
    // How well the hardware is used: model FLOPs over the peak, the wait for data, padding.
    ...(steps.some((r) => r.mfu != null) ? [lineChart("Hardware use", [{ name: "MFU", points: series(steps, "mfu") },
      { name: "waiting for data", points: series(steps, "data_wait") }, { name: "padding", points: series(steps, "padding") }],
      { format: (v) => `${(100 * v).toFixed(1)}%`, testid: "chart-mfu" })] : []),
    ...(steps.some((r) => r.memory_gib != null) ? [lineChart("Peak memory (GiB)", [{ name: "memory", points: series(steps, "memory_gib") }],
      { format: (v) => v.toFixed(2), testid: "chart-memory" })] : []),
    // The task a model is for: fine-tuning or probe scores of the checkpoints (RUN/downstream).
    ...(Object.keys(downstream).length ? [lineChart("Downstream score (median over seeds)",
      Object.entries(downstream).map(([task, d]) => ({ name: `${task} (${d.metric})`, points: d.points, dots: true })),
      { format: (v) => v.toFixed(3), testid: "chart-downstream" })] : []),
  ].join("");
}

async function runPage(runId) {
  page.innerHTML = `<p><a href="#/runs">← runs</a></p><div id="run">loading…</div>`;
  const box = document.getElementById("run");
  let detail;
  try { detail = await api(`/api/runs/${encodeURIComponent(runId)}`); } catch (e) { showError(box, e); return; }
  const records = [];
  let next = 0;
  box.innerHTML = `<h1>${esc(detail.label)} <span id="run-state" class="state ${esc(detail.state)}">${esc(detail.state)}</span></h1>
    <div id="run-numbers" class="muted"></div><div id="charts" class="charts"></div>
    <h2>Checkpoints</h2><div class="card">${detail.checkpoints.length ? `<table><tr><th>step</th><th>training time</th><th>complete</th></tr>${detail.checkpoints.map((c) =>
      `<tr><td>${big(c.step)}</td><td>${c.train_seconds != null ? `${(c.train_seconds / 60).toFixed(1)} min` : "n/a"}</td><td>${c.complete ? "yes" : "no"}</td></tr>`).join("")}</table>` : `<span class="muted">none yet</span>`}</div>
    <h2>Settings (config.yaml)</h2><pre>${esc(Object.entries(detail.config).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n"))}</pre>`;
  const poll = async () => {
    try {
      const data = await api(`/api/runs/${encodeURIComponent(runId)}/metrics?after=${next}`);
      next = data.next;
      records.push(...data.records);
      document.getElementById("charts").innerHTML = runCharts(records, data.downstream || {});
      const state = document.getElementById("run-state");
      state.textContent = data.state;
      state.className = `state ${data.state}`;
      const last = records.filter((r) => r.loss !== undefined).at(-1);
      const use = last && last.mfu != null ? `, MFU ${(100 * last.mfu).toFixed(1)}%, ${(100 * last.data_wait).toFixed(0)}% waiting for data` : "";
      const memory = last && last.memory_gib != null ? `, peak memory ${last.memory_gib.toFixed(2)} GiB` : "";
      document.getElementById("run-numbers").textContent = last ? `step ${big(last.step)}, loss ${num(last.loss)}, ${big(Math.round(last.tokens_per_s))} tokens/s${use}${memory}` : "no steps logged yet";
    } catch (e) { /* the run may be mid-write; the next poll tries again */ }
  };
  await poll();
  const timer = setInterval(poll, 1500);
  stopPolling = () => clearInterval(timer);
}

// ---------------------------------------------------------------- fill-mask

async function modelOptions(selected, allowNone) {
  const { models } = await api("/api/models");
  if (!models.length) throw new Error("this server has no models: train a run to the end, or start it with --models minilm-l6");
  return (allowNone ? `<option value="">(none)</option>` : "") + models.map((m, i) =>
    `<option value="${esc(m.id)}" ${(selected ? m.id === selected : i === 0 && !allowNone) ? "selected" : ""}>${esc(m.label)}</option>`).join("");
}

async function fillPage() {
  page.innerHTML = `<h1>Fill-mask</h1><div class="card" id="fill-form">loading…</div><div id="fill-results" data-testid="fill-results"></div>`;
  const form = document.getElementById("fill-form");
  try {
    form.innerHTML = `<div class="row"><div><label>model</label><select id="fill-model">${await modelOptions()}</select></div>
      <div><label>side by side with</label><select id="fill-model-b">${await modelOptions("", true)}</select></div>
      <div><label>candidates</label><input id="fill-top-k" type="number" min="1" max="50" value="5" style="width:5rem"></div></div>
      <label>text, with one or several [MASK] (or &lt;mask&gt;)</label>
      <textarea id="fill-text" data-testid="fill-text">Use the [MASK] statement to leave a loop early.</textarea>
      <p><button id="fill-button" data-testid="fill-button">Fill in the masks</button></p>`;
  } catch (e) { showError(form, e); return; }
  document.getElementById("fill-button").onclick = async () => {
    const button = document.getElementById("fill-button"), results = document.getElementById("fill-results");
    const models = [document.getElementById("fill-model").value, document.getElementById("fill-model-b").value].filter(Boolean);
    const body = { text: document.getElementById("fill-text").value, top_k: Number(document.getElementById("fill-top-k").value) };
    button.disabled = true;
    try {
      const answers = await Promise.all(models.map((model) => api("/api/fill", { ...body, model })));
      results.innerHTML = `<div class="side-by-side">${answers.map((a, column) => `<div class="card" data-model="${esc(a.model)}">
        <h2>${esc(a.model.replace(/^run:/, ""))}</h2><div class="filled">${esc(a.filled)}</div>
        ${a.masks.map((m, i) => `<h3>mask ${i + 1}</h3>${m.candidates.map((c) => `<div class="candidate"><span>${esc(c.token)}</span>
          <div class="bar ${column ? "second" : ""}" style="width:${(100 * c.score).toFixed(1)}%"></div><span class="prob">${pct(c.score)}</span></div>`).join("")}`).join("")}</div>`).join("")}</div>`;
    } catch (e) { showError(results, e); } finally { button.disabled = false; }
  };
}

// ---------------------------------------------------------------- masking walkthrough

async function maskingPage() {
  page.innerHTML = `<h1>Masking walkthrough</h1>
    <p class="muted">What one masked-language-modelling draw does to a sentence, exactly as training draws it, and what the model then predicts.</p>
    <div class="card" id="mask-form">loading…</div><div id="mask-results" class="steps"></div>`;
  const form = document.getElementById("mask-form");
  try {
    form.innerHTML = `<div class="row"><div><label>model (and its tokenizer)</label><select id="mask-model">${await modelOptions()}</select></div>
      <div><label>strategy</label><select id="mask-strategy"><option>token</option><option>whole-word</option><option>span</option></select></div>
      <div><label>masking rate</label><input id="mask-prob" type="number" step="0.05" min="0.05" max="0.95" value="0.3" style="width:5rem"></div>
      <div><label>seed</label><input id="mask-seed" type="number" min="0" value="0" style="width:6rem"></div></div>
      <label>sentence</label><input id="mask-text" data-testid="mask-text" style="width:100%" value="The break statement leaves the innermost enclosing loop early.">
      <p><button id="mask-draw" data-testid="mask-draw">Draw</button> <button class="secondary" id="mask-redraw" data-testid="mask-redraw">Redraw (next seed)</button></p>`;
  } catch (e) { showError(form, e); return; }
  const draw = async () => {
    const results = document.getElementById("mask-results");
    try {
      const r = await api("/api/mask", {
        model: document.getElementById("mask-model").value, text: document.getElementById("mask-text").value,
        seed: Number(document.getElementById("mask-seed").value), mask_prob: Number(document.getElementById("mask-prob").value),
        masking: document.getElementById("mask-strategy").value,
      });
      const became = (b) => (!b ? "" : b === r.mask_token ? `<span class="became-mask">${esc(b)}</span>` : b === "kept" ? `<span class="became-kept">kept</span>` : `<span class="became-random">random &rarr; ${esc(b.replace(/^random:/, ""))}</span>`);
      results.innerHTML = `<h2>Tokens, ids and the attention mask</h2><p class="muted">The tokenizer cuts the text into tokens and adds the framing tokens. Special tokens and padding are never picked.</p>
        <h2>One draw: what is picked, and what each pick becomes</h2><p class="muted">${r.picked} of ${r.maskable} maskable tokens picked (seed ${esc(document.getElementById("mask-seed").value)}). A picked token becomes the mask token (80%), a random token (10%) or stays (10%); the label is its original id, and -100 everywhere else.</p>
        <div class="card"><table class="tokens" data-testid="mask-table"><tr><th>#</th><th>token</th><th>id</th><th>attention</th><th>picked</th><th>became</th><th>model sees</th><th>label</th></tr>
        ${r.rows.map((t) => `<tr data-picked="${t.picked}"><td>${t.position}</td><td class="${t.picked ? "picked" : t.special ? "special" : ""}">${esc(t.token)}</td>
          <td>${t.token_id}</td><td>${t.attention}</td><td>${t.picked ? "yes" : ""}</td><td>${became(t.became)}</td><td>${t.input_id}</td><td>${t.label}</td></tr>`).join("")}</table></div>
        <h2>The model's predictions at exactly those positions</h2>
        <div class="card" data-testid="mask-predictions">${r.predictions.length ? `<table><tr><th>#</th><th>true</th><th>predicted</th><th>p(predicted)</th><th>p(true)</th><th>loss</th></tr>
        ${r.predictions.map((p) => `<tr><td>${p.position}</td><td>${esc(p.true)}</td><td class="${p.right ? "right" : "wrong"}">${esc(p.predicted)}</td>
          <td>${pct(p.predicted_probability)}</td><td>${pct(p.true_probability)}</td><td>${num(p.loss, 3)}</td></tr>`).join("")}</table>
          <p>Loss of this draw: <b data-testid="mask-loss">${num(r.loss, 4)}</b> (the mean of −log p(true) over the picked tokens; nothing else counts).</p>` : `<span class="muted">this draw picked nothing: redraw, or raise the rate</span>`}</div>`;
    } catch (e) { showError(results, e); }
  };
  document.getElementById("mask-draw").onclick = draw;
  document.getElementById("mask-redraw").onclick = () => { const seed = document.getElementById("mask-seed"); seed.value = Number(seed.value) + 1; draw(); };
}

// ---------------------------------------------------------------- compare

async function comparePage() {
  page.innerHTML = `<h1>Compare two models</h1><p class="muted">Both models scored on the same held-out positions (15% masks, fixed seeds) of a run's token store.</p>
    <div class="card" id="compare-form">loading…</div><div id="compare-results" data-testid="compare-results"></div>`;
  const form = document.getElementById("compare-form");
  try {
    const { runs } = await api("/api/runs");
    form.innerHTML = `<div class="row"><div><label>base</label><select id="compare-base">${await modelOptions()}</select></div>
      <div><label>trained</label><select id="compare-trained">${await modelOptions()}</select></div>
      <div><label>held-out data of run</label><select id="compare-data">${runs.map((r) => `<option value="${esc(r.id)}">${esc(r.label)}</option>`).join("")}</select></div>
      <div><button id="compare-button" data-testid="compare-button">Compare</button></div></div>`;
    const trained = document.getElementById("compare-trained");
    if (trained.options.length > 1) trained.selectedIndex = trained.options.length - 1;
  } catch (e) { showError(form, e); return; }
  document.getElementById("compare-button").onclick = async () => {
    const button = document.getElementById("compare-button"), results = document.getElementById("compare-results");
    button.disabled = true;
    results.innerHTML = `<p class="muted">scoring both models…</p>`;
    try {
      const r = await api("/api/compare", { base: document.getElementById("compare-base").value, trained: document.getElementById("compare-trained").value, data: document.getElementById("compare-data").value });
      const [head, ...rows] = r.table;
      const b = r.base_metrics, t = r.trained_metrics;
      results.innerHTML = `${(r.notes || []).map((n) => `<div class="note" data-testid="compare-note">Note: ${esc(n)}.</div>`).join("")}<div class="card"><table data-testid="compare-table"><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>
        ${rows.map((row) => `<tr>${row.map((c) => `<td>${esc(c)}</td>`).join("")}</tr>`).join("")}</table></div>
        <div class="side-by-side"><div class="chart"><h3>held-out loss</h3>${barChart(["base", "trained"], [b.loss, t.loss], (v) => num(v, 3))}</div>
        <div class="chart"><h3>top-1 accuracy</h3>${barChart(["base", "trained"], [b.accuracy, t.accuracy], pct)}</div></div>
        <h2>Where their top-1 predictions differ</h2><div class="card"><table><tr><th>context</th><th>true</th><th>base</th><th>trained</th></tr>
        ${r.disagreements.map((d) => `<tr><td>${esc(d.context)}</td><td>${esc(d.truth)}</td><td>${esc(d.base)}</td><td>${esc(d.trained)}</td></tr>`).join("") || `<tr><td colspan="4" class="muted">none</td></tr>`}</table></div>`;
    } catch (e) { showError(results, e); } finally { button.disabled = false; }
  };
}

// ---------------------------------------------------------------- router

function route() {
  stopPolling();
  stopPolling = () => {};
  const [name, argument] = (location.hash.replace(/^#\//, "") || "runs").split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (name === "run" ? "runs" : name)));
  const pages = { runs: runsPage, run: () => runPage(decodeURIComponent(argument || "")), fill: fillPage, masking: maskingPage, compare: comparePage };
  (pages[name] || runsPage)().catch((e) => showError(page, e));
}

window.addEventListener("hashchange", route);
route();
