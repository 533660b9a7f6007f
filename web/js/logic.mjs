// PipeQuant editor logic: pure functions over the server's catalogue and plain graph snapshots.
// No DOM, no ComfyUI: `node --test web/tests` runs them. The rules (which backend takes what,
// what is valid, what a plan costs) come from the server; this module only arranges them.

export const BACKEND = "PipeQuantBackend";
export const MAP = "PipeQuantComponentMap";
export const LOAD = "PipeQuantLoadPipeline";
export const SAVE = "PipeQuantSavePipeline";
export const AUTO_PLAN = "PipeQuantAutoPlan"; // shows its own plan (autoplan.js)
export const SAMPLER = "PipeQuantSampler";
export const TO_COMFY = "PipeQuantToComfy";
export const ENCODE = "PipeQuantEncodePrompt";
export const QUALITY = "PipeQuantQualityCheck"; // loads the model itself: checked live as a Load node is
export const PACK_NODES = [BACKEND, MAP, LOAD, SAMPLER, "PipeQuantMemoryReport", SAVE, TO_COMFY, ENCODE, QUALITY];
// Nodes that get an info panel (empty, and so no room taken, while it has nothing to say): the
// Sampler and the bridge nodes show the problems the Load node's live check finds for them.
export const PANEL_NODES = [BACKEND, MAP, LOAD, "PipeQuantMemoryReport", SAVE, SAMPLER, TO_COMFY, ENCODE, QUALITY];
// Nodes whose own widgets and quantization link name a model to load: each gets a live check.
export const CHECKED_NODES = [LOAD, QUALITY];
const MUTED = 2;
const BYPASSED = 4;

// -- the catalogue (GET /pipequant/backends) ---------------------------------------------------
// `catalogue.editor` holds what the nodes declare (input names in order, the "no file" entry,
// the plan's action names, the default backend for this server's device): the editor reads them
// from there instead of keeping copies.

/** A node's input (widget) names, in their declared order. */
export function inputNames(catalogue, nodeType) {
  return catalogue?.editor?.inputs?.[nodeType] ?? [];
}

export function noFile(catalogue) {
  return catalogue?.editor?.no_file;
}

export function actionName(catalogue, key) {
  return catalogue?.editor?.actions?.[key];
}

export function findBackend(catalogue, name) {
  return catalogue?.backends?.find((b) => b.name === name) ?? null;
}

export function quantTypeNames(catalogue, backendName) {
  return findBackend(catalogue, backendName)?.quant_types.map((q) => q.name) ?? [];
}

/** The backend options a quant type takes (the backend's, when the type is unknown), in catalogue order. */
export function applicableOptions(catalogue, backendName, quantType) {
  const backend = findBackend(catalogue, backendName);
  if (!backend) return [];
  const quant = backend.quant_types.find((q) => q.name === quantType);
  return quant ? backend.options.filter((o) => quant.options.includes(o.name)) : backend.options;
}

/** The quant type to show after the backend changed: the current one if the backend has it, else its first. */
export function nextQuantType(catalogue, backendName, current) {
  const names = quantTypeNames(catalogue, backendName);
  return names.includes(current) ? current : (names[0] ?? current);
}

function isBlank(value) {
  return value === undefined || value === null || String(value).trim() === "";
}

function isEmptyOptions(value) {
  if (isBlank(value)) return true;
  try {
    const parsed = JSON.parse(value);
    return parsed !== null && typeof parsed === "object" && !Array.isArray(parsed) && Object.keys(parsed).length === 0;
  } catch {
    return false; // unparsable text is something the user typed: keep it visible
  }
}

/**
 * Which Backend widgets show, decided from the catalogue: `components` for backends usable on a
 * whole pipeline (global_mode), `options` when the quant type takes any, `gguf_file` for backends
 * whose weights come from a file (needs_file). A widget that does not apply but holds a value stays
 * visible, so that a problem it causes can be seen and fixed. Unknown backend: everything shows.
 */
export function backendWidgetVisibility(catalogue, values) {
  const visible = Object.fromEntries(inputNames(catalogue, BACKEND).map((name) => [name, true]));
  const backend = findBackend(catalogue, values.backend);
  if (!backend) return visible;
  visible.components = backend.global_mode || !isBlank(values.components);
  visible.options = applicableOptions(catalogue, values.backend, values.quant_type).length > 0 ||
    !isEmptyOptions(values.options);
  visible.gguf_file = backend.needs_file || (!isBlank(values.gguf_file) && values.gguf_file !== noFile(catalogue));
  return visible;
}

