// slmforge's page: chat with cited, streamed answers, and the status page. No libraries, no build step.
// It talks to the server's own OpenAI-compatible API; the API key (when the server has one) lives in
// this tab's sessionStorage only, never in localStorage or a cookie.
"use strict";

const KEY_SLOT = "slmforge.apiKey";
const LONG_QUESTION_CHARS = 4000; // the counter turns red: a small model's context rarely holds more

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// -- API key: asked for on 401, kept in this tab ---------------------------------------------------

const auth = {
  get key() { return sessionStorage.getItem(KEY_SLOT) || ""; },
  set key(value) { if (value) sessionStorage.setItem(KEY_SLOT, value); else sessionStorage.removeItem(KEY_SLOT); },
  headers(extra = {}) {
    const h = { ...extra };
    if (this.key) h.Authorization = "Bearer " + this.key;
    return h;
  },
  ask(message) {
    const dialog = $("key-dialog");
    $("key-button").hidden = false;
    $("key-error").hidden = !message;
    $("key-error").textContent = message || "";
    $("key-input").value = "";
    return new Promise((resolve) => {
      $("key-form").onsubmit = () => { this.key = $("key-input").value.trim(); resolve(true); };
      dialog.addEventListener("cancel", () => resolve(false), { once: true });
      if (!dialog.open) dialog.showModal();
      $("key-input").focus();
    });
  },
};

async function api(path, options = {}, retried = false) {
  const res = await fetch(path, { ...options, headers: auth.headers(options.headers || {}) });
  if (res.status === 401 && !retried) {
    const wrong = auth.key ? "That key was refused; check it and try again." : "";
    if (await auth.ask(wrong)) return api(path, options, true);
  }
  return res;
}

