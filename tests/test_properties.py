"""Property: whatever a spec, a node input, a workflow or an editor request holds, validation
either accepts it or raises the pack's own error (ValidationError; for malformed HTTP requests,
the routes' BadRequest). No TypeError, KeyError, AttributeError or RecursionError ever escapes,
and a spec that validates also plans and estimates without error.

Inputs are drawn from the real vocabulary (backend names, quant types, option names, component
names, devices) mixed with arbitrary JSON, so that most examples get deep into validation
rather than failing at the first check.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipequant.nodes import routes
from pipequant.nodes.backend import PipeQuantBackend
from pipequant.nodes.component_map import PipeQuantComponentMap
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.resolver import BackendSpec, ComponentMap, ValidationError, plan_load
from pipequant.resolver.decide.estimate import estimate
from pipequant.resolver.decide.validate import validate
from pipequant.resolver.files import inspect_model
from pipequant.resolver.known import catalogue
from pipequant.resolver.links.inputs import spec_from_inputs
from pipequant.resolver.links.spec import spec_from_dict, spec_from_json
from pipequant.resolver.problems import Problem, errors
from pipequant.runner.execute import ALL_NODES, execute
from pipequant.runner.workflow import read_workflow, to_api

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"
# The default run is fixed (derandomized) and fast; PIPEQUANT_PROPERTY_EXAMPLES=2000 explores
# further with a random seed (about a minute per thousand examples on 2 cores).
_EXAMPLES = os.environ.get("PIPEQUANT_PROPERTY_EXAMPLES")
FAST = settings(
    max_examples=int(_EXAMPLES or 60),
    deadline=None,
    derandomize=_EXAMPLES is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- vocabulary -------------------------------------------------------------------------------------
BACKENDS = catalogue.backend_names()
QUANT_TYPES = sorted(catalogue.all_quant_types())
OPTIONS = sorted({o.name for b in BACKENDS for o in catalogue.get_backend(b).options})
COMPONENTS = [
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "vae",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
    "unet",
    "image_encoder",
]
GGUF_NAMES = ["tiny-flux-transformer-Q8_0.gguf", "none", "missing.gguf", "../secret.gguf", "/etc/passwd"]
WORDS = (
    BACKENDS
    + QUANT_TYPES
    + OPTIONS
    + COMPONENTS
    + GGUF_NAMES
    + [
        "auto",
        "bfloat16",
        "float16",
        "float32",
        "cpu",
        "cuda",
        "cuda:0",
        "cuda:9",
        "none",
        "model",
        "sequential",
        "global",
        "granular",
        "map",
        "tiny-flux",
        "../tiny-flux",
        "",
        " ",
        "{}",
        "[]",
        "null",
        "per_row",
    ]
)

names = st.sampled_from(WORDS) | st.text(max_size=10)
leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | names
)
json_value = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4), max_leaves=10
)
option_values = st.dictionaries(st.sampled_from(OPTIONS) | names, json_value, max_size=3)

global_dict = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.just("global") | json_value,
        "backend": st.sampled_from(BACKENDS) | json_value,
        "quant_type": st.sampled_from(QUANT_TYPES) | json_value,
        "compute_dtype": st.sampled_from(["auto", "bfloat16", "float16", "float32", "fp8"]) | json_value,
        "options": option_values | json_value,
        "components": st.none() | st.lists(st.sampled_from(COMPONENTS) | names, max_size=4) | json_value,
        "gguf_file": st.sampled_from(GGUF_NAMES) | json_value,
    },
)
spec_dicts = global_dict | st.fixed_dictionaries(
    {"kind": st.just("granular")},
    optional={
        "components": st.dictionaries(
            st.sampled_from(COMPONENTS) | names, st.none() | global_dict | json_value, max_size=4
        )
        | json_value,
        "backend": names,
    },
)
load_settings = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["bfloat16", "float16", "float32"]) | json_value,
        "device": st.sampled_from(["cpu", "auto", "cuda", "cuda:3"]) | json_value,
        "offload": st.sampled_from(["none", "model", "sequential"]) | json_value,
    }
)


class World(dict):
    def __repr__(self) -> str:  # keeps hypothesis' falsifying examples readable
        return "<tiny-flux world>"


@pytest.fixture(scope="module")
def world(tiny_flux, flux_gguf, models_root):
    """The model and GGUF folders, configured for the whole module (hypothesis re-runs the body)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPEQUANT_MODELS", str(models_root))
        mp.setenv("PIPEQUANT_GGUF", str(flux_gguf.parent))
        yield World(model=inspect_model(tiny_flux), folder=tiny_flux, gguf=[flux_gguf.parent])


def _only_problems(found) -> None:
    assert isinstance(found, list) and all(isinstance(p, Problem) for p in found)
    for p in found:
        assert p.code and isinstance(p.field, str) and str(p)


