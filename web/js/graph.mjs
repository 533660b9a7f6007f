// The graph as plain data (see logic.mjs) and small lookups on the live graph.
import { app } from "../../../scripts/app.js";
import * as L from "./logic.mjs";

function linkOf(graph, id) {
  const links = graph._links ?? graph.links;
  return links?.get?.(id) ?? links?.[id] ?? null;
}

/** {id: {id, type, mode, widgets, inputs: {name: source id}, outputs: [{target, input}]}}. */
export function snapshot(graph = app.graph) {
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

export function allNodes() {
  return app.graph?._nodes ?? app.graph?.nodes ?? [];
}

/** The pack's nodes of one type (those this extension set up). */
export function nodesOf(type) {
  return allNodes().filter((n) => n.pipequant && n.comfyClass === type);
}

export const widget = (node, name) => node.widgets?.find((w) => w.name === name);

/** A Nodes 2.0 node's element, or null (on the canvas, or not rendered yet). */
export function nodeElement(node) {
  return document.querySelector(`[data-node-id="${CSS.escape(String(node.id))}"]`);
}

/** The model a node's output reaches (the first Load node downstream), or null. */
export function modelFor(node, options) {
  return L.modelFed(snapshot(), String(node.id), options);
}

/** Run `after(...args)` after a widget's own callback. */
export function chainCallback(w, after) {
  if (!w) return;
  const previous = w.callback;
  w.callback = function (...args) {
    const result = previous?.apply(this, args);
    after(...args);
    return result;
  };
}
