// The page's behaviour: score as you type (POST /score, debounced), suggest the next word (POST /next-word),
// continue the sentence (POST /v1/completions), compare two sentences, show the model card (GET /model). No framework, no build step, no network but this server.
"use strict";

const DEBOUNCE_MS = 250;
const MAX_BITS = 16; // surprisal at and above this gets the darkest colour
const SUGGESTIONS = 10;
// Cividis, designed to be read by people with colour-vision deficiencies; light = expected, dark = surprising.
const SCALE = [[254, 232, 56], [188, 175, 111], [124, 123, 120], [65, 77, 107], [0, 34, 78]];

const $ = (id) => document.getElementById(id);

function colour(bits) {
  const x = Math.max(0, Math.min(1, bits / MAX_BITS)) * (SCALE.length - 1);
  const i = Math.min(Math.floor(x), SCALE.length - 2);
  const f = x - i;
  const rgb = SCALE[i].map((c, k) => Math.round(c + f * (SCALE[i + 1][k] - c)));
  const light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140;
  return { background: `rgb(${rgb.join(",")})`, color: light ? "#111" : "#fff" };
}

function headers() {
  const h = { "content-type": "application/json" };
  const key = localStorage.getItem("lmserve-api-key");
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

const inflight = {};
async function post(path, body, channel) {
  // One request per channel at a time: a newer keystroke cancels the older request.
  if (inflight[channel]) inflight[channel].abort();
  const ctl = new AbortController();
  inflight[channel] = ctl;
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: ctl.signal });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = data.error ? `${data.error.message} (${r.status} ${data.error.code})` : `HTTP ${r.status}`;
    throw new Error(msg);
  }
  return data;
}

