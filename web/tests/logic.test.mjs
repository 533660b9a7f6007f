// node --test web/tests — the editor's pure logic, against the catalogue the server serves
// (fixtures/catalogue.json; tests/test_routes.py checks that it still matches the resolver's).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as L from "../js/logic.mjs";

const catalogue = JSON.parse(readFileSync(new URL("./fixtures/catalogue.json", import.meta.url)));
const values = (backend, quant_type, extra = {}) =>
  ({ backend, quant_type, compute_dtype: "auto", components: "", options: "{}", gguf_file: "none", ...extra });

test("quant_type lists only the chosen backend's types", () => {
  assert.deepEqual(L.quantTypeNames(catalogue, "bitsandbytes_4bit"), ["nf4", "fp4"]);
  assert.deepEqual(L.quantTypeNames(catalogue, "gguf"), ["from_file"]);
  assert.ok(L.quantTypeNames(catalogue, "torchao").includes("int8_weight_only"));
  assert.ok(!L.quantTypeNames(catalogue, "torchao").includes("nf4"));
  assert.deepEqual(L.quantTypeNames(catalogue, "no-such-backend"), []);
  assert.deepEqual(L.quantTypeNames(null, "torchao"), []);
});

test("switching backend keeps a quant type the new backend has, else takes its first", () => {
  assert.equal(L.nextQuantType(catalogue, "torchao", "nf4"), "int8_weight_only");
  assert.equal(L.nextQuantType(catalogue, "quanto", "int4"), "int4");
  assert.equal(L.nextQuantType(catalogue, "gguf", "int8"), "from_file");
  assert.equal(L.nextQuantType(catalogue, "unknown", "int8"), "int8");
});

test("which options a quant type takes", () => {
  const names = (b, q) => L.applicableOptions(catalogue, b, q).map((o) => o.name);
  assert.deepEqual(names("bitsandbytes_4bit", "nf4"), ["double_quant", "modules_to_not_convert"]);
  assert.deepEqual(names("torchao", "int4_weight_only"), ["group_size", "modules_to_not_convert"]);
  assert.deepEqual(names("torchao", "float8_dynamic"), ["granularity", "modules_to_not_convert"]);
  assert.deepEqual(names("torchao", "int8_weight_only"), ["modules_to_not_convert"]);
  assert.deepEqual(names("gguf", "from_file"), []);
  assert.deepEqual(names("torchao", "not-a-type"), ["group_size", "granularity", "modules_to_not_convert"]);
});

test("widgets shown per backend come from the catalogue's data", () => {
  const nf4 = L.backendWidgetVisibility(catalogue, values("bitsandbytes_4bit", "nf4"));
  assert.deepEqual(nf4, { backend: true, quant_type: true, compute_dtype: true, components: true, options: true, gguf_file: false });
  const gguf = L.backendWidgetVisibility(catalogue, values("gguf", "from_file"));
  assert.deepEqual(gguf, { backend: true, quant_type: true, compute_dtype: true, components: false, options: false, gguf_file: true });
  const ao = L.backendWidgetVisibility(catalogue, values("torchao", "int8_weight_only", { options: "" }));
  assert.equal(ao.options, true);
  assert.equal(ao.gguf_file, false);
});

test("a widget that does not apply but holds a value stays visible, so its problem can be fixed", () => {
  const v = L.backendWidgetVisibility(catalogue,
    values("gguf", "from_file", { components: "transformer", options: '{"double_quant": true}' }));
  assert.equal(v.components, true);
  assert.equal(v.options, true);
  assert.equal(L.backendWidgetVisibility(catalogue, values("gguf", "from_file", { options: "{ }" })).options, false);
  assert.equal(L.backendWidgetVisibility(catalogue, values("gguf", "from_file", { options: "{oops" })).options, true);
  const file = L.backendWidgetVisibility(catalogue, values("torchao", "int8_weight_only", { gguf_file: "a.gguf" }));
  assert.equal(file.gguf_file, true);
});

test("an unknown backend (or no catalogue yet) hides nothing", () => {
  assert.ok(Object.values(L.backendWidgetVisibility(catalogue, values("mystery", "x"))).every(Boolean));
  assert.ok(Object.values(L.backendWidgetVisibility(null, values("gguf", "from_file"))).every(Boolean));
});

test("options template and help list names, types and defaults", () => {
  const options = L.applicableOptions(catalogue, "bitsandbytes_4bit", "nf4");
  assert.equal(L.optionsTemplate(options), '{"double_quant":false,"modules_to_not_convert":[]}');
  const help = L.optionsHelp(L.applicableOptions(catalogue, "torchao", "int4_weight_only"));
  assert.match(help[0], /^group_size \(32 \| 64 \| 128 \| 256, default 128\): /);
  assert.match(help[1], /^modules_to_not_convert \(list of names, default \[\]\)/);
  const threshold = L.optionsHelp(L.applicableOptions(catalogue, "bitsandbytes_8bit", "int8"))[0];
  assert.match(threshold, /^llm_int8_threshold \(float 0–100, default 6\)/);
});

