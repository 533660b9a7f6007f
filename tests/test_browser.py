"""The editor extension (web/js/pipequant.js) in a real ComfyUI, driven with Playwright and
Debian's Chromium: each example workflow loads with its saved state; switching the backend
narrows quant_type and hides what does not apply; the component picker lists the model's
components; the estimate and validation problems show on the nodes before Run; the graph converts
with app.graphToPrompt() and runs.

Run:  COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/test_browser.py -v
Needs /usr/bin/chromium (apt-get install chromium) and `pip install playwright` (never
`playwright install`). Screenshots go to test-artifacts/browser/.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from comfy_server import PACK_DIR, comfy_server, skip_reason  # noqa: F401 (the fixture)
from pipequant.resolver import catalogue as resolver_catalogue

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PACK_DIR / "test-artifacts" / "browser"
README_SHOT = PACK_DIR / "docs" / "editor.png"
EXAMPLES = PACK_DIR / "example_workflows"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
BACKEND, MAP, LOAD = "PipeQuantBackend", "PipeQuantComponentMap", "PipeQuantLoadPipeline"

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None


def _skip() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return skip_reason()


if _skip():
    pytest.skip(_skip(), allow_module_level=True)


# -- the page ----------------------------------------------------------------------------------
class Editor:
    """The ComfyUI page, with helpers that act as a person would (clicks on the canvas)."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.errors: list[str] = []
        self.alerts: list[str] = []

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def load(self, data: dict, name: str) -> None:
        self.js("([d, n]) => window.app.loadGraphData(d, true, true, n)", [data, name])
        self.settle()
        self.alerts = self.toasts(close=True)

    def toasts(self, close: bool = False) -> list[str]:
        """The texts of the editor's toast messages (alerts), closing them if asked."""
        return self.js("""(close) => {
            const texts = [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText);
            if (close) document.querySelectorAll('.p-toast-message .p-toast-close-button').forEach(b => b.click());
            return texts;
        }""", close)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every Load node's estimate/validation answers the graph as it is now."""
        self.page.wait_for_function("() => window.pipequant && window.pipequant.settled()", timeout=timeout * 1000,
                                    polling=100)
        time.sleep(0.3)  # one more tick: problems distributed, nodes resized, canvas drawn

    def node(self, node_id) -> dict:
        return self.js("""(id) => {
            const n = app.graph.getNodeById(id);
            const st = n.pipequant || {};
            return {type: n.comfyClass, size: [...n.size],
                    values: Object.fromEntries(n.widgets.filter(w => w.options?.serialize !== false).map(w => [w.name, w.value])),
                    hidden: n.widgets.filter(w => w.hidden).map(w => w.name),
                    quant_types: n.widgets.find(w => w.name === 'quant_type')?.options.values ?? null,
                    problems: (st.problems || []).map(p => ({code: p.code, input: p.input, severity: p.severity})),
                    estimate: st.answer ? st.answer.estimate : null, status: st.status || '',
                    panel: (st.lines || []).map(l => l.text ?? (l.left + ' | ' + l.right))};
        }""", node_id)

    def ids(self, node_type: str) -> list[int]:
        return self.js("(t) => app.graph._nodes.filter(n => n.comfyClass === t).map(n => n.id)", node_type)

    def widget_point(self, node_id, name: str, fx: float = 0.5) -> tuple[float, float]:
        """Page coordinates of a widget (fx: fraction of the node's width)."""
        return tuple(self.js("""([id, name, fx]) => {
            const node = app.graph.getNodeById(id), w = node.widgets.find(w => w.name === name), c = app.canvas;
            const p = c.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] * fx, node.pos[1] + w.y + (w.computedHeight || 24) / 2]);
            const r = c.canvas.getBoundingClientRect(), k = r.width / c.canvas.width;
            return [r.left + p[0] * k, r.top + p[1] * k];
        }""", [node_id, name, fx]))

    def click_widget(self, node_id, name: str, fx: float = 0.5) -> None:
        self.show(node_id)
        x, y = self.widget_point(node_id, name, fx)
        self.page.mouse.click(x, y)

    def menu(self) -> list[str]:
        try:
            self.page.wait_for_selector(".litecontextmenu .litemenu-entry", timeout=5000)
        except Exception:
            self.screenshot("failure-no-menu")
            raise
        return self.page.locator(".litecontextmenu .litemenu-entry").all_inner_texts()

    def choose(self, text: str) -> None:
        self.page.locator(".litecontextmenu .litemenu-entry", has_text=text).first.click()
        self.settle()

    def set_widget(self, node_id, name: str, value) -> None:
        """Set a widget the way an edit does (value, then its callback)."""
        self.js("""([id, name, v]) => {
            const n = app.graph.getNodeById(id), w = n.widgets.find(w => w.name === name);
            w.value = v; w.callback?.(w.value);
        }""", [node_id, name, value])
        self.settle()

    def show(self, node_id) -> None:
        """Scroll the canvas so that the node is in view (clicks need it on screen)."""
        self.js("""(id) => {
            const n = app.graph.getNodeById(id), c = app.canvas, ds = c.ds;
            const r = c.canvas.getBoundingClientRect();
            const inView = (x, y) => { const p = ds.convertOffsetToCanvas([x, y]); return p[0] > 10 && p[1] > 10 && p[0] < r.width - 10 && p[1] < r.height - 10; };
            if (!inView(n.pos[0], n.pos[1]) || !inView(n.pos[0] + n.size[0], n.pos[1] + 40)) {
                ds.offset[0] = -n.pos[0] + 120 / ds.scale; ds.offset[1] = -n.pos[1] + 120 / ds.scale;
                c.setDirty(true, true);
            }
        }""", node_id)
        time.sleep(0.2)

    def tidy(self) -> None:
        """Lay the nodes out left to right (backends, maps, loader, consumers), without overlaps,
        and fit them in view: for screenshots a person can read."""
        self.js("""() => {
            const g = app.graph, nodes = g._nodes, links = g._links ?? g.links;
            const role = {PipeQuantBackend: 0, PipeQuantComponentMap: 1, PipeQuantLoadPipeline: 2,
                          PipeQuantSampler: 3, PipeQuantMemoryReport: 3, PipeQuantSavePipeline: 3};
            const sources = (n) => (n.inputs || []).filter(i => i.link != null)
                .map(i => links.get ? links.get(i.link) : links[i.link]).filter(Boolean).map(l => g.getNodeById(l.origin_id));
            const column = new Map();
            const col = (n, seen = new Set()) => {
                if (column.has(n.id)) return column.get(n.id);
                if (seen.has(n.id)) return 0;
                seen.add(n.id);
                const c = role[n.comfyClass] ?? Math.max(-1, ...sources(n).map(s => col(s, seen))) + 1;
                column.set(n.id, c);
                return c;
            };
            const columns = [];
            for (const n of nodes) (columns[col(n)] ??= []).push(n);
            let x = 0;
            for (const list of columns.filter(Boolean)) {
                list.sort((a, b) => a.pos[1] - b.pos[1] || a.id - b.id);
                let y = 0;
                for (const n of list) { n.pos[0] = x; n.pos[1] = y; y += n.size[1] + 60; }
                x += Math.max(...list.map(n => n.size[0])) + 60;
            }
            const r = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds, margin = 90;
            const w = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
            const h = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
            ds.scale = Math.min(1, (r.width - 2 * margin) / w, (r.height - 2 * margin) / h);
            ds.offset[0] = margin / ds.scale; ds.offset[1] = margin / ds.scale;
            app.canvas.setDirty(true, true);
        }""")
        time.sleep(0.5)

    def nodes_box(self, margin: float = 24) -> dict:
        """The page rectangle around all nodes (titles included), for a tight screenshot."""
        return self.js("""(m) => {
            const c = app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect(), k = r.width / c.canvas.width;
            const ns = app.graph._nodes, title = LiteGraph.NODE_TITLE_HEIGHT;
            const a = ds.convertOffsetToCanvas([Math.min(...ns.map(n => n.pos[0])), Math.min(...ns.map(n => n.pos[1] - title))]);
            const b = ds.convertOffsetToCanvas([Math.max(...ns.map(n => n.pos[0] + n.size[0])), Math.max(...ns.map(n => n.pos[1] + n.size[1]))]);
            const x = Math.max(0, r.left + a[0] * k - m), y = Math.max(0, r.top + a[1] * k - m);
            return {x, y, width: Math.min(innerWidth - x, (b[0] - a[0]) * k + 2 * m), height: Math.min(innerHeight - y, (b[1] - a[1]) * k + 2 * m)};
        }""", margin)

    def screenshot(self, name: str, clip: dict | None = None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        time.sleep(0.3)
        self.page.screenshot(path=str(path), clip=clip)
        return path


@pytest.fixture(scope="module")
def editor(comfy_server):  # noqa: F811 (the fixture imported above)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        ed = Editor(page, comfy_server)

        def on_console(message):
            text = message.text
            if message.type == "error" and ("pipequant" in text.lower() or "PipeQuant" in text):
                ed.errors.append(text)

        def on_error(error):
            stack = getattr(error, "stack", "") or ""
            if "pipequant" in (stack + str(error)).lower():
                ed.errors.append(f"{error}\n{stack}")

        page.on("console", on_console)
        page.on("pageerror", on_error)
        # A first-time user gets the template browser over the canvas, and the minimap covers a
        # corner of the screenshots: settle both in the (temporary) user's settings.
        for setting, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False)):
            comfy_server.post(f"/settings/{setting}", value)
        page.goto(comfy_server.base_url)
        page.wait_for_function("() => window.app && window.app.graph && window.pipequant && window.pipequant.shared.catalogue",
                               timeout=90_000)
        yield ed
        browser.close()
    assert not ed.errors, "errors from the PipeQuant extension:\n" + "\n".join(ed.errors)