function optionType(option) {
  if (option.type === "bool") return "true/false";
  if (option.type === "str_list") return "list of names";
  if (option.type === "choice") return (option.choices ?? []).map((c) => JSON.stringify(c)).join(" | ");
  const range = option.min !== undefined && option.max !== undefined ? ` ${option.min}–${option.max}` : "";
  return `${option.type}${range}`;
}

/** The options JSON with every applicable option at its default: the options widget's placeholder. */
export function optionsTemplate(options) {
  return JSON.stringify(Object.fromEntries(options.map((o) => [o.name, o.default])));
}

/** Option names with their types and defaults, short enough for the node. */
export function optionsSummary(options) {
  return options.map((o) => `${o.name} (${optionType(o)}, default ${JSON.stringify(o.default)})`).join(", ");
}

/** One line per option: name, type and default, then its help (the options widget's tooltip). */
export function optionsHelp(options) {
  return options.map((o) => `${o.name} (${optionType(o)}, default ${JSON.stringify(o.default)}): ${o.help}`);
}

// -- options as widgets (the JSON text stays the saved form) -------------------------------------
/** The options text as an object, or null when it is not a JSON object (a problem the server names). */
export function parseOptions(text) {
  if (isBlank(text)) return {};
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

const WIDGET_TYPE = { bool: "toggle", int: "number", float: "number", choice: "combo", str_list: "text" };

function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** What a widget shows for an option's value (a list of names as "a, b"). */
function shown(option, value) {
  return option.type === "str_list" ? (Array.isArray(value) ? value.join(", ") : String(value ?? "")) : value;
}

/**
 * One widget per option the quant type takes, from the catalogue: its kind (toggle, number with
 * min/max, combo of the choices, text for a list of names), the value the options text holds
 * (else the default) and the option's help as tooltip.
 */
export function optionWidgets(catalogue, backendName, quantType, text) {
  const parsed = parseOptions(text) ?? {};
  return applicableOptions(catalogue, backendName, quantType).map((o) => {
    const value = Object.prototype.hasOwnProperty.call(parsed, o.name) ? parsed[o.name] : o.default;
    const spec = { name: o.name, type: WIDGET_TYPE[o.type] ?? "text", value: shown(o, value), help: o.help, options: {} };
    if (o.type === "choice") spec.options.values = [...(o.choices ?? [])];
    if (o.type === "int" || o.type === "float") {
      spec.options = { min: o.min, max: o.max, precision: o.type === "int" ? 0 : 2, round: o.type === "int" ? 1 : 0.01,
        step: o.type === "int" ? 10 : 1, step2: o.type === "int" ? 1 : 0.1 };
    }
    return spec;
  });
}

/**
 * The options text after a widget set `option` to `value`: the other keys as they were, this one
 * written as the runner reads it (a list of names as a JSON array), or left out when it is the
 * default. null when the text is not a JSON object (the widgets do not overwrite what was typed).
 */
export function setOption(text, option, value) {
  const parsed = parseOptions(text);
  if (parsed === null) return null;
  let v = value;
  if (option.type === "str_list") v = splitComponents(value);
  else if (option.type === "int") v = Math.round(Number(value));
  else if (option.type === "float") v = Number(value);
  else if (option.type === "bool") v = value === true;
  const next = { ...parsed };
  if (sameValue(v, option.default)) delete next[option.name];
  else next[option.name] = v;
  return JSON.stringify(next);
}

/** The options text with only the keys that `applicable` options name; the rest, as [key, value]. */
export function dropInapplicable(text, applicable) {
  const parsed = parseOptions(text);
  if (parsed === null) return { text, dropped: [] };
  const names = new Set(applicable.map((o) => o.name));
  const kept = Object.fromEntries(Object.entries(parsed).filter(([k]) => names.has(k)));
  const dropped = Object.entries(parsed).filter(([k]) => !names.has(k));
  return { text: dropped.length ? JSON.stringify(kept) : text, dropped };
}

/** Whether the widgets show all of the options text (else the text itself stays visible to fix). */
export function optionsFitWidgets(text, applicable) {
  const parsed = parseOptions(text);
  if (parsed === null) return false;
  const names = new Set(applicable.map((o) => o.name));
  return Object.keys(parsed).every((k) => names.has(k));
}

/** Libraries a backend cannot quantize on this server without a GPU (from the catalogue's `cpu`). */
export function gpuOnlyLibraries(backend) {
  return Object.entries(backend?.cpu ?? {}).filter(([, ok]) => !ok).map(([library]) => library);
}

/** What a backend's name is marked with where it is offered: needs a GPU for some models (on a
 * server without one), deprecated. Not installed: `install` adds how to install it. */
function backendMarks(b, { install = true } = {}) {
  const gpu = gpuOnlyLibraries(b);
  let marks = "";
  if (!b.installed) marks = install ? ` — not installed: ${b.install}` : " · not installed";
  else if (gpu.length === b.libraries.length) marks = " · needs a GPU";
  else if (gpu.length) marks = ` · needs a GPU for ${gpu.join(", ")} models`;
  if (b.deprecated) marks += " · deprecated";
  return marks;
}

/** Entries of the backend picker, plain text: every backend with its types and its marks. */
export function backendMenu(catalogue) {
  return (catalogue?.backends ?? []).map((b) => {
    const types = b.installed ? ` — ${b.quant_types.map((q) => q.name).join(", ")}` : "";
    return { value: b.name, label: `${b.name}${types}${backendMarks(b)}`, installed: b.installed,
      gpuOnly: gpuOnlyLibraries(b).length > 0 };
  });
}

/** Entries of the quant_type picker: the backend's types, those that need a GPU marked on a
 * server without one (before one is chosen, not only after). */
export function quantTypeMenu(catalogue, backendName) {
  const backend = findBackend(catalogue, backendName);
  if (!backend) return null;
  const cpuServer = catalogue?.editor?.device === "cpu";
  const backendNeedsGpu = gpuOnlyLibraries(backend).length === backend.libraries.length;
  return backend.quant_types.map((q) => {
    const gpu = cpuServer && (q.needs_cuda || q.min_compute_capability || backendNeedsGpu);
    const label = `${q.name}${gpu ? " · needs a GPU" : ""}`;
    return { value: q.name, label, short: label, unavailable: !!gpu };
  });
}

/** A backend's label in a select that shows one line per value (Nodes 2.0's own select): its
 * name and marks, no types. Unknown names stay as they are. */
export function backendLabel(catalogue, name) {
  const b = findBackend(catalogue, name);
  return b ? `${b.name}${backendMarks(b, { install: false })}` : String(name);
}

/** Lines of the Backend node's info panel (the problems come separately; a deprecation the
 * server already reports among them is not said twice). */
export function backendNotes(catalogue, values, problems = []) {
  const backend = findBackend(catalogue, values.backend);
  if (!backend) return catalogue ? [{ kind: "warning", text: `unknown backend "${values.backend}"` }] : [];
  const notes = [];
  if (!backend.installed) notes.push({ kind: "warning", text: `${backend.label} is not installed — ${backend.install}` });
  if (backend.deprecated && !problems.some((p) => p.code === "backend_deprecated")) notes.push({ kind: "warning", text: `${backend.label} is deprecated${backend.deprecated === true ? "" : ": " + backend.deprecated}` });
  const quant = backend.quant_types.find((q) => q.name === values.quant_type);
  if (quant) notes.push({ kind: "note", text: `${quant.label}: ${quant.help}` });
  const options = applicableOptions(catalogue, values.backend, values.quant_type);
  if (options.length) notes.push({ kind: "muted", text: "options: " + optionsSummary(options) });
  return notes;
}

// -- sizes ---------------------------------------------------------------------------------------
/** Bytes as the resolver's report prints them (resolver/keep/report.py human_bytes): 1024-based, 2 decimals. */
export function formatBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "?";
  let value = n;
  for (const unit of ["B", "KB", "MB"]) {
    if (Math.abs(value) < 1024) return unit === "B" ? `${Math.round(value)} B` : `${value.toFixed(2)} ${unit}`;
    value /= 1024;
  }
  return `${value.toFixed(2)} GB`;
}