test("backends that are not installed are marked with their install line", () => {
  const menu = L.backendMenu(catalogue);
  assert.deepEqual(menu.map((m) => m.value), catalogue.backends.map((b) => b.name));
  const quanto = menu.find((m) => m.value === "quanto");
  assert.equal(quanto.installed, false);
  assert.equal(quanto.label, "quanto — not installed: pip install optimum-quanto · deprecated");  // the catalogue says so (diffusers 0.42)
  assert.match(menu.find((m) => m.value === "torchao").label, /^torchao — int8_weight_only, /);
  // plain text: no markup in any entry (frontend 1.58 shows it raw)
  assert.ok(menu.every((m) => !/[<>]/.test(m.label)), menu);
  const notes = L.backendNotes(catalogue, values("quanto", "int8"));
  assert.deepEqual(notes[0], { kind: "warning", text: "optimum-quanto is not installed — pip install optimum-quanto" });
});

test("a deprecation is said once: by the server's warning when there is one, else by the catalogue", () => {
  const deprecated = (notes) => notes.filter((n) => /deprecated/.test(n.text)).length;
  assert.equal(deprecated(L.backendNotes(catalogue, values("quanto", "int8"))), 1);
  const warned = [{ code: "backend_deprecated", input: "backend", severity: "warning", message: "optimum-quanto is deprecated" }];
  assert.equal(deprecated(L.backendNotes(catalogue, values("quanto", "int8"), warned)), 0);
});

test("backend notes: the quant type's help and its options", () => {
  const notes = L.backendNotes(catalogue, values("bitsandbytes_4bit", "nf4"));
  assert.equal(notes[0].text, "NF4 (4-bit NormalFloat): Best 4-bit quality for normally distributed weights.");
  assert.equal(notes[1].text,
    "options: double_quant (true/false, default false), modules_to_not_convert (list of names, default [])");
  assert.equal(L.backendNotes(catalogue, values("gguf", "from_file")).length, 1);
  assert.equal(L.backendNotes(catalogue, values("nope", "x"))[0].kind, "warning");
  assert.deepEqual(L.backendNotes(null, values("nope", "x")), []);
});

test("sizes are formatted as the resolver's report does (1024-based)", () => {
  assert.equal(L.formatBytes(0), "0 B");
  assert.equal(L.formatBytes(1023), "1023 B");
  assert.equal(L.formatBytes(1024), "1.00 KB");
  assert.equal(L.formatBytes(6.5 * 1024 * 1024), "6.50 MB");
  assert.equal(L.formatBytes(23.8 * 1024 ** 3), "23.80 GB");
  assert.equal(L.formatBytes(2048 * 1024 ** 3), "2048.00 GB");
  assert.equal(L.formatBytes(undefined), "?");
  assert.equal(L.formatParams(11_900_000_000), "12B");
  assert.equal(L.formatParams(4_760_000_000), "4.8B");
  assert.equal(L.formatParams(123_000), "123K");
  assert.equal(L.formatParams(12), "12");
});

test("estimate rows: per component before → after, then the total", () => {
  const GB = 1024 ** 3;
  const rows = L.estimateRows({
    dtype: "bfloat16", device: "cuda",
    components: [
      { component: "transformer", action: "quantize", backend: "bitsandbytes_4bit", quant_type: "nf4", bytes_before: 23.8 * GB, bytes_after: 6.7 * GB },
      { component: "vae", action: "keep", backend: null, quant_type: null, bytes_before: 0.16 * GB, bytes_after: 0.16 * GB },
    ],
    total: { bytes_before: 23.96 * GB, bytes_after: 6.86 * GB },
  }, catalogue);
  // the title says which size this is (in memory at the load dtype, not the size on disk)
  assert.deepEqual(rows[0], { kind: "title", left: "Estimated memory", right: "in memory at bfloat16 · cuda" });
  // a narrow node keeps the plan label and drops the size before quantization
  assert.deepEqual(rows[1], { kind: "row", left: "transformer  ·  nf4", short: "23.80 GB→6.70 GB", right: "23.80 GB → 6.70 GB" }); // narrow: before stays
  assert.deepEqual(rows[2], { kind: "muted", left: "vae", short: "163.84 MB", right: "163.84 MB" });
  assert.deepEqual(rows[3], { kind: "total", left: "total", right: "23.96 GB → 6.86 GB (29%)", short: "23.96 GB→6.86 GB (29%)",
    pinned: true }); // shown however long the panel is
  assert.deepEqual(L.estimateRows(null), []);
});

const flux = {
  model: "FLUX.1-dev", pipeline_class: "FluxPipeline",
  components: [
    { name: "scheduler", class: "FlowMatchEulerDiscreteScheduler", is_module: false, params: 0, bytes: 0 },
    { name: "text_encoder_2", class: "T5EncoderModel", is_module: true, params: 4_762_310_656, bytes: 9_524_621_312,
      bytes_by_dtype: { bfloat16: 9_524_621_312 } },
    { name: "tokenizer", class: "CLIPTokenizer", is_module: false, params: 0, bytes: 0 },
    { name: "transformer", class: "FluxTransformer2DModel", is_module: true, params: 11_901_408_320, bytes: 23_802_816_640 },
  ],
};