@pytest.fixture(scope="module")
def catalogue():
    return {b["name"]: b for b in resolver_catalogue.describe()["backends"]}


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def saved_values(data: dict) -> dict:
    return {n["id"]: n.get("widgets_values") or [] for n in data["nodes"]}


def expected_hidden(catalogue: dict, values: dict) -> list[str]:
    """The widgets a Backend hides, as the catalogue says (the test's own reading of it)."""
    backend = catalogue.get(values["backend"])
    if backend is None:
        return []
    quant = next((q for q in backend["quant_types"] if q["name"] == values["quant_type"]), None)
    takes = set(quant["options"] if quant else [o["name"] for o in backend["options"]])
    try:
        typed = json.loads(values["options"]) if values["options"].strip() else {}
    except ValueError:
        typed = None
    hidden = []
    if not backend["global_mode"] and not values["components"].strip():
        hidden.append("components")
    # The options text hides when the option widgets show all of it (and shows what they cannot).
    if isinstance(typed, dict) and set(typed) <= takes:
        hidden.append("options")
    if not backend["needs_file"] and values["gguf_file"] in ("", "none"):
        hidden.append("gguf_file")
    return hidden


def check_backend(editor: Editor, catalogue: dict, node_id) -> dict:
    state = editor.node(node_id)
    values = state["values"]
    assert state["quant_types"] == [q["name"] for q in catalogue[values["backend"]]["quant_types"]], state
    assert sorted(state["hidden"]) == sorted(expected_hidden(catalogue, values)), state
    return state