# -- specs ---------------------------------------------------------------------------------------------
@FAST
@given(data=spec_dicts | json_value, where=load_settings)
def test_random_specs_validate_or_raise_validation_error(world, data, where):
    try:
        spec = spec_from_dict(data)
        found = validate(spec, world["model"], gguf_roots=world["gguf"], **where)
    except ValidationError:
        return
    _only_problems(found)
    if not errors(found):
        # Validation said yes: planning and the memory estimate must work too.
        try:
            plan = plan_load(world["folder"], spec, gguf_roots=world["gguf"], **where)
        except ValidationError:
            pytest.fail("validate() found no error but plan_load() raised")
        assert estimate(plan)["components"]


@FAST
@given(text=st.text(max_size=60) | json_value.map(json.dumps) | st.integers(1, 3000).map(lambda n: "[" * n))
def test_random_spec_json(text):
    try:
        spec_from_json(text)
    except ValidationError:
        pass


# -- node inputs -----------------------------------------------------------------------------------------
widget = names | json_value
backend_inputs = st.fixed_dictionaries(
    {
        "backend": st.sampled_from(BACKENDS) | widget,
        "quant_type": st.sampled_from(QUANT_TYPES) | widget,
        "compute_dtype": st.sampled_from(["auto", "bfloat16"]) | widget,
        "components": st.sampled_from(["", "transformer", "vae, transformer"]) | widget,
        "options": option_values.map(json.dumps) | widget,
        "gguf_file": st.sampled_from(GGUF_NAMES) | widget,
    }
)


@FAST
@given(inputs=backend_inputs, where=load_settings)
def test_random_backend_node_inputs(world, inputs, where):
    result = PipeQuantBackend.check(**inputs)
    assert result is True or (isinstance(result, str) and result.problems)
    try:
        (spec,) = PipeQuantBackend().build(**inputs)
    except ValidationError:
        return
    spec_inputs = spec_from_inputs(**inputs)
    assert spec_inputs[0] == spec
    _only_problems(validate(spec, world["model"], gguf_roots=world["gguf"], **where))


configs = (
    st.none()
    | st.builds(
        BackendSpec.make, st.sampled_from(BACKENDS) | names, st.sampled_from(QUANT_TYPES) | names, options=option_values
    )
    | widget
)


@FAST
@given(
    chain=st.lists(st.tuples(st.sampled_from(COMPONENTS) | widget, configs, st.booleans(), widget), max_size=5),
    where=load_settings,
)
def test_random_per_component_map_chains(world, chain, where):
    upstream = None
    for component, config, use_upstream, junk in chain:
        assert (
            PipeQuantComponentMap.VALIDATE_INPUTS(component) is True
            or PipeQuantComponentMap.VALIDATE_INPUTS(component).problems
        )
        try:
            (upstream,) = PipeQuantComponentMap().build(component, config, upstream if use_upstream else junk)
        except ValidationError:
            continue
        assert isinstance(upstream, ComponentMap)
    if upstream is not None:
        _only_problems(validate(upstream, world["model"], gguf_roots=world["gguf"], **where))


@FAST
@given(
    model=st.sampled_from(["tiny-flux", "../tiny-flux", "tiny-flx", ""]) | widget,
    where=load_settings,
    allow_pickle=st.booleans() | widget,
)
def test_random_load_node_inputs(world, model, where, allow_pickle):
    result = PipeQuantLoadPipeline.check(model, allow_pickle=allow_pickle, **where)
    assert result is True or (isinstance(result, str) and result.problems)
    assert isinstance(PipeQuantLoadPipeline.IS_CHANGED(model), str)


# -- workflows -----------------------------------------------------------------------------------------------
BASE_API = {
    "1": {
        "class_type": "PipeQuantBackend",
        "inputs": {
            "backend": "torchao",
            "quant_type": "int8_weight_only",
            "compute_dtype": "auto",
            "components": "",
            "options": "{}",
        },
    },
    "2": {"class_type": "PipeQuantComponentMap", "inputs": {"component": "transformer", "config": ["1", 0]}},
    "3": {
        "class_type": "PipeQuantLoadPipeline",
        "inputs": {
            "model": "tiny-flux",
            "dtype": "bfloat16",
            "device": "cpu",
            "offload": "none",
            "quantization": ["2", 0],
        },
    },
    "4": {
        "class_type": "PipeQuantSampler",
        "inputs": {
            "pipeline": ["3", 0],
            "prompt": "cat",
            "negative_prompt": "",
            "steps": 2,
            "guidance_scale": 3.5,
            "width": 32,
            "height": 32,
            "seed": 0,
            "batch_size": 1,
        },
    },
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
    "6": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["3", 0]}},
}
INPUT_NAMES = sorted(
    {name for node in BASE_API.values() for name in node["inputs"]} | {"map", "gguf_file", "allow_pickle"}
)
node_ids = st.sampled_from(list(BASE_API) + ["7", "99", "x"])
links = st.tuples(node_ids, st.integers(-2, 3)).map(list)
edit = st.one_of(
    st.tuples(st.just("set"), node_ids, st.sampled_from(INPUT_NAMES), links | widget),
    st.tuples(st.just("drop-input"), node_ids, st.sampled_from(INPUT_NAMES), st.none()),
    st.tuples(st.just("drop-node"), node_ids, st.none(), st.none()),
    st.tuples(st.just("class"), node_ids, st.none(), st.sampled_from(list(ALL_NODES) + ["KSampler"]) | widget),
    st.tuples(st.just("replace"), node_ids, st.none(), json_value),
)