test("the component picker lists the model's modules with class and size", () => {
  const menu = L.componentMenu(flux, ["transformer"]);
  assert.deepEqual(menu.map((m) => m.value), ["text_encoder_2", "transformer"]);
  assert.equal(menu[0].label, "text_encoder_2 — T5EncoderModel · 8.87 GB on disk (bfloat16) · 4.8B params");
  assert.equal(menu[1].label, "✓ transformer — FluxTransformer2DModel · 22.17 GB on disk · 12B params");
  assert.deepEqual(L.componentMenu(null), []);
});

test("toggling components in the Backend's comma-separated list", () => {
  assert.equal(L.toggleComponent("", "transformer"), "transformer");
  assert.equal(L.toggleComponent("transformer", "text_encoder_2"), "transformer, text_encoder_2");
  assert.equal(L.toggleComponent("transformer, text_encoder_2", "transformer"), "text_encoder_2");
  assert.deepEqual(L.splitComponents(" a,b\nc ,, "), ["a", "b", "c"]);
});

// A graph like example_workflows/FLUX per-component mix.json: two Backends, two chained Maps, Load.
function mixedGraph() {
  const node = (id, type, widgets, inputs = {}, outputs = []) => ({ id, type, mode: 0, widgets, inputs, outputs });
  return {
    1: node("1", L.BACKEND, values("bitsandbytes_4bit", "nf4", { options: '{"double_quant": true}' }), {}, [{ target: "2", input: "config" }]),
    2: node("2", L.MAP, { component: "transformer" }, { config: "1", map: null }, [{ target: "4", input: "map" }]),
    3: node("3", L.BACKEND, values("torchao", "int8_weight_only"), {}, [{ target: "4", input: "config" }]),
    4: node("4", L.MAP, { component: "text_encoder_2" }, { config: "3", map: "2" }, [{ target: "5", input: "quantization" }]),
    5: node("5", L.LOAD, { model: "FLUX.1-dev", dtype: "bfloat16", device: "auto", offload: "none" }, { quantization: "4" },
      [{ target: "6", input: "pipeline" }]),
    6: node("6", "PipeQuantSampler", {}, { pipeline: "5" }),
  };
}

test("the Load node's request follows the links through the chain of maps", () => {
  const request = L.loadRequest(mixedGraph(), "5", catalogue);
  assert.deepEqual(request, {
    model: "FLUX.1-dev", dtype: "bfloat16", device: "auto", offload: "none",
    spec: {
      kind: "map", node: "4", component: "text_encoder_2",
      config: { kind: "global", node: "3", backend: "torchao", quant_type: "int8_weight_only", compute_dtype: "auto", components: "", options: "{}", gguf_file: "none" },
      map: {
        kind: "map", node: "2", component: "transformer", map: null,
        config: { kind: "global", node: "1", backend: "bitsandbytes_4bit", quant_type: "nf4", compute_dtype: "auto", components: "", options: '{"double_quant": true}', gguf_file: "none" },
      },
    },
    consumers: [{ node: "6", type: L.SAMPLER, inputs: {} }], // it checks the model (size, frames)
  });
  assert.equal(L.requestKey(request), L.requestKey(L.loadRequest(mixedGraph(), "5", catalogue)));
});

test("reroutes and bypassed nodes are followed; muted nodes cut the link", () => {
  const g = mixedGraph();
  g[7] = { id: "7", type: "Reroute", mode: 0, widgets: {}, inputs: { "": "3" }, outputs: [] };
  g[4].inputs.config = "7";
  assert.equal(L.loadRequest(g, "5", catalogue).spec.config.node, "3");
  g[4].mode = 4; // bypassed map: its first connected input passes through
  assert.equal(L.loadRequest(g, "5", catalogue).spec.node, "3");
  g[4].mode = 2;
  assert.equal(L.loadRequest(g, "5", catalogue).spec, null);
  g[4].mode = 0;
  g[4].inputs.config = "8";
  g[8] = { id: "8", type: "SomethingElse", mode: 0, widgets: {}, inputs: {}, outputs: [] };
  assert.throws(() => L.loadRequest(g, "5", catalogue), L.UnknownSource);
});

test("a loop of links does not hang", () => {
  const g = mixedGraph();
  g[2].inputs.map = "4";
  assert.throws(() => L.loadRequest(g, "5", catalogue), /loop/);
});

test("a Load node without a model or quantization", () => {
  const g = mixedGraph();
  g[5].widgets.model = undefined;
  g[5].widgets.allow_pickle = "yes"; // sent as the graph holds it: the server refuses what is not true/false
  g[5].inputs.quantization = null;
  assert.deepEqual(L.loadRequest(g, "5", catalogue), { model: null, dtype: "bfloat16", device: "auto", offload: "none", allow_pickle: "yes", spec: null,
    consumers: [{ node: "6", type: L.SAMPLER, inputs: {} }] });
});