async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${res.status} ${res.statusText}`;
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// -- chat ---------------------------------------------------------------------------------------------

const chat = { controller: null, busy: false };

function answerView(question) {
  const view = {
    root: el("article", { class: "turn" }),
    text: el("div", { class: "answer-text streaming" }),
    ood: el("div", { class: "ood", hidden: "" }),
    sources: el("ol", { class: "sources" }),
    meta: el("div", { class: "meta muted" }),
    actions: el("div", { class: "rate", hidden: "" }),
    citations: [],
    raw: "",
    id: null,
  };
  view.root.dataset.done = "false";
  view.root.append(el("div", { class: "question" }, question),
    el("div", { class: "answer" }, view.ood, view.text, view.sources, view.actions, view.meta));
  $("messages").append(view.root);
  scrollToEnd(true);
  return view;
}

// Keep the newest text above the fixed question box, unless the reader scrolled up to read something.
function scrollToEnd(always) {
  const doc = document.documentElement;
  if (always || doc.scrollHeight - (window.scrollY + window.innerHeight) < 200) window.scrollTo(0, doc.scrollHeight);
}

// The answer's text with each [n] turned into a button that opens citation n.
function renderAnswer(view) {
  view.text.textContent = "";
  const parts = view.raw.split(/(\[\d+\])/);
  for (const part of parts) {
    const m = /^\[(\d+)\]$/.exec(part);
    const n = m ? Number(m[1]) : 0;
    if (m && n >= 1 && n <= view.citations.length) {
      view.text.append(el("button", { type: "button", class: "cite", title: citationTitle(view.citations[n - 1]),
        onclick: () => openPassage(view.citations[n - 1], n) }, String(n)));
    } else {
      view.text.append(part);
    }
  }
}

function citationTitle(c) {
  return c.heading ? `${c.source} — ${c.heading}` : c.source;
}

function renderSources(view) {
  view.sources.textContent = "";
  view.citations.forEach((c, i) => {
    view.sources.append(el("li", {},
      el("button", { type: "button", class: "source", "data-chunk": c.chunk_id, onclick: () => openPassage(c, i + 1) },
        el("span", { class: "num" }, String(i + 1)), el("span", { class: "doc" }, c.source),
        el("span", { class: "section" }, c.heading || ""))));
  });
}

function renderOutOfDomain(view, details) {
  const retrieval = (details && details.retrieval) || {};
  const nothing = retrieval.out_of_domain === true || view.citations.length === 0;
  if (!nothing) return;
  view.root.classList.add("not-in-docs");
  view.ood.hidden = false;
  const best = typeof retrieval.top1 === "number" ? ` (best match ${retrieval.top1.toFixed(2)})` : "";
  view.ood.textContent = "";
  view.ood.append(el("strong", {}, "Not in the documents."),
    ` Nothing in the indexed documents is close to this question${best}. ` +
    "The text below is the model's own guess; do not rely on it.");
}

function renderMeta(view, details, usage) {
  const t = (details && details.timings) || {};
  const bits = [];
  if (details && details.route && details.route !== "local") bits.push(details.route === "cache" ? "from cache" : details.route);
  if (t.ttft_ms) bits.push(`first token ${Math.round(t.ttft_ms)} ms`);
  if (t.decode_tok_s) bits.push(`${t.decode_tok_s.toFixed(1)} tok/s`);
  if (usage && usage.completion_tokens) bits.push(`${usage.completion_tokens} tokens`);
  if (details && details.note) bits.push(details.note);
  view.meta.textContent = bits.join(" · ");
}

function renderRating(view) {
  const send = async (good, button) => {
    for (const b of view.actions.querySelectorAll("button")) b.disabled = true;
    const res = await api("/v1/feedback", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request_id: view.id, rating: good ? "good" : "bad" }) });
    if (res.ok) {
      button.classList.add("chosen");
      view.actions.querySelector(".thanks").textContent = "Thanks, noted.";
      view.root.dataset.rated = good ? "good" : "bad";
    } else {
      for (const b of view.actions.querySelectorAll("button")) b.disabled = false;
      view.actions.querySelector(".thanks").textContent = "Could not store the rating: " + await errorText(res);
    }
  };
  const up = el("button", { type: "button", class: "thumb up", "aria-label": "Good answer", title: "Good answer" },
    thumbIcon(false), "Good");
  const down = el("button", { type: "button", class: "thumb down", "aria-label": "Bad answer", title: "Bad answer" },
    thumbIcon(true), "Bad");
  up.addEventListener("click", () => send(true, up));
  down.addEventListener("click", () => send(false, down));
  view.actions.append(up, down, el("span", { class: "thanks muted" }));
  view.actions.hidden = false;
}

// A thumb drawn as SVG: the page needs no emoji font (many devices and headless browsers have none).
function thumbIcon(down) {
  const icon = svg("svg", { viewBox: "0 0 24 24", width: "16", height: "16", "aria-hidden": "true",
    class: "thumb-icon" + (down ? " flipped" : "") });
  icon.append(svg("path", { d: "M7 11v9H3v-9h4zm2 9h8.2a2 2 0 0 0 2-1.6l1.3-6.4A2 2 0 0 0 18.5 9.6H14l.9-4.2A1.6 1.6 0 " +
    "0 0 13.3 3.5L9 9.4V20z" }));
  return icon;
}

function finish(view, chunk) {
  view.citations = chunk.citations || [];
  view.text.classList.remove("streaming");
  renderAnswer(view);
  renderSources(view);
  renderOutOfDomain(view, chunk.slmforge);
  renderMeta(view, chunk.slmforge, chunk.usage);
  if (view.id) renderRating(view);
  view.root.dataset.done = "true";
}

function failed(view, message) {
  view.text.classList.remove("streaming");
  view.root.classList.add("failed");
  view.root.dataset.done = "error";
  view.meta.textContent = "";
  view.text.append(el("div", { class: "error" }, message));
}

// Server-sent events from /v1/chat/completions: "data: {json}\n\n" ... "data: [DONE]\n\n".
async function readStream(res, view) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let final = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return final;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
        if (chunk.id && !view.id) { view.id = chunk.id; view.root.dataset.requestId = chunk.id; }
        const choice = (chunk.choices || [])[0];
        if (choice && choice.delta && choice.delta.content) {
          view.raw += choice.delta.content;
          view.text.textContent = view.raw;
          scrollToEnd(false);
        }
        if (choice && choice.finish_reason) final = chunk;
        if (chunk.usage && final) final.usage = chunk.usage;
      }
    }
  }
  return final;
}

async function ask(question) {
  notice("");
  $("welcome") && $("welcome").remove();
  const view = answerView(question);
  chat.busy = true;
  chat.controller = new AbortController();
  $("send").disabled = true;
  $("stop").hidden = false;
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: chat.model, stream: true, stream_options: { include_usage: true },
        messages: [{ role: "user", content: question }] }),
      signal: chat.controller.signal,
    });
    if (!res.ok) {
      view.root.dataset.requestId = res.headers.get("X-Request-Id") || "";
      return failed(view, await errorText(res));
    }
    const final = await readStream(res, view);
    if (!final) return failed(view, "The answer ended early (the server closed the connection).");
    finish(view, final);
  } catch (err) {
    if (err.name === "AbortError") {
      view.text.classList.remove("streaming");
      view.root.dataset.done = "stopped";
      view.meta.textContent = "Stopped.";
    } else {
      failed(view, String(err.message || err));
    }
  } finally {
    chat.busy = false;
    chat.controller = null;
    $("send").disabled = false;
    $("stop").hidden = true;
    scrollToEnd(false);
  }
}

async function openPassage(citation, n) {
  const panel = $("passage");
  panel.hidden = false;
  document.body.classList.add("passage-open");
  $("passage-title").textContent = `[${n}] ${citation.source}`;
  $("passage-section").textContent = citation.heading || "";
  $("passage-text").textContent = "Loading…";
  const res = await api(`/v1/passages/${encodeURIComponent(citation.chunk_id)}`);
  if (!res.ok) {
    $("passage-text").textContent = "Could not load the passage: " + await errorText(res);
    return;
  }
  const p = await res.json();
  $("passage-title").textContent = `[${n}] ${p.source}`;
  $("passage-section").textContent = p.heading || "";
  $("passage-text").textContent = p.text;
  panel.dataset.chunk = String(p.chunk_id);
}

function updateCount() {
  const n = $("question").value.length;
  $("char-count").textContent = n > 500 ? `${n.toLocaleString()} characters` : "";
  $("char-count").classList.toggle("error", n > LONG_QUESTION_CHARS);
}

async function startChat() {
  const health = await fetch("/health").then((r) => r.json()).catch(() => null);
  if (health) {
    chat.model = health.model;
    $("model-name").textContent = health.model;
    $("model-info").textContent = health.backend;
  }
  const models = await api("/v1/models"); // asks for the key at once when the server needs one
  if (!models.ok && models.status !== 401) notice("The server did not answer: " + await errorText(models));
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (chat.busy) return;
    const question = $("question").value.trim();
    if (!question) { notice("Type a question first."); $("question").focus(); return; }
    $("question").value = "";
    updateCount();
    ask(question);
  });
  $("question").addEventListener("input", updateCount);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => chat.controller && chat.controller.abort());
  $("passage-close").addEventListener("click", () => {
    $("passage").hidden = true;
    document.body.classList.remove("passage-open");
  });
  $("question").focus();
}

// -- status page -------------------------------------------------------------------------------------

// A small line chart over answer order; series: [{name, values, cls}], optional dashed threshold and label format.
function lineChart(box, seriesList, threshold, format) {
  box.textContent = "";
  const all = seriesList.flatMap((s) => s.values).filter((v) => typeof v === "number");
  if (threshold !== undefined && threshold !== null) all.push(threshold);
  if (!all.length) { box.append(el("p", { class: "muted" }, "No answers recorded yet.")); return; }
  const W = 460, H = 200, L = 46, B = 22, T = 8, R = 8;
  const n = Math.max(...seriesList.map((s) => s.values.length));
  const top = Math.max(...all) * 1.1 || 1, bottom = Math.min(0, Math.min(...all));
  const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (H - T - B) * (1 - (v - bottom) / (top - bottom));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const frac of [0, 0.5, 1]) {
    const v = bottom + frac * (top - bottom);
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = format ? format(v) : top >= 10 ? String(Math.round(v)) : v.toFixed(2);
    chart.append(label);
  }
  if (threshold !== undefined && threshold !== null) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(threshold), y2: y(threshold), class: "threshold" }));
  }
  for (const s of seriesList) {
    const points = s.values.map((v, i) => (typeof v === "number" ? `${x(i).toFixed(1)},${y(v).toFixed(1)}` : null))
      .filter(Boolean);
    if (points.length) chart.append(svg("polyline", { points: points.join(" "), class: "line " + s.cls }));
    s.values.forEach((v, i) => {
      if (typeof v === "number") chart.append(svg("circle", { cx: x(i), cy: y(v), r: 2.5, class: "dot " + s.cls }));
    });
  }
  const axis = svg("text", { x: W - R, y: H - 4, class: "axis", "text-anchor": "end" });
  axis.textContent = `last ${n} answers →`;
  chart.append(axis);
  box.append(chart, el("div", { class: "legend" },
    ...seriesList.map((s) => el("span", { class: "key " + s.cls }, s.name))));
}

function card(label, value, sub) {
  return el("div", { class: "card" }, el("div", { class: "card-label muted" }, label),
    el("div", { class: "card-value" }, value === null || value === undefined ? "—" : String(value)),
    el("div", { class: "card-sub muted" }, sub || ""));
}

function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function pair(a, b) {
  return `${duration(a)} / ${duration(b)}`;
}

async function refreshStatus() {
  const res = await api("/v1/status");
  if (!res.ok) { notice("Status unavailable: " + await errorText(res)); return; }
  notice("");
  const s = await res.json();
  const r = s.report;
  $("model-name").textContent = s.model;
  const cards = $("cards");
  cards.textContent = "";
  cards.append(
    card("Model", s.model, `${s.backend} · ${s.quant}`),
    card("Device profile", s.profile || "host", `embedder ${s.embedder} · ${s.chunks} chunks`),
    card("Answers", r.chat_answers, `${r.requests} requests · ` +
      Object.entries(r.status_codes).map(([k, v]) => `${k}: ${v}`).join(", ")),
    card("Latency p50 / p95", pair(r.latency_ms.p50, r.latency_ms.p95),
      `first token ${pair(r.ttft_ms.p50, r.ttft_ms.p95)}`),
    card("Decode speed", r.decode_tok_s.p50 === null ? null : `${r.decode_tok_s.p50} tok/s`,
      r.decode_tok_s.p5 === null ? "" : `slowest 5%: ${r.decode_tok_s.p5} tok/s`),
    card("Memory", r.memory_mb.rss_p50 === null ? null : `${Math.round(r.memory_mb.rss_p50)} MB`,
      r.memory_mb.peak === null ? "" : `peak ${Math.round(r.memory_mb.peak)} MB`),
    card("Ratings", r.feedback.ratings, `${r.feedback.bad} thumbs down`),
  );
  const d = r.drift;
  const drift = $("drift");
  drift.textContent = "";
  drift.append(el("h2", {}, "Drift ", el("span", { class: "badge " + d.status, id: "drift-status" }, d.status)),
    el("p", {}, d.recommendation),
    el("p", { class: "muted" }, `${d.drifted_windows.length} of ${d.windows.length} windows of ` +
      `${d.thresholds.window} questions drifted; out of domain below a best match of ${d.reference.ood_threshold}.`));
  lineChart($("chart-latency"), [
    { name: "request", values: s.series.map((p) => p.latency_ms), cls: "s1" },
    { name: "first token", values: s.series.map((p) => p.ttft_ms), cls: "s2" },
  ], null, (v) => (v === 0 ? "0" : duration(v)));
  lineChart($("chart-top1"), [{ name: "best match", values: s.series.map((p) => p.top1), cls: "s1" }],
    d.reference.ood_threshold);
  $("status-updated").textContent = "Updated " + new Date(s.generated * 1000).toLocaleTimeString() +
    "; refreshes every 10 s.";
}

async function startStatus() {
  await refreshStatus();
  setInterval(refreshStatus, 10000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-button").addEventListener("click", () => auth.ask(""));
  if (auth.key) $("key-button").hidden = false;
  const view = location.pathname.replace(/\/+$/, "") === "/status" ? "status" : "chat";
  document.body.dataset.page = view;
  $(view).hidden = false;
  $(view === "status" ? "status-link" : "chat-link").classList.add("current");
  document.title = view === "status" ? "slmforge status" : "slmforge";
  (view === "status" ? startStatus : startChat)().catch((err) => notice(String(err.message || err)));
});
