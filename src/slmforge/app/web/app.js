// slmforge app: two panes (local, cloud) streaming side by side, or one routed pane.
// The conversation and settings live in sessionStorage: one history per browser tab.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "slmforge-app";
const SIDES = ["local", "cloud"];
const FIELDS = ["policy", "adapter", "system", "temperature", "max_tokens", "top_p",
  "ttft_timeout_ms", "timeout_s"];
let config = null;
let controller = null;
let state = loadState();

function loadState() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE));
    if (saved && Array.isArray(saved.turns)) return saved;
  } catch (_) { /* a damaged entry starts a new conversation */ }
  return { turns: [], settings: {} };
}

function saveState() {
  sessionStorage.setItem(STORE, JSON.stringify(state));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function option(select, value, label) {
  const node = el("option", "", label);
  node.value = value;
  select.append(node);
}

// -- settings ---------------------------------------------------------------------------------

function defaults() {
  const s = config.settings;
  return {
    policy: config.policy,
    adapter: config.local.adapter || "",
    system: "",
    temperature: "0",
    max_tokens: "256",
    top_p: "1",
    ttft_timeout_ms: s.ttft_timeout_s == null ? "" : String(Math.round(s.ttft_timeout_s * 1000)),
    timeout_s: s.timeout_s == null ? "" : String(s.timeout_s),
  };
}

function setupSettings() {
  for (const policy of config.policies) option($("policy"), policy, policy);
  option($("adapter"), "", "(base model)");
  for (const name of config.local.adapters) option($("adapter"), name, name);
  const values = Object.assign(defaults(), state.settings);
  for (const field of FIELDS) {
    $(field).value = values[field];
    $(field).addEventListener("change", () => {
      state.settings[field] = $(field).value;
      saveState();
      if (field === "policy") layout();
    });
  }
  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = $("temperature").value;
  });
  $("temperature-value").textContent = $("temperature").value;
  $("local-name").textContent = config.local.name;
  $("cloud-name").textContent = config.cloud.name;
  $("pane-local-name").textContent = config.local.name;
  $("pane-cloud-name").textContent = config.cloud.name;
}

function comparing() {
  return $("policy").value === "compare";
}

function layout() {
  const compare = comparing();
  $("panes").classList.toggle("single", !compare);
  for (const pane of document.querySelectorAll(".pane")) {
    pane.hidden = compare ? pane.dataset.side === "routed" : pane.dataset.side !== "routed";
  }
  $("pane-routed-name").textContent = compare ? "" : $("policy").value;
  render();
}

// -- rendering --------------------------------------------------------------------------------

function statsText(answer) {
  if (!answer) return "—";
  const ttft = answer.ttft == null ? "TTFT …" : `TTFT ${Math.round(answer.ttft * 1000)} ms`;
  const rate = answer.tps == null ? "… tokens/s" : `${answer.tps.toFixed(1)} tokens/s`;
  return `${ttft} · ${rate} · ${answer.tokens || 0} tokens`;
}

function answerText(answer) {
  if (answer.error) return `error: ${answer.error}`;
  if (answer.finish === "content_filter") return `${answer.text}[blocked by the content filter]`;
  return answer.text || "…";
}

function answerBubble(index, side, answer, labelled) {
  const bubble = el("div", "bubble answer" + (answer.error ? " error" : ""));
  bubble.dataset.turn = index;
  bubble.dataset.side = side;
  bubble.dataset.pieces = answer.pieces || 0;  // streamed pieces so far (tests read it)
  bubble.append(el("span", "text", answerText(answer)));
  const meta = [];
  if (labelled) meta.push(side);
  if (side === "local" && answer.adapter) meta.push(`adapter ${answer.adapter}`);
  if (answer.done) meta.push(statsText(answer));
  if (meta.length) bubble.append(el("span", "meta", meta.join(" · ")));
  return bubble;
}

function render() {
  const boxes = { local: $("messages-local"), cloud: $("messages-cloud"), routed: $("messages-routed") };
  for (const box of Object.values(boxes)) box.replaceChildren();
  state.turns.forEach((turn, index) => {
    for (const side of SIDES) {
      if (!turn.answers[side]) continue;
      boxes[side].append(el("div", "bubble user", turn.question));
      boxes[side].append(answerBubble(index, side, turn.answers[side], false));
    }
    boxes.routed.append(el("div", "bubble user", turn.question));
    if (turn.decision && turn.policy !== "compare") {
      boxes.routed.append(el("div", "route", `${turn.decision.sides.join(" + ")}: ${turn.decision.reason}`));
    }
    for (const side of SIDES) {
      if (turn.answers[side]) boxes.routed.append(answerBubble(index, side, turn.answers[side], true));
    }
  });
  for (const box of Object.values(boxes)) box.scrollTop = box.scrollHeight;
  renderStatus(state.turns[state.turns.length - 1]);
}

