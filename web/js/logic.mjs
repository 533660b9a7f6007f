// PipeQuant editor logic: pure functions over the server's catalogue and plain graph snapshots.
// No DOM, no ComfyUI: `node --test web/tests` runs them. The rules (which backend takes what,
// what is valid, what a plan costs) come from the server; this module only arranges them.

export const BACKEND = "PipeQuantBackend";
export const MAP = "PipeQuantComponentMap";
export const LOAD = "PipeQuantLoadPipeline";
export const PACK_NODES = [BACKEND, MAP, LOAD, "PipeQuantSampler", "PipeQuantMemoryReport", "PipeQuantSavePipeline"];
// Nodes that get an info panel (the Sampler has nothing to show).
export const PANEL_NODES = [BACKEND, MAP, LOAD, "PipeQuantMemoryReport", "PipeQuantSavePipeline"];
export const BACKEND_WIDGETS = ["backend", "quant_type", "compute_dtype", "components", "options", "gguf_file"];
export const NO_FILE = "none"; // the gguf_file combo's "no file" entry (resolver/inputs.py NO_FILE)
const MUTED = 2;
const BYPASSED = 4;

// -- the catalogue (GET /pipequant/backends) ---------------------------------------------------
export function findBackend(catalogue, name) {
  return catalogue?.backends?.find((b) => b.name === name) ?? null;
}

export function quantTypeNames(catalogue, backendName) {
  return findBackend(catalogue, backendName)?.quant_types.map((q) => q.name) ?? [];
}