def view(editor: Editor) -> dict:
    """Everything the PipeQuant nodes show, by node id (to compare a reload with the original)."""
    out = {}
    for node_type in (BACKEND, MAP, LOAD):
        for node_id in editor.ids(node_type):
            s = editor.node(node_id)
            out[node_id] = {k: s[k] for k in ("values", "hidden", "quant_types", "problems", "estimate", "panel")}
    return out


# -- the tests -----------------------------------------------------------------------------------
def test_help_pages_are_served(comfy_server):  # noqa: F811
    """web/docs/<NodeId>.md is where the editor's node library looks for a custom node's help."""
    from pipequant.nodes import NODE_CLASS_MAPPINGS

    for node_id in NODE_CLASS_MAPPINGS:
        status, body = comfy_server.get(f"/extensions/{comfy_server.pack_name}/docs/{node_id}.md")
        assert status == 200 and body.startswith(b"# "), node_id


def test_example_workflows_pass_the_editors_schema(editor):
    """ComfyUI checks a loaded workflow against its schema and shows an alert when it fails
    (e.g. a top-level "id" that is not a UUID)."""
    bad = {}
    for name in EXAMPLE_NAMES:
        editor.load(example(name), name)
        alerts = [a for a in editor.alerts if "Invalid workflow" in a]
        if alerts:
            bad[name] = alerts
    assert not bad, f"the editor rejects these example workflows' JSON: {bad}"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_loads_with_its_saved_state_and_round_trips(editor, catalogue, name):
    data = example(name)
    editor.load(data, name)
    saved = saved_values(data)
    for node_id in editor.ids(BACKEND) + editor.ids(MAP) + editor.ids(LOAD):
        state = editor.node(node_id)
        assert list(state["values"].values())[:len(saved[node_id])] == saved[node_id], f"node {node_id} changed: {state}"
    for node_id in editor.ids(BACKEND):
        check_backend(editor, catalogue, node_id)
    for node_id in editor.ids(LOAD):
        load = editor.node(node_id)
        assert load["estimate"] is not None or any(p["problems"] for p in view(editor).values()), load
    editor.screenshot(f"example-{name}")

    before = view(editor)
    exported = editor.js("() => window.app.graph.serialize()")
    for node in exported["nodes"]:
        if node["id"] in saved:
            assert node.get("widgets_values", [])[:len(saved[node["id"]])] == saved[node["id"]], node
    editor.load(exported, f"{name}-reloaded")
    assert view(editor) == before

    # The same workflow laid out so that grown nodes do not overlap: a picture, and its JSON for
    # whoever updates the example (the hand-written positions predate the estimate panels).
    editor.tidy()
    editor.screenshot(f"example-{name}-tidy", clip=editor.nodes_box())
    tidy = editor.js("() => window.app.graph.serialize()")
    (ARTIFACTS / f"example-{name}.tidy.json").write_text(json.dumps(tidy, indent=2) + "\n")


