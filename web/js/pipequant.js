// PipeQuant graph-editor extension: backend-aware widgets, component pickers, live validation and
// the memory estimate. It asks the server (routes.py) and presents the answer; every rule stays in
// the resolver. The pure parts live in logic.mjs (tested with `node --test web/tests`).
// Served at /extensions/<pack>/js/pipequant.js, hence three levels up to /scripts.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import * as L from "./logic.mjs";
import { addDrawnWidget, vueMode } from "./drawn.mjs";

const TICK_MS = 300; // how often the graph is compared with what the server last answered
const SETTLE_MS = 250; // a changed request waits this long (typing) before it is sent
const COMPONENTS_TTL_MS = 15000;
const COMPONENTS_RETRY_MS = 3000;
const LINE_H = 16;
const PAD = 5;
const MARGIN = 15;
const MAX_LINES = 12; // a longer panel shows its first lines and "… n more" (a click expands it)
const MAX_REPORT_WIDTH = 640; // the Memory Report's table shrinks its font, then wraps, beyond this
const MIN_MONO_PX = 8;
const GAP = 20; // kept between a grown node and the nodes below it
const AUTO = "auto"; // fittedH marker: a new node, sized to its content
const COLORS = {
  title: "#d8d8d8", row: "#e0e0e0", muted: "#9a9a9a", total: "#ffffff", note: "#b8c4d8",
  error: "#ff7b72", warning: "#e3b341", ok: "#7ee787",
};

const shared = { catalogue: null, catalogueAsked: 0, components: new Map() };

// -- server ------------------------------------------------------------------------------------
async function getJSON(path, init) {
  const res = await api.fetchApi(path, init);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  return { ok: res.ok, status: res.status, body };
}

function loadCatalogue() {
  if (shared.catalogue || Date.now() - shared.catalogueAsked < 5000) return;
  shared.catalogueAsked = Date.now();
  getJSON("/pipequant/backends").then(({ ok, body }) => {
    if (ok) shared.catalogue = body;
  }).catch(() => {});
}

/** GET /pipequant/components, cached per model (a failure for a few seconds, then asked again). */
function getComponents(model) {
  const cached = shared.components.get(model);
  const ttl = cached?.error ? COMPONENTS_RETRY_MS : COMPONENTS_TTL_MS;
  if (cached && Date.now() - cached.at < ttl) return cached.promise;
  const record = { at: Date.now(), value: cached?.value ?? null, error: null, promise: null };
  record.promise = getJSON(`/pipequant/components?model=${encodeURIComponent(model)}`).then(({ ok, body }) => {
    if (!ok) throw new Error(body.error ?? "cannot read the model");
    record.value = body;
    return body;
  });
  record.promise.catch((err) => {
    record.error = err;
    record.value = null;
  });
  shared.components.set(model, record);
  return record.promise;
}

/** The components of `model` if they have arrived (for drawing); asks for them (once) otherwise. */
function componentsNow(model) {
  const before = shared.components.get(model);
  const promise = getComponents(model);
  if (shared.components.get(model) !== before) promise.then(() => redraw(), () => {}); // a new request
  return shared.components.get(model)?.value ?? null;
}

// -- the graph as plain data (see logic.mjs) ---------------------------------------------------
function linkOf(graph, id) {
  const links = graph._links ?? graph.links;
  return links?.get?.(id) ?? links?.[id] ?? null;
}

function snapshot(graph) {
  const snap = {};
  for (const node of graph._nodes ?? graph.nodes ?? []) {
    const inputs = {};
    for (const input of node.inputs ?? []) {
      const link = input.link == null ? null : linkOf(graph, input.link);
      inputs[input.name] = link ? String(link.origin_id) : null;
    }
    const outputs = [];
    for (const output of node.outputs ?? []) {
      for (const id of output.links ?? []) {
        const link = linkOf(graph, id);
        if (!link) continue;
        const target = graph.getNodeById(link.target_id);
        outputs.push({ target: String(link.target_id), input: target?.inputs?.[link.target_slot]?.name });
      }
    }
    const widgets = {};
    for (const w of node.widgets ?? []) {
      if (w.name && w.options?.serialize !== false) widgets[w.name] = w.value;
    }
    snap[String(node.id)] = { id: String(node.id), type: node.comfyClass ?? node.type, mode: node.mode, widgets, inputs, outputs };
  }
  return snap;
}

