// Auto Quantization Plan: show the plan and its predicted peak on the node before Run, and flag
// a plan that feeds a Load node loading another model (the plan was sized for its own model).
// It asks POST /pipequant/plan (routes.py) when the node's inputs change; every rule stays in the
// resolver (resolver/decide/planner/). The panel, the polling, the requests and the sizing are
// the editor's own (panel.mjs, poll.mjs, server.mjs, size.mjs).
import { app } from "../../../scripts/app.js";
import { nodesOf, widget } from "./graph.mjs";
import * as L from "./logic.mjs";
import { addPanel, problemItems } from "./panel.mjs";
import { postJSON } from "./server.mjs";
import { contentChanged, outlineProblems } from "./size.mjs";
import { NodeState, PlanView } from "./state.mjs";

const INPUTS = ["model", "budget_gb", "goal", "width", "height", "batch_size", "allow_offload"];
const TICK_MS = 200;
const GIB = 1024 ** 3;

function request(node) {
  return Object.fromEntries(INPUTS.filter((n) => widget(node, n)).map((n) => [n, widget(node, n).value]));
}

/** The plan's lines: the peak first, one per component (or why there is none). */
export function summary(body) {
  if (!body.ok) return [`✗ ${body.error ?? "no plan"}`];
  const lines = [`peak ${(body.predicted_peak_bytes / GIB).toFixed(2)} of ${(body.budget_bytes / GIB).toFixed(2)} GiB`
    + ` · offload ${body.offload} · ${body.dtype} (estimate)`];
  for (const [name, c] of Object.entries(body.components ?? {})) {
    const what = c.backend ? `${c.backend} ${c.quant_type}` : "unquantized";
    lines.push(`${name}: ${what} · ${(c.predicted_bytes / GIB).toFixed(2)} GiB`);
  }
  return lines;
}

function itemsOf(node) {
  const lines = node.pipequant.plan.lines;
  const failed = lines[0]?.startsWith("✗");
  return [
    ...problemItems(node.pipequant.problems),
    ...lines.map((text, i) => ({ kind: failed ? "error" : i === 0 ? "total" : "row", text, mono: true })),
  ];
}

function tickPlan(node) {
  const plan = node.pipequant.plan;
  const body = request(node);
  const key = JSON.stringify(body);
  if (key !== plan.poll.key && plan.lines[0] !== "planning…") {
    plan.lines = ["planning…"]; // the old plan is not shown for the new inputs
    contentChanged(node);
  }
  if (!plan.poll.due(key)) return;
  plan.poll.send(key, async () => {
    try {
      const { status, body: answer } = await postJSON("/pipequant/plan", body);
      return answer?.ok !== undefined ? answer : { ok: false, error: answer?.error ?? `HTTP ${status}` };
    } catch (err) {
      return { ok: false, error: `plan unavailable: ${err?.message ?? err}` };
    }
  }, (answer) => {
    plan.lines = summary(answer);
    contentChanged(node);
  });
}

app.registerExtension({
  name: "pipequant.autoplan",
  async setup() {
    setInterval(() => {
      try {
        for (const node of nodesOf(L.AUTO_PLAN)) tickPlan(node);
      } catch (err) {
        console.error("[PipeQuant]", err);
      }
    }, TICK_MS);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== L.AUTO_PLAN) return;
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      if (this.pipequant) this.pipequant.fittedH = null; // loaded: keep the saved size
      return result;
    };
  },
  nodeCreated(node) {
    if (node.comfyClass !== L.AUTO_PLAN || node.pipequant) return;
    node.pipequant = new NodeState(L.AUTO_PLAN);
    node.pipequant.plan = new PlanView();
    node.pipequant.panel = addPanel(node, itemsOf, () => "");
    outlineProblems(node);
  },
});