function showError(err) {
  if (err && err.name === "AbortError") return;
  const box = $("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = `The server said: ${err.message}`;
  box.hidden = false;
}

function fmt(x, digits = 2) {
  return Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–";
}

function describe(token, lp, rank, oovWord) {
  const p = Math.exp(lp);
  const bits = -lp / Math.LN2;
  const pText = p >= 0.001 ? fmt(100 * p, 2) + "%" : p.toExponential(2);
  let text = `“${token}”: p = ${pText}, ${fmt(bits, 1)} bits of surprisal, rank ${rank.toLocaleString("en-US")}`;
  if (oovWord) text += ` (the word “${oovWord}” is not in the vocabulary and was scored as <unk>)`;
  return text;
}

// Draw a scored sentence's tokens into `box`; `detail` (optional) receives the focused token's description.
function renderTokens(box, result, detail) {
  box.replaceChildren();
  const oov = [...result.oov];
  result.tokens.forEach((token, i) => {
    const lp = result.token_logprobs[i];
    const bits = -lp / Math.LN2;
    const span = document.createElement("span");
    span.className = "tok" + (token === "<unk>" ? " oov" : "") + (token === "<eos>" ? " eos" : "");
    span.textContent = token;
    Object.assign(span.style, colour(bits));
    span.tabIndex = 0;
    span.dataset.logprob = String(lp);
    span.dataset.rank = String(result.token_ranks[i]);
    const text = describe(token, lp, result.token_ranks[i], token === "<unk>" ? oov.shift() : null);
    span.title = text;
    span.setAttribute("aria-label", text);
    const small = document.createElement("small");
    small.textContent = fmt(bits, 1);
    small.setAttribute("aria-hidden", "true");
    span.appendChild(small);
    if (detail) {
      span.addEventListener("mouseenter", () => { detail.textContent = text; });
      span.addEventListener("focus", () => { detail.textContent = text; });
    }
    box.appendChild(span);
  });
}

function renderStats(dl, result) {
  const rows = [
    ["perplexity", fmt(result.perplexity, 2), "stat-ppl"],
    ["log-prob (ln)", fmt(result.logprob, 3), "stat-logprob"],
    ["log10-prob", fmt(result.log10prob, 3), "stat-log10prob"],
    ["predictions", String(result.num_tokens), "stat-tokens"],
    ["OOV words", result.oov.length ? result.oov.join(", ") : "none", "stat-oov"],
  ];
  dl.replaceChildren();
  for (const [name, value, id] of rows) {
    const pair = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.stat = id;
    pair.append(dt, dd);
    dl.append(pair);
  }
}

function renderLegend() {
  const box = $("legend");
  box.replaceChildren();
  const label = document.createElement("span");
  label.textContent = "surprisal:";
  box.appendChild(label);
  for (let bits = 0; bits <= MAX_BITS; bits += 4) {
    const s = document.createElement("span");
    s.className = "swatch";
    Object.assign(s.style, colour(bits));
    s.textContent = bits === MAX_BITS ? `≥${bits} bits` : `${bits} bits`;
    box.appendChild(s);
  }
}

// Bumped on every edit: an answer that comes back for older text is dropped, never drawn.
let generation = 0;

async function scoreText() {
  const gen = generation;
  const text = $("text").value;
  const normalize = $("normalize").checked;
  const addEos = $("add-eos").checked;
  if (!text.trim()) {
    $("tokens").replaceChildren();
    $("stats").replaceChildren();
  }
  try {
    if (text.trim()) {
      const data = await post("score", { text, normalize, add_eos: addEos, per_token: true }, "score");
      if (gen !== generation) return;
      const result = data.results[0];
      renderTokens($("tokens"), result, $("token-detail"));
      renderStats($("stats"), result);
    }
    await suggest(text, normalize, gen);
    showError(null);
  } catch (err) {
    showError(err);
  }
}

// Suggestions for the text so far; a word being typed (no space after it yet) filters them by its beginning.
async function suggest(text, normalize, gen) {
  const m = text.match(/^(.*?)(\S*)$/s);
  const prefix = m[1];
  const partial = m[2].toLowerCase();
  const data = await post("next-word", { prefix, top_k: partial ? 100 : SUGGESTIONS, normalize }, "next");
  if (gen !== generation) return;
  const words = data.results[0].top_k.filter((w) => w.word.startsWith(partial)).slice(0, SUGGESTIONS);
  const list = $("suggestions");
  list.replaceChildren();
  const none = $("no-suggestions");
  none.hidden = words.length > 0;
  none.textContent = words.length ? "" : `No word the model expects here starts with “${partial}”.`;
  const top = words.length ? words[0].prob : 1;
  for (const w of words) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "suggestion";
    button.dataset.word = w.word;
    button.setAttribute("aria-label", `append “${w.word}”, p = ${fmt(100 * w.prob, 2)}%, rank ${w.rank}`);
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = w.word;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, (100 * w.prob) / top)}%`;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${fmt(100 * w.prob, 1)}%`;
    button.append(word, bar, pct);
    button.addEventListener("click", () => appendWord(w.word));
    li.appendChild(button);
    list.appendChild(li);
  }
}

// Append `word`, completing the word being typed if it is the beginning of `word`.
function appendWord(word) {
  const box = $("text");
  let text = box.value;
  const partial = text.match(/\S*$/)[0];
  if (partial && word.startsWith(partial.toLowerCase())) text = text.slice(0, text.length - partial.length);
  else if (text && !/\s$/.test(text)) text += " ";
  box.value = text + word + " ";
  box.focus();
  edited(0);
}

// Let the model write on: the text so far is the prompt, the completion is appended.
async function continueSentence() {
  const box = $("text");
  const button = $("continue");
  const temperature = Number($("temperature").value);
  const words = Math.round(Number($("continue-words").value));
  button.disabled = true;
  try {
    const data = await post(
      "v1/completions",
      { prompt: box.value, max_tokens: words, temperature, stop: null },
      "continue",
    );
    const text = data.choices[0].text;
    if (text) {
      box.value = box.value + (box.value && !/\s$/.test(box.value) ? " " : "") + text + " ";
      edited(0);
    }
    showError(null);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
    box.focus();
  }
}

let timer = null;
function scheduleScore(delay = DEBOUNCE_MS) {
  clearTimeout(timer);
  timer = setTimeout(scoreText, delay);
}

