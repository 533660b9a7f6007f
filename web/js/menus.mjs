// Menus with plain labels on both frontends, and the pickers that use them: the backend menu
// (marks backends not installed or needing a GPU), the Map's component and the Backend's
// components. Frontend 1.27 writes an entry's `title` as HTML, 1.58 as text; className (the
// supported way to decorate an entry) works on both.
import { vueMode } from "./drawn.mjs";
import { modelFor, widget } from "./graph.mjs";
import * as L from "./logic.mjs";
import { getComponents, shared } from "./server.mjs";

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

/** Replace a combo's click (between its arrows) with `open(opts)`; the arrows step as usual. */
function hookClick(w, open) {
  if (!w || typeof w.onClick !== "function") return;
  const original = w.onClick.bind(w);
  w.onClick = (opts) => open(opts, original);
}

/** A combo whose values are marked in a menu: `items()` gives [{value, label, unavailable}].
 * Nodes 2.0 draws its own select, which asks `options.getOptionLabel(value)` for each line (1.58's
 * WidgetSelect); on the canvas that frontend shows it as the value too, so it marks there only
 * (the canvas has the menu). The values stay the plain names. */
export function hookMarkedCombo(node, name, items, title) {
  const w = widget(node, name);
  if (!w) return;
  w.options ??= {};
  w.options.getOptionLabel = (value) => {
    if (!vueMode()) return value;
    const item = items()?.find((i) => i.value === value);
    return item?.short ?? item?.label ?? value;
  };
  hookClick(w, (opts, original) => {
    const x = opts.e.canvasX - node.pos[0];
    const width = w.width || node.size[0];
    const list = items();
    if (!list || x < 40 || x > width - 40) return original(opts);
    const entries = list.map((i) => entry(i.value, i.label, () => w.setValue(i.value, opts), i.unavailable ? "pipequant-unavailable" : ""));
    showMenu(entries, opts, title);
  });
}

/** Backend combo: marks backends not installed or needing a GPU (on a server without one). */
export function hookBackendMenu(node) {
  hookMarkedCombo(node, "backend", () => shared.catalogue && L.backendMenu(shared.catalogue).map((b) =>
    ({ value: b.value, label: b.label, short: L.backendLabel(shared.catalogue, b.value), unavailable: !b.installed || b.gpuOnly })),
  "Quantization backend");
}

/** quant_type combo: marks the types that need a GPU on a server without one. */
export function hookQuantTypeMenu(node) {
  const backend = () => widget(node, "backend")?.value;
  hookMarkedCombo(node, "quant_type", () => shared.catalogue && L.quantTypeMenu(shared.catalogue, backend()), "Quant type");
}

/** Per-Component Map `component`: pick from the connected model's components, or type a name. */
export function hookComponentPicker(node) {
  const w = widget(node, "component");
  hookClick(w, (opts, original) => {
    const model = modelFor(node);
    if (!model) return original(opts); // no model connected: free text
    getComponents(model).then((desc) => {
      const items = L.componentMenu(desc, [String(w.value).trim()]).map((c) =>
        entry(c.value, c.label, () => w.setValue(c.value, opts)));
      items.push(null, entry("", "Type a name…", () => original(opts)));
      showMenu(items, opts, `${model}: component`);
    }, () => original(opts));
  });
}

/** Quantization Backend `components`: toggle the connected model's components in the list (only
 * when it feeds a Load node directly: in a map, the map's component is the one quantized). */
export function hookComponentsPicker(node) {
  const w = widget(node, "components");
  hookClick(w, (opts, original) => {
    const model = modelFor(node, { throughMaps: false });
    if (!model) return original(opts);
    getComponents(model).then((desc) => {
      const items = L.componentMenu(desc, L.splitComponents(w.value)).map((c) =>
        entry(c.value, c.label, () => w.setValue(L.toggleComponent(w.value, c.value), opts)));
      items.push(null, entry("", "All the backend can take (empty)", () => w.setValue("", opts)),
        entry("", "Type names…", () => original(opts)));
      showMenu(items, opts, `${model}: components to quantize`);
    }, () => original(opts));
  });
}