test("a map finds the model of the Load node it feeds, downstream through other maps", () => {
  const g = mixedGraph();
  assert.deepEqual(L.loadsFed(g, "2"), ["5"]);
  assert.equal(L.modelFed(g, "2"), "FLUX.1-dev");
  assert.equal(L.modelFed(g, "1"), "FLUX.1-dev");
  assert.equal(L.modelFed(g, "1", { throughMaps: false }), null); // a Backend feeding a map lists no components
  g[3].outputs = [{ target: "5", input: "quantization" }];
  assert.equal(L.modelFed(g, "3", { throughMaps: false }), "FLUX.1-dev");
  g[4].outputs = [];
  assert.equal(L.modelFed(g, "2"), null); // not connected: free text
});

test("problems go to the node they name, the rest to the Load node, once each", () => {
  const p = (node, code) => ({ node, code, input: "x", message: code, severity: "error" });
  const by = L.problemsByNode([
    { loadId: "5", problems: [p("1", "unknown_option"), p(null, "model_not_found"), p("4", "unknown_component")] },
    { loadId: "9", problems: [p("1", "unknown_option"), p(null, "dtype_unknown")] },
  ]);
  assert.deepEqual(Object.keys(by).sort(), ["1", "4", "5", "9"]);
  assert.equal(by["1"].length, 1);
  assert.equal(by["5"][0].code, "model_not_found");
  assert.equal(by["9"][0].code, "dtype_unknown");
});

// An answer of POST /pipequant/validate as routes.py gives it (copied from a real one): one
// Backend (node 1) shared by two chained Maps (2: "transfomer", a typo; 3: text_encoder_2), the
// Load node asked with dtype "float8".
const SHARED_ANSWER = [
  { code: "dtype_unknown", node: null, input: "dtype", part: "load", entry: null, message: 'unknown dtype "float8"', severity: "error" },
  { code: "unknown_component", node: "2", input: "component", part: "map", entry: "transfomer", message: 'FluxPipeline has no component "transfomer"', severity: "error" },
  { code: "option_choice", node: "1", input: "options.group_size", part: "backend", entry: "text_encoder_2", message: "group_size=3 is not one of the choices", severity: "error" },
  { code: "needs_cuda", node: "1", input: "quant_type", part: "backend", entry: "text_encoder_2", message: "torchao int4_weight_only needs a CUDA GPU", severity: "error" },
  { code: "option_choice", node: "1", input: "options.group_size", part: "backend", entry: "transfomer", message: "group_size=3 is not one of the choices", severity: "error" },
  { code: "needs_cuda", node: "1", input: "quant_type", part: "backend", entry: "transfomer", message: "torchao int4_weight_only needs a CUDA GPU", severity: "error" },
];

test("each problem goes to the node and input the server names, never read from its message", () => {
  const by = L.problemsByNode([{ loadId: "5", problems: SHARED_ANSWER }]);
  assert.deepEqual(Object.keys(by).sort(), ["1", "2", "5"]);
  assert.deepEqual(by["5"].map((p) => [p.code, p.input]), [["dtype_unknown", "dtype"]]); // the Load node's own input
  assert.deepEqual(by["2"].map((p) => [p.code, p.input]), [["unknown_component", "component"]]);
  // The shared Backend: each problem once, naming both map entries it concerns.
  assert.deepEqual(by["1"].map((p) => [p.code, p.input, p.entries]), [
    ["option_choice", "options.group_size", ["text_encoder_2", "transfomer"]],
    ["needs_cuda", "quant_type", ["text_encoder_2", "transfomer"]],
  ]);
  assert.equal(L.problemText(by["1"][1]), "quant_type (for text_encoder_2, transfomer): torchao int4_weight_only needs a CUDA GPU");
  assert.equal(L.problemText(by["2"][0]), 'component: FluxPipeline has no component "transfomer"'); // a Map names its entry itself
  // A message that names another node's input or component moves nothing.
  const misleading = { ...SHARED_ANSWER[1], node: "7", message: 'the Load node\'s dtype and map "transformer" are fine' };
  assert.deepEqual(Object.keys(L.problemsByNode([{ loadId: "5", problems: [misleading] }])), ["7"]);
});

test("problem text names the input and the fix", () => {
  assert.equal(L.problemText({ input: "quant_type", message: "bad", suggestion: "use nf4" }), "quant_type: bad — use nf4");
  assert.equal(L.problemText({ input: "", message: "bad", suggestion: "" }), "bad");
});

