// The owner's Resources page: the governor's state, its recent samples as graphs (inline SVG drawn here), its
// decisions, and its settings.  GET /governor and GET /governor/history every two seconds; after the first load
// only samples newer than the last one held are asked for.  Times are the governor's clock, never this one's.
import { $, call } from "./transfer.js";

const POLL_MS = 2000;
const KEEP_SAMPLES = 2000;
const GAP_SECONDS = 15; // samples further apart than this: the governor was not sampling, the line breaks
const HEIGHT = 120, BAND = 16; // a graph's height, and the bands above and below its plot for the labels
const SVG = "http://www.w3.org/2000/svg";
const ACTIONS = { down: "Stepped down", up: "Stepped up", warn: "Warning" };
const root = $("governor"); // absent while the governor does not answer
const samples = [];
let decisions = [];
let status = null;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const number = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
const bytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${(n / 1e6).toFixed(0)} MB`);
const rungText = (r) => `${r.model}, ${r.threads} thread${r.threads === 1 ? "" : "s"}, ${r.context}-token context`;

// A time as the box's own pages write it: in the box's time zone, to the minute.
const clock = (() => {
  const options = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  try { return new Intl.DateTimeFormat("en-CA", { ...options, timeZone: root && root.dataset.zone }); }
  catch { return new Intl.DateTimeFormat("en-CA", options); } // a zone this browser does not know
})();
function when(t) {
  const p = Object.fromEntries(clock.formatToParts(new Date(t * 1000)).map((part) => [part.type, part.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
}

function add(parent, name, attributes = {}, text) {
  const node = parent.namespaceURI === SVG ? document.createElementNS(SVG, name) : document.createElement(name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  parent.append(node);
  return node;
}

// -- the graphs -------------------------------------------------------------------------------------------

const memory = (s) => (s.memory_total ? (100 * s.memory_available) / s.memory_total : null);
const GRAPHS = [
  { id: "cpu", unit: " %", low: 0, high: 100, limit: "cpu_percent", series: { total: (s) => s.cpu, other: (s) => s.other_cpu },
    now: (s) => `now ${number(s.cpu)} % (other programs ${number(s.other_cpu)} %)` },
  { id: "memory", unit: " %", low: 0, high: 100, limit: "memory_percent", series: { memory },
    now: (s) => `now ${bytes(s.memory_available)} of ${bytes(s.memory_total)} (${number(memory(s) || 0)} %)` },
  { id: "temperature", unit: " °C", limit: "temperature", series: { temperature: (s) => s.temperature },
    now: (s) => (s.temperature === null ? "no sensor reads" : `now ${number(s.temperature)} °C`)
      + (s.undervoltage ? "; under-voltage: the power supply cannot keep up, and the firmware slows the CPU" : "") },
  { id: "speed", unit: " tokens/s", low: 0, series: { speed: (s) => s.tokens_per_second },
    now: (s) => (s.tokens_per_second ? `last reply ${number(s.tokens_per_second)} tokens/s` : "no reply measured yet") },
  { id: "rung", rung: true, series: { rung: (s) => s.rung },
    now: (s) => (s.rung === null ? "" : `now rung ${s.rung + 1}`) },
];

// The value range a graph shows: fixed for percentages, the data and its limit with some room otherwise.
function bounds(graph, values, limit) {
  if (graph.rung) return [0, Math.max(1, (status ? status.ladder.length : 1) - 1, ...values)];
  if (graph.high !== undefined) return [graph.low, graph.high];
  const all = limit === undefined ? values : [...values, limit];
  if (!all.length) return [0, 1];
  const least = all.reduce((a, b) => Math.min(a, b)), most = all.reduce((a, b) => Math.max(a, b));
  if (graph.low !== undefined) return [graph.low, Math.max(1, Math.ceil(most * 1.1))];
  return [Math.floor((least - 2) / 5) * 5, Math.ceil((most + 2) / 5) * 5];
}

// An SVG path through the samples; a missing value or a pause in sampling breaks it.  The rung is a step line.
function trace(read, x, y, step) {
  let d = "", last = null;
  for (const s of samples) {
    const v = read(s);
    if (!Number.isFinite(v)) { last = null; continue; }
    const px = x(s.t).toFixed(1), py = y(v).toFixed(1);
    d += last === null || s.t - last > GAP_SECONDS ? `M${px} ${py}` : step ? `H${px}V${py}` : `L${px} ${py}`;
    last = s.t;
  }
  return d;
}

function draw(graph, t0, t1) {
  const svg = $(`graph-${graph.id}`);
  const width = Math.max(100, Math.round(svg.getBoundingClientRect().width));
  const top = BAND, bottom = HEIGHT - BAND;
  const limits = (status && status.limits) || {};
  const limit = graph.limit ? limits[graph.limit] : undefined;
  const reads = Object.values(graph.series);
  const values = samples.flatMap((s) => reads.map((read) => read(s))).filter(Number.isFinite);
  const [low, high] = bounds(graph, values, limit);
  const x = (t) => Math.min(width - 1, Math.max(1, ((t - t0) / Math.max(t1 - t0, 1)) * width));
  const share = (v) => (v - low) / (high - low || 1);
  const y = graph.rung ? (v) => top + share(v) * (bottom - top) : (v) => bottom - share(v) * (bottom - top);
  svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
  svg.replaceChildren();
  add(svg, "rect", { class: "plot", x: 0, y: top, width, height: bottom - top });
  if (limit !== undefined && limit !== null) {
    const ly = Math.round(y(limit));
    add(svg, "line", { class: "limit", x1: 0, x2: width, y1: ly, y2: ly });
    add(svg, "text", { x: width - 4, y: Math.max(top + 10, ly - 3), "text-anchor": "end" }, `limit ${number(limit)}${graph.unit}`);
  }
  for (const [name, read] of Object.entries(graph.series)) {
    add(svg, "path", { class: `series ${name}`, d: trace(read, x, y, graph.rung) });
  }
  for (const d of decisions) {
    if (d.t < t0 || d.t > t1) continue;
    const g = add(svg, "g", { class: `marker ${d.action}` });
    add(g, "title", {}, `${ACTIONS[d.action] || d.action} at ${when(d.t)}: ${d.source}` +
      `${d.target && d.target !== d.source ? ` → ${d.target}` : ""}. ${d.reason}`);
    const px = x(d.t).toFixed(1);
    add(g, "line", { x1: px, x2: px, y1: top, y2: bottom });
    add(g, "line", { class: "hit", x1: px, x2: px, y1: top, y2: bottom }); // wide enough to point at
  }
  const label = graph.rung ? (v) => `rung ${v + 1}` : (v) => `${number(v)}${graph.unit}`;
  add(svg, "text", { x: 2, y: top - 4 }, label(graph.rung ? low : high));
  add(svg, "text", { x: 2, y: HEIGHT - 3 }, label(graph.rung ? high : low));
  $(`value-${graph.id}`).textContent = samples.length ? graph.now(samples.at(-1)) : "";
}

function span(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} seconds`;
  return seconds < 7200 ? `${Math.round(seconds / 60)} minutes` : `${(seconds / 3600).toFixed(1)} hours`;
}

