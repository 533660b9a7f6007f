// Auto Quantization Plan: show the plan and its predicted peak on the node before Run.
// It asks POST /pipequant/plan (routes.py) whenever the node's inputs change and draws the answer;
// every rule stays in the resolver (resolver/planner/).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE = "PipeQuantAutoPlan";
const INPUTS = ["model", "budget_gb", "goal", "width", "height", "batch_size", "allow_offload"];
const SETTLE_MS = 400;
const LINE_H = 15;
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
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "pipequant.autoplan",
  nodeCreated(node) {
    if (node.comfyClass !== NODE) return;
    node.pipequantPlan = { key: null, seq: 0, lines: ["planning…"], timer: null };
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      draw?.apply(this, arguments);
      if (this.flags?.collapsed) return;
      const lines = this.pipequantPlan.lines;
      const top = this.size[1] - lines.length * LINE_H - 6;
      ctx.save();
      ctx.font = "12px monospace";
      lines.forEach((line, i) => {
        ctx.fillStyle = line.startsWith("✗") ? "#ff7b72" : i === 0 ? "#ffffff" : "#d0d0d0";
        ctx.fillText(line, 10, top + (i + 1) * LINE_H);
      });
      ctx.restore();
    };
    const tick = () => {
      refresh(node).catch(() => {});
      const want = 270 + node.pipequantPlan.lines.length * LINE_H;
      if (node.size[1] < want) node.setSize([Math.max(node.size[0], 420), want]);
    };
    node.pipequantPlan.timer = setInterval(tick, SETTLE_MS);
    const removed = node.onRemoved;
    node.onRemoved = function () {
      clearInterval(this.pipequantPlan.timer);
      return removed?.apply(this, arguments);
    };
  },
});