test("text wraps to the width, cutting words wider than a line", () => {
  const measure = (t) => t.length; // one unit per character
  assert.deepEqual(L.wrapText("aaa bbb ccc", 7, measure), ["aaa bbb", "ccc"]);
  assert.deepEqual(L.wrapText("one\ntwo", 10, measure), ["one", "two"]);
  assert.deepEqual(L.wrapText("abcdefghij", 4, measure), ["abcd", "efgh", "ij"]);
  assert.deepEqual(L.wrapText("", 4, measure), [""]);
  // a long word in the middle of a sentence is cut too (long paths have no spaces)
  assert.deepEqual(L.wrapText('model "a/very/long/path" not found', 8, measure),
    ["model", '"a/very/', "long/pat", 'h" not', "found"]);
  for (const line of L.wrapText("x ".repeat(5) + "y".repeat(30) + " z", 7, measure)) assert.ok(line.length <= 7, line);
});

// -- the graph walk: shared producers are not loops ------------------------------------------------
// One Backend feeding two Maps (transformer, text_encoder_2) chained into Load: issue 15, defect 1.
function sharedGraph() {
  const node = (id, type, widgets, inputs = {}, outputs = []) => ({ id, type, mode: 0, widgets, inputs, outputs });
  return {
    1: node("1", L.BACKEND, values("torchao", "int8_weight_only"), {}, [{ target: "2", input: "config" }, { target: "4", input: "config" }]),
    2: node("2", L.MAP, { component: "transformer" }, { config: "1", map: null }, [{ target: "4", input: "map" }]),
    4: node("4", L.MAP, { component: "text_encoder_2" }, { config: "1", map: "2" }, [{ target: "5", input: "quantization" }]),
    5: node("5", L.LOAD, { model: "FLUX.1-dev", dtype: "bfloat16", device: "auto", offload: "none" }, { quantization: "4" }),
  };
}

test("a Backend shared by two chained Maps is a shared producer, not a loop", () => {
  const spec = L.loadRequest(sharedGraph(), "5", catalogue).spec;
  assert.equal(spec.component, "text_encoder_2");
  assert.equal(spec.config.node, "1");
  assert.equal(spec.map.component, "transformer");
  assert.equal(spec.map.config.node, "1");
  assert.deepEqual(spec.config, spec.map.config);
});

test("a shared producer reached through a Reroute and a bypassed node is still not a loop", () => {
  const g = sharedGraph();
  g[7] = { id: "7", type: "Reroute", mode: 0, widgets: {}, inputs: { "": "1" }, outputs: [] };
  g[8] = { id: "8", type: L.MAP, mode: 4, widgets: { component: "vae" }, inputs: { config: "7", map: null }, outputs: [] };
  g[2].inputs.config = "7"; // map 2 reads the backend through the reroute
  g[4].inputs.config = "8"; // map 4 through a bypassed map, then the same reroute
  const spec = L.loadRequest(g, "5", catalogue).spec;
  assert.equal(spec.config.node, "1");
  assert.equal(spec.map.config.node, "1");
});

test("a diamond of maps (two paths to one map) is not a loop", () => {
  const g = sharedGraph();
  // Load <- map 4 (config <- backend 1, map <- map 2); map 2's map <- map 6; map 4 also reads map 6 through a reroute
  g[6] = { id: "6", type: L.MAP, mode: 0, widgets: { component: "vae" }, inputs: { config: "1", map: null }, outputs: [] };
  g[2].inputs.map = "6";
  const spec = L.loadRequest(g, "5", catalogue).spec;
  assert.equal(spec.map.map.component, "vae");
  assert.equal(spec.map.map.config.node, "1");
});

test("real cycles are loops: a map feeding itself, two maps feeding each other, a reroute ring", () => {
  const self = sharedGraph();
  self[4].inputs.map = "4";
  assert.throws(() => L.loadRequest(self, "5", catalogue), /loop/);
  const pair = sharedGraph();
  pair[2].inputs.map = "4";
  assert.throws(() => L.loadRequest(pair, "5", catalogue), /loop/);
  const ring = sharedGraph();
  ring[7] = { id: "7", type: "Reroute", mode: 0, widgets: {}, inputs: { "": "8" }, outputs: [] };
  ring[8] = { id: "8", type: "Reroute", mode: 0, widgets: {}, inputs: { "": "7" }, outputs: [] };
  ring[2].inputs.config = "7";
  assert.throws(() => L.loadRequest(ring, "5", catalogue), /loop/);
  const bypassRing = sharedGraph();
  bypassRing[2].mode = 4; // a bypassed map whose first input comes back to itself through map 4
  bypassRing[2].inputs = { config: "4", map: null };
  assert.throws(() => L.loadRequest(bypassRing, "5", catalogue), /loop/);
});

test("the Save nodes a Load node feeds go into the request, with their folder names", () => {
  const g = sharedGraph();
  g[5].outputs = [{ target: "9", input: "pipeline" }, { target: "10", input: "pipeline" }];
  g[9] = { id: "9", type: L.SAVE, mode: 0, widgets: { folder_name: "flux-int8" }, inputs: { pipeline: "5" }, outputs: [] };
  g[10] = { id: "10", type: "Reroute", mode: 0, widgets: {}, inputs: { "": "5" }, outputs: [{ target: "11", input: "pipeline" }] };
  g[11] = { id: "11", type: L.SAVE, mode: 2, widgets: { folder_name: "muted" }, inputs: { pipeline: "10" }, outputs: [] };
  assert.deepEqual(L.loadRequest(g, "5", catalogue).save, [{ node: "9", folder_name: "flux-int8" }]);
  g[11].mode = 0;
  assert.deepEqual(L.savesFed(g, "5"), ["9", "11"]);
  delete g[5].outputs;
  assert.equal(L.loadRequest(g, "5", catalogue).save, undefined);
});