function nodesOf(type) {
  return (app.graph?._nodes ?? app.graph?.nodes ?? []).filter((n) => n.pipequant && n.comfyClass === type);
}

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const values = (node) => Object.fromEntries(L.inputNames(shared.catalogue, L.BACKEND).map((n) => [n, widget(node, n)?.value]));

function redraw(node) {
  const nodes = node ? [node] : (app.graph?._nodes ?? []).filter((n) => n.pipequant);
  for (const n of nodes) {
    for (const w of n.widgets ?? []) {
      if (w.pipequantDrawn && w.triggerDraw) w.triggerDraw();
    }
    markProblems(n);
  }
  app.graph?.setDirtyCanvas(true, true);
}

function nodeElement(node) {
  return document.querySelector(`[data-node-id="${CSS.escape(String(node.id))}"]`);
}

/** Nodes 2.0 lays widgets out as HTML, taller than the canvas's computeSize counts them: the
 * node's element grows past its size (a min-height), while the graph keeps the old box, so a grown
 * panel ends below the node's edge and over the nodes under it. The size follows the element
 * (pushing those nodes down), and the difference is kept so that the next fit starts from it. */
function followElement(node) {
  const el = nodeElement(node);
  if (!el || node.flags?.collapsed) return;
  const st = node.pipequant;
  const needed = el.offsetHeight - (globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30);
  const h = node.size[1];
  if (needed <= h + 1) return;
  st.vueExtra = Math.max(0, needed - node.computeSize()[1]);
  node.setSize([node.size[0], needed]);
  if (st.fittedH !== AUTO) makeRoom(node, h, needed);
  st.fittedH = needed;
}

/** The red outline of a node with errors. On the canvas it is a stroke style (below); a Vue node's
 * outline comes from the execution-error store, which is for Run's errors, so the live check's
 * outline is set on the node's element itself. */
function markProblems(node) {
  if (!vueMode()) return;
  const el = nodeElement(node);
  if (!el) return;
  const bad = node.pipequant?.problems?.some((p) => p.severity !== "warning");
  el.classList.toggle("pipequant-has-error", !!bad);
}

function addStyles() {
  if (document.getElementById("pipequant-styles")) return;
  const style = document.createElement("style");
  style.id = "pipequant-styles";
  style.textContent = `
    .litemenu-entry.pipequant-unavailable { color: #e3b341 !important; }
    .pipequant-has-error { outline: 3px solid #ff5a4f; outline-offset: 2px; border-radius: 8px; }
  `;
  document.head.append(style);
}

// -- hiding widgets (values stay, in order) ------------------------------------------------------
function setHidden(w, hidden) {
  if (!!w.hidden === hidden) return false;
  w.hidden = hidden;
  w.options ??= {};
  w.options.hidden = hidden;
  if (hidden) {
    w.pipequantOwnSize = Object.prototype.hasOwnProperty.call(w, "computeSize") ? w.computeSize : null;
    w.computeSize = () => [0, -4]; // no height in the layout
  } else if (w.pipequantOwnSize) {
    w.computeSize = w.pipequantOwnSize;
  } else {
    delete w.computeSize;
  }
  return true;
}

/** Grow the node to fit its widgets; shrink it only if it was sized by us (not by the user). A
 * node that grows pushes the nodes just below it down, so that it never covers them. */
function fit(node, exact = false) {
  const st = node.pipequant;
  const [minW, canvasH] = node.computeSize();
  const minH = canvasH + (vueMode() ? st.vueExtra : 0);
  const [w0, h] = node.size;
  const shrink = exact || st.fittedH === AUTO || st.fittedH === h;
  const target = shrink || h < minH ? minH : h;
  const width = Math.max(w0, minW, st.minWidth ?? 0);
  if (target !== h || width !== w0) {
    node.setSize([width, target]);
    if (target > h && st.fittedH !== AUTO) makeRoom(node, h, target);
  }
  if (target === minH) st.fittedH = target;
  redraw(node);
}

