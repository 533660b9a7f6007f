// The Quantization Backend's widgets: quant_type narrowed to the chosen backend's types, widgets
// that do not apply hidden (their values stay), and one widget per option of the chosen type.
// The option widgets are not serialized: each edit writes the `options` JSON text, which stays
// the saved form that the node, the runner and old workflows read. The text itself shows only
// when it holds something the widgets cannot (unknown keys, broken JSON), so that its problem can
// be seen and fixed.
import { chainCallback, widget } from "./graph.mjs";
import * as L from "./logic.mjs";
import { hookBackendMenu, hookComponentsPicker, hookQuantTypeMenu } from "./menus.mjs";
import { shared } from "./server.mjs";
import { fit, setHidden } from "./size.mjs";
import { BackendView } from "./state.mjs";

const OPTION_PREFIX = "option: ";

/** The Backend's declared widget values, by name. */
export const values = (node) => Object.fromEntries(L.inputNames(shared.catalogue, L.BACKEND).map((n) => [n, widget(node, n)?.value]));

function syncOptionWidgets(node) {
  const st = node.pipequant;
  const view = st.view;
  const v = values(node);
  const specs = L.optionWidgets(shared.catalogue, v.backend, v.quant_type, v.options);
  const key = JSON.stringify([v.backend, v.quant_type]);
  if (view.optionKey === key) {
    for (const spec of specs) {
      const w = widget(node, OPTION_PREFIX + spec.name);
      if (w && w.value !== spec.value) w.value = spec.value; // the text was edited by hand
    }
    return false;
  }
  view.optionKey = key;
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
      view.showJson = !view.showJson;
      view.visibilityKey = null; // the next tick shows or hides the text
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
  node.pipequant.view.dropped = `dropped option${dropped.length > 1 ? "s" : ""} that ${v.backend} ${v.quant_type} does not take: ` +
    dropped.map(([k, value]) => `${k}=${JSON.stringify(value)}`).join(", ");
}

const visibilityKey = (node) => JSON.stringify(values(node));

/** Narrow quant_type to the backend's, hide what does not apply. Interactive: the user switched the
 * backend, so a quant type the new backend lacks becomes its first one, and options that no longer
 * apply are dropped; on load nothing changes. */
export function applyBackend(node, interactive) {
  const st = node.pipequant;
  const view = st.view;
  const catalogue = shared.catalogue;
  if (!catalogue || view.applying) return;
  view.applying = true;
  try {
    const qt = widget(node, "quant_type");
    const v = values(node);
    const names = L.quantTypeNames(catalogue, v.backend);
    if (qt && names.length) {
      qt.options.values = names;
      view.quantValues = names;
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
    if (visible.options && !view.showJson && L.optionsFitWidgets(now.options, applicable)) visible.options = false; // the widgets show it
    let changed = syncOptionWidgets(node);
    for (const [name, show] of Object.entries(visible)) {
      const w = widget(node, name);
      if (w) changed = setHidden(w, !show) || changed;
    }
    view.visibilityKey = visibilityKey(node);
    st.version++;
    st.layoutKey = null;
    fit(node, interactive && changed);
  } finally {
    view.applying = false;
  }
}

/** On every tick: re-apply when the values (or the combo's list) changed since the last time. */
export function tickBackend(node) {
  const qt = widget(node, "quant_type");
  const view = node.pipequant.view;
  if (view.visibilityKey !== visibilityKey(node) || (qt && qt.options.values !== view.quantValues)) applyBackend(node, false);
}

/** The Backend's panel lines after its problems. */
export function backendItems(node) {
  const items = [];
  if (node.pipequant.view.dropped) items.push({ kind: "warning", text: node.pipequant.view.dropped });
  items.push(...L.backendNotes(shared.catalogue, values(node), node.pipequant.problems));
  return items;
}

export function setupBackend(node) {
  node.pipequant.view = new BackendView();
  chainCallback(widget(node, "backend"), () => applyBackend(node, true));
  chainCallback(widget(node, "quant_type"), () => applyBackend(node, true));
  for (const name of ["components", "options", "gguf_file"]) {
    chainCallback(widget(node, name), () => applyBackend(node, false));
  }
  hookBackendMenu(node);
  hookQuantTypeMenu(node);
  hookComponentsPicker(node);
}