test("the editor's facts come from the catalogue route (no copies in the JS)", () => {
  assert.deepEqual(L.inputNames(catalogue, L.BACKEND), ["backend", "quant_type", "compute_dtype", "components", "options", "gguf_file"]);
  assert.equal(L.noFile(catalogue), catalogue.editor.no_file);
  assert.equal(L.actionName(catalogue, "keep"), catalogue.editor.actions.keep);
  assert.deepEqual(L.inputNames(null, L.BACKEND), []);
  // a widget the catalogue does not name is not sent
  const g = sharedGraph();
  g[1].widgets.stray = "x";
  assert.equal(L.loadRequest(g, "5", catalogue).spec.config.stray, undefined);
});

// -- menus and help --------------------------------------------------------------------------------
test("GPU-only backends are marked in the menu, from the catalogue's cpu flags", () => {
  const menu = Object.fromEntries(L.backendMenu(catalogue).map((m) => [m.value, m]));
  assert.match(menu.bitsandbytes_4bit.label, / · needs a GPU for diffusers models$/);
  assert.equal(menu.bitsandbytes_4bit.gpuOnly, true);
  assert.equal(menu.torchao.gpuOnly, false);
  assert.doesNotMatch(menu.torchao.label, /GPU/);
});

test("a select that shows one line per backend gets the same marks, without the types", () => {
  assert.equal(L.backendLabel(catalogue, "bitsandbytes_4bit"), "bitsandbytes_4bit · needs a GPU for diffusers models");
  assert.equal(L.backendLabel(catalogue, "torchao"), "torchao");
  assert.equal(L.backendLabel(catalogue, "quanto"), "quanto · not installed · deprecated");
  assert.equal(L.backendLabel(catalogue, "gguf"), "gguf");
  assert.equal(L.backendLabel(catalogue, "no_such"), "no_such");
  const gpuOnly = { ...catalogue, backends: catalogue.backends.map((b) => (b.name === "gguf" ? { ...b, cpu: { diffusers: false } } : b)) };
  assert.equal(L.backendLabel(gpuOnly, "gguf"), "gguf · needs a GPU"); // every library it takes
});