function makeRoom(node, oldH, newH) {
  const [x, y] = node.pos;
  const right = x + node.size[0];
  const grownBottom = y + newH + GAP;
  for (const other of app.graph?._nodes ?? []) {
    if (other === node) continue;
    const [ox, oy] = other.pos;
    const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const below = oy - title >= y + oldH - 1;
    const overlapsX = ox < right && ox + other.size[0] > x;
    if (below && overlapsX && oy - title < grownBottom) other.pos[1] += grownBottom - (oy - title);
  }
}

// -- the info panel: a drawn widget after the node's own (never serialized) -------------------
let measureCtx = null;
function font(bold = false, mono = false, monoPx = 11) {
  if (mono) return `${monoPx}px monospace`;
  return `${bold ? "bold " : ""}12px ${globalThis.LiteGraph?.NODE_FONT ?? "Arial"}`;
}
function measure(text, bold = false, mono = false, monoPx = 11) {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  measureCtx.font = font(bold, mono, monoPx);
  return measureCtx.measureText(text).width;
}

function panelItems(node) {
  const st = node.pipequant;
  const items = [];
  for (const p of st.problems) items.push({ kind: p.severity === "warning" ? "warning" : "error", text: `${p.severity === "warning" ? "⚠" : "✖"} ${L.problemText(p)}` });
  const type = node.comfyClass;
  if (type === L.BACKEND) {
    if (st.dropped) items.push({ kind: "warning", text: st.dropped });
    items.push(...L.backendNotes(shared.catalogue, values(node), st.problems));
  } else if (type === L.MAP) {
    const model = st.model;
    const name = String(widget(node, "component")?.value ?? "").trim();
    if (!model) {
      items.push({ kind: "muted", text: "no model connected: type the component name" });
    } else {
      const desc = componentsNow(model);
      const c = desc?.components?.find((x) => x.name === name);
      if (c) items.push({ kind: "note", text: `${c.name} — ${c.class} · ${L.diskSize(c)} · ${L.formatParams(c.params)} params` });
      else if (desc) items.push({ kind: "muted", text: `click "component" to pick one of ${model}'s components` });
    }
  } else if (type === L.LOAD) {
    for (const row of L.estimateRows(st.answer?.estimate, shared.catalogue)) items.push(row);
    if (st.status) items.push({ kind: "muted", text: st.status });
    for (const r of shared.catalogue?.editor?.refused ?? []) {
      items.push({ kind: "muted", text: `not listed: ${r.name} — ${r.reason}` });
    }
  } else if (st.output) {
    // Memory Report / Save: the text the node returned when it ran (a fixed-width table).
    for (const text of st.output.split("\n")) items.push({ kind: "row", text, mono: true });
  }
  return items;
}

/** Every line of the panel at `width`: rows wrap anywhere (long paths have no spaces), a row whose
 * two sides do not fit drops the size before quantization, then goes on two lines. */
function allLines(node, width) {
  const st = node.pipequant;
  const inner = Math.max(40, width - 2 * MARGIN - 8);
  const lines = [];
  const items = panelItems(node);
  const monoItems = items.filter((i) => i.mono);
  const monoWidth = Math.max(0, ...monoItems.map((i) => measure(i.text, false, true)));
  const monoPx = monoWidth > inner ? Math.max(MIN_MONO_PX, Math.floor((11 * inner) / monoWidth)) : 11;
  st.minWidth = monoWidth ? Math.min(MAX_REPORT_WIDTH, Math.ceil(monoWidth + 2 * MARGIN + 12)) : 0;
  const wrap = (text, bold, mono = false) => L.wrapText(text, inner, (t) => measure(t, bold, mono, monoPx));
  for (const item of items) {
    const bold = item.kind === "total" || item.kind === "title";
    if (item.left !== undefined) {
      const fits = (right) => measure(item.left, bold) + measure(right, bold) + 12 <= inner;
      if (fits(item.right)) lines.push({ ...item, bold });
      else if (item.short !== undefined && fits(item.short)) lines.push({ ...item, right: item.short, bold });
      else {
        for (const text of wrap(item.left, bold)) lines.push({ kind: item.kind, text, bold });
        for (const text of wrap(item.right, bold)) lines.push({ kind: item.kind, left: "", right: text, bold });
      }
    } else if (item.mono) {
      // A table row is cut, never re-spaced (its columns line up by their spaces).
      let rest = item.text.replace(/\s+$/, "");
      const fits = (t) => measure(t, false, true, monoPx) <= inner;
      while (rest.length > 1 && !fits(rest)) {
        let at = rest.length - 1;
        while (at > 1 && !fits(rest.slice(0, at))) at--;
        lines.push({ kind: item.kind, text: rest.slice(0, at), mono: true, monoPx });
        rest = rest.slice(at);
      }
      lines.push({ kind: item.kind, text: rest, mono: true, monoPx });
    } else {
      for (const text of wrap(item.text, bold)) lines.push({ kind: item.kind, text, bold });
    }
  }
  return lines;
}

