// Tally's dashboard: the URL holds the view (page, filters, inputs); the server answers each page
// as JSON panels (the KPIs' rows and a Plotly figure); a click on a row or a point opens the side
// panel with that row and links that drill into a related page with the filter applied.
"use strict";

const COMMON = ["since", "until", "app", "role", "team", "ab"];
let meta = null;
let current = null; // the page answer on screen

const $ = (id) => document.getElementById(id);
const urlParams = () => new URLSearchParams(location.search);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  let body;
  try { body = await response.json(); } catch (e) { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- state in the URL ---------------------------------------------------------------------

function go(changes, { keepInputs = true } = {}) {
  const next = new URLSearchParams();
  const now = urlParams();
  for (const [key, value] of now) if (key !== "token" && (keepInputs || COMMON.includes(key) || key === "page")) next.set(key, value);
  for (const [key, value] of Object.entries(changes)) {
    if (value === "" || value == null) next.delete(key); else next.set(key, value);
  }
  history.pushState(null, "", "?" + next.toString());
  load();
}

function drillHref(drill, row) {
  const next = new URLSearchParams();
  const now = urlParams();
  for (const key of COMMON) if (now.get(key)) next.set(key, now.get(key));
  next.set("page", drill.page);
  for (const [key, template] of Object.entries(drill.set)) {
    const value = template.replace(/\{(\w+)\}/g, (_, column) => cellText(row[column]));
    if (value !== "" && value !== "(none)") next.set(key, value); else next.delete(key);
  }
  return "?" + next.toString();
}

function fillTemplate(text, row) {
  return text.replace(/\{(\w+)\}/g, (_, column) => cellText(row[column]));
}

// ---- formatting ---------------------------------------------------------------------------

function cellText(value) {
  if (value == null) return "";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
  return String(value);
}

function shown(value) {
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(2);
  return cellText(value);
}

// ---- the bar: pages, filters, page inputs --------------------------------------------------

function renderNav(page) {
  const nav = $("nav");
  nav.replaceChildren();
  for (const p of meta.pages) {
    const link = el("a", { href: "?page=" + p.name, "data-page": p.name, text: p.title, class: p.name === page ? "active" : "" });
    link.addEventListener("click", (event) => { event.preventDefault(); go({ page: p.name }, { keepInputs: false }); });
    nav.append(link);
  }
}

function fillSelect(select, values, chosen, allLabel = "(all)") {
  select.replaceChildren(el("option", { value: "", text: allLabel }));
  const options = [...(values || [])];
  if (chosen && !options.includes(chosen)) options.push(chosen);
  for (const value of options) select.append(el("option", { value, text: value }));
  select.value = chosen || "";
}

function renderFilters(filters) {
  $("f-since").value = filters.since;
  $("f-until").value = filters.until;
  fillSelect($("f-app"), meta.values.app, filters.app, "(all apps)");
  fillSelect($("f-role"), meta.values.role, filters.role, "(everyone)");
  fillSelect($("f-team"), meta.values.team, filters.team, "(every team)");
  fillSelect($("f-ab"), meta.values.ab, filters.ab, "(everyone)");
}

function renderInputs(inputs) {
  const box = $("inputs");
  box.replaceChildren();
  for (const input of inputs) {
    let control;
    const choices = input.name === "breakdown" ? meta.breakdowns : input.name === "flag" ? ["", ...meta.flags] : input.choices;
    if (choices.length) {
      control = el("select", { name: input.name, id: "i-" + input.name });
      for (const c of choices) control.append(el("option", { value: c, text: c === "" ? "(none)" : c }));
      if (!choices.includes(input.value)) control.append(el("option", { value: input.value, text: input.value }));
      control.value = input.value;
    } else {
      control = el("input", { type: "text", name: input.name, id: "i-" + input.name, value: input.value, placeholder: input.help || "", size: 24 });
    }
    control.addEventListener("change", () => { if (control.value !== input.value) go({ [input.name]: control.value }); });
    box.append(el("label", {}, input.label + " ", control));
  }
}

// ---- the page -----------------------------------------------------------------------------

function renderTiles(tiles) {
  const box = $("tiles");
  box.replaceChildren();
  for (const tile of tiles) {
    box.append(el("div", { class: "tile" + (tile.id.startsWith("live_") ? " live" : ""), "data-tile": tile.id, "data-value": String(tile.value) },
      el("div", { class: "label", text: tile.label }), el("div", { class: "value", text: shown(tile.value) }),
      el("div", { class: "note", text: tile.note || "" })));
  }
}

function rowObject(panel, index) {
  const row = {};
  panel.columns.forEach((column, i) => { row[column] = panel.rows[index][i]; });
  return row;
}

function openSide(panel, index) {
  const row = rowObject(panel, index);
  const details = el("dl");
  for (const [key, value] of Object.entries(row)) details.append(el("dt", { text: key }), el("dd", { text: cellText(value) }));
  const links = el("div", { class: "drill" });
  for (const drill of panel.drill) {
    const link = el("a", { href: drillHref(drill, row), text: fillTemplate(drill.label, row) + " →" });
    link.addEventListener("click", (event) => { event.preventDefault(); history.pushState(null, "", link.getAttribute("href")); closeSide(); load(); });
    links.append(link);
  }
  $("side-body").replaceChildren(el("h3", { text: panel.title }), details, links);
  $("side").hidden = false;
  $("side").dataset.panel = panel.id;
  $("side").dataset.row = String(index);
  document.querySelectorAll("tr.selected").forEach((tr) => tr.classList.remove("selected"));
  const tr = document.querySelector(`#table-${panel.id} tr[data-row="${index}"]`);
  if (tr) tr.classList.add("selected");
}

function closeSide() { $("side").hidden = true; }

function renderTable(panel) {
  const table = el("table", { class: "data", id: "table-" + panel.id });
  const numeric = panel.columns.map((_, i) => panel.rows.length > 0 && panel.rows.every((r) => r[i] == null || typeof r[i] === "number"));
  const head = el("tr");
  panel.columns.forEach((column, i) => {
    const th = el("th", { text: column, "data-column": column });
    th.addEventListener("click", () => sortTable(table, i, numeric[i], th));
    head.append(th);
  });
  const body = el("tbody");
  panel.rows.forEach((row, index) => {
    const tr = el("tr", { "data-row": String(index) });
    row.forEach((value, i) => tr.append(el("td", { class: numeric[i] ? "num" : "", "data-value": cellText(value), title: cellText(value), text: shown(value) })));
    tr.addEventListener("click", () => openSide(panel, index));
    body.append(tr);
  });
  table.append(el("thead", {}, head), body);
  return el("div", { class: "table-wrap" }, table);
}

function sortTable(table, column, numeric, th) {
  const body = table.tBodies[0];
  const descending = !th.classList.contains("sorted-desc");
  table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
  th.classList.add(descending ? "sorted-desc" : "sorted-asc");
  const rows = [...body.rows];
  const key = (tr) => numeric ? Number(tr.cells[column].dataset.value || 0) : tr.cells[column].dataset.value;
  rows.sort((a, b) => { const x = key(a), y = key(b); const order = x < y ? -1 : x > y ? 1 : 0; return descending ? -order : order; });
  body.append(...rows);
}

function renderTests(tests) {
  const columns = ["step", "action", "variant", "baseline", "rate_percent", "baseline_rate_percent", "z", "p_value", "significant"];
  const panel = { id: "funnel-tests", title: "Two-proportion z-test", columns, rows: tests.map((t) => columns.map((c) => t[c])), drill: [] };
  return el("div", {}, el("p", { class: "desc", text: "Each variant against the baseline (the first in order): share of step-1 users reaching the step; pooled two-proportion z-test, two-sided, significant at p < 0.05." }), renderTable(panel));
}

function renderPanel(panel) {
  const section = el("section", { class: "panel", id: "panel-" + panel.id, "data-kpi": panel.kpi },
    el("h2", { text: panel.title }), el("p", { class: "desc", text: panel.description + ` (tally report ${panel.kpi})` }));
  if (panel.ignored_filters.length) section.append(el("p", { class: "note", text: `not filtered by ${panel.ignored_filters.join(", ")}` }));
  for (const note of panel.notes || []) section.append(el("p", { class: "note", text: note }));
  if (panel.error) { section.append(el("p", { class: "problem", text: panel.error })); return section; }
  if (panel.note) { section.append(el("p", { class: "note", text: panel.note })); return section; }
  if (!panel.rows.length) { section.append(el("p", { class: "note", "data-empty": "1", text: "no data for these filters" })); return section; }
  if (panel.figure) {
    const chart = el("div", { class: "chart", id: "chart-" + panel.id });
    section.append(chart);
    requestAnimationFrame(() => {
      Plotly.newPlot(chart, panel.figure.data, { ...panel.figure.layout, autosize: true }, { displaylogo: false, responsive: true });
      chart.on("plotly_click", (event) => {
        const index = event.points[0].customdata;
        if (Number.isInteger(index)) openSide(panel, index);
      });
    });
  }
  if (panel.show !== "chart") section.append(renderTable(panel));
  if (panel.tests && panel.tests.length) section.append(renderTests(panel.tests));
  return section;
}

function render(answer) {
  current = answer;
  document.title = `Tally · ${answer.title}`;
  renderNav(answer.page);
  renderFilters(answer.filters);
  renderInputs(answer.inputs);
  $("title").textContent = answer.title;
  $("description").textContent = answer.description;
  renderTiles([...(answer.tiles || []), ...(answer.live || []), ...(answer.worker || [])]);
  $("panels").replaceChildren(...answer.panels.map(renderPanel));
}

async function load() {
  const params = urlParams();
  if (!params.get("page")) params.set("page", "overview");
  params.delete("token");
  document.body.dataset.state = "loading";
  $("error").hidden = true;
  closeSide();
  try {
    const answer = await getJSON("api/page?" + params.toString());
    render(answer);
    document.body.dataset.page = answer.page;
    document.body.dataset.state = "ready";
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
    document.body.dataset.state = "error";
  }
}

function wireFilters() {
  for (const name of COMMON) $("f-" + name).addEventListener("change", (event) => go({ [name]: event.target.value }));
  document.querySelectorAll(".ranges button").forEach((button) => button.addEventListener("click", () => {
    const until = $("f-until").value || new Date().toISOString().slice(0, 10);
    if (button.dataset.days === "all") return go({ since: "1970-01-01", until });
    const since = new Date(Date.parse(until) - (Number(button.dataset.days) - 1) * 86400000).toISOString().slice(0, 10);
    go({ since, until });
  }));
  // Enter in a text box applies it (change), never submits the form as a page load
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); event.target.querySelector(":focus")?.blur(); });
  $("side-close").addEventListener("click", closeSide);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeSide(); });
  window.addEventListener("popstate", load);
}

async function start() {
  try {
    meta = await getJSON("api/meta");
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
    document.body.dataset.state = "error";
    return;
  }
  $("source").textContent = "data: " + meta.source;
  const params = urlParams();
  if (params.has("token")) { params.delete("token"); history.replaceState(null, "", "?" + params.toString()); }
  wireFilters();
  load();
}

start();