def test_switching_backend_narrows_quant_type_and_hides_widgets(editor, catalogue):
    editor.load(example("flux_nf4_transformer"), "switch")
    backend = editor.ids(BACKEND)[0]
    editor.click_widget(backend, "backend")
    entries = editor.menu()
    assert any(e.startswith("torchao — int8_weight_only") for e in entries), entries
    editor.screenshot("switch-backend-menu")
    editor.choose("torchao")
    state = check_backend(editor, catalogue, backend)
    assert state["values"]["quant_type"] == "int8_weight_only"
    assert "gguf_file" in state["hidden"] and "options" not in state["hidden"]

    editor.click_widget(backend, "quant_type")
    assert editor.menu() == [q["name"] for q in catalogue["torchao"]["quant_types"]]
    editor.choose("int4_weight_only")
    assert any(p["code"] == "needs_cuda" for p in editor.node(backend)["problems"])  # CPU server
    assert any("group_size" in line for line in editor.node(backend)["panel"])  # the type's options

    editor.set_widget(backend, "components", "")
    editor.click_widget(backend, "backend")
    editor.choose("gguf")
    state = check_backend(editor, catalogue, backend)
    assert state["quant_types"] == ["from_file"] and state["values"]["quant_type"] == "from_file"
    assert {"components", "options"} <= set(state["hidden"]) and "gguf_file" not in state["hidden"]
    assert {p["code"] for p in state["problems"]} >= {"gguf_in_global", "gguf_file_required"}
    editor.screenshot("switch-backend-gguf")

    editor.click_widget(backend, "backend")
    editor.choose("bitsandbytes_4bit")
    state = check_backend(editor, catalogue, backend)
    assert state["values"]["quant_type"] == "nf4" and state["hidden"] == ["gguf_file"]
    # the values of hidden widgets were kept, in order
    assert state["values"]["options"] == "{}" and state["values"]["gguf_file"] == "none"