def _apply(prompt: dict, edits) -> dict:
    prompt = copy.deepcopy(prompt)
    for kind, node_id, name, value in edits:
        node = prompt.get(node_id)
        if kind == "set":
            node = prompt.setdefault(node_id, {"class_type": "PipeQuantComponentMap", "inputs": {}})
            if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
                node["inputs"][name] = value
        elif kind == "drop-input" and isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            node["inputs"].pop(name, None)
        elif kind == "drop-node":
            prompt.pop(node_id, None)
        elif kind == "class" and isinstance(node, dict):
            node["class_type"] = value
        elif kind == "replace":
            prompt[node_id] = value
    return prompt


def _validate_workflow(data) -> None:
    try:
        execute(to_api(data, ALL_NODES), validate_only=True)
    except ValidationError:
        pass


@FAST
@given(edits=st.lists(edit, max_size=4), wrap=st.booleans())
def test_random_api_workflows(world, edits, wrap):
    prompt = _apply(BASE_API, edits)
    _validate_workflow({"prompt": prompt} if wrap else prompt)


UI = json.loads((EXAMPLES / "FLUX per-component mix.json").read_text())
ui_edit = st.one_of(
    st.tuples(
        st.just("node-field"),
        st.integers(0, 9),
        st.sampled_from(["type", "inputs", "widgets_values", "mode", "id"]),
        widget,
    ),
    st.tuples(st.just("widget"), st.integers(0, 9), st.integers(0, 9), widget),
    st.tuples(st.just("slot-link"), st.integers(0, 9), st.integers(0, 2), st.integers(-1, 12) | widget),
    st.tuples(st.just("link"), st.integers(0, 9), st.integers(0, 5), widget),
    st.tuples(st.just("top"), st.sampled_from(["nodes", "links"]), st.none(), json_value),
    st.tuples(st.just("drop-node"), st.integers(0, 9), st.none(), st.none()),
)


def _apply_ui(edits) -> dict:
    data = copy.deepcopy(UI)
    nodes, links = data["nodes"], data["links"]
    for kind, a, b, value in edits:
        if kind == "top":
            data[a] = value
        elif kind == "drop-node" and a < len(nodes):
            nodes.pop(a)
        elif kind == "node-field" and a < len(nodes):
            nodes[a][b] = value
        elif kind == "widget" and a < len(nodes) and isinstance(nodes[a].get("widgets_values"), list):
            values = nodes[a]["widgets_values"]
            if b < len(values):
                values[b] = value
        elif kind == "slot-link" and a < len(nodes) and isinstance(nodes[a].get("inputs"), list):
            if b < len(nodes[a]["inputs"]) and isinstance(nodes[a]["inputs"][b], dict):
                nodes[a]["inputs"][b]["link"] = value
        elif kind == "link" and a < len(links) and isinstance(links[a], list) and b < len(links[a]):
            links[a][b] = value
    return data


@FAST
@given(edits=st.lists(ui_edit, max_size=4))
def test_random_ui_workflows(world, edits):
    _validate_workflow(_apply_ui(edits))


@FAST
@given(
    content=st.binary(max_size=200)
    | json_value.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 5000).map(lambda n: b'{"a":' * n)
)
def test_random_workflow_files(world, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workflow.json"
        path.write_bytes(content)
        try:
            _validate_workflow(read_workflow(path))
        except ValidationError:
            pass


# -- the editor's requests ---------------------------------------------------------------------------------------
editor_part = st.deferred(
    lambda: (
        st.none()
        | json_value
        | st.fixed_dictionaries(
            {"kind": st.sampled_from(["global", "map", "granular"]) | widget},
            optional={
                "node": st.integers(0, 9) | widget,
                "backend": st.sampled_from(BACKENDS) | widget,
                "quant_type": st.sampled_from(QUANT_TYPES) | widget,
                "options": option_values.map(json.dumps) | widget,
                "components": st.sampled_from(["", "transformer"]) | widget,
                "component": st.sampled_from(COMPONENTS) | widget,
                "config": editor_part,
                "map": editor_part,
                "gguf_file": st.sampled_from(GGUF_NAMES) | widget,
            },
        )
    )
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny-flux", "../tiny-flux", "nope"]) | widget,
        "spec": editor_part,
        "dtype": widget,
        "device": st.sampled_from(["cpu", "auto"]) | widget,
        "offload": widget,
    },
)


@FAST
@given(data=requests, which=st.sampled_from(["check", "estimate"]))
def test_random_editor_requests(world, data, which):
    try:
        answer = getattr(routes, which)(data)
    except routes.BadRequest as exc:
        assert all(isinstance(p, Problem) for p in exc.problems)
        return
    json.dumps(answer)  # what the handler sends must serialise
    assert isinstance(answer["problems"], list)