function drawAll() {
  if (!root || !samples.length) return;
  const t0 = samples[0].t, t1 = samples.at(-1).t;
  $("span").textContent = `The last ${span(t1 - t0)} (${samples.length} samples), the newest at the right. A marker ` +
    "is a decision: red a step down, green a step up, amber a warning; point at it for the reason.";
  for (const graph of GRAPHS) draw(graph, t0, t1);
}

function take(history) {
  const last = samples.length ? samples.at(-1).t : -Infinity;
  for (const s of history.samples || []) if (s.t > last) samples.push(s);
  if (samples.length > KEEP_SAMPLES) samples.splice(0, samples.length - KEEP_SAMPLES);
  const lastDecision = decisions.length ? decisions.at(-1).t : -Infinity;
  decisions.push(...(history.decisions || []).filter((d) => d.t > lastDecision));
  if (samples.length) decisions = decisions.filter((d) => d.t >= samples[0].t); // the graphs show no older ones
}

// -- the state ------------------------------------------------------------------------------------------

function row(tbody, className, cells) {
  const tr = add(tbody, "tr", className ? { class: className } : {});
  for (const [label, ...content] of cells) {
    add(tr, "td", { "data-label": label }).append(...content);
  }
  return tr;
}

function badge(text) {
  const span = document.createElement("span");
  span.className = "badge";
  span.textContent = text;
  return span;
}