function layout(node, width) {
  const st = node.pipequant;
  const content = node.comfyClass === L.LOAD ? "" : JSON.stringify(node.widgets?.map((w) => w.value));
  const key = `${st.version}|${width}|${st.expanded ? 1 : 0}|${shared.catalogue ? 1 : 0}|${st.model ?? ""}|${shared.components.get(st.model)?.value ? 1 : 0}|${content}`;
  if (st.layoutKey === key) return st.lines;
  let lines = allLines(node, width);
  st.truncated = lines.length > MAX_LINES;
  if (st.truncated && !st.expanded) {
    const hidden = lines.length - (MAX_LINES - 1);
    lines = [...lines.slice(0, MAX_LINES - 1), { kind: "muted", text: `… ${hidden} more line${hidden === 1 ? "" : "s"} (click to show)`, toggle: true }];
  } else if (st.truncated) {
    lines = [...lines, { kind: "muted", text: "(click to show less)", toggle: true }];
  }
  st.layoutKey = key;
  st.lines = lines;
  return lines;
}

function panelHeight(node, width) {
  const n = layout(node, width).length;
  return n ? n * LINE_H + 2 * PAD : 0;
}

function addPanel(node) {
  const panel = {
    name: "pipequant_info",
    type: "pipequant_info",
    value: "",
    y: 0,
    serialize: false,
    pipequantDrawn: true,
    options: { serialize: false },
    computeSize() {
      // The width the panel is drawn at: on the canvas the node's own (LGraphNode.computeSize
      // passes its *minimum* width, which would wrap more lines than the panel draws); in Nodes 2.0
      // the width its element gave it at the last draw.
      const w = (vueMode() && this?.width) || node.size[0];
      const h = panelHeight(node, w);
      return [w, h ? h : -4];
    },
    mouse(event, pos) {
      // A click on a long panel shows all of it, or its first lines again.
      const type = event?.type;
      if ((type === "pointerdown" || type === "mousedown") && node.pipequant.truncated) {
        node.pipequant.expanded = !node.pipequant.expanded;
        contentChanged(node, true);
        return true;
      }
      return false;
    },
    draw(ctx, _node, width, y) {
      const lines = layout(node, width);
      if (!lines.length) return;
      const x = MARGIN;
      const w = width - 2 * MARGIN;
      const h = lines.length * LINE_H + 2 * PAD;
      ctx.save();
      const hasError = node.pipequant.problems.some((p) => p.severity !== "warning");
      ctx.fillStyle = hasError ? "rgba(120, 20, 20, 0.35)" : "rgba(0, 0, 0, 0.28)";
      ctx.beginPath();
      ctx.roundRect ? ctx.roundRect(x, y, w, h, 6) : ctx.rect(x, y, w, h);
      ctx.fill();
      ctx.beginPath();
      ctx.rect(x, y, w, h);
      ctx.clip(); // nothing is drawn outside the panel, whatever a line measures
      ctx.textBaseline = "middle";
      lines.forEach((line, i) => {
        const ly = y + PAD + i * LINE_H + LINE_H / 2;
        ctx.font = font(line.bold, line.mono, line.monoPx);
        ctx.fillStyle = COLORS[line.kind] ?? COLORS.row;
        if (line.left !== undefined) {
          ctx.textAlign = "left";
          ctx.fillText(line.left, x + 4, ly);
          ctx.textAlign = "right";
          ctx.fillText(line.right, x + w - 4, ly);
        } else {
          ctx.textAlign = "left";
          ctx.fillText(line.text, x + 4, ly);
        }
      });
      ctx.restore();
    },
  };
  return addDrawnWidget(node, panel);
}

