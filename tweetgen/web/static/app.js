// The review page. Every text from the server goes into the page with textContent, never as
// HTML: generated tweets are untrusted (the model repeats whatever the corpus holds).
"use strict";

const PAGE_SIZE = 25;
const TOKEN_KEY = "tweetgen.api_token";
const page = { offset: 0, total: 0 };
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function api(path, body) {
  const options = { headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) options.headers.Authorization = "Bearer " + token;
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

// ---------------------------------------------------------------- tweets and review

const review = { rows: [], current: -1, undo: [] }; // the rows shown, the one selected, past reviews

function fixed(value, digits = 2) {
  return value === null || value === undefined ? "" : Number(value).toFixed(digits);
}

function tweetRow(tweet) {
  const row = element("tr");
  row.dataset.id = tweet.id;
  row.title = `created ${tweet.created}, source ${tweet.source || "?"}`;
  const novelty = tweet.copied ? "copied" : fixed(tweet.novelty);
  const status = element("td", "status " + tweet.status, tweet.status);
  const score = element("td", "num score", fixed(tweet.score));
  if (tweet.score !== null && tweet.score !== undefined) {
    score.title = `fluency ${fixed(tweet.fluency)}, novelty ${fixed(tweet.novelty)}` +
      (tweet.candidates ? `, best of ${tweet.candidates} candidates` : "");
  }
  row.append(
    element("td", "num", tweet.id),
    element("td", "text", tweet.text),
    score,
    element("td", "seed", tweet.seed),
    element("td", "mode", tweet.mode),
    element("td", "num", fixed(tweet.temperature)),
    element("td", "num", tweet.checkpoint_step),
    element("td", tweet.copied ? "novelty copied" : "novelty", novelty),
    status,
  );
  const actions = element("td", "actions");
  for (const [label, value] of [["approve", "approved"], ["reject", "rejected"]]) {
    const button = element("button", label, label);
    button.type = "button";
    button.addEventListener("click", () => setStatus(row, value));
    actions.append(button);
  }
  row.append(actions);
  row.addEventListener("click", () => select(review.rows.indexOf(row)));
  return row;
}

async function setStatus(row, value, remember = true) {
  const id = row.dataset.id;
  const cell = row.querySelector("td.status");
  const before = cell.textContent;
  try {
    const tweet = await api(`/api/tweets/${id}/review`, { status: value });
    cell.textContent = tweet.status;
    cell.className = "status " + tweet.status;
    if (remember && before !== tweet.status) review.undo.push({ row, status: before });
    say(remember ? `tweet ${id} ${tweet.status}` : `undone: tweet ${id} is ${tweet.status} again`);
    loadCounts();
  } catch (error) {
    say(`could not review tweet ${id}: ${error.message}`, true);
  }
}

function select(index) {
  if (!review.rows.length) return;
  index = Math.max(0, Math.min(index, review.rows.length - 1));
  if (review.rows[review.current]) review.rows[review.current].classList.remove("current");
  review.current = index;
  const row = review.rows[index];
  row.classList.add("current");
  row.scrollIntoView({ block: "nearest" });
}

async function reviewCurrent(value) {
  if (review.current < 0) select(0);
  const row = review.rows[review.current];
  if (!row) return;
  await setStatus(row, value);
  select(review.current + 1);
}

async function undoLast() {
  const last = review.undo.pop();
  if (!last) {
    say("nothing to undo");
    return;
  }
  await setStatus(last.row, last.status, false);
  const index = review.rows.indexOf(last.row);
  if (index >= 0) select(index);
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, select, textarea")) return; // typing, not reviewing
  const actions = {
    j: () => select(review.current + 1),
    k: () => select(review.current - 1),
    a: () => reviewCurrent("approved"),
    r: () => reviewCurrent("rejected"),
    u: () => undoLast(),
  };
  const action = actions[event.key];
  if (!action) return;
  event.preventDefault();
  action();
}

function filterParams() {
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: page.offset, order: $("f-order").value });
  const status = $("f-status").value;
  const seed = $("f-seed").value;
  const search = $("f-search").value.trim();
  if (status) params.set("status", status);
  if (seed) params.set("seed", seed);
  if (search) params.set("search", search);
  if (!$("f-copies").checked) params.set("novel_only", "true");
  return params;
}

async function loadTweets() {
  try {
    const data = await api("/api/tweets?" + filterParams());
    page.total = data.total;
    review.rows = data.tweets.map(tweetRow);
    review.current = -1;
    $("tweets").tBodies[0].replaceChildren(...review.rows);
    const last = Math.min(page.offset + data.tweets.length, data.total);
    $("page-info").textContent = data.total ? `${page.offset + 1}–${last} of ${data.total}` : "no tweets match";
    $("newer").disabled = page.offset === 0;
    $("older").disabled = last >= data.total;
    for (const button of document.querySelectorAll("#views button")) {
      button.setAttribute("aria-pressed", String(button.dataset.status === $("f-status").value));
    }
    $("tweets").dataset.loaded = String(Date.now());
  } catch (error) {
    say(`could not load tweets: ${error.message}`, true);
  }
}

async function loadCounts() {
  try {
    const counts = await api("/api/tweets/counts");
    for (const status of ["new", "approved", "rejected"]) $("count-" + status).textContent = counts[status];
    $("count-all").textContent = counts.new + counts.approved + counts.rejected;
  } catch (error) {
    say(`could not load the counts: ${error.message}`, true);
  }
}

function showView(status) {
  $("f-status").value = status;
  // The approved (and rejected) view lists the latest decisions first; to review: the best first.
  $("f-order").value = status === "approved" || status === "rejected" ? "reviewed" : "score";
  page.offset = 0;
  loadTweets();
}

// ---------------------------------------------------------------- generating