function renderStatus(turn) {
  const answers = turn ? turn.answers : {};
  $("stats-local").textContent = statsText(answers.local);
  $("stats-cloud").textContent = statsText(answers.cloud);
  const routedSide = turn && turn.decision ? turn.decision.sides[0] : null;
  $("stats-routed").textContent = routedSide
    ? `${routedSide}: ${statsText(answers[routedSide])}` : "—";
  const decision = $("decision");
  decision.hidden = !turn || !turn.decision || comparing();
  if (turn && turn.decision) {
    const d = turn.decision;
    decision.classList.toggle("fallback", !!d.fallback);
    decision.replaceChildren(
      el("span", "", `${d.policy} → `), el("b", "", d.sides.join(" + ")),
      el("span", "", d.provisional ? " (trying): " : ": "), el("span", "reason", d.reason));
  }
  renderComparison(turn);
}

function renderComparison(turn) {
  const box = $("comparison");
  const result = turn && turn.comparison;
  box.hidden = !result || !comparing();
  if (!result) return;
  const parts = [];
  parts.push(result.similarity == null
    ? `Similarity: n/a (${result.similarity_error})`
    : `Similarity of the two answers: ${result.similarity.toFixed(3)}`);
  const judge = result.judge;
  if (judge) {
    parts.push(judge.preferred
      ? `Judge prefers ${judge.preferred}: ${judge.reason}`
      : `Judge: no verdict (${judge.reason})`);
  }
  box.textContent = parts.join(" · ");
}

function updateAnswer(index, side) {
  const answer = state.turns[index].answers[side];
  const bubbles = document.querySelectorAll(
    `.bubble.answer[data-turn="${index}"][data-side="${side}"]`);
  if (!bubbles.length) return render();
  for (const bubble of bubbles) {
    bubble.querySelector(".text").textContent = answerText(answer);
    bubble.dataset.pieces = answer.pieces;
  }
  renderStatus(state.turns[index]);
}

// -- asking -----------------------------------------------------------------------------------

function thread(prefer, system) {
  const messages = system ? [{ role: "system", content: system }] : [];
  for (const turn of state.turns) {
    messages.push({ role: "user", content: turn.question });
    const usable = (a) => a && !a.error && a.text;
    const answer = usable(turn.answers[prefer]) ? turn.answers[prefer]
      : SIDES.map((s) => turn.answers[s]).find(usable);
    if (answer) messages.push({ role: "assistant", content: answer.text });
  }
  return messages;
}

function request(question) {
  const s = Object.fromEntries(FIELDS.map((f) => [f, $(f).value]));
  const ask = { role: "user", content: question };
  const body = {
    messages: [...thread("local", s.system.trim()), ask],
    policy: s.policy,
    adapter: s.adapter || null,
    temperature: Number(s.temperature),
    max_tokens: Number(s.max_tokens),
    top_p: Number(s.top_p),
    ttft_timeout_ms: s.ttft_timeout_ms ? Number(s.ttft_timeout_ms) : null,
    timeout_s: s.timeout_s ? Number(s.timeout_s) : null,
  };
  if (s.policy === "compare") body.cloud_messages = [...thread("cloud", s.system.trim()), ask];
  return body;
}

function handle(index, event) {
  const turn = state.turns[index];
  const answer = (side) => (turn.answers[side] ||= {
    text: "", tokens: 0, ttft: null, tps: null, adapter: side === "local" ? turn.adapter : null });
  if (event.type === "decision") {
    if (event.fallback) for (const side of SIDES) if (!event.sides.includes(side)) delete turn.answers[side];
    turn.decision = event;
    for (const side of event.sides) answer(side);
    return render();
  }
  if (event.type === "delta") {
    const a = answer(event.side);
    a.text += event.text;
    a.tokens = a.pieces = event.n;
    if (a.ttft == null) { a.ttft = event.t; a.first = event.t; }
    if (event.n > 1 && event.t > a.first) a.tps = (event.n - 1) / (event.t - a.first);
    return updateAnswer(index, event.side);
  }
  if (event.type === "done") {
    const a = answer(event.side);
    a.done = true;
    a.finish = event.finish_reason;
    if (turn.decision && turn.decision.sides.includes(event.side)) turn.decision.provisional = false;
    if (event.usage && event.usage.completion_tokens) a.tokens = event.usage.completion_tokens;
    if (event.timings && event.timings.ttft_s != null) a.ttft = event.timings.ttft_s;
    if (event.timings && event.timings.tokens_per_s != null) a.tps = event.timings.tokens_per_s;
    return render();
  }
  if (event.type === "error") {
    if (!event.side) { $("message").textContent = event.message; return; }
    const a = answer(event.side);
    a.error = event.message;
    a.done = true;
    return render();
  }
}