function showState(state) {
  const warnings = state.warnings || [];
  $("warnings").replaceChildren();
  for (const warning of warnings) add($("warnings"), "li", {}, warning);
  $("warnings").hidden = !warnings.length;
  $("served").textContent = state.served ? rungText(state.served) : "no model";
  $("rung-index").textContent = state.ladder.length ? `${state.index + 1} of ${state.ladder.length}`
    : "none: no model on the ladder";
  $("mode").textContent = !state.enabled ? "Off: it only records what it measures."
    : state.pinned ? "The model is pinned: the governor only warns." : "On: it steps the model down and up by itself.";
  $("ladder").replaceChildren();
  state.ladder.forEach((r, i) => {
    const now = i === state.index;
    const tr = row($("ladder"), now ? "current" : "", [["Rung", String(i + 1), ...(now ? [" ", badge("now")] : [])],
      ["Model", r.model], ["Threads", String(r.threads)], ["Context", `${r.context} tokens`], ["Memory", bytes(r.need)]]);
    if (now) tr.setAttribute("aria-current", "true");
  });
  const made = state.decisions || [];
  $("decision-rows").replaceChildren();
  for (const d of [...made].reverse()) {
    const action = document.createElement("span");
    action.className = "action";
    action.textContent = ACTIONS[d.action] || d.action;
    row($("decision-rows"), d.action, [["Time", when(d.t)], ["Action", action],
      ["From → to", d.source === d.target ? d.source : `${d.source} → ${d.target}`], ["Why", d.reason]]);
  }
  $("decision-rows").closest("table").hidden = !made.length;
  $("no-decisions").hidden = made.length > 0;
  for (const name of ["temperature", "cpu_percent", "memory_percent"]) {
    const shown = $(`effective-${name}`);
    shown.textContent = state.limits ? `in force: ${number(state.limits[name])} ${shown.dataset.unit}` : "";
  }
  const pin = $("g-pin"), offered = new Set([...pin.options].map((o) => o.value));
  for (const model of state.ladder.map((r) => r.model)) {
    if (!offered.has(model)) { add(pin, "option", { value: model }, `Always ${model}`); offered.add(model); }
  }
}

// Says why the page shows nothing new: the box (`problem` an Error) or its governor does not answer.
function lost(problem) {
  const notice = root ? $("lost") : $("problem");
  notice.textContent = problem instanceof Error ? `The box did not answer: ${problem.message}. Check the connection.`
    : root ? `The governor stopped answering (${problem}); the graphs stop at its last sample.` : problem;
  notice.hidden = false;
}

async function refresh() {
  let state;
  try {
    state = await call("GET", "/governor");
  } catch (err) { lost(err); return; }
  if (!root) { // the page was made while the governor did not answer
    if (state.connected) location.reload(); else lost(state.problem);
    return;
  }
  if (!state.connected) { lost(state.problem); return; }
  state.ladder = state.ladder || [];
  $("lost").hidden = true;
  status = state;
  showState(state);
  try {
    take(await call("GET", `/governor/history?since=${samples.length ? samples.at(-1).t : 0}`));
  } catch (err) { $("span").textContent = `The governor's samples could not be read: ${err.message}`; }
  drawAll();
}

// -- the settings ---------------------------------------------------------------------------------------

function alarm(message) {
  $("governor-error").textContent = message;
  $("governor-error").hidden = !message;
}

$("settings-form").onsubmit = async (event) => {
  event.preventDefault();
  alarm("");
  $("settings-status").textContent = "";
  const body = {};
  for (const input of event.target.querySelectorAll("[name]")) {
    if (input.type === "checkbox") body[input.name] = input.checked;
    else if (input.type !== "number") body[input.name] = input.value;
    else if (/^\d+$/.test(input.value.trim())) body[input.name] = Number(input.value);
    else {
      const label = document.querySelector(`label[for="${input.id}"]`).textContent;
      alarm(`The settings were not saved: "${label}" needs a whole number (0 or more).`);
      input.focus();
      return;
    }
  }
  try {
    const saved = await call("PUT", "/governor/settings", body);
    for (const [name, value] of Object.entries(saved)) {
      const input = event.target.elements[name];
      if (input && input.type === "checkbox") input.checked = value;
      else if (input) input.value = value;
    }
    $("settings-status").textContent = "Saved. The governor follows within a few seconds.";
  } catch (err) { alarm(`The settings were not saved: ${err.message}`); }
};

async function poll() {
  for (;;) {
    await refresh();
    await sleep(POLL_MS);
  }
}

addEventListener("resize", drawAll);
poll();