def test_not_installed_backend_is_marked(editor):
    editor.load(example("flux_nf4_transformer"), "installed")
    backend = editor.ids(BACKEND)[0]
    # Pretend quanto is missing, as on a machine without optimum-quanto.
    editor.js("""() => { const b = window.pipequant.shared.catalogue.backends.find(b => b.name === 'quanto');
                         b.installed = false; }""")
    editor.click_widget(backend, "backend")
    assert "quanto — not installed: pip install optimum-quanto" in editor.menu()
    editor.choose("quanto")
    panel = " ".join(editor.node(backend)["panel"])  # wrapped to the node's width
    assert "optimum-quanto is not installed — pip install optimum-quanto" in panel, panel
    editor.screenshot("backend-not-installed")
    editor.js("""() => { window.pipequant.shared.catalogue.backends.find(b => b.name === 'quanto').installed = true; }""")


def test_component_picker_lists_the_models_components(editor):
    editor.load(example("flux_mixed_components"), "picker")
    maps = editor.ids(MAP)
    last = max(maps, key=lambda i: editor.node(i)["values"]["component"] == "text_encoder_2")
    editor.click_widget(last, "component")
    entries = editor.menu()
    names = [e.split(" — ")[0].lstrip("✓ ") for e in entries if " — " in e]
    assert names == ["text_encoder", "text_encoder_2", "transformer", "vae"], entries
    assert any(e.startswith("✓ text_encoder_2 — T5EncoderModel · ") and "KB" in e for e in entries), entries
    assert entries[-1] == "Type a name…"
    editor.screenshot("component-picker")
    editor.choose("text_encoder —")
    assert editor.node(last)["values"]["component"] == "text_encoder"
    assert any(line.startswith("text_encoder — CLIPTextModel") for line in editor.node(last)["panel"])

    # Not connected to a Load node: the widget is free text again.
    editor.js("(id) => app.graph.getNodeById(id).disconnectOutput(0)", last)
    time.sleep(0.5)
    editor.click_widget(last, "component")
    editor.page.wait_for_selector(".graphdialog", timeout=5000)
    editor.page.keyboard.press("Escape")


def test_backend_components_picker_toggles_names(editor):
    editor.load(example("sd35_torchao_int8"), "components")
    backend, load = editor.ids(BACKEND)[0], editor.ids(LOAD)[0]
    quantized = lambda: sorted(r["component"] for r in editor.node(load)["estimate"]["components"]  # noqa: E731
                               if r["action"] == "quantize")
    assert quantized() == ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer"]  # empty: all but the VAE
    editor.click_widget(backend, "components")
    entries = editor.menu()
    assert [e.split(" — ")[0] for e in entries if " — " in e] == [
        "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"], entries
    editor.choose("transformer —")
    assert editor.node(backend)["values"]["components"] == "transformer"
    assert quantized() == ["transformer"]
    editor.click_widget(backend, "components")
    assert any(e.startswith("✓ transformer — ") for e in editor.menu())
    editor.choose("text_encoder_3 —")
    assert editor.node(backend)["values"]["components"] == "transformer, text_encoder_3"
    assert quantized() == ["text_encoder_3", "transformer"]