function contentChanged(node, exact = false) {
  node.pipequant.version++;
  node.pipequant.layoutKey = null;
  fit(node, exact);
}

// -- menus: plain labels on both frontends -------------------------------------------------------
// Frontend 1.27 writes an entry's `title` as HTML, 1.58 as text; className (the supported way to
// decorate an entry) works on both.
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function menuWritesHtml() {
  const addItem = globalThis.LiteGraph?.ContextMenu?.prototype?.addItem;
  return !/textContent/.test(String(addItem));
}

function showMenu(entries, opts, title) {
  const LG = globalThis.LiteGraph;
  return new LG.ContextMenu(entries, {
    event: opts.e,
    scale: Math.max(1, opts.canvas?.ds?.scale ?? 1),
    className: "dark pipequant-menu",
    title: title ? (menuWritesHtml() ? escapeHtml(title) : title) : undefined,
  });
}

function entry(value, label, callback, className = "") {
  const text = menuWritesHtml() ? escapeHtml(label) : label;
  return { content: text, title: text, callback, className: className || undefined };
}

/** Backend combo: a menu that marks backends not installed or needing a GPU (on a server without
 * one). Nodes 2.0 draws its own select, which asks `options.getOptionLabel(value)` for each line
 * (WidgetSelect in 1.58); on the canvas that frontend also shows it as the value, so it marks
 * there only (the canvas has the menu below). The values stay the plain names. */
function hookBackendMenu(node) {
  const w = widget(node, "backend");
  if (!w) return;
  w.options ??= {};
  w.options.getOptionLabel = (value) => (vueMode() && shared.catalogue ? L.backendLabel(shared.catalogue, value) : value);
  if (typeof w.onClick !== "function") return;
  const original = w.onClick.bind(w);
  w.onClick = (opts) => {
    const x = opts.e.canvasX - node.pos[0];
    const width = w.width || node.size[0];
    if (!shared.catalogue || x < 40 || x > width - 40) return original(opts); // arrows step as usual
    const items = L.backendMenu(shared.catalogue).map((b) =>
      entry(b.value, b.label, () => w.setValue(b.value, opts), b.installed && !b.gpuOnly ? "" : "pipequant-unavailable"));
    showMenu(items, opts, "Quantization backend");
  };
}

/** The model a node's output reaches (the first Load node downstream), or null. */
function modelFor(node, options) {
  return L.modelFed(snapshot(app.graph), String(node.id), options);
}

/** Per-Component Map `component`: pick from the connected model's components, or type a name. */
function hookComponentPicker(node) {
  const w = widget(node, "component");
  if (!w || typeof w.onClick !== "function") return;
  const original = w.onClick.bind(w);
  w.onClick = (opts) => {
    const model = modelFor(node);
    if (!model) return original(opts); // no model connected: free text
    getComponents(model).then((desc) => {
      const items = L.componentMenu(desc, [String(w.value).trim()]).map((c) =>
        entry(c.value, c.label, () => w.setValue(c.value, opts)));
      items.push(null, entry("", "Type a name…", () => original(opts)));
      showMenu(items, opts, `${model}: component`);
    }, () => original(opts));
  };
}

/** Quantization Backend `components`: toggle the connected model's components in the list (only
 * when it feeds a Load node directly: in a map, the map's component is the one quantized). */