async function generate(event) {
  event.preventDefault();
  const button = $("gen-button");
  const request = {
    seed: $("gen-seed").value,
    mode: $("gen-mode").value,
    n: Number($("gen-n").value),
    temperature: Number($("gen-temp").value),
    raw: $("gen-raw").checked,
  };
  button.disabled = true;
  say("generating…");
  try {
    const data = await api("/api/generate", request);
    $("generated").replaceChildren(...data.tweets.map((t) => {
      const item = element("li", "text", t.text);
      item.dataset.id = t.id;
      return item;
    }));
    const kept = request.raw ? "raw samples" : `the best of ${data.sampled} candidates`;
    say(`${data.tweets.length} ${request.mode} tweets from ${data.checkpoint} (step ${data.checkpoint_step}), ${kept}`);
    page.offset = 0;
    await loadTweets();
    loadCounts();
  } catch (error) {
    say(`could not generate: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- status and chart

// The run in progress, as `tweetgen status` words it: step N of M, ETA, losses in bits/char.
function runningText(r) {
  const bpc = (x) => (x === null || x === undefined ? "-" : `${x.toFixed(4)} bits/char`);
  const where = r.steps_total !== null ? `step ${r.steps_done} of ${r.steps_total}` : `step ${r.steps_done}`;
  const eta = r.eta_seconds !== null ? `, ETA ${Math.round(r.eta_seconds / 60)} min` : "";
  return `${r.kind} run #${r.run}: ${where}${eta}, loss ${bpc(r.train_bpc)}, validation ${bpc(r.val_bpc)}`;
}

// What idle training does, as `tweetgen status` words it (tweetgen/idle.py writes it).
function idleText(idle) {
  let text = `idle training ${idle.state}`;
  if (idle.best_bpc !== null && idle.best_bpc !== undefined) text += `, best ${idle.best_bpc.toFixed(4)} bits/char`;
  if (idle.reason) text += ` (${idle.reason})`;
  return text;
}

async function loadStatus() {
  try {
    const s = await api("/api/status");
    const d = s.daemon;
    const p = s.promoted_checkpoint;
    const parts = [
      d.alive ? `daemon alive (${d.state}, pid ${d.pid})` : `daemon not running (${d.state})`,
      ...(s.running ? [runningText(s.running)] : []),
      ...(s.idle_training ? [idleText(s.idle_training)] : []),
      p ? `checkpoint ${p.path.split("/").pop()}` + (p.step !== undefined ? ` step ${p.step}` : "")
        + (p.val_bpc ? `, ${p.val_bpc.toFixed(4)} bits/char` : "") : "no promoted checkpoint",
      `${s.lines_waiting === null ? "?" : s.lines_waiting} lines waiting`,
      `${s.samples} tweets`,
    ];
    $("status").textContent = parts.join(" · ");
    $("token-box").hidden = !s.api.token_required;
    if (!s.api.writes_open) say("writes are disabled on this server (no api_token, not on loopback)", true);
  } catch (error) {
    $("status").textContent = `status unavailable: ${error.message}`;
  }
}

function drawChart(rows) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 40, right: 10, top: 10, bottom: 22 };
  ctx.clearRect(0, 0, width, height);
  const series = {
    // The training loss is in nats per character: shown in bits, like the validation figure.
    train: rows.filter((r) => r.kind === "train" && r.loss !== null).map((r) => [r.step, r.loss / Math.LN2]),
    val: rows.filter((r) => r.kind === "val" && r.val_bpc !== null).map((r) => [r.step, r.val_bpc]),
  };
  const points = series.train.concat(series.val);
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  if (!points.length) {
    ctx.fillText("no training recorded yet", pad.left, height / 2);
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
  const sx = (x) => pad.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  ctx.strokeStyle = "#bbb";
  ctx.beginPath();
  ctx.moveTo(pad.left, pad.top);
  ctx.lineTo(pad.left, height - pad.bottom);
  ctx.lineTo(width - pad.right, height - pad.bottom);
  ctx.stroke();
  ctx.fillText(y1.toFixed(2), 2, pad.top + 8);
  ctx.fillText(y0.toFixed(2), 2, height - pad.bottom);
  ctx.fillText(`step ${x0}`, pad.left, height - 6);
  const end = `step ${x1}`;
  ctx.fillText(end, width - pad.right - ctx.measureText(end).width, height - 6);
  for (const [name, color] of [["train", "#1f77b4"], ["val", "#d62728"]]) {
    ctx.strokeStyle = ctx.fillStyle = color;
    ctx.beginPath();
    series[name].forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
    ctx.stroke();
    for (const [x, y] of series[name]) ctx.fillRect(sx(x) - 1.5, sy(y) - 1.5, 3, 3);
  }
}

async function loadChart() {
  try {
    drawChart(await api("/api/losses?limit=2000"));
  } catch (error) {
    say(`could not load the training chart: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------- wiring

function start() {
  $("token").value = localStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => localStorage.setItem(TOKEN_KEY, $("token").value));
  $("generate-form").addEventListener("submit", generate);
  document.addEventListener("keydown", onKey);
  for (const button of document.querySelectorAll("#views button")) {
    button.addEventListener("click", () => showView(button.dataset.status));
  }
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    page.offset = 0;
    loadTweets();
  });
  $("newer").addEventListener("click", () => {
    page.offset = Math.max(0, page.offset - PAGE_SIZE);
    loadTweets();
  });
  $("older").addEventListener("click", () => {
    page.offset += PAGE_SIZE;
    loadTweets();
  });
  loadStatus();
  loadChart();
  loadTweets();
  loadCounts();
  setInterval(loadStatus, 15000);
  setInterval(loadCounts, 15000);
  setInterval(loadChart, 60000);
}

document.addEventListener("DOMContentLoaded", start);
