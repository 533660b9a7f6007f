"""HTTP routes for the graph editor (web/js/, server.mjs asks them): the catalogue, a pipeline's components,
live validation and the memory estimate. Plain aiohttp handlers over the resolver, testable without
ComfyUI; `register()` adds them to ComfyUI's server when there is one.

The editor sends the quantization spec the way the graph holds it: a Quantization Backend's raw
widget text ({"kind": "global", "options": "{...}", "components": "a, b"}) and each Per-Component
Map as {"kind": "map", "component", "config", "map"}, every part tagged with its node id. The
server evaluates it with the resolver's rules (the ones the nodes apply) and returns every problem
tagged with the node (and input) at fault. `spec.to_dict()` JSON is accepted as well.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections.abc import Mapping
from functools import partial

try:
    from aiohttp import web
except ImportError:  # the headless runner and the CLI do not need aiohttp
    web = None

from ..resolver.constants import KEEP, NOT_A_MODEL, PREQUANTIZED, QUANTIZE
from ..resolver.decide import VIDEO_INPUTS, prepare, video_inputs
from ..resolver.files import inspect_model, refused_pipelines, resolve_model
from ..resolver.keep import folder_problems, plan_problems
from ..resolver.known import catalogue
from ..resolver.links import (
    GLOBAL,
    GRANULAR,
    NO_FILE,
    ComponentMap,
    chain,
    parse_components,
    parse_options,
    spec_from_dict,
)
from ..resolver.problems import BACKEND, SPEC, Problem, ValidationError, errors
from ..resolver.problems import MAP as MAP_PART
from ..resolver.safe_files import json_depth
from . import host
from .load import DEFAULTS as LOAD_DEFAULTS
from .prompt_checks import on_prompt

PREFIX = "/pipequant"
MAX_BODY = 64 * 1024  # a spec is a few hundred bytes; anything near this is not from the editor
MAX_CHAIN = 64  # nested Per-Component Maps
MAX_NAME = 512
WORK_SECONDS = 60
MAX_DEPTH = 4 * MAX_CHAIN + 16  # a map chain nests two levels per map; anything deeper is not from the editor
MAP = "map"  # a Per-Component Map node, as the editor sends it
MAX_SAVES = 16  # Save nodes fed by one Load node
MAX_CONSUMERS = 64  # nodes that check the model a Load node feeds them (bridge nodes, Samplers)


class BadRequest(Exception):
    """The request itself is malformed (not the user's plan): answered with a 4xx."""

    def __init__(self, message: str, problems: list[Problem] = (), status: int = 400):
        super().__init__(message)
        self.problems, self.status = list(problems), status


def _shape(field: str, message: str, suggestion: str = "") -> BadRequest:
    return BadRequest(message, [Problem("request_malformed", field, message, suggestion)])


# -- reading requests ---------------------------------------------------------------------
async def read_json(request) -> dict:
    """The JSON object in the body, at most MAX_BODY bytes (also when no length is declared)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _too_large()
    body, size = [], 0
    while chunk := await request.content.read(16384):
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        body.append(chunk)
    try:
        data = json.loads(b"".join(body))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _shape("body", f"the body is not valid JSON ({str(exc)[:120]})", "send a JSON object") from None
    if not isinstance(data, dict):
        raise _shape(
            "body", f"the body must be a JSON object, got {type(data).__name__}", '{"model": ..., "spec": ...}'
        )
    if json_depth(data) > MAX_DEPTH:
        raise _shape("body", f"the body nests more than {MAX_DEPTH} levels deep", "send the spec as the editor does")
    return data


def _too_large() -> BadRequest:
    return BadRequest(
        f"the body is larger than {MAX_BODY} bytes",
        [
            Problem(
                "body_too_large",
                "body",
                f"the body is larger than {MAX_BODY} bytes",
                "send only the model name and the spec",
            )
        ],
        status=413,
    )


def _string(data: Mapping, key: str, default: str | None) -> str | None:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise _shape(key, f'"{key}" must be a string of at most {MAX_NAME} characters', f'"{key}": "..."')
    return value


def _node_id(entry: Mapping):
    node = entry.get("node")
    if node is not None and not (isinstance(node, (str, int)) and not isinstance(node, bool)):
        raise _shape("node", '"node" must be a node id (string or number)')
    return node


# -- the spec, as the editor sends it -------------------------------------------------------
class SpecReader:
    """Turns the editor's spec into the spec object the Load node would receive, running the same
    parsing and Per-Component Map code as the nodes, and remembers which node owns which part."""

    def __init__(self):
        self.problems: list[dict] = []
        self.top = None  # node id of the part connected to the Load node
        self.maps: dict[str, tuple] = {}  # component -> (map node id, config node id)

    def add(self, problems, node, part: str | None = None) -> None:
        self.problems += [tagged(p, node, part=part) for p in problems]

    def read(self, entry):
        if entry is None:
            return None
        if not isinstance(entry, Mapping):
            raise _shape("spec", f"a spec must be a JSON object or null, got {type(entry).__name__}")
        self.top = _node_id(entry)
        return self._entry(entry, 0)

    def _entry(self, entry, depth: int):
        if entry is None:
            return None
        if not isinstance(entry, Mapping):
            raise _shape("spec", f"a spec part must be a JSON object or null, got {type(entry).__name__}")
        if depth > MAX_CHAIN:
            raise _shape("spec", f"more than {MAX_CHAIN} chained Per-Component Maps")
        kind = entry.get("kind", GLOBAL)
        if kind == GLOBAL:
            return self._global(entry, _node_id(entry))
        if kind == MAP:
            return self._map(entry, depth)
        if kind == GRANULAR:
            both = [k for k in ("backend", "quant_type") if k in entry]
            if both:  # diffusers and spec_from_dict refuse it too: neither part would silently win
                message = f'a spec cannot be both granular (a "components" map) and global (it has "{both[0]}")'
                raise BadRequest(
                    message,
                    [
                        Problem(
                            "spec_global_and_granular",
                            "kind",
                            message,
                            'drop "backend" and "quant_type", or use "kind": "global"',
                        )
                    ],
                )
            components = entry.get("components")
            if not isinstance(components, Mapping):
                raise _shape("components", 'a granular spec needs a "components" object')
            node = _node_id(entry)
            mapping = {}
            for name, part in components.items():
                spec = self._global(part, node) if part is not None else None
                mapping[str(name)] = spec
                self.maps[str(name)] = (node, node)
            return ComponentMap.make(mapping)
        raise _shape("kind", f'unknown spec kind "{kind}"', 'use "global", "granular" or "map"')

    def _global(self, entry, node):
        """A Quantization Backend: its widget text parsed as the node parses it."""
        if not isinstance(entry, Mapping):
            raise _shape("spec", "a backend spec must be a JSON object")
        raw = {k: v for k, v in entry.items() if k != "node"}
        found: list[Problem] = []
        if isinstance(raw.get("components"), str):
            names, more = parse_components(raw["components"])
            raw["components"], found = (list(names) if names is not None else None), found + more
        if isinstance(raw.get("options"), str):
            raw["options"], more = parse_options(
                raw["options"], catalogue.options_example(raw.get("backend"), raw.get("quant_type"))
            )
            found += more
        if raw.get("gguf_file") in (NO_FILE, ""):
            raw["gguf_file"] = None
        if found:
            self.add(found, node)
            return None
        try:
            return spec_from_dict({**raw, "kind": GLOBAL})
        except ValidationError as exc:
            raise BadRequest("malformed backend spec", exc.problems) from None

    def _map(self, entry, depth: int):
        """A Per-Component Map node: chained by `compose.chain`, the rules the node itself applies."""
        node = _node_id(entry)
        component = entry.get("component")
        if not isinstance(component, str) or len(component) > MAX_NAME:
            raise _shape("component", 'a map needs "component", a string')
        config_entry = entry.get("config")
        config = self._entry(config_entry, depth + 1)
        upstream = self._entry(entry.get("map"), depth + 1)
        names, found = parse_components(component)
        if not found and (names is None or len(names) != 1):
            found = [
                Problem(
                    "component_syntax",
                    "component",
                    f"{component!r} is not a component name",
                    'one name, e.g. "transformer" or "text_encoder_2"',
                )
            ]
        if found:
            self.add([Problem("component_syntax", "component", p.message, p.suggestion) for p in found], node, MAP_PART)
            return upstream
        try:
            result = chain(component, config, upstream)
        except ValidationError as exc:  # the Map node's own inputs (component, config, map)
            self.add(exc.problems, node, MAP_PART)
            return upstream
        config_node = _node_id(config_entry) if isinstance(config_entry, Mapping) else None
        self.maps[names[0]] = (node, config_node if config is not None else node)
        return result

    def owner(self, problem: Problem):
        """(node id, input name) for a problem found by validating the whole spec."""
        if problem.input == "pipeline" and problem.component:  # a Save rule: the Backend that quantizes it
            return self.maps.get(problem.component, (self.top, self.top))[1], "backend"
        if problem.part in (BACKEND, MAP_PART):
            map_node, config_node = self.maps.get(problem.entry, (self.top, self.top))
            return (config_node if problem.part == BACKEND else map_node), problem.input
        if problem.part == SPEC:
            return self.top, problem.input
        return None, problem.input  # the Load node's own inputs (model, dtype, device, offload)


def tagged(problem: Problem, node, field: str | None = None, part: str | None = None) -> dict:
    """The problem as the editor places it: on `node`, at its input `field`; `part` when the node's
    kind is known here and not from the problem (a Map's own rules, checked before the plan is)."""
    out = {**problem.to_dict(), "node": node, "input": field if field is not None else problem.field}
    if part is not None:
        out["part"] = part
    return out


# -- the work, run off the event loop --------------------------------------------------------
def _options(data: dict) -> dict:
    """The Load node's own inputs, as its `prepared` passes them to `decide.prepare` (its defaults
    where the editor sent none)."""
    device = _string(data, "device", LOAD_DEFAULTS["device"])
    allow_pickle = data.get("allow_pickle", LOAD_DEFAULTS["allow_pickle"])
    if not isinstance(allow_pickle, bool):
        raise _shape("allow_pickle", '"allow_pickle" must be true or false')
    return {
        "dtype": _string(data, "dtype", LOAD_DEFAULTS["dtype"]),
        "device": host.device_for(device),
        "offload": _string(data, "offload", LOAD_DEFAULTS["offload"]),
        "allow_pickle": allow_pickle,
        "compile": _string(data, "compile", LOAD_DEFAULTS["compile"]),
        "variant": _string(data, "variant", LOAD_DEFAULTS["variant"]),
    }


def _check(data: dict, plan: bool = False):
    """The Load node's verdict (`decide.prepare`, as the node reaches it), every problem tagged with
    the node (and input) at fault."""
    reader = SpecReader()
    spec = reader.read(data.get("spec"))
    name = _string(data, "model", None)
    prepared = prepare(name, spec, roots=host.model_roots(), gguf_roots=host.gguf_roots(), plan=plan, **_options(data))
    for p in prepared.problems:
        node, field = reader.owner(p)
        reader.problems.append(tagged(p, node, field))
    result = {
        "model": name,
        "spec": spec.to_dict() if spec is not None else None,
        "problems": reader.problems,
        "ok": not any(p["severity"] == "error" for p in reader.problems),
    }
    consumers = _consumers(data)
    if prepared.model is not None:
        # What the nodes it feeds make of this model (they do not block the Load node's estimate).
        result["problems"] = reader.problems + _consumer_problems(consumers, prepared.model)
        result["pipeline"] = {"class": prepared.model.pipeline_class, "video_inputs": video_inputs(prepared.model)}
    return result, prepared, reader


CONSUMER_INPUTS = ("width", "height", "num_frames")  # the numbers a consumer's check_model reads
CONSUMER_TEXTS = ("components",)  # and its texts (Plan Quality Check)


def _consumers(data: dict) -> list[tuple]:
    """The nodes the Load node's pipeline reaches (through Apply LoRA) that check the model before
    Run: [(node id, node type, {input: value})]."""
    consumers = data.get("consumers", [])
    if not isinstance(consumers, list) or len(consumers) > MAX_CONSUMERS:
        raise _shape("consumers", f'"consumers" must be a list of at most {MAX_CONSUMERS} nodes')
    out = []
    for entry in consumers:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("inputs", {}), Mapping):
            raise _shape("consumers", '"consumers" entries are {"node": id, "type": "...", "inputs": {...}}')
        inputs = {
            k: v
            for k, v in entry.get("inputs", {}).items()
            if (k in CONSUMER_INPUTS and isinstance(v, int) and not isinstance(v, bool))
            or (k in CONSUMER_TEXTS and isinstance(v, str) and len(v) <= MAX_NAME)
        }
        out.append((_node_id(entry), _string(entry, "type", ""), inputs))
    return out


def _consumer_problems(consumers, model) -> list[dict]:
    """Each consumer's `check_model` on the Load node's model, tagged with the consumer."""
    from . import NODE_CLASS_MAPPINGS

    out = []
    for node, node_type, inputs in consumers:
        check = getattr(NODE_CLASS_MAPPINGS.get(node_type), "check_model", None)
        if check is not None:
            out += [tagged(p, node) for p in check(model, **inputs)]
    return out


def check(data: dict) -> dict:
    """Every problem of loading `data["model"]` with `data["spec"]`, each tagged with its node."""
    return _check(data)[0]


def estimate(data: dict) -> dict:
    """The plan's bytes per component before and after quantization (null while it has errors)."""
    if _string(data, "model", None) is None:
        raise _shape("model", 'an estimate needs "model"', "pick a pipeline on the Load node")
    result, prepared, spec_owner = _check(data, plan=True)
    result["estimate"] = None
    if result["ok"] and prepared.plan is not None:
        plan = prepared.plan
        try:
            result["estimate"] = {**prepared.estimate(), "dtype": plan.dtype, "device": plan.device}
        except ValidationError as exc:  # a config that cannot be built within bounds (files/meta_build.py)
            result["problems"] += [tagged(p, None) for p in errors(exc.problems)]
            result["ok"] = False
            return result
        result["problems"] += [tagged(p, None) for p in prepared.fit_problems()]  # on the Load node
        result["ok"] = not any(p["severity"] == "error" for p in result["problems"])
        saves = _saves(data)
        if saves:
            result["problems"] += _save_problems(saves, plan, spec_owner)
            result["ok"] = not any(p["severity"] == "error" for p in result["problems"])
    return result


def _saves(data: dict) -> list[tuple]:
    """The Save Quantized Pipeline nodes the Load node feeds: [(node id, folder name)]."""
    saves = data.get("save", [])
    if not isinstance(saves, list) or len(saves) > MAX_SAVES:
        raise _shape("save", f'"save" must be a list of at most {MAX_SAVES} Save nodes')
    out = []
    for entry in saves:
        if not isinstance(entry, Mapping):
            raise _shape("save", '"save" entries are {"node": id, "folder_name": "..."}')
        out.append((_node_id(entry), _string(entry, "folder_name", "")))
    return out


def _save_problems(saves, plan, reader) -> list[dict]:
    """The Save node's rules, before Run: its folder on the Save node; what cannot be saved on the
    Backend that quantizes it, and on the Save node too (that is where Run would fail)."""
    roots = host.model_roots()  # as the Save node checks: free in every root, the Hugging Face cache included
    found = plan_problems(plan)
    out = []
    for node, folder_name in saves:
        out += [tagged(p, node) for p in folder_problems(folder_name, roots)]  # free in every root
        out += [tagged(p, node) for p in found]
    for p in found:
        owner, field = reader.owner(p)
        if owner is not None:
            out.append(tagged(p, owner, field))
    return out


def auto_plan(data: dict) -> dict:
    """The Auto Quantization Plan node's plan before Run: its table, components and predicted peak."""
    from ..resolver.decide import NothingFits, plan_for

    name = _string(data, "model", None)
    if name is None or len(name) > MAX_NAME:
        raise _shape("model", 'a plan needs "model"', "pick a pipeline on the node")
    keys = ("budget_gb", "goal", "width", "height", "batch_size", "allow_offload", "num_frames")
    inputs = {k: data[k] for k in keys if k in data}
    variant = _string(data, "variant", None)
    if variant is not None:
        inputs["variant"] = variant
    try:
        result = plan_for(resolve_model(name, host.model_roots()), **inputs)
    except NothingFits as exc:
        return {"ok": False, "fits": False, "error": str(exc), "smallest_peak_bytes": exc.smallest_peak, "problems": []}
    except ValidationError as exc:
        return {
            "ok": False,
            "fits": False,
            "error": exc.problems[0].message if exc.problems else str(exc),
            "problems": [p.to_dict() for p in exc.problems],
        }
    return {"ok": True, **result.to_json(), "table": result.table()}


def components(name: str) -> dict:
    folder = resolve_model(name, host.model_roots())
    return {"model": name, **inspect_model(folder).describe()}


# -- handlers ---------------------------------------------------------------------------------
def _json(data, status: int = 200):
    return web.json_response(data, status=status)


def _error(exc: BadRequest | ValidationError, status: int = 400):
    problems = exc.problems
    message = str(exc) if isinstance(exc, BadRequest) else (problems[0].message if problems else str(exc))
    return _json({"error": message, "problems": [p.to_dict() for p in problems]}, getattr(exc, "status", status))


async def _off_loop(fn, *args):
    """Run `fn` in a worker thread, so the server's event loop keeps answering; give up waiting
    after WORK_SECONDS (the work itself is bounded too: resolver/meta_build.py, safe_files.py)."""
    future = asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))
    try:
        return await asyncio.wait_for(future, WORK_SECONDS)
    except asyncio.TimeoutError:
        raise BadRequest(
            f"the request took longer than {WORK_SECONDS} s",
            [
                Problem(
                    "request_timeout",
                    "model",
                    f"inspecting the model took longer than {WORK_SECONDS} s",
                    "the model folder is unusually large or slow to read: check it",
                )
            ],
            status=503,
        ) from None


