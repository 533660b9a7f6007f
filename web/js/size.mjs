// The size of the pack's nodes: hidden widgets take no room, a node grows to its content (and
// shrinks back only if it was sized by us), pushes the nodes below it down, and in Nodes 2.0
// follows its element, which lays widgets out taller than the canvas counts them.
import { app } from "../../../scripts/app.js";
import { vueMode } from "./drawn.mjs";
import { allNodes, nodeElement } from "./graph.mjs";
import { AUTO } from "./state.mjs";

const GAP = 20; // kept between a grown node and the nodes below it

function titleHeight() {
  return globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
}

/** Hide or show a widget; its value stays (and is still sent). True if it changed. */
export function setHidden(w, hidden) {
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

/** Redraw the drawn widgets of `node` (all the pack's nodes without one) and their outline. */
export function redraw(node) {
  const nodes = node ? [node] : allNodes().filter((n) => n.pipequant);
  for (const n of nodes) {
    for (const w of n.widgets ?? []) {
      if (w.pipequantDrawn && w.triggerDraw) w.triggerDraw();
    }
    markProblems(n);
  }
  app.graph?.setDirtyCanvas(true, true);
}

/** The content of a node's panel changed: lay it out again and fit the node to it. */
export function contentChanged(node, exact = false) {
  node.pipequant.version++;
  node.pipequant.layoutKey = null;
  fit(node, exact);
}

/** Grow the node to fit its widgets; shrink it only if it was sized by us (not by the user). A
 * node that grows pushes the nodes just below it down, so that it never covers them. */
export function fit(node, exact = false) {
  const st = node.pipequant;
  const [minW, canvasH] = node.computeSize();
  const minH = canvasH + (vueMode() ? st.vueExtra : 0);
  const [w0, h] = node.size;
  const shrink = exact || st.fittedH === AUTO || st.fittedH === h;
  const target = shrink || h < minH ? minH : h;
  const width = Math.max(w0, minW, st.minWidth ?? 0);
  if (target !== h || width !== w0) {
    node.setSize([width, target]);
    if (target > h && st.fittedH !== AUTO) makeRoom(node, target);
  }
  if (target === minH) st.fittedH = target;
  redraw(node);
}

/** Push the nodes under `node` (overlapping it across) down below its new height. "Under": starting
 * lower than its top, so that a file laid out for smaller nodes (a node already reaching into the
 * one below) opens pushed apart too. */
export function makeRoom(node, newH) {
  const [x, y] = node.pos;
  const right = x + node.size[0];
  const grownBottom = y + newH + GAP;
  for (const other of allNodes()) {
    if (other === node) continue;
    const [ox, oy] = other.pos;
    const below = oy > y + 1;
    const overlapsX = ox < right && ox + other.size[0] > x;
    if (below && overlapsX && oy - titleHeight() < grownBottom) other.pos[1] += grownBottom - (oy - titleHeight());
  }
}

/** Nodes 2.0 lays widgets out as HTML, taller than the canvas's computeSize counts them: the
 * node's element grows past its size (a min-height), while the graph keeps the old box, so a grown
 * panel ends below the node's edge and over the nodes under it. The size follows the element
 * (pushing those nodes down), and the difference is kept so that the next fit starts from it. */
export function followElement(node) {
  const el = nodeElement(node);
  if (!el || node.flags?.collapsed) return;
  const st = node.pipequant;
  const needed = el.offsetHeight - titleHeight();
  const h = node.size[1];
  if (needed <= h + 1) return;
  st.vueExtra = Math.max(0, needed - node.computeSize()[1]);
  node.setSize([node.size[0], needed]);
  if (st.fittedH !== AUTO) makeRoom(node, needed);
  st.fittedH = needed;
}

/** The red outline of a node with errors. On the canvas it is a stroke style (outlineProblems); a
 * Vue node's outline comes from the execution-error store, which is for Run's errors, so the live
 * check's outline is set on the node's element itself. */
export function markProblems(node) {
  if (!vueMode()) return;
  const el = nodeElement(node);
  if (!el) return;
  el.classList.toggle("pipequant-has-error", hasErrors(node));
}

export function hasErrors(node) {
  return !!node.pipequant?.problems?.some((p) => p.severity !== "warning");
}

/** The canvas outline: a stroke style, red while the node has errors. */
export function outlineProblems(node) {
  node.strokeStyles ??= {};
  node.strokeStyles.pipequantProblem = function () {
    if (hasErrors(this)) return { color: "#ff5a4f" };
  };
}

export function addStyles() {
  if (document.getElementById("pipequant-styles")) return;
  const style = document.createElement("style");
  style.id = "pipequant-styles";
  style.textContent = `
    .litemenu-entry.pipequant-unavailable { color: #e3b341 !important; }
    .pipequant-has-error { outline: 3px solid #ff5a4f; outline-offset: 2px; border-radius: 8px; }
  `;
  document.head.append(style);
}
