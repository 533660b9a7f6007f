// Widgets the extension draws itself (info panels), on the canvas and in Nodes 2.0.
// Nodes 2.0 (frontend 1.58's Vue nodes) draws each node as HTML; a drawn widget there gets its own
// small canvas (WidgetLegacy.vue), redrawn through `widget.triggerDraw()` and sized from
// `computedHeight` when that is set, else from `computeSize(width)`.

export function vueMode() {
  return globalThis.LiteGraph?.vueNodesMode === true;
}

/**
 * Add `widget` (with computeSize and draw) to `node` and return what was added: 1.58 adds a copy
 * of the object. On the copy, `computedHeight` is what the canvas layout set there, and in Nodes
 * 2.0 the height computeSize gives now: the canvas layout sets it at another width and time, which
 * would cut the widget's last lines off.
 */
export function addDrawnWidget(node, widget) {
  const added = node.addCustomWidget(widget) ?? widget;
  let canvasHeight = added.computedHeight;
  Object.defineProperty(added, "computedHeight", {
    get: () => (vueMode() ? Math.max(0, added.computeSize()[1]) : canvasHeight),
    set: (value) => { canvasHeight = value; },
    enumerable: true, configurable: true,
  });
  return added;
}