def editor_catalogue() -> dict:
    """The backend catalogue, plus what the editor must not keep copies of: each node's inputs in
    order with their defaults, the "no file" entry, the plan's action names, this server's device."""
    from . import NODE_CLASS_MAPPINGS

    inputs, defaults = {}, {}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        entries = {**declared.get("required", {}), **declared.get("optional", {})}
        inputs[node_id] = list(entries)
        defaults[node_id] = {
            name: spec[1]["default"]
            for name, spec in entries.items()
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]
        }
    device = host.default_device()
    actions = {
        "quantize": QUANTIZE,
        "keep": KEEP,
        "prequantized": PREQUANTIZED,
        "not_a_model": NOT_A_MODEL,
        **{b.name: b.name for b in catalogue.file_backends()},
    }  # a file backend's name is its action
    refused = [{"name": name, "reason": why} for name, why in refused_pipelines(host.model_roots())]
    # Nodes whose check the Load node's live check runs on its model (consumers), and those that
    # pass a pipeline on (a `pipeline` input and the same type out: Apply LoRA).
    model_checks = [node_id for node_id, cls in NODE_CLASS_MAPPINGS.items() if hasattr(cls, "check_model")]
    passers = [
        node_id
        for node_id, cls in NODE_CLASS_MAPPINGS.items()
        if cls.RETURN_TYPES[:1] == (cls.INPUT_TYPES().get("required", {}).get("pipeline", (None,))[0],)
    ]
    return {
        **catalogue.describe(),
        "editor": {
            "inputs": inputs,
            "defaults": defaults,
            "no_file": NO_FILE,
            "actions": actions,
            "device": device,
            "refused": refused,
            "model_checks": model_checks,
            "pipeline_passers": passers,
            "video_inputs": list(VIDEO_INPUTS),
        },
    }