def test_estimate_and_validation_errors_show_before_run(editor):
    editor.load(example("sd35_torchao_int8"), "estimate")
    load, backend = editor.ids(LOAD)[0], editor.ids(BACKEND)[0]
    state = editor.node(load)
    estimate = state["estimate"]
    assert estimate and estimate["total"]["bytes_after"] < estimate["total"]["bytes_before"], state
    assert state["panel"][0].startswith("Estimated memory | in memory at bfloat16")
    assert state["panel"][-1].startswith("total | ") and "→" in state["panel"][-1]
    assert any(line.startswith("transformer | ") and "→" in line for line in state["panel"]), state["panel"]
    editor.tidy()
    editor.screenshot("estimate")

    editor.set_widget(load, "dtype", "float32")  # the loader's dtype changes the estimate
    assert editor.node(load)["estimate"]["total"]["bytes_before"] == 2 * estimate["total"]["bytes_before"]
    editor.set_widget(load, "dtype", "bfloat16")

    editor.set_widget(backend, "options", '{"group_size": 64, "modules_to_not_convrt": []}')
    problems = editor.node(backend)["problems"]
    assert {p["code"] for p in problems} == {"option_not_applicable", "unknown_option"}, problems
    assert editor.node(load)["estimate"] is None and "red" in editor.node(load)["status"]
    editor.screenshot("validation-error")

    editor.set_widget(backend, "options", "{}")
    editor.set_widget(load, "model", "tiny-nothing")  # a name not in the model list
    assert [p["code"] for p in editor.node(load)["problems"]] == ["model_not_found"]
    editor.set_widget(load, "model", "stable-diffusion-3.5-medium")
    assert editor.node(load)["problems"] == [] and editor.node(load)["estimate"] is not None


def test_convert_and_run(editor, comfy_server):  # noqa: F811
    editor.load(example("sd35_torchao_int8"), "run")
    sampler = editor.ids("PipeQuantSampler")[0]
    for name, value in (("steps", 2), ("width", 32), ("height", 32), ("max_sequence_length", 32)):
        editor.set_widget(sampler, name, value)
    editor.set_widget(editor.ids(LOAD)[0], "device", "cpu")
    assert all(not s["problems"] for s in view(editor).values())
    prompt = editor.js("async () => (await window.app.graphToPrompt()).output")
    backend = prompt[str(editor.ids(BACKEND)[0])]
    assert backend["inputs"]["gguf_file"] == "none"  # a hidden widget's value is still sent
    assert "pipequant_info" not in json.dumps(prompt)  # the info panels are not inputs
    entry = comfy_server.run(prompt, timeout=180)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]

    # The Run button's path too: the editor converts and queues the graph itself.
    count = len(comfy_server.get("/history")[1])
    editor.js("() => window.app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 180
    history = {}
    while time.monotonic() < deadline and len(history) <= count:
        history = comfy_server.get("/history")[1]
        time.sleep(0.5)
    newest = list(history.values())[-1] if len(history) > count else None
    assert newest and newest["status"]["status_str"] == "success", comfy_server.log_tail()
    # The Memory Report shows the table it returned, on the node.
    report = editor.ids("PipeQuantMemoryReport")[0]
    editor.page.wait_for_function("(id) => (app.graph.getNodeById(id).pipequant.output || '').includes('TOTAL')",
                                  arg=report, timeout=30_000)
    time.sleep(0.5)
    panel = editor.node(report)["panel"]
    assert panel[0].split()[:3] == ["component", "class", "plan"] and any(l.startswith("TOTAL") for l in panel), panel
    editor.tidy()
    editor.screenshot("after-run")


def test_readme_screenshot(editor):
    """A clear picture of the editor for the README: the mixed example, made valid on this CPU
    machine (bitsandbytes needs a GPU: quanto int4 for the transformer), with its estimate."""
    editor.load(example("flux_mixed_components"), "readme")
    first = min(editor.ids(BACKEND))
    editor.click_widget(first, "backend")
    editor.choose("quanto")
    editor.click_widget(first, "quant_type")
    editor.choose("int4")
    editor.set_widget(first, "options", "{}")
    load = editor.node(min(editor.ids(LOAD)))
    assert load["estimate"] is not None and not load["problems"], load
    editor.tidy()
    path = editor.screenshot("readme", clip=editor.nodes_box())
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, README_SHOT)