export function formatParams(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "?";
  for (const [unit, size] of [["B", 1e9], ["M", 1e6], ["K", 1e3]]) {
    if (Math.abs(n) >= size) return `${(n / size).toFixed(n >= 10 * size ? 0 : 1)}${unit}`;
  }
  return String(n);
}

/** The dtype most of a component's bytes on disk are stored in (bytes_by_dtype), or "". */
function diskDtype(component) {
  const byDtype = Object.entries(component?.bytes_by_dtype ?? {});
  return byDtype.length ? byDtype.reduce((a, b) => (b[1] > a[1] ? b : a))[0] : "";
}

/** A component's size on disk, labelled as such: "3.78 MB on disk (float32)". */
export function diskSize(component) {
  const dtype = diskDtype(component);
  return `${formatBytes(component?.bytes)} on disk${dtype ? ` (${dtype})` : ""}`;
}

/**
 * Rows of the Load node's estimate: [{left, right, kind}], sizes in memory at the load dtype
 * (the title says so). `short` is `right` with only the size after quantization, for a node too
 * narrow for both; the plan label stays in `left` either way.
 */
export function estimateRows(estimate, catalogue) {
  if (!estimate) return [];
  const keep = actionName(catalogue, "keep");
  const rows = [{ kind: "title", left: "Estimated memory", right: `in memory at ${estimate.dtype ?? "?"} · ${estimate.device ?? ""}` }];
  for (const c of estimate.components ?? []) {
    const plan = c.backend ? `${c.quant_type ?? c.backend}` : c.action === keep ? "" : c.action;
    const changed = c.bytes_after !== c.bytes_before;
    rows.push({
      kind: c.backend ? "row" : "muted",
      left: plan ? `${c.component}  ·  ${plan}` : c.component,
      right: changed ? `${formatBytes(c.bytes_before)} → ${formatBytes(c.bytes_after)}` : formatBytes(c.bytes_before),
      // narrow: the same two sizes, closer (before is what the row is compared with)
      short: changed ? `${formatBytes(c.bytes_before)}→${formatBytes(c.bytes_after)}` : formatBytes(c.bytes_before),
    });
  }
  const t = estimate.total ?? {};
  const percent = t.bytes_before ? ` (${Math.round((100 * t.bytes_after) / t.bytes_before)}%)` : "";
  // pinned: the total shows however long the panel is (a long note below must not hide it)
  rows.push({ kind: "total", left: "total", right: `${formatBytes(t.bytes_before)} → ${formatBytes(t.bytes_after)}${percent}`,
    short: `${formatBytes(t.bytes_before)}→${formatBytes(t.bytes_after)}${percent}`, pinned: true });
  return rows;
}