function hookComponentsPicker(node) {
  const w = widget(node, "components");
  if (!w || typeof w.onClick !== "function") return;
  const original = w.onClick.bind(w);
  w.onClick = (opts) => {
    const model = modelFor(node, { throughMaps: false });
    if (!model) return original(opts);
    getComponents(model).then((desc) => {
      const items = L.componentMenu(desc, L.splitComponents(w.value)).map((c) =>
        entry(c.value, c.label, () => w.setValue(L.toggleComponent(w.value, c.value), opts)));
      items.push(null, entry("", "All the backend can take (empty)", () => w.setValue("", opts)),
        entry("", "Type names…", () => original(opts)));
      showMenu(items, opts, `${model}: components to quantize`);
    }, () => original(opts));
  };
}

function chainCallback(w, after) {
  if (!w) return;
  const previous = w.callback;
  w.callback = function (...args) {
    const result = previous?.apply(this, args);
    after(...args);
    return result;
  };
}

// -- Quantization Backend: options as widgets ------------------------------------------------------
// One widget per option of the chosen backend and quant type (from the catalogue). They are not
// serialized: each edit writes the `options` JSON text, which stays the saved form that the node,
// the runner and old workflows read. The text itself shows only when it holds something the
// widgets cannot (unknown keys, broken JSON), so that its problem can be seen and fixed.
const OPTION_PREFIX = "option: ";

function optionWidgetsKey(node) {
  const v = values(node);
  return JSON.stringify([v.backend, v.quant_type]);
}

function syncOptionWidgets(node) {
  const st = node.pipequant;
  const v = values(node);
  const specs = L.optionWidgets(shared.catalogue, v.backend, v.quant_type, v.options);
  const key = optionWidgetsKey(node);
  if (st.optionKey === key) {
    for (const spec of specs) {
      const w = widget(node, OPTION_PREFIX + spec.name);
      if (w && w.value !== spec.value) w.value = spec.value; // the text was edited by hand
    }
    return false;
  }
  st.optionKey = key;
  for (const w of [...(node.widgets ?? [])]) {
    if (w.pipequantOption) node.removeWidget ? node.removeWidget(w) : node.widgets.splice(node.widgets.indexOf(w), 1);
  }
  const applicable = L.applicableOptions(shared.catalogue, v.backend, v.quant_type);
  for (const spec of specs) {
    const option = applicable.find((o) => o.name === spec.name);
    const w = node.addWidget(spec.type, OPTION_PREFIX + spec.name, spec.value, (value) => {
      const text = L.setOption(widget(node, "options")?.value, option, value);
      if (text === null) return; // hand-typed text that is not JSON: fix it first (its problem says how)
      const options = widget(node, "options");
      options.value = text;
      options.callback?.(text);
    }, { ...spec.options, serialize: false });
    w.serialize = false;
    w.label = spec.name;
    w.tooltip = spec.help;
    w.pipequantOption = true;
  }
  if (specs.length) {
    const button = node.addWidget("button", "edit options as JSON", null, () => {
      st.showJson = !st.showJson;
      st.visibilityKey = null; // the next tick shows or hides the text
    }, { serialize: false });
    button.serialize = false;
    button.pipequantOption = true;
  }
  // The panel stays last, and stays the same object: Nodes 2.0 keeps its canvas bound to it.
  const at = node.widgets.indexOf(st.panel);
  if (at >= 0 && at !== node.widgets.length - 1) node.widgets.push(...node.widgets.splice(at, 1));
  return true;
}

/** Interactive backend / quant type change: options the new choice does not take are dropped from
 * the text, and the panel says which (nothing is lost silently). */
function dropInapplicableOptions(node) {
  const v = values(node);
  const options = widget(node, "options");
  if (!options) return;
  const applicable = L.applicableOptions(shared.catalogue, v.backend, v.quant_type);
  const { text, dropped } = L.dropInapplicable(options.value, applicable);
  if (!dropped.length) return;
  options.value = text;
  node.pipequant.dropped = `dropped option${dropped.length > 1 ? "s" : ""} that ${v.backend} ${v.quant_type} does not take: ` +
    dropped.map(([k, value]) => `${k}=${JSON.stringify(value)}`).join(", ");
}

function visibilityKey(node) {
  return JSON.stringify(values(node));
}

/** Narrow quant_type to the backend's, hide what does not apply. Interactive: the user switched the
 * backend, so a quant type the new backend lacks becomes its first one, and options that no longer
 * apply are dropped; on load nothing changes. */
