// PipeQuant graph-editor extension: backend-aware widgets, component pickers, live validation and
// the memory estimate, on the canvas and in Nodes 2.0. It asks the server (nodes/routes.py) and
// presents the answer; every rule stays in the resolver. This file registers the extension and
// sets each of the pack's nodes up; the jobs live in their modules:
//   server.mjs      requests, the backend catalogue, each model's components
//   graph.mjs       the graph as plain data, lookups
//   state.mjs       what is kept on each node (node.pipequant), declared
//   poll.mjs        when to ask the server again (tested)
//   live_check.mjs  the Load nodes' live check; problems go to the nodes at fault
//   backend_node.mjs the Quantization Backend's widgets
//   menus.mjs       menus and pickers
//   panel.mjs       the drawn info panel
//   size.mjs        node sizes, hidden widgets, the red outline
//   logic.mjs       the pure rules of what is shown (tested: node --test web/tests)
// Served at /extensions/<pack>/js/pipequant.js, hence three levels up to /scripts.
import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";
import { backendItems, setupBackend, tickBackend } from "./backend_node.mjs";
import { vueMode } from "./drawn.mjs";
import { allNodes, chainCallback, nodesOf, snapshot, widget } from "./graph.mjs";
import { distributeProblems, loadItems, settled, setupLoad, tickLoads } from "./live_check.mjs";
import * as L from "./logic.mjs";
import { hookComponentPicker } from "./menus.mjs";
import { MARGIN, addPanel, measure, problemItems } from "./panel.mjs";
import { componentsNow, getComponents, loadCatalogue, refreshCatalogue, shared } from "./server.mjs";
import { addStyles, contentChanged, followElement, markProblems, outlineProblems, redraw, setHidden } from "./size.mjs";
import { NodeState } from "./state.mjs";

const TICK_MS = 300; // how often the graph is compared with what the server last answered
const REPORT = "PipeQuantMemoryReport";
const REPORT_MONO_PX = 11; // never smaller: a number must stay legible (Nodes 2.0 included)
const REPORT_MIN_WIDTH = 420; // a new report node grows to this; wider shows more columns

function mapItems(node) {
  const st = node.pipequant;
  const name = String(widget(node, "component")?.value ?? "").trim();
  if (!st.model) return [{ kind: "muted", text: "no model connected: type the component name" }];
  const desc = componentsNow(st.model, () => redraw());
  const c = desc?.components?.find((x) => x.name === name);
  if (c) return [{ kind: "note", text: `${c.name} — ${c.class} · ${L.diskSize(c)} · ${L.formatParams(c.params)} params` }];
  return desc ? [{ kind: "muted", text: `click "component" to pick one of ${st.model}'s components` }] : [];
}

/** Memory Report / Save: what the node returned when it ran (the report's table laid out for the width). */
function outputItems(node, width) {
  const st = node.pipequant;
  if (st.table) {
    const mono = (t) => measure(t, false, true, REPORT_MONO_PX);
    const inner = Math.max(40, width - 2 * MARGIN - 8);
    const { natural, lines } = L.reportLines(st.table, inner, mono);
    st.minWidth = Math.min(REPORT_MIN_WIDTH, Math.ceil(natural + 2 * MARGIN + 12));
    const notes = [...(st.table.notes ?? []).map((n) => `note: ${n}`), st.table.legend].filter(Boolean);
    return [{ lines: lines.map((l) => ({ ...l, monoPx: REPORT_MONO_PX })) }, ...notes.map((text) => ({ kind: "muted", text }))];
  }
  return (st.output ?? "").split("\n").filter((t, i) => st.output && (t || i)).map((text) => ({ kind: "row", text, mono: true }));
}

function itemsOf(node, width) {
  const items = problemItems(node.pipequant.problems);
  const type = node.comfyClass;
  if (type === L.BACKEND) items.push(...backendItems(node));
  else if (type === L.MAP) items.push(...mapItems(node));
  else if (type === L.LOAD) items.push(...loadItems(node));
  else if (type === L.SAMPLER) items.push(...samplerItems(node));
  else if (type === L.QUALITY) items.push(...(node.pipequant.check.status ? [{ kind: "muted", text: node.pipequant.check.status }] : []));
  else items.push(...outputItems(node, width));
  return items;
}

function keyOf(node) {
  const st = node.pipequant;
  const content = node.comfyClass === L.LOAD ? "" : JSON.stringify(node.widgets?.map((w) => w.value));
  return `${shared.catalogue ? 1 : 0}|${st.model ?? ""}|${shared.components.get(st.model)?.value ? 1 : 0}|${content}`;
}

function setupNode(node) {
  if (node.pipequant || !L.PACK_NODES.includes(node.comfyClass)) return;
  node.pipequant = new NodeState(node.comfyClass);
  if (!L.PANEL_NODES.includes(node.comfyClass)) return;
  node.pipequant.panel = addPanel(node, itemsOf, keyOf);
  outlineProblems(node);
  if (node.comfyClass === L.BACKEND) setupBackend(node);
  if (node.comfyClass === L.MAP) {
    hookComponentPicker(node);
    chainCallback(widget(node, "component"), () => contentChanged(node));
  }
  if (L.CHECKED_NODES.includes(node.comfyClass)) setupLoad(node);
}

/** A Map shows its component's facts: follow the model it feeds. */
function tickMaps(snap) {
  for (const node of nodesOf(L.MAP)) {
    const model = L.modelFed(snap, String(node.id));
    if (model === node.pipequant.model) continue;
    node.pipequant.model = model;
    if (model) getComponents(model).then(() => contentChanged(node), () => {});
    contentChanged(node);
  }
}