// -- the Memory Report's table ---------------------------------------------------------------------
// Laid out for the width the node has: numbers and their units in their own columns (a number is
// never cut), the less telling columns dropped first when it is narrow, TOTAL always there.
const REPORT_COLUMNS = [
  // [key, header, priority (0: always shown), numeric]
  ["component", "component", 0, false],
  ["plan", "plan", 1, false],
  ["bytes", "bytes", 0, true],
  ["before", "before", 2, true],
  ["from", "from", 3, false],
  ["load", "load s", 4, true],
  ["dtype", "dtype", 5, false],
  ["device", "device", 6, false],
  ["params", "params", 7, true],
  ["class", "class", 8, false],
];
const SIZED = new Set(["bytes", "before"]); // shown as number + unit

function reportCells(row) {
  const size = (n) => formatBytes(n).split(" ");
  return {
    component: row.component, plan: row.plan ?? "", from: row.from === "disk cache" ? "disk" : row.from ?? "",
    bytes: size(row.bytes), before: size(row.bytes_before), load: Number(row.load_seconds ?? 0).toFixed(2),
    dtype: row.dtype ?? "", device: row.device ?? "", params: formatParams(row.params), class: row.class ?? "",
  };
}

/**
 * The report's table as panel lines at `width` ({kind, cells: [{text, x, width, right}], pinned}):
 * the columns that fit, in priority order; a component name too long for what is left is cut
 * with "…". `measure(text)` is the width of fixed-width text. `natural`: the width every column needs.
 */