test("every quant type has a help line from the catalogue", () => {
  for (const b of catalogue.backends) {
    for (const q of b.quant_types) {
      const note = L.backendNotes(catalogue, values(b.name, q.name)).find((n) => n.kind === "note");
      assert.ok(q.help && note.text === `${q.label}: ${q.help}`, `${b.name} ${q.name}`);
    }
  }
  const int4 = L.backendNotes(catalogue, values("quanto", "int4")).find((n) => n.kind === "note").text;
  assert.match(int4, /C\+\+ extension on first use \(about 5 minutes/);
});

// -- options as widgets ----------------------------------------------------------------------------
test("one widget per option of the quant type, of the option's kind", () => {
  const w = L.optionWidgets(catalogue, "torchao", "int4_weight_only", '{"group_size": 64}');
  assert.deepEqual(w.map((x) => [x.name, x.type, x.value]), [["group_size", "combo", 64], ["modules_to_not_convert", "text", ""]]);
  assert.deepEqual(w[0].options.values, [32, 64, 128, 256]);
  const bnb = L.optionWidgets(catalogue, "bitsandbytes_8bit", "int8", "{}");
  assert.deepEqual(bnb.map((x) => [x.name, x.type, x.value]), [["llm_int8_threshold", "number", 6], ["modules_to_not_convert", "text", ""]]);
  assert.equal(bnb[0].options.min, 0);
  assert.equal(bnb[0].options.max, 100);
  assert.equal(L.optionWidgets(catalogue, "bitsandbytes_4bit", "nf4", "{}")[0].type, "toggle");
  assert.deepEqual(L.optionWidgets(catalogue, "gguf", "from_file", "{}"), []);
  // broken JSON: widgets show the defaults and do not overwrite it
  assert.equal(L.optionWidgets(catalogue, "torchao", "int4_weight_only", "{oops")[0].value, 128);
});

test("widgets write the options JSON the runner reads; defaults are left out", () => {
  const opt = (b, q, name) => L.applicableOptions(catalogue, b, q).find((o) => o.name === name);
  const dq = opt("bitsandbytes_4bit", "nf4", "double_quant");
  assert.equal(L.setOption("{}", dq, true), '{"double_quant":true}');
  assert.equal(L.setOption('{"double_quant":true}', dq, false), "{}");
  const skip = opt("bitsandbytes_4bit", "nf4", "modules_to_not_convert");
  assert.deepEqual(JSON.parse(L.setOption('{"double_quant": true}', skip, "proj_out, norm_out")),
    { double_quant: true, modules_to_not_convert: ["proj_out", "norm_out"] });
  const threshold = opt("bitsandbytes_8bit", "int8", "llm_int8_threshold");
  assert.equal(L.setOption("", threshold, "7.5"), '{"llm_int8_threshold":7.5}');
  const group = opt("torchao", "int4_weight_only", "group_size");
  assert.equal(L.setOption('{"typo_key": 1}', group, 64), '{"typo_key":1,"group_size":64}'); // hand-typed keys stay
  assert.equal(L.setOption("{not json", group, 64), null);
});

test("switching backend drops the options the new one does not take, and says which", () => {
  const applicable = L.applicableOptions(catalogue, "torchao", "int8_weight_only");
  const { text, dropped } = L.dropInapplicable('{"double_quant": true, "modules_to_not_convert": ["x"]}', applicable);
  assert.deepEqual(JSON.parse(text), { modules_to_not_convert: ["x"] });
  assert.deepEqual(dropped, [["double_quant", true]]);
  assert.deepEqual(L.dropInapplicable("{}", applicable), { text: "{}", dropped: [] });
  assert.deepEqual(L.dropInapplicable("{bad", applicable), { text: "{bad", dropped: [] });
  assert.equal(L.optionsFitWidgets('{"modules_to_not_convert": []}', applicable), true);
  assert.equal(L.optionsFitWidgets('{"modules_to_not_convrt": []}', applicable), false); // its "did you mean" shows
  assert.equal(L.optionsFitWidgets("{bad", applicable), false);
});

test("a Load node fed by the Auto Quantization Plan says where its plan shows", () => {
  const g = sharedGraph();
  g[9] = { id: "9", type: L.AUTO_PLAN, mode: 0, widgets: {}, inputs: {}, outputs: [{ target: "5", input: "quantization" }] };
  g[5].inputs.quantization = "9";
  assert.throws(() => L.loadRequest(g, "5", catalogue), /Auto Quantization Plan node shows its plan/);
  g[9].type = "SomeOtherNode";
  assert.throws(() => L.loadRequest(g, "5", catalogue), /a SomeOtherNode node, which the editor cannot read/);
});

// -- issue 26 --------------------------------------------------------------------------------------
const snap = (nodes) => Object.fromEntries(nodes.map((n) => [n.id, { mode: 0, widgets: {}, inputs: {}, outputs: [], ...n }]));

test("an Auto plan for another model than the Load node's is a problem on both", () => {
  const graph = (planModel, loadModel) => snap([
    { id: "1", type: L.AUTO_PLAN, widgets: { model: planModel }, outputs: [{ target: "2", input: "quantization" }] },
    { id: "2", type: L.LOAD, widgets: { model: loadModel }, inputs: { quantization: "1" } },
  ]);
  assert.deepEqual(L.planMismatches(graph("FLUX.1-dev", "FLUX.1-dev")), []);
  const [{ loadId, problems }] = L.planMismatches(graph("FLUX.1-dev", "FLUX.1-schnell")); // same component names
  assert.equal(loadId, "2");
  assert.deepEqual(problems.map((p) => [p.node, p.input, p.code]),
    [["1", "model", "plan_for_another_model"], ["2", "quantization", "plan_for_another_model"]]);
  assert.ok(problems[0].suggestion.includes("FLUX.1-schnell"));
  const byNode = L.problemsByNode([{ loadId, problems }]);
  assert.deepEqual(Object.keys(byNode).sort(), ["1", "2"]);
});

test("the Save name follows the plan: model and quant types", () => {
  const global = (quant_type) => ({ kind: "global", backend: "x", quant_type });
  assert.equal(L.saveNameFor({ model: "FLUX.1-dev", spec: global("nf4") }), "FLUX.1-dev-nf4");
  assert.equal(L.saveNameFor({ model: "FLUX.1-dev", spec: global("int8_weight_only") }), "FLUX.1-dev-int8_weight_only");
  const map = { kind: "map", component: "vae", config: global("int8"), map: { kind: "map", component: "t", config: global("nf4"), map: null } };
  assert.equal(L.saveNameFor({ model: "org/model", spec: map }), "org-model-int8-nf4");
  assert.equal(L.saveNameFor({ model: "m", dtype: "bfloat16", spec: null }), "m-bfloat16");
  assert.equal(L.saveNameFor({ model: null, spec: null }), null);
});

test("GPU-only quant types are marked in the menu on a CPU server", () => {
  const cpu = { ...catalogue, editor: { ...catalogue.editor, device: "cpu" } };
  const marked = (c) => L.quantTypeMenu(c, "torchao").filter((q) => q.unavailable).map((q) => q.value);
  assert.ok(marked(cpu).includes("int4_weight_only"));
  assert.ok(!marked(cpu).includes("int8_weight_only"));
  assert.ok(L.quantTypeMenu(cpu, "torchao").find((q) => q.value === "int4_weight_only").label.includes("needs a GPU"));
  assert.deepEqual(marked({ ...catalogue, editor: { ...catalogue.editor, device: "cuda" } }), []);
});

test("the Memory Report's table keeps numbers whole and TOTAL, dropping columns when narrow", () => {
  const measure = (t) => 7 * String(t).length; // a fixed-width font
  const row = (component, plan, from) => ({ component, plan, from, class: "CLIPTextModelWithProjection", dtype: "bfloat16",
    device: "cpu", params: 123060480, bytes: 948479, bytes_before: 1875968, load_seconds: 1.25 });
  const table = { rows: [row("transformer", "int8_weight_only", "disk cache"), row("text_encoder_2", "keep", "memory")],
    total: { bytes: 1896958, bytes_before: 3751936, load_seconds: 2.5 } };
  const wide = L.reportLines(table, 2000, measure);
  assert.ok(wide.lines[0].text.includes("class") && wide.lines[0].text.includes("dtype"));
  for (const width of [420, 300, 200]) {
    const { lines } = L.reportLines(table, width, measure);
    const texts = lines.map((l) => l.text);
    assert.ok(texts.at(-1).startsWith("TOTAL") && lines.at(-1).kind === "total" && lines.every((l) => l.pinned), texts);
    assert.ok(texts[1].includes("926.25 KB") && texts.at(-1).includes("1.81 MB"), texts); // whole, with the unit
    for (const l of lines) {
      const right = Math.max(...l.cells.map((c) => c.x + c.width));
      assert.ok(right <= Math.max(width, 200), [width, right, l.text]);
    }
  }
  assert.ok(!L.reportLines(table, 300, measure).lines[0].text.includes("class")); // dropped first
});

test("a Load node's request names the nodes that check its model, through Apply LoRA", () => {
  const g = mixedGraph();
  g[6].widgets = { steps: 20, width: 512, height: 512, num_frames: 33, fps: 24.5, prompt: "a cat" };
  g[5].outputs.push({ target: "7", input: "pipeline" });
  g[7] = { id: "7", type: "PipeQuantLoRA", mode: 0, widgets: { strength: 1 }, inputs: { pipeline: "5" },
    outputs: [{ target: "8", input: "pipeline" }, { target: "9", input: "pipeline" }] };
  g[8] = { id: "8", type: L.TO_COMFY, mode: 0, widgets: {}, inputs: { pipeline: "7" }, outputs: [] };
  g[9] = { id: "9", type: L.ENCODE, mode: 4, widgets: {}, inputs: { pipeline: "7" }, outputs: [] }; // bypassed
  assert.deepEqual(L.loadRequest(g, "5", catalogue).consumers, [
    { node: "6", type: L.SAMPLER, inputs: { steps: 20, width: 512, height: 512, num_frames: 33 } },
    { node: "8", type: L.TO_COMFY, inputs: {} },
  ]);
  assert.equal(L.loadFeeding(g, "8", catalogue), "5");
  assert.equal(L.loadFeeding(g, "6", catalogue), "5");
  g[7].mode = 2; // a muted Apply LoRA cuts the pipeline
  assert.equal(L.loadFeeding(g, "8", catalogue), null);
  assert.equal(L.loadRequest(mixedGraph(), "5", { ...catalogue, editor: { ...catalogue.editor, model_checks: [] } }).consumers, undefined);
});

test("the Sampler's video inputs show where the pipeline uses them, all while that is unknown", () => {
  assert.deepEqual(L.videoInputsShown(catalogue, null), { num_frames: true, fps: true });
  assert.deepEqual(L.videoInputsShown(catalogue, { pipeline: { video_inputs: [] } }), { num_frames: false, fps: false });
  assert.deepEqual(L.videoInputsShown(catalogue, { pipeline: { video_inputs: ["num_frames"] } }), { num_frames: true, fps: false });
});

test("a Plan Quality Check is checked as a Load node is: its shared inputs, its link, itself as consumer", () => {
  const g = mixedGraph();
  g[4].outputs.push({ target: "10", input: "quantization" });
  g[10] = { id: "10", type: L.QUALITY, mode: 0, inputs: { quantization: "4" }, outputs: [],
    widgets: { model: "FLUX.1-dev", prompt: "x".repeat(9000), seed: 0, steps: 20, width: 1000, height: 512, measure: "both",
      dtype: "bfloat16", device: "auto", offload: "none", components: "transformer, vea" } };
  const cat = { ...catalogue, editor: { ...catalogue.editor, inputs: { ...catalogue.editor.inputs,
    [L.QUALITY]: ["model", "prompt", "seed", "steps", "width", "height", "measure", "dtype", "device", "offload", "components"] } } };
  const request = L.qualityRequest(g, "10", cat);
  assert.equal(request.prompt, undefined); // not sent: the server does not check it here (and it may be long)
  assert.deepEqual({ ...request, spec: request.spec.node }, { model: "FLUX.1-dev", dtype: "bfloat16", device: "auto", offload: "none",
    spec: "4", consumers: [{ node: "10", type: L.QUALITY, inputs: { width: 1000, height: 512, components: "transformer, vea" } }] });
});
