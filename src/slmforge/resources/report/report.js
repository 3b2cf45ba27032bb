// Row browser of the slmforge eval report: filter, sort and page through the rows, with every
// target's answer side by side. Text goes on the page with textContent only.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("data").textContent);
  const targets = data.summary.targets.map((t) => t.name);
  const metrics = data.summary.metrics;
  const PAGE = 20;
  const state = { page: 0, filter: "", sort: "" };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function promptText(row) {
    return row.prompt.map((m) => m.role + ": " + m.content).join("\n");
  }

  function haystack(row) {
    const parts = [promptText(row), row.reference || "", row.context || ""];
    targets.forEach((t) => parts.push(row.targets[t].text || ""));
    return parts.join("\n").toLowerCase();
  }

  function score(row, name, target) {
    const got = row.targets[target];
    if (name in got.scores) return got.scores[name];
    const verdict = got.judge[name];
    return verdict && verdict.status === "ok" ? verdict.score : null;
  }

  function spread(row, name) {
    const values = targets.map((t) => score(row, name, t)).filter((v) => v !== null);
    return values.length ? Math.max(...values) - Math.min(...values) : -1;
  }

  function format(value, unit) {
    if (value === null || value === undefined) return "n/a";
    const digits = { "0-1": 3, "0-100": 2, "1-5": 2, words: 1 }[unit];
    return Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  function answerCard(row, target) {
    const got = row.targets[target];
    const card = el("div", "answer");
    card.appendChild(el("h4", null, target));
    if (got.error) {
      card.appendChild(el("div", "text error", "error: " + got.error));
      return card;
    }
    card.appendChild(el("div", "text", got.text));
    const chips = el("div");
    Object.keys(got.scores).forEach((name) => {
      chips.appendChild(el("span", "chip", name + " " + format(got.scores[name], metrics[name].unit)));
    });
    card.appendChild(chips);
    Object.keys(got.judge).forEach((name) => {
      const verdict = got.judge[name];
      const ok = verdict.status === "ok";
      const label = ok ? name + " " + verdict.score + "/5" : name + ": " + verdict.status;
      const line = el("div", "reason");
      line.appendChild(el("span", ok ? "chip" : "chip bad", label));
      line.appendChild(document.createTextNode(" " + (verdict.reason || "")));
      card.appendChild(line);
    });
    const timing = got.total_s === null || got.total_s === undefined ? "" : got.total_s.toFixed(3) + " s";
    card.appendChild(el("div", "reason", [timing, got.completion_tokens + " tokens", got.finish_reason]
      .filter(Boolean).join(" · ")));
    return card;
  }

  function rowCard(row) {
    const card = el("div", "row");
    card.appendChild(el("h3", null, "row " + row.row + (row.line ? " (line " + row.line + ")" : "")));
    card.appendChild(el("div", "label", "prompt"));
    card.appendChild(el("div", "text", promptText(row)));
    if (row.context) {
      const details = el("details");
      details.appendChild(el("summary", "label", "context"));
      details.appendChild(el("div", "text", row.context));
      card.appendChild(details);
    }
    if (row.reference) {
      card.appendChild(el("div", "label", "reference"));
      card.appendChild(el("div", "text", row.reference));
    }
    const grid = el("div", "answers");
    grid.style.gridTemplateColumns = "repeat(" + targets.length + ", minmax(0, 1fr))";
    targets.forEach((t) => grid.appendChild(answerCard(row, t)));
    card.appendChild(grid);
    return card;
  }

  function render() {
    let rows = data.rows;
    if (state.filter) rows = rows.filter((r) => haystack(r).includes(state.filter));
    if (state.sort) rows = rows.slice().sort((a, b) => spread(b, state.sort) - spread(a, state.sort));
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const list = document.getElementById("row-list");
    list.replaceChildren(...rows.slice(state.page * PAGE, (state.page + 1) * PAGE).map(rowCard));
    document.getElementById("page").textContent =
      "page " + (state.page + 1) + " of " + pages + " (" + rows.length + " rows)";
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
  }

  const sort = document.getElementById("sort");
  sort.appendChild(el("option", null, "file order")).value = "";
  Object.keys(metrics).forEach((name) => {
    sort.appendChild(el("option", null, "largest difference in " + name)).value = name;
  });
  sort.addEventListener("change", () => { state.sort = sort.value; state.page = 0; render(); });
  document.getElementById("filter").addEventListener("input", (event) => {
    state.filter = event.target.value.toLowerCase();
    state.page = 0;
    render();
  });
  document.getElementById("prev").addEventListener("click", () => { state.page -= 1; render(); });
  document.getElementById("next").addEventListener("click", () => { state.page += 1; render(); });
  render();
})();