export function reportLines(table, width, measure) {
  const total = table.total ?? {};
  const ratio = total.bytes_before ? `${(total.bytes / total.bytes_before).toFixed(2)}x` : "-";
  const rows = (table.rows ?? []).map(reportCells);
  const totalCells = { ...reportCells({ component: "TOTAL", plan: ratio, bytes: total.bytes, bytes_before: total.bytes_before,
    load_seconds: total.load_seconds }), dtype: "", device: "", params: "", class: "", from: "" };
  const gap = measure("  ");
  const unitGap = measure(" ");
  const header = Object.fromEntries(REPORT_COLUMNS.map(([key, head]) => [key, SIZED.has(key) ? [head, ""] : head]));
  const all = [header, ...rows, totalCells];
  const colWidth = (key) => SIZED.has(key)
    ? [Math.max(...all.map((r) => measure(r[key][0]))), Math.max(...all.map((r) => measure(r[key][1])))]
    : [Math.max(...all.map((r) => measure(String(r[key]))))];
  const widths = Object.fromEntries(REPORT_COLUMNS.map(([key]) => [key, colWidth(key)]));
  const span = (key) => widths[key].reduce((a, b) => a + b, 0) + (SIZED.has(key) ? unitGap : 0);
  const used = (cols) => cols.reduce((sum, [key]) => sum + span(key), 0) + gap * (cols.length - 1);
  let cols = [...REPORT_COLUMNS];
  const natural = used(cols);
  while (used(cols) > width && cols.some(([, , prio]) => prio > 0)) {
    const drop = cols.reduce((a, b) => (b[2] > a[2] ? b : a));
    cols = cols.filter((c) => c !== drop);
  }
  // What is left for the component's name (the first column), cut with "…" if it must be.
  const nameWidth = Math.max(measure("…") * 4, width - (used(cols) - span("component")) - gap);
  const fitName = (text) => {
    if (measure(text) <= nameWidth) return text;
    let cut = text;
    while (cut.length > 1 && measure(cut + "…") > nameWidth) cut = cut.slice(0, -1);
    return cut + "…";
  };
  const line = (cells, kind, extra = {}) => {
    let x = 0;
    const out = [];
    for (const [key, , , numeric] of cols) {
      if (key === "component") {
        const w = Math.min(widths.component[0], nameWidth);
        out.push({ text: fitName(String(cells.component)), x, width: w, right: false });
        x += w + gap;
      } else if (SIZED.has(key)) {
        out.push({ text: cells[key][0], x, width: widths[key][0], right: true });
        out.push({ text: cells[key][1], x: x + widths[key][0] + unitGap, width: widths[key][1], right: false });
        x += span(key) + gap;
      } else {
        out.push({ text: String(cells[key]), x, width: widths[key][0], right: numeric });
        x += widths[key][0] + gap;
      }
    }
    return { kind, cells: out, text: out.map((c) => c.text).join(" "), mono: true, pinned: true, ...extra };
  };
  return {
    natural,
    lines: [line(header, "muted"), ...rows.map((r) => line(r, r.plan === "keep" ? "muted" : "row")), line(totalCells, "total")],
  };
}

/** Entries of the component picker: the model's nn.Module components with class and size on disk. */
export function componentMenu(description, current = []) {
  const chosen = new Set(current);
  return (description?.components ?? [])
    .filter((c) => c.is_module)
    .map((c) => ({
      value: c.name,
      label: `${chosen.has(c.name) ? "✓ " : ""}${c.name} — ${c.class} · ${diskSize(c)} · ${formatParams(c.params)} params`,
      bytes: c.bytes,
    }));
}

/** The Backend's comma-separated components with `name` added or removed. */
export function toggleComponent(text, name) {
  const names = splitComponents(text);
  const next = names.includes(name) ? names.filter((n) => n !== name) : [...names, name];
  return next.join(", ");
}

export function splitComponents(text) {
  return String(text ?? "").split(/[,\n]/).map((n) => n.trim()).filter(Boolean);
}

// -- the graph, as plain data ------------------------------------------------------------------
// snapshot: {[id]: {id, type, mode, widgets: {name: value}, inputs: {name: sourceId | null},
//                   outputs: [{target: id, input: name}]}}

export class UnknownSource extends Error {}

function source(snapshot, id, inputName) {
  const node = snapshot[id];
  const from = node?.inputs?.[inputName];
  return from === undefined || from === null ? null : String(from);
}

/**
 * Follow Reroutes and bypassed nodes to the node that really produces a value; null if none.
 * `path` holds the nodes on the way from the Load node to here: meeting one of them again is a
 * real cycle. A node reached twice along different paths (one Backend feeding two Maps) is a
 * shared producer, not a loop, so each branch gets its own copy of the path.
 */