def log_refused_folders() -> list[tuple[str, str]]:
    """One log line per pipeline folder left out of the model list, and why (at startup)."""
    refused = refused_pipelines(host.model_roots())
    for name, why in refused:
        logging.getLogger("pipequant").warning("[PipeQuant] pipeline folder %r is not listed: %s", name, why)
    return refused


async def get_backends(request):
    return _json(await _off_loop(editor_catalogue))


async def get_components(request):
    name = request.query.get("model")
    if not name or len(name) > MAX_NAME:
        return _error(_shape("model", "pass ?model=<pipeline name from the model list>"))
    try:
        return _json(await _off_loop(components, name))
    except (ValidationError, BadRequest) as exc:
        return _error(exc)


def _json_handler(work):
    """A POST handler: a bounded JSON body in, `work(body)` run off the event loop, JSON out."""

    async def handler(request):
        try:
            data = await read_json(request)
            return _json(await _off_loop(work, data))
        except BadRequest as exc:
            return _error(exc)

    return handler


post_validate = _json_handler(check)
post_estimate = _json_handler(estimate)
post_plan = _json_handler(auto_plan)


ROUTES = (
    ("GET", PREFIX + "/backends", get_backends),
    ("GET", PREFIX + "/components", get_components),
    ("POST", PREFIX + "/validate", post_validate),
    ("POST", PREFIX + "/estimate", post_estimate),
    ("POST", PREFIX + "/plan", post_plan),
)


def add_routes(table) -> None:
    """Add the handlers to an aiohttp RouteTableDef (ComfyUI's) or an app's router."""
    for method, path, handler in ROUTES:
        if hasattr(table, "add_route"):
            table.add_route(method, path, handler)
        else:
            table.route(method, path)(handler)


def register() -> bool:
    """Inside a ComfyUI server, add the routes to it; elsewhere (tests, CLI), do nothing."""
    try:
        from server import PromptServer  # ComfyUI's server module
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None or web is None:
        return False
    add_routes(instance.routes)
    if hasattr(instance, "add_on_prompt_handler"):  # the checks ComfyUI's own validation cannot make
        from . import NODE_CLASS_MAPPINGS

        instance.add_on_prompt_handler(lambda data: on_prompt(data, NODE_CLASS_MAPPINGS, host.model_roots()))
    # web/js/pipequant.js imports logic.mjs: some Pythons do not know .mjs, and browsers refuse
    # a module served as application/octet-stream.
    mimetypes.add_type("text/javascript", ".mjs")
    log_refused_folders()
    return True