function applyBackend(node, interactive) {
  const st = node.pipequant;
  const catalogue = shared.catalogue;
  if (!catalogue || st.applying) return;
  st.applying = true;
  try {
    const qt = widget(node, "quant_type");
    const v = values(node);
    const names = L.quantTypeNames(catalogue, v.backend);
    if (qt && names.length) {
      qt.options.values = names;
      st.quantValues = names;
      const next = L.nextQuantType(catalogue, v.backend, qt.value);
      if (interactive && next !== qt.value) {
        qt.value = next;
        qt.callback?.(next);
      }
    }
    if (interactive) dropInapplicableOptions(node);
    const now = values(node);
    const visible = L.backendWidgetVisibility(catalogue, now);
    const applicable = L.applicableOptions(catalogue, now.backend, now.quant_type);
    if (visible.options && !st.showJson && L.optionsFitWidgets(now.options, applicable)) visible.options = false; // the widgets show it
    let changed = syncOptionWidgets(node);
    for (const [name, show] of Object.entries(visible)) {
      const w = widget(node, name);
      if (w) changed = setHidden(w, !show) || changed;
    }
    st.visibilityKey = visibilityKey(node);
    st.version++;
    st.layoutKey = null;
    fit(node, interactive && changed);
  } finally {
    st.applying = false;
  }
}

function setupBackend(node) {
  chainCallback(widget(node, "backend"), () => applyBackend(node, true));
  chainCallback(widget(node, "quant_type"), () => applyBackend(node, true));
  for (const name of ["components", "options", "gguf_file"]) {
    chainCallback(widget(node, name), () => applyBackend(node, false));
  }
  hookBackendMenu(node);
  hookComponentsPicker(node);
}