function producer(snapshot, id, path) {
  let current = id;
  while (current !== null) {
    if (path.has(current)) throw new UnknownSource("the links form a loop");
    path.add(current);
    const node = snapshot[current];
    if (!node) return null;
    if (node.mode === MUTED) return null;
    if (node.type !== "Reroute" && node.mode !== BYPASSED) return current;
    const first = Object.values(node.inputs ?? {}).find((v) => v !== null && v !== undefined);
    current = first === undefined ? null : String(first);
  }
  return null;
}

/** The widget values of a node, for the inputs the catalogue says it declares (in that order). */
function declaredValues(catalogue, node) {
  const w = node.widgets ?? {};
  const out = {};
  for (const name of inputNames(catalogue, node.type)) {
    if (w[name] !== undefined) out[name] = w[name];
  }
  return out;
}

/**
 * The spec part a node's input receives, as routes.py reads it: a Backend's raw widget text
 * ({"kind": "global"}), a Per-Component Map as {"kind": "map", component, config, map}; each
 * tagged with its node id so that problems come back on the node that caused them.
 */
export function specFrom(snapshot, id, inputName, catalogue, path = new Set([String(id)])) {
  const from = source(snapshot, id, inputName);
  if (from === null) return null;
  const here = new Set(path);
  const nodeId = producer(snapshot, from, here);
  if (nodeId === null) return null;
  const node = snapshot[nodeId];
  if (node.type === BACKEND) return { kind: "global", node: nodeId, ...declaredValues(catalogue, node) };
  if (node.type === MAP) {
    return {
      kind: "map", node: nodeId, component: String(node.widgets?.component ?? ""),
      config: specFrom(snapshot, nodeId, "config", catalogue, here), map: specFrom(snapshot, nodeId, "map", catalogue, here),
    };
  }
  if (node.type === AUTO_PLAN) throw new UnknownSource("the Auto Quantization Plan node shows its plan and predicted peak");
  throw new UnknownSource(`the quantization comes from a ${node.type} node, which the editor cannot read`);
}

/** Ids of the Save nodes that receive a Load node's pipeline (through Reroutes and bypassed nodes). */
export function savesFed(snapshot, loadId) {
  return downstream(snapshot, loadId, (node) => node.type === SAVE && node.mode !== BYPASSED,
    (node) => node.type === "Reroute" || node.mode === BYPASSED);
}

/** Ids of the nodes `isTarget` picks among those a node's output reaches, walking on through the
 * nodes `passesThrough` picks (muted nodes cut the link). */
function downstream(snapshot, startId, isTarget, passesThrough) {
  const found = [];
  const seen = new Set();
  const queue = [String(startId)];
  while (queue.length) {
    const current = queue.shift();
    if (seen.has(current)) continue;
    seen.add(current);
    for (const { target } of snapshot[current]?.outputs ?? []) {
      const node = snapshot[String(target)];
      if (!node || node.mode === MUTED) continue;
      if (isTarget(node)) found.push(String(target));
      else if (passesThrough(node)) queue.push(String(target));
    }
  }
  return [...new Set(found)];
}

/** Node types the catalogue says check the model they are fed (`check_model`: the Sampler, the
 * bridge nodes) and those that pass a pipeline on (Apply LoRA). */
const modelChecks = (catalogue) => catalogue?.editor?.model_checks ?? [];
const pipelinePassers = (catalogue) => catalogue?.editor?.pipeline_passers ?? [];

/** The nodes a Load node's pipeline reaches (through Reroutes, bypassed nodes and Apply LoRA) that
 * check its model before Run: [{node, type, inputs}], their number widgets as the graph holds them. */
export function consumersFed(snapshot, loadId, catalogue) {
  const checks = modelChecks(catalogue);
  const passers = pipelinePassers(catalogue);
  const ids = downstream(snapshot, loadId, (node) => checks.includes(node.type) && node.mode !== BYPASSED,
    (node) => node.type === "Reroute" || node.mode === BYPASSED || passers.includes(node.type));
  return ids.map((id) => {
    const node = snapshot[id];
    const inputs = Object.fromEntries(Object.entries(node.widgets ?? {}).filter(([, v]) => Number.isInteger(v)));
    return { node: id, type: node.type, inputs };
  });
}

/** The Load node a node's `pipeline` input comes from (through Reroutes, bypassed nodes and Apply
 * LoRA), or null. */
