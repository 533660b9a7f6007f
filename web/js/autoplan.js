// Auto Quantization Plan: show the plan and its predicted peak on the node before Run.
// It asks POST /pipequant/plan (routes.py) whenever the node's inputs change and draws the answer;
// every rule stays in the resolver (resolver/planner/).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { addDrawnWidget, vueMode } from "./drawn.mjs";
import { wrapText } from "./logic.mjs";

const NODE = "PipeQuantAutoPlan";
const INPUTS = ["model", "budget_gb", "goal", "width", "height", "batch_size", "allow_offload"];
const SETTLE_MS = 400;
const LINE_H = 15;
const PAD = 5;
const MIN_WIDTH = 340; // the template's; longer lines wrap
const FONT = "12px monospace";
let measureCtx = null;
const GIB = 1024 ** 3;

function request(node) {
  const out = {};
  for (const name of INPUTS) {
    const w = node.widgets?.find((x) => x.name === name);
    if (w) out[name] = w.value;
  }
  return out;
}

function summary(body) {
  if (!body) return ["planning…"];
  if (!body.ok) return [`✗ ${body.error ?? "no plan"}`];
  const lines = [`peak ${(body.predicted_peak_bytes / GIB).toFixed(2)} of ${(body.budget_bytes / GIB).toFixed(2)} GiB`
    + ` · offload ${body.offload} · ${body.dtype} (estimate)`];
  for (const [name, c] of Object.entries(body.components ?? {})) {
    const what = c.backend ? `${c.backend} ${c.quant_type}` : "unquantized";
    lines.push(`${name}: ${what} · ${(c.predicted_bytes / GIB).toFixed(2)} GiB`);
  }
  return lines;
}

async function refresh(node) {
  const st = node.pipequantPlan;
  const key = JSON.stringify(request(node));
  if (key === st.key) return;
  st.key = key;
  const seq = ++st.seq;
  let body;
  try {
    const res = await api.fetchApi("/pipequant/plan", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: key,
    });
    body = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
  } catch (err) {
    body = { ok: false, error: `plan unavailable: ${err?.message ?? err}` };
  }
  if (seq !== st.seq) return; // a newer request was sent meanwhile
  st.lines = summary(body);
  grow(node);
  st.panel.triggerDraw?.(); // Nodes 2.0
  node.setDirtyCanvas(true, true);
}

/** The node grows to hold the plan (never shrinks below the size it was given). */
function grow(node) {
  const [w, h] = node.computeSize();
  const want = [Math.max(node.size[0], w, MIN_WIDTH), Math.max(node.size[1], h)];
  if (want[0] !== node.size[0] || want[1] !== node.size[1]) {
    node.setSize(want);
    node.setDirtyCanvas(true, true);
  }
}

/** The plan's lines wrapped to `width` (a long line breaks at its spaces, or anywhere). */
function wrapped(lines, width) {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  measureCtx.font = FONT;
  return lines.flatMap((line) => wrapText(line, Math.max(40, width - 20), (t) => measureCtx.measureText(t).width));
}

/** The plan, drawn as the node's last widget: the canvas lays it out below the inputs, and Nodes
 * 2.0 draws it too (a node's own foreground drawing shows on the canvas only). */
function addPlanPanel(node) {
  return addDrawnWidget(node, {
    name: "pipequant_plan",
    type: "pipequant_plan",
    value: "",
    y: 0,
    serialize: false,
    options: { serialize: false },
    computeSize() {
      // The width it is drawn at: the node's on the canvas, its element's in Nodes 2.0.
      const width = (vueMode() && this?.width) || node.size[0];
      return [MIN_WIDTH, wrapped(node.pipequantPlan.lines, width).length * LINE_H + 2 * PAD];
    },
    draw(ctx, _node, width, y) {
      const lines = wrapped(node.pipequantPlan.lines, width);
      const first = wrapped(node.pipequantPlan.lines.slice(0, 1), width).length;
      ctx.save();
      ctx.beginPath();
      ctx.rect(0, y, width, lines.length * LINE_H + 2 * PAD);
      ctx.clip();
      ctx.font = FONT;
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      const failed = node.pipequantPlan.lines[0]?.startsWith("✗");
      lines.forEach((line, i) => {
        ctx.fillStyle = failed ? "#ff7b72" : i < first ? "#ffffff" : "#d0d0d0";
        ctx.fillText(line, 10, y + PAD + i * LINE_H + LINE_H / 2);
      });
      ctx.restore();
    },
  });
}

app.registerExtension({
  name: "pipequant.autoplan",
  nodeCreated(node) {
    if (node.comfyClass !== NODE) return;
    node.pipequantPlan = { key: null, seq: 0, lines: ["planning…"], timer: null, panel: null };
    node.pipequantPlan.panel = addPlanPanel(node);
    const tick = () => {
      refresh(node).catch(() => {});
      grow(node); // a resize that wraps more lines
    };
    node.pipequantPlan.timer = setInterval(tick, SETTLE_MS);
    const removed = node.onRemoved;
    node.onRemoved = function () {
      clearInterval(this.pipequantPlan.timer);
      return removed?.apply(this, arguments);
    };
  },
});
