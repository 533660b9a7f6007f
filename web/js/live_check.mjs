// The live check: each Load node asks the server (POST /pipequant/estimate, or /validate without a
// model) whenever what its answer depends on changed (its widgets, the spec on its links, the Save
// nodes it feeds), and the problems in the answer go to the nodes at fault.
import { allNodes, nodesOf, snapshot } from "./graph.mjs";
import * as L from "./logic.mjs";
import { postJSON, shared } from "./server.mjs";
import { contentChanged } from "./size.mjs";
import { LoadCheck } from "./state.mjs";

export function setupLoad(node) {
  node.pipequant.check = new LoadCheck();
}

/** The nodes that get a live check of the model they load (Load; Plan Quality Check). */
function checkedNodes() {
  return L.CHECKED_NODES.flatMap((type) => nodesOf(type));
}

async function ask(node, request) {
  const check = node.pipequant.check;
  check.status = check.answer ? "" : "checking…";
  const estimate = request.model && node.comfyClass === L.LOAD; // the Quality Check loads its own copies
  await check.poll.send(L.requestKey(request), async () => {
    try {
      const { ok, body } = await postJSON(estimate ? "/pipequant/estimate" : "/pipequant/validate", request);
      if (ok) {
        const status = !estimate ? "" : !request.model ? "pick a model to see the memory estimate"
          : !body.estimate ? "no estimate until the problems marked in red are fixed" : "";
        return { answer: body, status };
      }
      const problems = (body.problems ?? []).map((p) => ({ ...p, node: null, input: p.field }));
      return { answer: { problems, estimate: null }, status: body.error ?? "the server refused the request" };
    } catch (err) {
      return { answer: null, status: `estimate unavailable: ${err?.message ?? err}` };
    }
  }, ({ answer, status }) => {
    check.answer = answer;
    check.status = status;
    distributeProblems();
    contentChanged(node);
  });
}

/** Put each problem of every Load node's answer (and the editor's own, `extra`) on its node. */
export function distributeProblems(extra = shared.extraProblems ?? []) {
  const answers = checkedNodes().map((n) => ({ loadId: String(n.id), problems: n.pipequant.check.answer?.problems ?? [] }));
  const byNode = L.problemsByNode([...answers, ...extra]);
  for (const node of allNodes()) {
    if (!node.pipequant) continue;
    const problems = byNode[String(node.id)] ?? [];
    const key = JSON.stringify(problems);
    if (key === node.pipequant.problemsKey) continue;
    node.pipequant.problemsKey = key;
    node.pipequant.problems = problems;
    contentChanged(node);
  }
}

function requestFor(snap, node) {
  try {
    const make = node.comfyClass === L.QUALITY ? L.qualityRequest : L.loadRequest;
    return { request: make(snap, String(node.id), shared.catalogue), key: null };
  } catch (err) {
    return { request: null, key: "unknown", why: err.message };
  }
}

/** One tick for every Load node: ask where the request changed and settled. */
export function tickLoads(snap = snapshot()) {
  for (const node of checkedNodes()) {
    const check = node.pipequant.check;
    const { request, why } = requestFor(snap, node);
    if (!request) {
      if (check.poll.key !== "unknown") {
        check.poll.reset("unknown");
        check.answer = null;
        check.status = `no live check: ${why}`;
        distributeProblems();
        contentChanged(node);
      }
      continue;
    }
    if (check.poll.due(L.requestKey(request))) ask(node, request);
  }
  // Problems of Load nodes that were deleted go with them.
  const loads = new Set(checkedNodes().map((n) => String(n.id)));
  const removed = shared.loads && [...shared.loads].some((id) => !loads.has(id));
  shared.loads = loads;
  if (removed) distributeProblems();
}

/** The Load node's panel lines after its problems: the estimate, the status, refused folders. */
export function loadItems(node) {
  const check = node.pipequant.check;
  const items = [...L.estimateRows(check.answer?.estimate, shared.catalogue)];
  if (check.status) items.push({ kind: "muted", text: check.status });
  for (const r of shared.catalogue?.editor?.refused ?? []) {
    items.push({ kind: "muted", text: `not listed: ${r.name} — ${r.reason}` });
  }
  return items;
}

/** True when every Load node's answer is for what the graph holds now (the browser test waits on it). */
export function settled() {
  if (!shared.catalogue) return false;
  const snap = snapshot();
  return checkedNodes().every((node) => {
    const { request } = requestFor(snap, node);
    return node.pipequant.check.poll.settled(request ? L.requestKey(request) : "unknown");
  });
}