export function loadFeeding(snapshot, id, catalogue) {
  const passers = pipelinePassers(catalogue);
  let current = String(id);
  const seen = new Set();
  while (current !== null && !seen.has(current)) {
    seen.add(current);
    const from = source(snapshot, current, "pipeline");
    if (from === null) return null;
    let nodeId;
    try {
      nodeId = producer(snapshot, from, new Set(seen));
    } catch {
      return null;
    }
    if (nodeId === null) return null;
    if (snapshot[nodeId].type === LOAD) return nodeId;
    if (!passers.includes(snapshot[nodeId].type)) return null;
    current = nodeId;
  }
  return null;
}

/** Which of the Sampler's video inputs show: all while the model is unknown, else those the
 * pipeline uses (the server's `pipeline.video_inputs`). {name: shown}. */
export function videoInputsShown(catalogue, answer) {
  const all = catalogue?.editor?.video_inputs ?? [];
  const used = answer?.pipeline?.video_inputs;
  return Object.fromEntries(all.map((name) => [name, !Array.isArray(used) || used.includes(name)]));
}

/**
 * The body of POST /pipequant/estimate (or /validate without a model) for one Load node: its
 * widget values as the graph holds them (the server checks them), the spec from its links, and the
 * Save nodes it feeds (their rules are part of the live check).
 */
export function loadRequest(snapshot, loadId, catalogue) {
  const node = snapshot[loadId];
  const { model, ...inputs } = declaredValues(catalogue, node ?? {});
  const request = { model: isBlank(model) ? null : model, ...inputs, spec: specFrom(snapshot, loadId, "quantization", catalogue) };
  const saves = savesFed(snapshot, loadId);
  if (saves.length) request.save = saves.map((id) => ({ node: id, folder_name: snapshot[id].widgets?.folder_name ?? "" }));
  const consumers = consumersFed(snapshot, loadId, catalogue);
  if (consumers.length) request.consumers = consumers;
  return request;
}

/**
 * The body of POST /pipequant/validate for a Plan Quality Check: the inputs it shares with the Load
 * node (model, dtype, device, offload) and its quantization link, checked as the Load node's are,
 * and itself as a consumer of its model (size, the components it can measure). Not the prompt.
 */
export function qualityRequest(snapshot, id, catalogue) {
  const w = snapshot[id]?.widgets ?? {};
  const shared = new Set(inputNames(catalogue, LOAD));
  const request = { model: isBlank(w.model) ? null : w.model };
  for (const name of inputNames(catalogue, QUALITY)) {
    if (shared.has(name) && name !== "model" && w[name] !== undefined) request[name] = w[name];
  }
  request.spec = specFrom(snapshot, id, "quantization", catalogue);
  const inputs = Object.fromEntries(["width", "height", "components"].filter((k) => w[k] !== undefined).map((k) => [k, w[k]]));
  request.consumers = [{ node: String(id), type: QUALITY, inputs }];
  return request;
}

/**
 * The Save name a plan suggests: "<model>-<quant types>" ("FLUX.1-dev-nf4"; "mixed" past two;
 * the dtype without quantization), in the characters a folder name may have. Null without a model.
 */
export function saveNameFor(request) {
  if (!request || isBlank(request.model)) return null;
  const types = [];
  const walk = (spec) => {
    if (!spec) return;
    if (spec.kind === "global" && spec.quant_type && !types.includes(spec.quant_type)) types.push(spec.quant_type);
    if (spec.kind === "map") {
      walk(spec.config);
      walk(spec.map);
    }
  };
  walk(request.spec);
  const plan = types.length > 2 ? "mixed" : types.length ? types.join("-") : String(request.dtype ?? "saved");
  return `${request.model}-${plan}`.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-.]+/, "").slice(0, 128);
}

/** Ids of the Load nodes a node's output reaches (through Reroutes, bypassed nodes and, unless
 * `throughMaps` is false, Per-Component Maps). */
export function loadsFed(snapshot, id, { throughMaps = true } = {}) {
  return downstream(snapshot, id, (node) => node.type === LOAD,
    (node) => (throughMaps && node.type === MAP) || node.type === "Reroute" || node.mode === BYPASSED);
}