// The text or an option changed: what is shown for the old text can no longer be clicked or overwrite the new.
function edited(delay = DEBOUNCE_MS) {
  generation += 1;
  $("suggestions").replaceChildren();
  $("no-suggestions").hidden = true;
  scheduleScore(delay);
}

async function compare() {
  const a = $("compare-a").value;
  const b = $("compare-b").value;
  if (!a.trim() || !b.trim()) return;
  try {
    const data = await post("score", { sentences: [a, b], per_token: true }, "compare");
    const [ra, rb] = data.results;
    renderTokens($("tokens-a"), ra, null);
    renderTokens($("tokens-b"), rb, null);
    renderStats($("stats-a"), ra);
    renderStats($("stats-b"), rb);
    const ratio = Math.exp(ra.logprob - rb.logprob);
    $("verdict").textContent = ratio >= 1
      ? `A is ${fmt(ratio, ratio < 10 ? 2 : 0)} times as probable as B.`
      : `B is ${fmt(1 / ratio, 1 / ratio < 10 ? 2 : 0)} times as probable as A.`;
    showError(null);
  } catch (err) {
    showError(err);
  }
}

let compareTimer = null;
function scheduleCompare() {
  clearTimeout(compareTimer);
  compareTimer = setTimeout(compare, DEBOUNCE_MS);
}

async function loadModelCard() {
  const dl = $("model-facts");
  try {
    const r = await fetch("model", { headers: headers() });
    const m = await r.json();
    if (!r.ok) throw new Error(m.error ? m.error.message : `HTTP ${r.status}`);
    const c = m.config;
    const adaptive = c.adaptive_cutoffs && c.adaptive_cutoffs.length ? ", adaptive softmax" : "";
    const tok = m.tokenizer || { name: "ptb" };
    const tokName = `${tok.name}${tok.lowercase ? ", lower-cased" : ""}`;
    if (tok.name !== "ptb") $("normalize-label").textContent = `the model's tokenizer (${tokName})`;
    const rows = [
      ["name", m.name],
      ["network", `${c.num_layers} × LSTM ${c.hidden_size}${c.tie_weights ? ", tied" : ""}${adaptive}`],
      ["parameters", m.parameters.toLocaleString("en-US")],
      ["vocabulary", `${m.vocab_size.toLocaleString("en-US")} words`],
      ["tokenizer", tokName],
      ["test perplexity", m.metrics.test_ppl ? fmt(m.metrics.test_ppl, 2) : "–"],
      ["running on", `${m.device}, ${m.dtype}`],
    ];
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
  } catch (err) {
    dl.replaceChildren();
    const dt = document.createElement("dt");
    dt.textContent = `unavailable: ${err.message}`;
    dl.appendChild(dt);
  }
}

function selectTab(which) {
  for (const name of ["score", "compare"]) {
    const on = name === which;
    const tab = $(`tab-${name}`);
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${name}`).hidden = !on;
  }
  if (which === "compare") compare();
}

function init() {
  renderLegend();
  const key = $("api-key");
  key.value = localStorage.getItem("lmserve-api-key") || "";
  key.addEventListener("change", () => {
    localStorage.setItem("lmserve-api-key", key.value.trim());
    loadModelCard();
    edited(0);
  });
  $("text").addEventListener("input", () => edited());
  $("normalize").addEventListener("change", () => edited(0));
  $("add-eos").addEventListener("change", () => edited(0));
  $("continue").addEventListener("click", continueSentence);
  $("compare-a").addEventListener("input", scheduleCompare);
  $("compare-b").addEventListener("input", scheduleCompare);
  $("tab-score").addEventListener("click", () => selectTab("score"));
  $("tab-compare").addEventListener("click", () => selectTab("compare"));
  // Arrow keys move between the tabs, as in the WAI-ARIA tabs pattern.
  document.querySelector("[role=tablist]").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const next = $("tab-score").getAttribute("aria-selected") === "true" ? "compare" : "score";
    selectTab(next);
    $(`tab-${next}`).focus();
  });
  loadModelCard();
  scheduleScore(0);
}

document.addEventListener("DOMContentLoaded", init);