export function findQuantType(catalogue, backendName, quantType) {
  return findBackend(catalogue, backendName)?.quant_types.find((q) => q.name === quantType) ?? null;
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
  const visible = Object.fromEntries(BACKEND_WIDGETS.map((name) => [name, true]));
  const backend = findBackend(catalogue, values.backend);
  if (!backend) return visible;
  visible.components = backend.global_mode || !isBlank(values.components);
  visible.options = applicableOptions(catalogue, values.backend, values.quant_type).length > 0 ||
    !isEmptyOptions(values.options);
  visible.gguf_file = backend.needs_file || (!isBlank(values.gguf_file) && values.gguf_file !== NO_FILE);
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

/** Entries of the backend picker: every backend, with its types, marked when not installed. */
export function backendMenu(catalogue) {
  return (catalogue?.backends ?? []).map((b) => ({
    value: b.name,
    label: b.installed
      ? `${b.name} — ${b.quant_types.map((q) => q.name).join(", ")}`
      : `${b.name} — not installed: ${b.install}`,
    installed: b.installed,
  }));
}

/** Lines of the Backend node's info panel (the problems come separately). */
export function backendNotes(catalogue, values) {
  const backend = findBackend(catalogue, values.backend);
  if (!backend) return catalogue ? [{ kind: "warning", text: `unknown backend "${values.backend}"` }] : [];
  const notes = [];
  if (!backend.installed) notes.push({ kind: "warning", text: `${backend.label} is not installed — ${backend.install}` });
  const quant = backend.quant_types.find((q) => q.name === values.quant_type);
  if (quant) notes.push({ kind: "note", text: `${quant.label}${quant.help ? ": " + quant.help : ""}` });
  const options = applicableOptions(catalogue, values.backend, values.quant_type);
  if (options.length) notes.push({ kind: "muted", text: "options: " + optionsSummary(options) });
  return notes;
}

// -- sizes ---------------------------------------------------------------------------------------
/** Bytes as the resolver's report prints them (resolver/report.py human_bytes): 1024-based, 2 decimals. */
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

/** Rows of the Load node's estimate: [{left, right, kind}]; `short` is `left` without the plan,
 * for a node too narrow for both. */
export function estimateRows(estimate) {
  if (!estimate) return [];
  const rows = [{ kind: "title", left: "Estimated memory", right: `${estimate.dtype ?? ""} · ${estimate.device ?? ""}` }];
  for (const c of estimate.components ?? []) {
    const plan = c.backend ? `${c.quant_type}` : c.action === "keep" ? "" : c.action;
    rows.push({
      kind: c.backend ? "row" : "muted",
      left: plan ? `${c.component}  ·  ${plan}` : c.component,
      short: c.component,
      right: c.bytes_after === c.bytes_before
        ? formatBytes(c.bytes_before)
        : `${formatBytes(c.bytes_before)} → ${formatBytes(c.bytes_after)}`,
    });
  }
  const t = estimate.total ?? {};
  const percent = t.bytes_before ? ` (${Math.round((100 * t.bytes_after) / t.bytes_before)}%)` : "";
  rows.push({ kind: "total", left: "total", right: `${formatBytes(t.bytes_before)} → ${formatBytes(t.bytes_after)}${percent}` });
  return rows;
}

/** Entries of the component picker: the model's nn.Module components with class and size. */
export function componentMenu(description, current = []) {
  const chosen = new Set(current);
  return (description?.components ?? [])
    .filter((c) => c.is_module)
    .map((c) => ({
      value: c.name,
      label: `${chosen.has(c.name) ? "✓ " : ""}${c.name} — ${c.class} · ${formatBytes(c.bytes)} · ${formatParams(c.params)} params`,
      bytes: c.bytes,
    }));
}

/** The Backend's comma-separated components with `name` added or removed. */
export function toggleComponent(text, name) {
  const names = String(text ?? "").split(/[,\n]/).map((n) => n.trim()).filter(Boolean);
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

/** Follow Reroutes and bypassed nodes to the node that really produces a value; null if none. */
function producer(snapshot, id, seen) {
  let current = id;
  while (current !== null) {
    if (seen.has(current)) throw new UnknownSource("the links form a loop");
    seen.add(current);
    const node = snapshot[current];
    if (!node) return null;
    if (node.mode === MUTED) return null;
    if (node.type !== "Reroute" && node.mode !== BYPASSED) return current;
    const first = Object.values(node.inputs ?? {}).find((v) => v !== null && v !== undefined);
    current = first === undefined ? null : String(first);
  }
  return null;
}

/**
 * The spec part a node's input receives, as routes.py reads it: a Backend's raw widget text
 * ({"kind": "global"}), a Per-Component Map as {"kind": "map", component, config, map}; each
 * tagged with its node id so that problems come back on the node that caused them.
 */
export function specFrom(snapshot, id, inputName, seen = new Set()) {
  const from = source(snapshot, id, inputName);
  if (from === null) return null;
  const nodeId = producer(snapshot, from, seen);
  if (nodeId === null) return null;
  const node = snapshot[nodeId];
  const w = node.widgets ?? {};
  if (node.type === BACKEND) {
    return {
      kind: "global", node: nodeId, backend: w.backend, quant_type: w.quant_type, compute_dtype: w.compute_dtype ?? "auto",
      components: w.components ?? "", options: w.options ?? "{}", gguf_file: w.gguf_file ?? NO_FILE,
    };
  }
  if (node.type === MAP) {
    return {
      kind: "map", node: nodeId, component: String(w.component ?? ""),
      config: specFrom(snapshot, nodeId, "config", seen), map: specFrom(snapshot, nodeId, "map", seen),
    };
  }
  throw new UnknownSource(`the quantization comes from a ${node.type} node, which the editor cannot read`);
}

/** The body of POST /pipequant/estimate (or /validate without a model) for one Load node. */
export function loadRequest(snapshot, loadId) {
  const w = snapshot[loadId]?.widgets ?? {};
  return {
    model: isBlank(w.model) ? null : w.model,
    dtype: w.dtype ?? "bfloat16",
    device: w.device ?? "auto",
    offload: w.offload ?? "none",
    allow_pickle: w.allow_pickle === true,
    spec: specFrom(snapshot, loadId, "quantization"),
  };
}

/** Ids of the Load nodes a node's output reaches (through Reroutes, bypassed nodes and, unless
 * `throughMaps` is false, Per-Component Maps). */
export function loadsFed(snapshot, id, { throughMaps = true } = {}) {
  const found = [];
  const seen = new Set();
  const queue = [String(id)];
  while (queue.length) {
    const current = queue.shift();
    if (seen.has(current)) continue;
    seen.add(current);
    for (const { target } of snapshot[current]?.outputs ?? []) {
      const node = snapshot[String(target)];
      if (!node || node.mode === MUTED) continue;
      if (node.type === LOAD) found.push(String(target));
      else if ((throughMaps && node.type === MAP) || node.type === "Reroute" || node.mode === BYPASSED) queue.push(String(target));
    }
  }
  return [...new Set(found)];
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
 * Problems per node id, from the answers for each Load node: a problem tagged with a node goes to
 * it, an untagged one to the Load node it was asked for. Duplicates (one Backend feeding two
 * Load nodes) are shown once.
 */
export function problemsByNode(answers) {
  const out = {};
  const seen = new Set();
  for (const { loadId, problems } of answers) {
    for (const p of problems ?? []) {
      const node = String(p.node ?? loadId);
      const key = `${node}|${p.code}|${p.input}|${p.message}`;
      if (seen.has(key)) continue;
      seen.add(key);
      (out[node] ??= []).push(p);
    }
  }
  return out;
}

export function problemText(problem) {
  const where = problem.input ? `${problem.input}: ` : "";
  const fix = problem.suggestion ? ` — ${problem.suggestion}` : "";
  return `${where}${problem.message}${fix}`;
}

/** Greedy word wrap; `measure(text)` gives a width (canvas measureText in the editor). */
export function wrapText(text, width, measure) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(/\s+/).filter(Boolean)) {
      const candidate = line ? `${line} ${word}` : word;
      if (!line || measure(candidate) <= width) {
        line = candidate;
        continue;
      }
      lines.push(line);
      line = word;
    }
    // A single word wider than the line is cut so that nothing is drawn outside the node.
    while (measure(line) > width && line.length > 1) {
      let cut = line.length - 1;
      while (cut > 1 && measure(line.slice(0, cut)) > width) cut--;
      lines.push(line.slice(0, cut));
      line = line.slice(cut);
    }
    lines.push(line);
  }
  return lines;
}

/** A stable key of what a Load node's answer depends on (its request), to ask again only on change. */
export function requestKey(request) {
  return JSON.stringify(request);
}