/** The model on the first Load node that `id` feeds, or null (then the picker falls back to free text). */
export function modelFed(snapshot, id, options = {}) {
  for (const load of loadsFed(snapshot, id, options)) {
    const model = snapshot[load]?.widgets?.model;
    if (!isBlank(model)) return model;
  }
  return null;
}

/**
 * An Auto Quantization Plan feeding a Load node that loads another model: the plan was sized for
 * its own model's components (even where the two share component names), so both nodes get a
 * problem, as answers for problemsByNode ([{loadId, problems}]).
 */
export function planMismatches(snapshot) {
  const out = [];
  for (const node of Object.values(snapshot)) {
    if (node.type !== AUTO_PLAN || node.mode === MUTED || node.mode === BYPASSED) continue;
    const planModel = node.widgets?.model;
    for (const loadId of loadsFed(snapshot, node.id)) {
      const loadModel = snapshot[loadId]?.widgets?.model;
      if (isBlank(planModel) || isBlank(loadModel) || planModel === loadModel) continue;
      const problem = { code: "plan_for_another_model", severity: "error" };
      out.push({ loadId, problems: [
        { ...problem, node: String(node.id), input: "model", message: `this plan is for ${planModel}, but the Load node it feeds loads ${loadModel}`,
          suggestion: `set model to ${loadModel}: a plan is sized for its model's components` },
        { ...problem, node: loadId, input: "quantization", message: `the Auto Quantization Plan feeding it is for ${planModel}, not ${loadModel}`,
          suggestion: `set the plan's model to ${loadModel}` },
      ] });
    }
  }
  return out;
}

// Where a problem is, as the server says (routes.py): `node` is the node at fault (null: the Load
// node asked), `input` that node's input; `part` and `entry` say which part of the plan it is
// (part "backend": the Quantization Backend of Per-Component Map entry `entry`). The message text
// is only ever shown.
const ENTRY_PART = "backend";

/**
 * Problems per node id, from the answers for each Load node: a problem tagged with a node goes to
 * it, an untagged one to the Load node it was asked for. Duplicates (one Backend feeding two
 * Load nodes) are shown once; one Backend feeding several map entries gets one problem naming
 * each entry it concerns (`entries`).
 */
export function problemsByNode(answers) {
  const out = {};
  const seen = new Map();
  for (const { loadId, problems } of answers) {
    for (const p of problems ?? []) {
      const node = String(p.node ?? loadId);
      const key = `${node}|${p.code}|${p.input}|${p.message}`;
      const entry = p.part === ENTRY_PART && p.entry != null ? String(p.entry) : null;
      const known = seen.get(key);
      if (known) {
        if (entry && !known.entries.includes(entry)) known.entries.push(entry);
        continue;
      }
      const placed = { ...p, entries: entry ? [entry] : [] };
      seen.set(key, placed);
      (out[node] ??= []).push(placed);
    }
  }
  return out;
}

/** "input: message — fix"; on a Backend feeding map entries, the input names them. */
export function problemText(problem) {
  const entries = problem.entries?.length ? ` (for ${problem.entries.join(", ")})` : "";
  const where = problem.input ? `${problem.input}${entries}: ` : "";
  const fix = problem.suggestion ? ` — ${problem.suggestion}` : "";
  return `${where}${problem.message}${fix}`;
}

/** Greedy word wrap; `measure(text)` gives a width (canvas measureText in the editor). A word
 * wider than the line (a long path) is cut wherever it must be, so nothing is drawn outside. */
export function wrapText(text, width, measure) {
  const lines = [];
  const cut = (word) => {
    const pieces = [];
    let rest = word;
    while (rest.length > 1 && measure(rest) > width) {
      let at = rest.length - 1;
      while (at > 1 && measure(rest.slice(0, at)) > width) at--;
      pieces.push(rest.slice(0, at));
      rest = rest.slice(at);
    }
    pieces.push(rest);
    return pieces;
  };
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(/\s+/).filter(Boolean)) {
      const candidate = line ? `${line} ${word}` : word;
      if (measure(candidate) <= width) {
        line = candidate;
        continue;
      }
      if (line) lines.push(line);
      const pieces = cut(word);
      lines.push(...pieces.slice(0, -1));
      line = pieces[pieces.length - 1];
    }
    lines.push(line);
  }
  return lines;
}

/** A stable key of what a Load node's answer depends on (its request), to ask again only on change. */
export function requestKey(request) {
  return JSON.stringify(request);
}