// -- Load Quantized Pipeline: ask the server when what the answer depends on changed ------------
async function ask(node, request) {
  const st = node.pipequant;
  const seq = ++st.seq;
  st.status = st.answer ? "" : "checking…";
  const path = request.model ? "/pipequant/estimate" : "/pipequant/validate";
  st.inflight++;
  let status = "";
  let answer = null;
  try {
    const { ok, body } = await getJSON(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    if (ok) {
      answer = body;
      if (!request.model) status = "pick a model to see the memory estimate";
      else if (!body.estimate) status = "no estimate until the problems marked in red are fixed";
    } else {
      answer = { problems: (body.problems ?? []).map((p) => ({ ...p, node: null, input: p.field })), estimate: null };
      status = body.error ?? "the server refused the request";
    }
  } catch (err) {
    status = `estimate unavailable: ${err?.message ?? err}`;
  } finally {
    st.inflight--;
  }
  if (seq !== st.seq) return; // a newer request was sent meanwhile
  st.answer = answer;
  st.status = status;
  distributeProblems();
  contentChanged(node);
}

function distributeProblems() {
  const answers = nodesOf(L.LOAD).map((n) => ({ loadId: String(n.id), problems: n.pipequant.answer?.problems ?? [] }));
  const byNode = L.problemsByNode(answers);
  for (const node of app.graph?._nodes ?? []) {
    if (!node.pipequant) continue;
    const problems = byNode[String(node.id)] ?? [];
    const key = JSON.stringify(problems);
    if (key === node.pipequant.problemsKey) continue;
    node.pipequant.problemsKey = key;
    node.pipequant.problems = problems;
    contentChanged(node);
  }
}

function tick() {
  const graph = app.graph;
  if (!graph || !(graph._nodes ?? []).some((n) => n.pipequant)) return;
  if (!shared.catalogue) {
    loadCatalogue();
    return;
  }
  for (const node of nodesOf(L.BACKEND)) {
    const qt = widget(node, "quant_type");
    if (node.pipequant.visibilityKey !== visibilityKey(node) || (qt && qt.options.values !== node.pipequant.quantValues)) {
      applyBackend(node, false);
    }
  }
  const snap = snapshot(graph);
  const now = Date.now();
  for (const node of nodesOf(L.LOAD)) {
    const st = node.pipequant;
    let request;
    try {
      request = L.loadRequest(snap, String(node.id), shared.catalogue);
    } catch (err) {
      if (st.key !== "unknown") {
        st.key = "unknown";
        st.answer = null;
        st.status = `no live check: ${err.message}`;
        distributeProblems();
        contentChanged(node);
      }
      continue;
    }
    const key = L.requestKey(request);
    if (key === st.key) continue;
    if (key !== st.pendingKey) {
      st.pendingKey = key;
      st.pendingAt = now;
      continue;
    }
    if (now - st.pendingAt < SETTLE_MS) continue;
    st.key = key;
    ask(node, request);
  }
  let removed = false;
  for (const node of nodesOf(L.MAP)) {
    const model = L.modelFed(snap, String(node.id));
    if (model !== node.pipequant.model) {
      node.pipequant.model = model;
      if (model) getComponents(model).then(() => contentChanged(node), () => {});
      contentChanged(node);
    }
  }
  // Problems of Load nodes that were deleted go with them.
  const loads = new Set(nodesOf(L.LOAD).map((n) => String(n.id)));
  if (shared.loads && [...shared.loads].some((id) => !loads.has(id))) removed = true;
  shared.loads = loads;
  if (removed) distributeProblems();
  if (vueMode()) {
    for (const node of graph._nodes) {
      if (!node.pipequant) continue;
      markProblems(node); // elements come and go
      followElement(node);
    }
  }
}

// -- registration ----------------------------------------------------------------------------------
function setupNode(node) {
  if (node.pipequant || !L.PACK_NODES.includes(node.comfyClass)) return;
  node.pipequant = {
    version: 0, problems: [], problemsKey: "[]", answer: null, status: "", seq: 0, key: null, inflight: 0,
    pendingKey: null, pendingAt: 0, visibilityKey: null, model: null, fittedH: AUTO, lines: [], layoutKey: null,
    output: null, minWidth: 0, expanded: false, truncated: false, dropped: "", optionKey: null, panel: null, vueExtra: 0,
  };
  if (!L.PANEL_NODES.includes(node.comfyClass)) return;
  node.pipequant.panel = addPanel(node);
  node.strokeStyles ??= {};
  node.strokeStyles.pipequantProblem = function () {
    if (this.pipequant?.problems?.some((p) => p.severity !== "warning")) return { color: "#ff5a4f" };
  };
  if (node.comfyClass === L.BACKEND) setupBackend(node);
  if (node.comfyClass === L.MAP) {
    hookComponentPicker(node);
    chainCallback(widget(node, "component"), () => contentChanged(node));
  }
  if (node.comfyClass === L.LOAD) node.pipequant.status = "checking…";
}

app.registerExtension({
  name: "pipequant.editor",
  async setup() {
    addStyles();
    loadCatalogue();
    setInterval(() => {
      try {
        tick();
      } catch (err) {
        console.error("[PipeQuant]", err);
      }
    }, TICK_MS);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!L.PACK_NODES.includes(nodeData?.name)) return;
    const onConfigure = nodeType.prototype.onConfigure;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      if (this.pipequant && Array.isArray(message?.text)) {
        this.pipequant.output = message.text.join("\n");
        this.pipequant.expanded = false;
        contentChanged(this);
      }
      return result;
    };
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      if (this.pipequant) {
        // Loaded or pasted: keep the saved size and values; the next tick re-applies the view.
        this.pipequant.fittedH = null;
        this.pipequant.visibilityKey = null;
        this.pipequant.optionKey = null;
      }
      return result;
    };
  },
  nodeCreated(node) {
    setupNode(node);
  },
});

/** True when every Load node's answer is for what the graph holds now (the browser test waits on it). */
function settled() {
  if (!shared.catalogue || !app.graph) return false;
  const snap = snapshot(app.graph);
  return nodesOf(L.LOAD).every((node) => {
    const st = node.pipequant;
    let key = "unknown";
    try {
      key = L.requestKey(L.loadRequest(snap, String(node.id), shared.catalogue));
    } catch {}
    return st.key === key && st.inflight === 0;
  });
}

// For the browser test and for debugging from the console.
globalThis.pipequant = { shared, snapshot, settled, logic: L, tick, vueMode };