async function stream(response, index) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (line.startsWith("data: ")) handle(index, JSON.parse(line.slice(6)));
    }
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body.error) return body.error;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    return JSON.stringify(body);
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function ask(question) {
  const body = request(question);
  const index = state.turns.length;
  state.turns.push({ question, policy: body.policy, adapter: body.adapter, answers: {}, decision: null });
  $("message").textContent = "";
  render();
  busy(true);
  controller = new AbortController();
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      $("message").textContent = await errorText(response);
      state.turns.pop();
    } else {
      await stream(response, index);
    }
  } catch (err) {
    if (err.name !== "AbortError") $("message").textContent = String(err);
  } finally {
    controller = null;
    busy(false);
    saveState();
    render();
    document.body.dataset.answered = String(Number(document.body.dataset.answered || 0) + 1);
  }
  if (body.policy === "compare" && state.turns[index]) await compare(index);
}

async function compare(index) {
  const turn = state.turns[index];
  const local = turn.answers.local;
  const cloud = turn.answers.cloud;
  if (!local || !cloud || local.error || cloud.error) return;
  const response = await fetch("/api/compare", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ question: turn.question, local: local.text, cloud: cloud.text }),
  });
  if (!response.ok) { $("message").textContent = await errorText(response); return; }
  turn.comparison = await response.json();
  saveState();
  renderStatus(turn);
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  document.body.dataset.busy = on ? "1" : "";
}

// -- export -----------------------------------------------------------------------------------

function download(name, type, text) {
  const link = el("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
}

function exported() {
  return {
    app: "slmforge",
    exported: new Date().toISOString(),
    local: config.local.name,
    cloud: config.cloud.name,
    system: $("system").value,
    turns: state.turns.map((turn) => ({
      question: turn.question,
      policy: turn.policy,
      adapter: turn.adapter,
      decision: turn.decision,
      answers: Object.fromEntries(Object.entries(turn.answers).map(([side, a]) => [side, {
        text: a.text, error: a.error || null, finish_reason: a.finish || null,
        ttft_s: a.ttft, tokens_per_s: a.tps, completion_tokens: a.tokens,
      }])),
      comparison: turn.comparison || null,
    })),
  };
}

function markdown(data) {
  const lines = [`# Conversation (${data.exported})`, "",
    `- local: ${data.local}`, `- cloud: ${data.cloud}`];
  if (data.system) lines.push(`- system: ${data.system}`);
  for (const turn of data.turns) {
    lines.push("", `## ${turn.question}`, "");
    if (turn.decision) lines.push(`*${turn.decision.policy} → ${turn.decision.sides.join(" + ")}: ${turn.decision.reason}*`, "");
    for (const [side, a] of Object.entries(turn.answers)) {
      const ttft = a.ttft_s == null ? "n/a" : `${Math.round(a.ttft_s * 1000)} ms`;
      const rate = a.tokens_per_s == null ? "n/a" : a.tokens_per_s.toFixed(1);
      lines.push(`**${side}** (TTFT ${ttft}, ${rate} tokens/s, ${a.completion_tokens} tokens):`, "",
        a.error ? `error: ${a.error}` : a.text, "");
    }
    if (turn.comparison && turn.comparison.similarity != null) {
      lines.push(`Similarity: ${turn.comparison.similarity.toFixed(3)}`, "");
    }
  }
  return lines.join("\n");
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  const response = await fetch("/api/config");
  config = await response.json();
  setupSettings();
  layout();
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || controller) return;
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => {
    state.turns = [];
    saveState();
    render();
  });
  $("export-json").addEventListener("click", () => {
    download("conversation.json", "application/json", JSON.stringify(exported(), null, 2));
  });
  $("export-md").addEventListener("click", () => {
    download("conversation.md", "text/markdown", markdown(exported()));
  });
  document.body.dataset.ready = "1";
}

start();