function nodeById(id) {
  return app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id));
}

/** A Sampler shows num_frames / fps only where its pipeline uses them (a video pipeline; fps where
 * it takes a frame rate), as the Load node's live check says; all of them while that is unknown. */
function tickSamplers(snap) {
  for (const node of nodesOf(L.SAMPLER)) {
    const loadId = L.loadFeeding(snap, String(node.id), shared.catalogue);
    const answer = loadId === null ? null : nodeById(loadId)?.pipequant?.check?.answer;
    const shown = L.videoInputsShown(shared.catalogue, answer);
    let changed = false;
    for (const [name, show] of Object.entries(shown)) {
      const w = widget(node, name);
      if (w) changed = setHidden(w, !show) || changed;
    }
    const hidden = Object.keys(shown).filter((name) => !shown[name]);
    const pipeline = answer?.pipeline?.class ?? "this pipeline";
    const why = hidden.length === Object.keys(shown).length ? `${pipeline} renders images` : `${pipeline} does not take it`;
    const note = hidden.length ? `${hidden.join(", ")}: not used (${why})` : "";
    if (note !== node.pipequant.note) {
      node.pipequant.note = note;
      changed = true;
    }
    if (changed) contentChanged(node, true);
  }
}

function samplerItems(node) {
  return node.pipequant.note ? [{ kind: "muted", text: node.pipequant.note }] : [];
}

/** Problems the editor finds in the graph itself (not the server): an Auto plan made for another
 * model than the Load node's. They join the live check's (distributeProblems) when they change. */
function tickEditorProblems(snap) {
  const extra = L.planMismatches(snap);
  const key = JSON.stringify(extra);
  if (key === shared.extraKey) return;
  shared.extraKey = key;
  shared.extraProblems = extra;
  distributeProblems();
}

/** A Save node's folder_name follows the plan it saves while it is the name the plan suggested
 * (a template's "FLUX.1-dev-nf4" becomes "FLUX.1-dev-int8_weight_only" on a switch to torchao);
 * a name the user typed stays. */
function tickSaveNames(snap) {
  for (const load of nodesOf(L.LOAD)) {
    let name;
    try {
      name = L.saveNameFor(L.loadRequest(snap, String(load.id), shared.catalogue));
    } catch {
      continue;
    }
    if (!name) continue;
    for (const id of L.savesFed(snap, String(load.id))) {
      const save = app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id));
      const w = save && widget(save, "folder_name");
      if (!save?.pipequant || !w || name === save.pipequant.derivedName) continue;
      if (save.pipequant.derivedName !== null && w.value === save.pipequant.derivedName) {
        w.value = name;
        w.callback?.(name);
      }
      save.pipequant.derivedName = name;
    }
  }
}

/** ComfyUI's refresh (R, or the menu) asks for the model lists again: the catalogue too, which
 * says which folders were left out of them and why (not only after a page reload). */
function followRefresh() {
  const refresh = app.refreshComboInNodes;
  if (typeof refresh !== "function") return;
  app.refreshComboInNodes = async function (...args) {
    const result = await refresh.apply(this, args);
    refreshCatalogue(() => {
      recheck();
      for (const node of allNodes()) if (node.pipequant) contentChanged(node);
    });
    return result;
  };
}

/** Ask every live check again (Load, Quality Check): a run may have taken a Save name (or freed memory). */
function recheck() {
  for (const type of L.CHECKED_NODES) for (const node of nodesOf(type)) node.pipequant.check.poll.reset();
}

function tick() {
  if (!allNodes().some((n) => n.pipequant)) return;
  if (!shared.catalogue) {
    loadCatalogue();
    return;
  }
  for (const node of nodesOf(L.BACKEND)) tickBackend(node);
  const snap = snapshot();
  tickLoads(snap);
  tickMaps(snap);
  tickSamplers(snap);
  tickEditorProblems(snap);
  tickSaveNames(snap);
  if (vueMode()) {
    for (const node of allNodes()) {
      if (!node.pipequant) continue;
      markProblems(node); // elements come and go
      followElement(node);
    }
  }
}

app.registerExtension({
  name: "pipequant.editor",
  async setup() {
    addStyles();
    loadCatalogue();
    // Every Run: when it is queued (a refused one too: its red outline then gets its message) and
    // when it ends (a Save took its name).
    for (const event of ["execution_success", "execution_error", "execution_interrupted"]) api.addEventListener(event, recheck);
    const queuePrompt = api.queuePrompt;
    api.queuePrompt = function (...args) {
      const queued = queuePrompt.apply(this, args); // returned as is: its errors stay ComfyUI's
      Promise.resolve(queued).then(recheck, recheck);
      return queued;
    };
    followRefresh();
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
        this.pipequant.table = this.comfyClass === REPORT ? message.table?.[0] ?? null : null;
        this.pipequant.expanded = false;
        contentChanged(this);
      }
      return result;
    };
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      const st = this.pipequant;
      if (st) {
        // Loaded or pasted: keep the saved size and values; the next tick re-applies the view.
        st.fittedH = null;
        if (st.view) {
          st.view.visibilityKey = null;
          st.view.optionKey = null;
        }
      }
      return result;
    };
  },
  nodeCreated(node) {
    setupNode(node);
  },
  afterConfigureGraph() {
    recheck(); // a loaded graph is checked as the server's folders are now
  },
});

// For the browser test and for debugging from the console.
globalThis.pipequant = { shared, snapshot, settled, logic: L, tick, vueMode, distributeProblems, contentChanged };
