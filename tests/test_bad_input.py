"""Bad input, as a table: every row is one malformed input to a node, the runner, an HTTP route or
the resolver, the exact error code it must produce, and what the message must say.

Each row names where the input goes (`node`, `runner`, `route`, `resolver`), the input, the
expected code (and any codes that legitimately come with it), and three things the user must be
told: which node, which input, and something that would be valid instead. Node and runner rows
check the text the user sees ("<Node> › <input>: message — fix"); route rows check the problem
objects the editor receives (node id + input + suggestion).

Nothing here loads weights: every row fails validation first. The model folder holds copies of
the tiny FLUX pipeline, some of them deliberately broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import HUGE_ARRAY_GGUF, forget_shape_facts, routes_client

from pipequant.nodes.backend import PipeQuantBackend
from pipequant.nodes.component_map import PipeQuantComponentMap
from pipequant.nodes.load import PipeQuantLoadPipeline
from pipequant.nodes.sampler import PipeQuantSampler
from pipequant.nodes.save import PipeQuantSavePipeline
from pipequant.resolver import BackendSpec, ComponentMap, spec_from_dict, spec_from_json
from pipequant.resolver.decide import validate
from pipequant.resolver.decide.estimate import estimate
from pipequant.resolver.files import inspect_model, meta_build
from pipequant.resolver.files.roots import resolve_model
from pipequant.resolver.keep.load import plan_load
from pipequant.resolver.known.backends.quanto import Quanto
from pipequant.resolver.problems import ValidationError, errors
from pipequant.runner import cli
from pipequant.runner.execute import execute
from pipequant.runner.workflow import read_workflow
from pipequant.testing import write_gguf

G = BackendSpec.make
BACKEND, MAP, LOAD = "Quantization Backend", "Per-Component Map", "Load Quantized Pipeline"
FED = f"{BACKEND} (feeding the map for"  # a map entry's backend settings are the Backend node's inputs
EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"


# -- the model folders the rows point at -----------------------------------------------------
@dataclass
class Env:
    root: Path  # the configured diffusers model folder
    gguf: Path  # the configured GGUF folder
    outside: Path  # a folder that is not a model root
    tmp: Path
    mp: pytest.MonkeyPatch


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def env_base(tmp_path_factory, tiny_flux, tiny_sd3, flux_gguf):
    root = tmp_path_factory.mktemp("bad-input-models")
    gguf = tmp_path_factory.mktemp("bad-input-gguf")
    outside = tmp_path_factory.mktemp("bad-input-outside")
    _copy(tiny_flux, root / "tiny-flux")

    broken = _copy(tiny_flux, root / "broken-index")
    (broken / "model_index.json").write_text('{"_class_name": "FluxPipeline", "transformer": ["diffusers", ')
    listed = _copy(tiny_flux, root / "index-is-a-list")
    (listed / "model_index.json").write_text('["FluxPipeline"]')
    bad_entry = _copy(tiny_flux, root / "index-bad-entry")
    index = json.loads((bad_entry / "model_index.json").read_text())
    index["transformer"] = ["diffusers"]
    (bad_entry / "model_index.json").write_text(json.dumps(index))
    custom = _copy(tiny_flux, root / "custom-code")
    index = json.loads((custom / "model_index.json").read_text())
    index["transformer"] = ["my_nodes.evil", "FluxTransformer2DModel"]
    (custom / "model_index.json").write_text(json.dumps(index))
    pickled = _copy(tiny_flux, root / "pickle-only")
    weights = pickled / "text_encoder" / "model.safetensors"
    weights.rename(pickled / "text_encoder" / "pytorch_model.bin")
    missing = _copy(tiny_flux, root / "no-weights")
    (missing / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    truncated = _copy(tiny_flux, root / "truncated")
    shard = truncated / "text_encoder_2" / "model.safetensors"
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data[: len(data) // 2])

    _hostile(root, tiny_flux)
    _copy(tiny_sd3, root / "tiny-sd3")

    shutil.copy(flux_gguf, gguf / flux_gguf.name)
    (gguf / "half.gguf").write_bytes(flux_gguf.read_bytes()[: flux_gguf.stat().st_size // 2])
    (gguf / "huge-array.gguf").write_bytes(HUGE_ARRAY_GGUF)
    (gguf / "not-a-gguf.gguf").write_bytes(b"this is a text file, not a GGUF model" * 10)
    write_gguf(tiny_sd3, "transformer", gguf / "sd3-transformer-Q8_0.gguf", "Q8_0")
    return root, gguf, outside


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _fake_header(path: Path, header: bytes) -> None:
    path.unlink()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)


def _hostile(root: Path, tiny_flux: Path) -> None:
    """Pipeline folders a stranger could hand over: each breaks one rule of issue 11."""

    def copy(name: str) -> Path:
        return _copy(tiny_flux, root / name)

    def index(name: str, **entries) -> None:
        _edit_json(copy(name) / "model_index.json", lambda d: d.update(entries))

    index("component-absolute", **{"/elsewhere/transformer": ["diffusers", "FluxTransformer2DModel"]})
    index("component-dotdot", **{"../../other/text_encoder": ["transformers", "CLIPTextModel"]})
    index("nested-pipeline", scheduler=["diffusers", "FluxPipeline"])
    index("undeclared-component", unet=["diffusers", "UNet2DConditionModel"])
    index("class-mismatch", transformer=["diffusers", "SD3Transformer2DModel"])
    fifo = copy("fifo-index")
    (fifo / "model_index.json").unlink()
    os.mkfifo(fifo / "model_index.json")
    for name, rel in (
        ("fifo-config", "transformer/config.json"),
        ("fifo-tokenizer", "tokenizer/tokenizer.json"),
        ("fifo-header", "vae/diffusion_pytorch_model.safetensors"),
    ):
        (copy(name) / rel).unlink()
        os.mkfifo(root / name / rel)
    device = copy("char-device")
    (device / "text_encoder" / "config.json").unlink()
    try:  # /dev/zero's numbers; a FIFO where mknod is not allowed (the row then checks the same rule)
        os.mknod(device / "text_encoder" / "config.json", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        os.mkfifo(device / "text_encoder" / "config.json")
    with open(copy("config-huge") / "transformer" / "config.json", "r+b") as f:
        f.truncate(20 * 1024 * 1024)  # sparse: 20 MB on paper
    (copy("config-not-json") / "transformer" / "config.json").write_text("num_layers = 1")
    (copy("config-a-list") / "transformer" / "config.json").write_text("[1, 2]")
    (copy("index-too-deep") / "model_index.json").write_text(
        '{"_class_name": "FluxPipeline", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    _edit_json(copy("field-wrong-type") / "transformer" / "config.json", lambda d: d.update(num_layers="many"))
    _edit_json(copy("absurd-layers") / "transformer" / "config.json", lambda d: d.update(num_layers=10**9))
    _edit_json(copy("absurd-t5") / "text_encoder_2" / "config.json", lambda d: d.update(num_layers=10**8))
    _edit_json(copy("absurd-width") / "transformer" / "config.json", lambda d: d.update(joint_attention_dim=10**10))
    _fake_header(copy("header-a-list") / "vae" / "diffusion_pytorch_model.safetensors", b"[1, 2, 3]")
    _fake_header(copy("header-too-deep") / "vae" / "diffusion_pytorch_model.safetensors", b"[" * 50_000 + b"]" * 50_000)
    _fake_header(
        copy("header-shape-text") / "vae" / "diffusion_pytorch_model.safetensors",
        b'{"w": {"dtype": "F32", "shape": "12", "data_offsets": [0, 48]}}',
    )
    (copy("symlink-loop") / "loop").symlink_to("loop")
    dangling = copy("dangling-weights")
    (dangling / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (dangling / "vae" / "diffusion_pytorch_model.safetensors").symlink_to(dangling / "vae" / "gone.safetensors")
    copy("slow-build")
    (root / "name-taken-later").mkdir()


@pytest.fixture
def env(env_base, tmp_path, monkeypatch):
    root, gguf, outside = env_base
    monkeypatch.setenv("PIPEQUANT_MODELS", str(root))
    monkeypatch.setenv("PIPEQUANT_GGUF", str(gguf))
    return Env(root, gguf, outside, tmp_path, monkeypatch)


# -- how each kind of row is run -------------------------------------------------------------
@dataclass
class Outcome:
    codes: list[str]
    text: str  # what the user reads
    tags: list[tuple] = field(default_factory=list)  # (node id, input) of route problems


def _validated(result) -> Outcome:
    """VALIDATE_INPUTS' answer: the string ComfyUI shows, which carries the problems' codes."""
    assert isinstance(result, str), "VALIDATE_INPUTS accepted bad input"
    return Outcome([p.code for p in result.problems], result)


def backend_validate(**inputs) -> Callable[[Env], Outcome]:
    """The Quantization Backend's VALIDATE_INPUTS (what ComfyUI shows on the node)."""

    def run(env: Env) -> Outcome:
        values = {
            "backend": "bitsandbytes_4bit",
            "quant_type": "nf4",
            "compute_dtype": "auto",
            "components": "",
            "options": "{}",
            "gguf_file": "none",
        } | inputs
        return _validated(PipeQuantBackend.check(**values))

    return run


def map_validate(component) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        return _validated(PipeQuantComponentMap.VALIDATE_INPUTS(component))

    return run


def map_build(*chain) -> Callable[[Env], Outcome]:
    """Run a chain of Per-Component Map nodes: (component, config, upstream map or None), ..."""

    def run(env: Env) -> Outcome:
        upstream = None
        for component, config, *explicit in chain:
            upstream_in = explicit[0] if explicit else upstream
            try:
                (upstream,) = PipeQuantComponentMap().build(component, config, upstream_in)
            except ValidationError as exc:
                return Outcome(exc.codes, str(exc))
        pytest.fail("the map chain was accepted")

    return run


def load_node(
    quantization=None, *, model="tiny-flux", dtype="bfloat16", device="cpu", offload="none", allow_pickle=False
) -> Callable[[Env], Outcome]:
    """Load Quantized Pipeline's run: validates the whole plan (upstream nodes included) first."""

    def run(env: Env) -> Outcome:
        spec = quantization(env) if callable(quantization) else quantization
        with torch.inference_mode():
            try:
                PipeQuantLoadPipeline().load(model, dtype, device, offload, spec, allow_pickle)
            except ValidationError as exc:
                return Outcome(exc.codes, str(exc))
        pytest.fail("the pipeline loaded")

    return run


def load_validate(*, model="tiny-flux", dtype="bfloat16", device="cpu", offload="none") -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        return _validated(PipeQuantLoadPipeline.check(model, dtype, device, offload))

    return run


# API-format workflow: Backend -> Map(transformer) -> Load -> Memory Report.
API = {
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
    "4": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["3", 0]}},
}


def api(*edits) -> dict:
    """A copy of API with edits: (node id, input, value) sets an input; (node id, None, dict) replaces a node."""
    prompt = copy.deepcopy(API)
    for node_id, name, value in edits:
        if name is None and value is None:
            prompt.pop(node_id, None)
        elif name is None:
            prompt[node_id] = value
        elif value is None:
            prompt[node_id]["inputs"].pop(name, None)
        else:
            prompt[node_id]["inputs"][name] = value
    return prompt


def sampled(model="tiny-flux", **sampler) -> dict:
    """API workflow: Load -> Sampler -> Preview, with the sampler's inputs edited."""
    inputs = {
        "pipeline": ["3", 0],
        "prompt": "cat",
        "negative_prompt": "",
        "steps": 1,
        "guidance_scale": 3.5,
        "width": 32,
        "height": 32,
        "seed": 0,
        "batch_size": 1,
    } | sampler
    return api(
        ("3", "model", model),
        ("3", "quantization", None),
        ("1", None, None),
        ("2", None, None),
        ("4", None, None),
        ("6", None, {"class_type": "PipeQuantSampler", "inputs": inputs}),
        ("7", None, {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}),
    )


def ui(edit: Callable[[dict], None]) -> dict:
    """The bundled per-component example (UI format), pointed at tiny-flux, with `edit` applied."""
    data = json.loads((EXAMPLES / "FLUX per-component mix.json").read_text())
    for node in data["nodes"]:
        if node["type"] == "PipeQuantLoadPipeline":
            node["widgets_values"][:3] = ["tiny-flux", "bfloat16", "cpu"]
    edit(data)
    return data


def _node(data: dict, kind: str) -> dict:
    return next(n for n in data["nodes"] if n["type"] == kind)


def workflow(content, *, validate_only: bool = True) -> Callable[[Env], Outcome]:
    """A workflow file (text, or data dumped as JSON) through the runner: read, convert, validate."""

    def run(env: Env) -> Outcome:
        path = env.tmp / "workflow.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        try:
            execute(cli.load_prompt(path), validate_only=validate_only)
        except ValidationError as exc:
            return Outcome(exc.codes, str(exc))
        pytest.fail("the workflow was accepted")

    return run


def set_override(*items: str, workflow_data=None) -> Callable[[Env], Outcome]:
    """`--set` items as the command line parses and applies them."""

    def run(env: Env) -> Outcome:
        path = env.tmp / "workflow.json"
        path.write_text(json.dumps(workflow_data or API))
        args = cli.build_parser().parse_args(["validate", str(path), *[a for i in items for a in ("--set", i)]])
        try:
            cli._user_prompt(args)
        except ValidationError as exc:
            return Outcome(exc.codes, str(exc))
        pytest.fail("the --set was accepted")

    return run


def node_check(node_class, **inputs) -> Callable[[Env], Outcome]:
    """A node's check of every input together (`check`, else its VALIDATE_INPUTS)."""

    def run(env: Env) -> Outcome:
        return _validated(getattr(node_class, "check", node_class.VALIDATE_INPUTS)(**inputs))

    return run


def resolver(fn: Callable[[Env], object]) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        try:
            result = fn(env)
        except ValidationError as exc:
            return Outcome(exc.codes, str(exc))
        problems = errors(result)
        assert problems, "no problem found"
        return Outcome([p.code for p in problems], "\n".join(str(p) for p in problems))

    return run


def _flux_model(env: Env):
    return inspect_model(env.root / "tiny-flux")


async def _http(method: str, path: str, body=None, query=None, raw: bytes | None = None):
    async with routes_client() as client:
        if method == "GET":
            response = await client.get(path, params=query)
        else:
            data = raw if raw is not None else json.dumps(body).encode()
            response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
        return response.status, await response.json()


def route(
    method: str, path: str, body=None, *, query=None, raw: bytes | None = None, status: int = 200
) -> Callable[[Env], Outcome]:
    """One HTTP request to the editor's routes; problems come back tagged with node id and input."""

    def run(env: Env) -> Outcome:
        got_status, data = asyncio.run(_http(method, path, body, query, raw))
        assert got_status == status, data
        problems = [p for p in data["problems"] if p.get("severity", "error") == "error"]
        if status == 200:
            assert data["ok"] is False
        text = "\n".join(
            f"node {p.get('node')} › {p.get('input', p['field'])}: {p['message']} — {p['suggestion']}" for p in problems
        )
        return Outcome(
            [p["code"] for p in problems], text, [(p.get("node"), p.get("input", p["field"])) for p in problems]
        )

    return run


def ui_spec(backend="torchao", quant_type="int8_weight_only", node=1, **more) -> dict:
    """A Quantization Backend as the editor sends it (raw widget text)."""
    return {
        "kind": "global",
        "node": node,
        "backend": backend,
        "quant_type": quant_type,
        "compute_dtype": "auto",
        "components": "",
        "options": "{}",
        **more,
    }


def ui_map(component, config=None, upstream=None, node=2) -> dict:
    return {"kind": "map", "node": node, "component": component, "config": config, "map": upstream}


# -- the catalogue ------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    where: str  # node | runner | route | resolver
    run: Callable[[Env], Outcome]
    code: str
    node: object  # node display name in the text (node/runner rows), node id (route rows), or None
    input: str  # the input named in the message
    valid: str  # a valid alternative the message offers
    also: tuple = ()  # other codes the same input legitimately produces
    setup: Callable[[Env], None] | None = None
    cpu_only: bool = False  # the input is only bad on a machine without a GPU


def _not_installed(env: Env) -> None:
    env.mp.setattr(Quanto, "installed", lambda self: False)


T8 = G("torchao", "int8_weight_only")
GGUF_OK = "tiny-flux-transformer-Q8_0.gguf"

CASES = [
    # ---- Quantization Backend node -------------------------------------------------------
    Case(
        "backend-unknown",
        "node",
        backend_validate(backend="bitsandbytes4bit"),
        "unknown_backend",
        BACKEND,
        "backend",
        'did you mean "bitsandbytes_4bit"',
    ),
    Case(
        "backend-unknown-no-guess",
        "node",
        backend_validate(backend="ao"),
        "unknown_backend",
        BACKEND,
        "backend",
        "torchao",
        also=(),
    ),
    Case(
        "quant-type-of-another-backend",
        "node",
        backend_validate(backend="torchao", quant_type="nf4"),
        "quant_type_wrong_backend",
        BACKEND,
        "quant_type",
        "torchao has: int8_weight_only",
    ),
    Case(
        "quant-type-of-another-backend-2",
        "node",
        backend_validate(backend="bitsandbytes_4bit", quant_type="int8_weight_only"),
        "quant_type_wrong_backend",
        BACKEND,
        "quant_type",
        "bitsandbytes_4bit has: nf4, fp4",
    ),
    Case(
        "quant-type-unknown",
        "node",
        backend_validate(backend="quanto", quant_type="int3"),
        "unknown_quant_type",
        BACKEND,
        "quant_type",
        "int8, int4, int2, float8",
    ),
    Case(
        "quant-type-legacy-string",
        "node",
        backend_validate(backend="torchao", quant_type="int8wo"),
        "unknown_quant_type",
        BACKEND,
        "quant_type",
        "int8_weight_only",
    ),
    Case(
        "options-not-json",
        "node",
        backend_validate(options="{double_quant: true}"),
        "options_not_json",
        BACKEND,
        "options",
        '{"double_quant": true}',
    ),
    Case(
        "options-python-syntax",
        "node",
        backend_validate(options="{'double_quant': True}"),
        "options_not_json",
        BACKEND,
        "options",
        "double quotes",
    ),
    Case(
        "options-deeply-nested",
        "node",
        backend_validate(options="[" * 100_000),
        "options_not_json",
        BACKEND,
        "options",
        "JSON object",
    ),
    Case(
        "options-a-list",
        "node",
        backend_validate(options='["double_quant"]'),
        "options_not_object",
        BACKEND,
        "options",
        "wrap it in braces",
    ),
    Case(
        "options-a-bool",
        "node",
        backend_validate(options="true"),
        "options_not_object",
        BACKEND,
        "options",
        "wrap it in braces",
    ),
    Case(
        "option-unknown-did-you-mean",
        "node",
        backend_validate(options='{"double_quantt": true}'),
        "unknown_option",
        BACKEND,
        "options.double_quantt",
        'did you mean "double_quant"',
    ),
    Case(
        "option-of-another-backend",
        "node",
        backend_validate(options='{"group_size": 64}'),
        "unknown_option",
        BACKEND,
        "options.group_size",
        "Valid: double_quant, modules_to_not_convert",
    ),
    Case(
        "option-on-optionless-backend",
        "node",
        backend_validate(backend="gguf", quant_type="from_file", options='{"double_quant": true}', gguf_file=GGUF_OK),
        "unknown_option",
        BACKEND,
        "options.double_quant",
        "takes no options: use {}",
    ),
    Case(
        "option-bool-as-string",
        "node",
        backend_validate(options='{"double_quant": "yes"}'),
        "option_type",
        BACKEND,
        "options.double_quant",
        "true or false",
    ),
    Case(
        "option-bool-as-int",
        "node",
        backend_validate(options='{"double_quant": 1}'),
        "option_type",
        BACKEND,
        "options.double_quant",
        "true or false",
    ),
    Case(
        "option-float-as-string",
        "node",
        backend_validate(backend="bitsandbytes_8bit", quant_type="int8", options='{"llm_int8_threshold": "6"}'),
        "option_type",
        BACKEND,
        "options.llm_int8_threshold",
        "e.g. 6.0",
    ),
    Case(
        "option-float-as-bool",
        "node",
        backend_validate(backend="bitsandbytes_8bit", quant_type="int8", options='{"llm_int8_threshold": true}'),
        "option_type",
        BACKEND,
        "options.llm_int8_threshold",
        "e.g. 6.0",
    ),
    Case(
        "option-above-range",
        "node",
        backend_validate(backend="bitsandbytes_8bit", quant_type="int8", options='{"llm_int8_threshold": 101}'),
        "option_range",
        BACKEND,
        "options.llm_int8_threshold",
        "from 0.0 to 100.0",
    ),
    Case(
        "option-below-range",
        "node",
        backend_validate(backend="bitsandbytes_8bit", quant_type="int8", options='{"llm_int8_threshold": -0.5}'),
        "option_range",
        BACKEND,
        "options.llm_int8_threshold",
        "from 0.0 to 100.0",
    ),
    Case(
        "option-nan",
        "node",
        backend_validate(backend="bitsandbytes_8bit", quant_type="int8", options='{"llm_int8_threshold": NaN}'),
        "option_range",
        BACKEND,
        "options.llm_int8_threshold",
        "from 0.0 to 100.0",
    ),
    Case(
        "option-not-a-choice",
        "node",
        backend_validate(backend="torchao", quant_type="int4_weight_only", options='{"group_size": 100}'),
        "option_choice",
        BACKEND,
        "options.group_size",
        "Valid: 32, 64, 128, 256",
    ),
    Case(
        "option-choice-typo",
        "node",
        backend_validate(backend="torchao", quant_type="float8_dynamic", options='{"granularity": "per_rows"}'),
        "option_choice",
        BACKEND,
        "options.granularity",
        'did you mean "per_row"',
    ),
    Case(
        "option-not-for-this-quant-type",
        "node",
        backend_validate(backend="torchao", quant_type="int8_weight_only", options='{"group_size": 64}'),
        "option_not_applicable",
        BACKEND,
        "options.group_size",
        "int8_weight_only takes: modules_to_not_convert",
    ),
    Case(
        "option-list-as-string",
        "node",
        backend_validate(options='{"modules_to_not_convert": "proj_out"}'),
        "option_type",
        BACKEND,
        "options.modules_to_not_convert",
        '["proj_out"]',
    ),
    Case(
        "option-list-of-numbers",
        "node",
        backend_validate(options='{"modules_to_not_convert": [1, 2]}'),
        "option_type",
        BACKEND,
        "options.modules_to_not_convert",
        '["proj_out"]',
    ),
    Case(
        "compute-dtype-unknown",
        "node",
        backend_validate(compute_dtype="fp16"),
        "compute_dtype_unknown",
        BACKEND,
        "compute_dtype",
        'did you mean "float16"',
    ),
    Case(
        "compute-dtype-unsupported",
        "node",
        backend_validate(backend="torchao", quant_type="int4_weight_only", compute_dtype="float16"),
        "compute_dtype_unsupported",
        BACKEND,
        "compute_dtype",
        "use bfloat16",
    ),
    Case(
        "components-syntax",
        "node",
        backend_validate(components="transformer; vae"),
        "components_syntax",
        BACKEND,
        "components",
        '"transformer, text_encoder_2"',
    ),
    Case(
        "components-path",
        "node",
        backend_validate(components="../transformer"),
        "components_syntax",
        BACKEND,
        "components",
        "separate names with commas",
    ),
    Case(
        "components-listed-twice",
        "node",
        backend_validate(components="vae, transformer, vae"),
        "components_duplicate",
        BACKEND,
        "components",
        "list each component once",
    ),
    Case(
        "backend-not-installed",
        "node",
        backend_validate(backend="quanto", quant_type="int8"),
        "backend_not_installed",
        BACKEND,
        "backend",
        "pip install optimum-quanto",
        setup=_not_installed,
    ),
    Case(
        "gguf-without-file",
        "node",
        backend_validate(backend="gguf", quant_type="from_file"),
        "gguf_file_required",
        BACKEND,
        "gguf_file",
        "diffusion_models",
    ),
    Case(
        "gguf-file-missing-on-backend",
        "node",
        backend_validate(backend="gguf", quant_type="from_file", gguf_file="tiny-flux-transformer-Q4_0.gguf"),
        "gguf_file_missing",
        BACKEND,
        "gguf_file",
        f'did you mean "{GGUF_OK}"',
    ),
    Case(
        "linked-backend-name",
        "node",
        backend_validate(backend=["5", 0]),
        "spec_malformed",
        BACKEND,
        "backend",
        "choose it from the list",
    ),
    # ---- Per-Component Map node ---------------------------------------------------------
    Case(
        "map-component-syntax",
        "node",
        map_validate("trans former"),
        "component_syntax",
        MAP,
        "component",
        '"transformer"',
    ),
    Case("map-component-empty", "node", map_validate("  "), "component_syntax", MAP, "component", '"text_encoder_2"'),
    Case(
        "map-granular-where-global-expected",
        "node",
        map_build(("text_encoder_2", ComponentMap.make({"transformer": T8}), None)),
        "expected_global",
        MAP,
        "config",
        "connect a Quantization Backend to `config`",
    ),
    Case(
        "map-global-where-map-expected",
        "node",
        map_build(("transformer", T8, T8)),
        "expected_map",
        MAP,
        "map",
        "connect it to `config` instead",
    ),
    Case(
        "map-backend-with-components",
        "node",
        map_build(("transformer", G("torchao", "int8_weight_only", components=["vae"]), None)),
        "components_in_map",
        MAP,
        "config",
        "clear the backend's components field",
    ),
    Case(
        "mapped-twice",
        "node",
        map_build(("transformer", T8), ("transformer", G("quanto", "int8"))),
        "component_mapped_twice",
        f"{MAP} (transformer)",
        "component",
        "remove one of the two Per-Component Map",
    ),
    Case(
        "mapped-twice-reversed",
        "node",
        map_build(("transformer", G("quanto", "int8")), ("transformer", T8)),
        "component_mapped_twice",
        f"{MAP} (transformer)",
        "component",
        "remove one of the two Per-Component Map",
    ),
    Case(
        "mapped-twice-unquantized-first",
        "node",
        map_build(("transformer", None), ("vae", None), ("transformer", T8)),
        "component_mapped_twice",
        f"{MAP} (transformer)",
        "component",
        "already mapped upstream",
    ),
    Case(
        "mapped-twice-same-config",
        "node",
        map_build(("vae", T8), ("vae", T8)),
        "component_mapped_twice",
        f"{MAP} (vae)",
        "component",
        "remove one of the two Per-Component Map",
    ),
    # ---- Load Quantized Pipeline node (validates the whole upstream plan) ----------------
    Case(
        "component-typo",
        "node",
        load_node(G("torchao", "int8_weight_only", components=["transfomer"])),
        "unknown_component",
        BACKEND,
        "components",
        'did you mean "transformer"',
    ),
    Case(
        "component-is-a-tokenizer",
        "node",
        load_node(G("torchao", "int8_weight_only", components=["tokenizer_2"])),
        "component_not_module",
        BACKEND,
        "components",
        "quantize one of: text_encoder, text_encoder_2, transformer, vae",
    ),
    Case(
        "component-is-a-scheduler",
        "node",
        load_node(ComponentMap.make({"scheduler": T8})),
        "component_not_module",
        f"{MAP} (scheduler)",
        "component",
        "quantize one of: text_encoder",
    ),
    Case(
        "map-component-typo",
        "node",
        load_node(ComponentMap.make({"text_encoder3": T8})),
        "unknown_component",
        f"{MAP} (text_encoder3)",
        "component",
        'did you mean "text_encoder"',
    ),
    Case(
        "not-a-quant-config",
        "node",
        load_node("bitsandbytes_4bit nf4"),
        "spec_malformed",
        LOAD,
        "quantization",
        "connect a Quantization Backend or Per-Component Map",
    ),
    Case(
        "gguf-in-global-mode",
        "node",
        load_node(G("gguf", "from_file", gguf_file=GGUF_OK)),
        "gguf_in_global",
        BACKEND,
        "backend",
        'Per-Component Map with component "transformer"',
    ),
    Case(
        "gguf-file-missing",
        "node",
        load_node(ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file="flux-Q4_K_S.gguf")})),
        "gguf_file_missing",
        f"{FED} transformer)",
        "gguf_file",
        GGUF_OK,
    ),
    Case(
        "gguf-file-outside-roots",
        "node",
        load_node(
            lambda env: ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file=str(env.gguf / GGUF_OK))})
        ),
        "gguf_file_missing",
        f"{FED} transformer)",
        "gguf_file",
        GGUF_OK,
    ),
    Case(
        "gguf-file-truncated",
        "node",
        load_node(ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file="half.gguf")})),
        "gguf_file_unreadable",
        f"{FED} transformer)",
        "gguf_file",
        "re-download the file",
    ),
    Case(
        "gguf-file-not-gguf",
        "node",
        load_node(ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file="not-a-gguf.gguf")})),
        "gguf_file_unreadable",
        f"{FED} transformer)",
        "gguf_file",
        "re-download the file",
    ),
    Case(
        "gguf-for-another-architecture",
        "node",
        load_node(ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file="sd3-transformer-Q8_0.gguf")})),
        "gguf_mismatch",
        f"{FED} transformer)",
        "gguf_file",
        "pick the GGUF made from this pipeline's transformer",
    ),
    Case(
        "gguf-on-a-text-encoder",
        "node",
        load_node(ComponentMap.make({"text_encoder_2": G("gguf", "from_file", gguf_file=GGUF_OK)})),
        "backend_library",
        f"{FED} text_encoder_2)",
        "backend",
        "use bitsandbytes, torchao, quanto or sdnq for text_encoder_2",
        also=("gguf_mismatch",),
    ),
    Case(
        "compute-dtype-unsupported-via-auto",
        "node",
        load_node(G("torchao", "int4_weight_only", components=["transformer"]), dtype="float32", device="cuda:0"),
        "compute_dtype_unsupported",
        BACKEND,
        "compute_dtype",
        "use bfloat16",
        also=("device_unavailable",),
    ),
    Case(
        "quant-type-needs-cuda",
        "node",
        load_node(G("torchao", "int4_weight_only", components=["transformer"])),
        "needs_cuda",
        BACKEND,
        "quant_type",
        "int8_weight_only, int8_dynamic, float8_weight_only",
    ),
    Case(
        "bnb-diffusers-needs-gpu",
        "node",
        load_node(G("bitsandbytes_4bit", "nf4", components=["transformer"])),
        "backend_needs_gpu",
        BACKEND,
        "backend",
        "use torchao int8_weight_only, quanto or sdnq on CPU",
        cpu_only=True,
    ),
    Case("dtype-unknown", "node", load_node(dtype="fp16"), "dtype_unknown", LOAD, "dtype", 'did you mean "float16"'),
    Case("device-unknown", "node", load_node(device="gpu"), "device_unknown", LOAD, "device", "Valid: auto, cuda, cpu"),
    Case(
        "device-does-not-exist", "node", load_node(device="cuda:7"), "device_unavailable", LOAD, "device", 'use "cpu"'
    ),
    Case(
        "offload-unknown",
        "node",
        load_node(offload="layers"),
        "offload_unknown",
        LOAD,
        "offload",
        "Valid: none, model, sequential",
    ),
    Case(
        "offload-without-gpu",
        "node",
        load_node(offload="model"),
        "offload_needs_cuda",
        LOAD,
        "offload",
        'use offload "none"',
    ),
    Case(
        "model-not-found",
        "node",
        load_node(model="tiny-flx"),
        "model_not_found",
        LOAD,
        "model",
        'did you mean "tiny-flux"',
    ),
    Case("model-empty", "node", load_validate(model=""), "model_missing", LOAD, "model", "pick a pipeline folder"),
    Case(
        "model-dotdot",
        "node",
        load_validate(model="../tiny-flux"),
        "model_outside_roots",
        LOAD,
        "model",
        "pick a pipeline from the model list",
    ),
    Case(
        "model-absolute",
        "node",
        load_node(model="/etc"),
        "model_outside_roots",
        LOAD,
        "model",
        "pick a pipeline from the model list",
    ),
    Case(
        "model-index-not-json",
        "node",
        load_node(model="broken-index"),
        "model_index_broken",
        LOAD,
        "model",
        "fix model_index.json",
    ),
    Case(
        "model-index-a-list",
        "node",
        load_validate(model="index-is-a-list"),
        "model_index_broken",
        LOAD,
        "model",
        "fix model_index.json",
    ),
    Case(
        "model-index-bad-entry",
        "node",
        load_node(model="index-bad-entry"),
        "model_index_broken",
        LOAD,
        "model",
        "fix model_index.json",
    ),
    Case(
        "model-index-custom-code",
        "node",
        load_node(model="custom-code"),
        "unsafe_class",
        LOAD,
        "model",
        "only classes built into diffusers/transformers",
    ),
    Case(
        "pickle-only-weights",
        "node",
        load_node(model="pickle-only"),
        "pickle_only",
        LOAD,
        "model",
        "opt in with allow_pickle",
    ),
    Case(
        "weights-missing",
        "node",
        load_node(model="no-weights"),
        "weights_missing",
        LOAD,
        "model",
        "re-download the pipeline",
    ),
    Case(
        "weights-truncated",
        "node",
        load_validate(model="truncated"),
        "weights_unreadable",
        LOAD,
        "model",
        "re-download or re-save that file",
    ),
    # ---- headless runner (python -m pipequant run|validate) -------------------------------
    Case(
        "workflow-not-json",
        "runner",
        workflow('{"nodes": [ {"id": 1,'),
        "workflow_not_json",
        None,
        "workflow",
        "export the workflow again from ComfyUI",
    ),
    Case(
        "workflow-not-an-object",
        "runner",
        workflow("[1, 2, 3]"),
        "workflow_not_object",
        None,
        "workflow",
        "export the workflow again",
    ),
    Case(
        "workflow-unknown-node-type",
        "runner",
        workflow(api(("3", None, {"class_type": "PipeQuantLoadPipe", "inputs": {}}))),
        "workflow_unknown_node",
        "node 3",
        "PipeQuantLoadPipe",
        'did you mean "PipeQuantLoadPipeline"',
    ),
    Case(
        "workflow-unknown-node-type-ui",
        "runner",
        workflow(ui(lambda d: _node(d, "PipeQuantSampler").update(type="KSamplerAdvanced"))),
        "workflow_unknown_node",
        "node 6",
        "KSamplerAdvanced",
        "Valid: PipeQuantBackend",
    ),
    Case(
        "workflow-link-to-unknown-node",
        "runner",
        workflow(api(("3", "quantization", ["9", 0]))),
        "workflow_dangling_link",
        f"({LOAD})",
        "quantization",
        "reconnect the input",
    ),
    Case(
        "workflow-link-to-missing-output",
        "runner",
        workflow(api(("3", "quantization", ["2", 3]))),
        "workflow_dangling_link",
        f"({LOAD})",
        "quantization",
        "reconnect the input",
    ),
    Case(
        "workflow-ui-dangling-link-id",
        "runner",
        workflow(ui(lambda d: _node(d, "PipeQuantLoadPipeline")["inputs"][0].update(link=99))),
        "workflow_dangling_link",
        f"({LOAD})",
        "quantization",
        "reconnect the input",
    ),
    Case(
        "workflow-ui-link-from-deleted-node",
        "runner",
        workflow(ui(lambda d: d["nodes"].remove(_node(d, "PipeQuantSampler")))),
        "workflow_dangling_link",
        "(SaveImage)",
        "images",
        "reconnect the input",
    ),
    Case(
        "workflow-missing-input",
        "runner",
        workflow(api(("3", None, {"class_type": "PipeQuantLoadPipeline", "inputs": {"model": "tiny-flux"}}))),
        "workflow_missing_input",
        f"({LOAD})",
        "dtype",
        "connect it or set its value",
        also=(),
    ),
    Case(
        "workflow-node-malformed",
        "runner",
        workflow(api(("2", None, ["PipeQuantComponentMap"]))),
        "workflow_node_malformed",
        "node 2",
        "node 2",
        '"class_type" and "inputs"',
    ),
    Case(
        "workflow-bad-options",
        "runner",
        workflow(api(("1", "options", "{double_quant: true}"))),
        "options_not_json",
        f"node 1 ({BACKEND})",
        "options",
        '{"modules_to_not_convert": []}',  # torchao's, the node's backend (not bnb's double_quant),
    ),
    Case(
        "workflow-model-outside-roots",
        "runner",
        workflow(api(("3", "model", "../../etc"))),
        "model_outside_roots",
        f"node 3 ({LOAD})",
        "model",
        "pick a pipeline from the model list",
    ),
    Case(
        "workflow-component-typo",
        "runner",
        workflow(api(("2", "component", "transfomer"))),
        "unknown_component",
        f"{MAP} (transfomer)",
        "component",
        'did you mean "transformer"',
    ),
    Case(
        "workflow-mapped-twice",
        "runner",
        workflow(
            api(
                (
                    "5",
                    None,
                    {
                        "class_type": "PipeQuantComponentMap",
                        "inputs": {"component": "transformer", "config": ["1", 0], "map": ["2", 0]},
                    },
                ),
                ("3", "quantization", ["5", 0]),
            )
        ),
        "component_mapped_twice",
        f"{MAP} (transformer)",
        "component",
        "remove one of the two Per-Component Map",
    ),
    Case(
        "workflow-widget-not-in-list",
        "runner",
        workflow(api(("3", "offload", "layers"))),
        "offload_unknown",
        f"node 3 ({LOAD})",
        "offload",
        "Valid: none, model, sequential",
    ),
    Case(
        "workflow-sampler-steps-text",
        "runner",
        workflow(
            api(
                (
                    "6",
                    None,
                    {
                        "class_type": "PipeQuantSampler",
                        "inputs": {
                            "pipeline": ["3", 0],
                            "prompt": "cat",
                            "negative_prompt": "",
                            "steps": "twenty",
                            "guidance_scale": 3.5,
                            "width": 32,
                            "height": 32,
                            "seed": 0,
                            "batch_size": 1,
                        },
                    },
                ),
                ("7", None, {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}),
            )
        ),
        "workflow_bad_value",
        "node 6 (Quantized Pipeline Sampler)",
        "steps",
        "an integer from 1 to 200",
    ),
    Case(
        "workflow-sampler-steps-out-of-range",
        "runner",
        workflow(
            api(
                (
                    "6",
                    None,
                    {
                        "class_type": "PipeQuantSampler",
                        "inputs": {
                            "pipeline": ["3", 0],
                            "prompt": "cat",
                            "negative_prompt": "",
                            "steps": 0,
                            "guidance_scale": 3.5,
                            "width": 32,
                            "height": 32,
                            "seed": 0,
                            "batch_size": 1,
                        },
                    },
                ),
                ("7", None, {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}),
            ),
            validate_only=False,
        ),
        "workflow_bad_value",
        "node 6 (Quantized Pipeline Sampler)",
        "steps",
        "an integer from 1 to 200",
    ),
    Case(
        "workflow-cycle",
        "runner",
        workflow(
            api(
                ("2", "map", ["5", 0]),
                ("5", None, {"class_type": "PipeQuantComponentMap", "inputs": {"component": "vae", "map": ["2", 0]}}),
            )
        ),
        "workflow_cycle",
        f"({MAP})",
        "node 2",
        "remove the loop",
    ),
    # ---- HTTP routes (the graph editor) ---------------------------------------------------
    Case(
        "route-unknown-backend",
        "route",
        route("POST", "/pipequant/validate", {"spec": ui_spec(backend="bitsandbytes4bit", node=7)}),
        "unknown_backend",
        7,
        "backend",
        'did you mean "bitsandbytes_4bit"',
    ),
    Case(
        "route-options-not-json",
        "route",
        route("POST", "/pipequant/validate", {"spec": ui_spec(options="{double_quant: true}", node=7)}),
        "options_not_json",
        7,
        "options",
        '{"modules_to_not_convert": []}',  # torchao's, the node's backend (not bnb's double_quant),
    ),
    Case(
        "route-option-unknown",
        "route",
        route("POST", "/pipequant/validate", {"spec": ui_spec(options='{"modules_to_not_convrt": []}', node=7)}),
        "unknown_option",
        7,
        "options.modules_to_not_convrt",
        'did you mean "modules_to_not_convert"',
    ),
    Case(
        "route-option-range",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {"spec": ui_spec("bitsandbytes_8bit", "int8", options='{"llm_int8_threshold": 1e9}', node=7)},
        ),
        "option_range",
        7,
        "options.llm_int8_threshold",
        "from 0.0 to 100.0",
    ),
    Case(
        "route-map-component-typo",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {"model": "tiny-flux", "device": "cpu", "spec": ui_map("transfomer", ui_spec(node=1), node=2)},
        ),
        "unknown_component",
        2,
        "component",
        'did you mean "transformer"',
    ),
    Case(
        "route-map-tokenizer",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {"model": "tiny-flux", "device": "cpu", "spec": ui_map("tokenizer", ui_spec(node=1), node=2)},
        ),
        "component_not_module",
        2,
        "component",
        "quantize one of: text_encoder",
    ),
    Case(
        "route-mapped-twice",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {"spec": ui_map("transformer", ui_spec(node=3), ui_map("transformer", ui_spec(node=1), node=2), node=4)},
        ),
        "component_mapped_twice",
        4,
        "component",
        "remove one of the two Per-Component Map",
    ),
    Case(
        "route-granular-where-global-expected",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {"spec": ui_map("vae", ui_map("transformer", ui_spec(node=1), node=2), node=3)},
        ),
        "expected_global",
        3,
        "config",
        "connect a Quantization Backend to `config`",
    ),
    Case(
        "route-gguf-in-global",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {"model": "tiny-flux", "device": "cpu", "spec": ui_spec("gguf", "from_file", gguf_file=GGUF_OK, node=5)},
        ),
        "gguf_in_global",
        5,
        "backend",
        "Per-Component Map",
    ),
    Case(
        "route-gguf-missing",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {
                "model": "tiny-flux",
                "device": "cpu",
                "spec": ui_map(
                    "transformer", ui_spec("gguf", "from_file", gguf_file="flux1-dev-Q4_0.gguf", node=1), node=2
                ),
            },
        ),
        "gguf_file_missing",
        1,
        "gguf_file",
        GGUF_OK,
    ),
    Case(
        "route-device-unknown",
        "route",
        route("POST", "/pipequant/validate", {"model": "tiny-flux", "device": "gpu", "spec": None}),
        "device_unknown",
        None,
        "device",
        "Valid: auto, cuda, cpu",
    ),
    Case(
        "route-model-not-found",
        "route",
        route("POST", "/pipequant/estimate", {"model": "tiny-flx", "device": "cpu", "spec": ui_spec(node=1)}),
        "model_not_found",
        None,
        "model",
        'did you mean "tiny-flux"',
    ),
    Case(
        "route-model-dotdot",
        "route",
        route("GET", "/pipequant/components", query={"model": "../bad-input-outside0"}, status=400),
        "model_outside_roots",
        None,
        "model",
        "pick a pipeline from the model list",
    ),
    Case(
        "route-broken-index",
        "route",
        route("GET", "/pipequant/components", query={"model": "broken-index"}, status=400),
        "model_index_broken",
        None,
        "model",
        "fix model_index.json",
    ),
    Case(
        "route-body-not-json",
        "route",
        route("POST", "/pipequant/validate", raw=b"{'model': 'tiny-flux'}", status=400),
        "request_malformed",
        None,
        "body",
        "send a JSON object",
    ),
    Case(
        "route-estimate-without-model",
        "route",
        route("POST", "/pipequant/estimate", {"spec": ui_spec(node=1)}, status=400),
        "request_malformed",
        None,
        "model",
        "pick a pipeline on the Load node",
    ),
    # ---- resolver API (what every layer calls) --------------------------------------------
    Case(
        "spec-json-not-json",
        "resolver",
        resolver(lambda env: spec_from_json("{backend: torchao}")),
        "spec_malformed",
        None,
        "spec",
        "to_json()",
    ),
    Case(
        "spec-granular-entry-not-object",
        "resolver",
        resolver(lambda env: spec_from_dict({"kind": "granular", "components": {"transformer": "nf4"}})),
        "spec_malformed",
        None,
        "components.transformer",
        '{"backend": ..., "quant_type": ...}',
    ),
    Case(
        "spec-kind-unknown",
        "resolver",
        resolver(lambda env: spec_from_dict({"kind": "mixed"})),
        "spec_malformed",
        None,
        "kind",
        '"global" or "granular"',
    ),
    Case(
        "validate-non-string-device",
        "resolver",
        resolver(lambda env: validate(T8, _flux_model(env), device=["cuda"])),
        "device_unknown",
        None,
        "device",
        "Valid: auto, cuda, cpu",
    ),
    Case(
        "resolve-backslash-path",
        "resolver",
        resolver(lambda env: resolve_model("..\\secrets", [env.root])),
        "model_outside_roots",
        None,
        "model",
        "pick a pipeline from the model list",
    ),
    # ---- issue 11: hostile model folders (security, hangs, crashes) --------------------------
    Case(
        "component-name-absolute",
        "node",
        load_validate(model="component-absolute"),
        "component_name_invalid",
        LOAD,
        "model",
        "never paths",
    ),
    Case(
        "component-name-dotdot",
        "node",
        load_node(model="component-dotdot"),
        "component_name_invalid",
        LOAD,
        "model",
        "never paths",
    ),
    Case(
        "route-component-name-path",
        "route",
        route("GET", "/pipequant/components", query={"model": "component-dotdot"}, status=400),
        "component_name_invalid",
        None,
        "model",
        "never paths",
    ),
    Case(
        "component-nested-pipeline",
        "node",
        load_node(model="nested-pipeline"),
        "component_is_pipeline",
        LOAD,
        "model",
        "a pipeline's components are models, tokenizers and schedulers",
    ),
    Case(
        "component-undeclared",
        "node",
        load_validate(model="undeclared-component"),
        "component_undeclared",
        LOAD,
        "model",
        "FluxPipeline takes: scheduler, vae",
    ),
    Case(
        "component-class-mismatch",
        "node",
        load_validate(model="class-mismatch"),
        "component_class_mismatch",
        LOAD,
        "model",
        "declares FluxTransformer2DModel",
    ),
    Case(
        "fifo-model-index",
        "node",
        load_validate(model="fifo-index"),
        "not_a_regular_file",
        LOAD,
        "model",
        "replace it with the real file",
    ),
    Case(
        "route-fifo-model-index",
        "route",
        route("GET", "/pipequant/components", query={"model": "fifo-index"}, status=400),
        "not_a_regular_file",
        None,
        "model",
        "replace it with the real file",
    ),
    Case(
        "fifo-config",
        "node",
        load_node(model="fifo-config"),
        "not_a_regular_file",
        LOAD,
        "model",
        "transformer/config.json is a named pipe",
    ),
    Case(
        "fifo-tokenizer-file",
        "node",
        load_validate(model="fifo-tokenizer"),
        "not_a_regular_file",
        LOAD,
        "model",
        "tokenizer/tokenizer.json is a named pipe",
    ),
    Case(
        "fifo-safetensors-header",
        "node",
        load_validate(model="fifo-header"),
        "not_a_regular_file",
        LOAD,
        "model",
        "replace it with the real file",
    ),
    Case(
        "char-device-config",
        "route",
        route("POST", "/pipequant/estimate", {"model": "char-device", "device": "cpu", "spec": ui_spec(node=1)}),
        "not_a_regular_file",
        None,
        "model",
        "replace it with the real file",
    ),
    Case(
        "config-too-large",
        "node",
        load_validate(model="config-huge"),
        "file_too_large",
        LOAD,
        "model",
        "re-download the pipeline",
    ),
    Case(
        "config-not-json",
        "node",
        load_node(model="config-not-json"),
        "json_invalid",
        LOAD,
        "model",
        "config.json is not valid JSON",
    ),
    Case(
        "config-a-list",
        "node",
        load_validate(model="config-a-list"),
        "json_not_object",
        LOAD,
        "model",
        "config.json holds a JSON list",
    ),
    Case(
        "model-index-too-deep",
        "node",
        load_validate(model="index-too-deep"),
        "json_too_deep",
        LOAD,
        "model",
        "model_index.json nests more than 64",
    ),
    Case(
        "config-field-wrong-type",
        "node",
        load_node(model="field-wrong-type"),
        "config_field_type",
        LOAD,
        "model",
        'set "num_layers" to a number',
    ),
    Case(
        "config-absurd-layers",
        "route",
        route("POST", "/pipequant/validate", {"model": "absurd-layers", "device": "cpu", "spec": ui_spec(node=1)}),
        "model_too_large",
        None,
        "model",
        "does not describe a real model",
    ),
    Case(
        "config-absurd-t5",
        "runner",
        workflow(api(("3", "model", "absurd-t5"))),
        "model_too_large",
        f"({LOAD})",
        "model",
        "does not describe a real model",
    ),
    Case(
        "config-absurd-width-estimate",
        "route",
        route(
            "POST",
            "/pipequant/estimate",
            {"model": "absurd-width", "device": "cpu", "spec": ui_spec(components="transformer", node=1)},
        ),
        "model_too_large",
        None,
        "model",
        "more than 200,000,000,000 parameters",
    ),
    Case(
        "config-absurd-width-resolver",
        "resolver",
        resolver(
            lambda env: estimate(plan_load(env.root / "absurd-width", G("torchao", "int8_weight_only"), device="cpu"))
        ),
        "model_too_large",
        None,
        "transformer/config.json",
        "does not describe a real model",
    ),
    Case(
        "header-a-list",
        "node",
        load_validate(model="header-a-list"),
        "header_malformed",
        LOAD,
        "model",
        "re-download or re-save that file",
    ),
    Case(
        "header-too-deep",
        "node",
        load_validate(model="header-too-deep"),
        "json_too_deep",
        LOAD,
        "model",
        "re-download or re-save that file",
    ),
    Case(
        "header-shape-as-text",
        "node",
        load_validate(model="header-shape-text"),
        "header_malformed",
        LOAD,
        "model",
        "not a list of sizes",
    ),
    Case(
        "symlink-loop",
        "node",
        load_node(model="symlink-loop"),
        "symlink_loop",
        LOAD,
        "model",
        "replace the link with the file or folder",
    ),
    Case(
        "weights-dangling-link",
        "node",
        load_validate(model="dangling-weights"),
        "file_missing",
        LOAD,
        "model",
        "vae/diffusion_pytorch_model.safetensors is a link to nothing",
    ),
    Case(
        "model-name-lone-surrogate",
        "node",
        load_validate(model="tiny-flux\udc80"),
        "name_invalid",
        LOAD,
        "model",
        "pick a model from the list",
    ),
    Case(
        "config-build-time-limit",
        "route",
        route("POST", "/pipequant/estimate", {"model": "slow-build", "device": "cpu", "spec": ui_spec(node=1)}),
        "model_build_timeout",
        None,
        "model",
        "far larger than any real one",
        setup=lambda env: (forget_shape_facts(), env.mp.setattr(meta_build, "MAX_SECONDS", 0.0)),
    ),
    Case(
        "model-name-too-long",
        "node",
        load_validate(model="x" * 300),
        "name_too_long",
        LOAD,
        "model",
        "pick a model from the list",
    ),
    Case(
        "route-model-name-too-long",
        "route",
        route("GET", "/pipequant/components", query={"model": "x" * 300}, status=400),
        "name_too_long",
        None,
        "model",
        "pick a model from the list",
    ),
    Case(
        "workflow-model-name-too-long",
        "runner",
        workflow(api(("3", "model", "y" * 300))),
        "name_too_long",
        f"node 3 ({LOAD})",
        "model",
        "pick a model from the list",
    ),
    Case(
        "gguf-huge-array",
        "resolver",
        resolver(
            lambda env: validate(
                ComponentMap.make({"transformer": G("gguf", "from_file", gguf_file="huge-array.gguf")}),
                _flux_model(env),
                gguf_roots=[env.gguf],
            )
        ),
        "gguf_header_bounds",
        None,
        "gguf_file",
        "re-download the file",
    ),
    Case(
        "prompt-too-long",
        "node",
        node_check(PipeQuantSampler, prompt="a cat " * 2000, negative_prompt=""),
        "prompt_too_long",
        "Quantized Pipeline Sampler",
        "prompt",
        "cut the rest off anyway",
    ),
    Case(
        "prompt-lone-surrogate",
        "node",
        node_check(PipeQuantSampler, prompt="a cat \ud800", negative_prompt=""),
        "prompt_not_text",
        "Quantized Pipeline Sampler",
        "prompt",
        "retype or paste the prompt again",
    ),
    Case(
        "workflow-negative-prompt-too-long",
        "runner",
        workflow(sampled(negative_prompt="z" * 9000)),
        "prompt_too_long",
        "Quantized Pipeline Sampler",
        "negative_prompt",
        "cut the rest off anyway",
    ),
    # ---- issue 11: workflows -------------------------------------------------------------------
    Case(
        "workflow-link-wrong-type",
        "runner",
        workflow(api(("4", "pipeline", ["1", 0]))),
        "workflow_type_mismatch",
        "(Pipeline Memory Report)",
        "pipeline",
        "connect a node that outputs DIFFUSERS_PIPELINE",
    ),
    Case(
        "workflow-link-into-a-widget",
        "runner",
        workflow(api(("3", "dtype", ["1", 0]))),
        "workflow_type_mismatch",
        f"({LOAD})",
        "dtype",
        "connect a node that outputs COMBO",
    ),
    Case(
        "workflow-constant-for-a-link",
        "runner",
        workflow(api(("4", "pipeline", "tiny-flux"))),
        "workflow_needs_link",
        "(Pipeline Memory Report)",
        "pipeline",
        "connect a node that outputs DIFFUSERS_PIPELINE",
    ),
    Case(
        "workflow-bad-link-shape",
        "runner",
        workflow(api(("4", "pipeline", ["3", 0, 1]))),
        "workflow_bad_link",
        "(Pipeline Memory Report)",
        "pipeline",
        "reconnect the input",
    ),
    Case(
        "workflow-ui-duplicate-node-id",
        "runner",
        workflow(ui(lambda d: d["nodes"].append({**_node(d, "PipeQuantSampler"), "type": "PipeQuantMemoryReport"}))),
        "workflow_duplicate_id",
        "node 6",
        "node 6",
        "give each node its own id",
    ),
    Case(
        "workflow-api-duplicate-key",
        "runner",
        workflow(json.dumps(API)[:-1] + ', "4": {"class_type": "PreviewImage", "inputs": {}}}'),
        "workflow_duplicate_id",
        None,
        "node 4",
        "give each node its own id",
    ),
    Case(
        "workflow-no-output-node",
        "runner",
        workflow(api(("4", None, None))),
        "workflow_no_output",
        None,
        "workflow",
        "add Save Image, Preview Image",
    ),
    Case(
        "workflow-empty-object",
        "runner",
        workflow("{}"),
        "workflow_no_output",
        None,
        "workflow",
        "add Save Image, Preview Image",
    ),
    Case(
        "set-unknown-class",
        "runner",
        set_override("PipeQuantSamplr.steps=4"),
        "set_unknown_class",
        None,
        "--set",
        'did you mean "PipeQuantSampler"',
    ),
    Case(
        "set-unknown-input",
        "runner",
        set_override("PipeQuantLoadPipeline.modle=tiny-flux"),
        "set_unknown_input",
        None,
        "--set",
        'did you mean "model"',
    ),
    Case(
        "set-class-not-in-workflow",
        "runner",
        set_override("PipeQuantSampler.steps=4"),
        "set_unused",
        None,
        "--set",
        "nodes in it: PipeQuantBackend",
    ),
    Case(
        "workflow-image-above-model-limit",
        "runner",
        workflow(sampled("tiny-sd3", width=4096)),
        "image_too_large",
        "Quantized Pipeline Sampler",
        "width",
        "use width 64 or less",
    ),
    # ---- issue 11: saves ---------------------------------------------------------------------
    Case(
        "save-name-trailing-newline",
        "node",
        node_check(PipeQuantSavePipeline, folder_name="flux-nf4\n"),
        "folder_name_invalid",
        "Save Quantized Pipeline",
        "folder_name",
        "letters, digits",
    ),
    Case(
        "save-name-exists",
        "node",
        node_check(PipeQuantSavePipeline, folder_name="tiny-flux"),
        "folder_exists",
        "Save Quantized Pipeline",
        "folder_name",
        "never overwrites or shadows a model",
    ),
    Case(
        "save-name-in-a-later-root",
        "node",
        node_check(PipeQuantSavePipeline, folder_name="name-taken-later"),
        "folder_exists",
        "Save Quantized Pipeline",
        "folder_name",
        "would hide it",
        setup=lambda env: env.mp.setenv("PIPEQUANT_MODELS", os.pathsep.join([str(env.tmp), str(env.root)])),
    ),
    Case(
        "save-onto-dangling-link",
        "node",
        node_check(PipeQuantSavePipeline, folder_name="dangling"),
        "folder_exists",
        "Save Quantized Pipeline",
        "folder_name",
        "remove the dangling link",
        setup=lambda env: (
            env.mp.setenv("PIPEQUANT_MODELS", str(env.tmp)),
            (env.tmp / "dangling").symlink_to(env.tmp / "gone"),
        ),
    ),
    Case(
        "workflow-save-target-exists",
        "runner",
        workflow(
            api(
                (
                    "4",
                    None,
                    {
                        "class_type": "PipeQuantSavePipeline",
                        "inputs": {"pipeline": ["3", 0], "folder_name": "tiny-flux"},
                    },
                )
            )
        ),
        "folder_exists",
        "node 4 (Save Quantized Pipeline)",
        "folder_name",
        "never overwrites",
    ),
    # ---- issue 11: silently ignored settings, the Python API -----------------------------------
    Case(
        "skip-list-no-match",
        "node",
        load_node(
            G(
                "torchao",
                "int8_weight_only",
                components=["transformer"],
                options={"modules_to_not_convert": ["proj_outt"]},
            )
        ),
        "option_no_match",
        BACKEND,
        "options.modules_to_not_convert",
        'did you mean "proj_out"',
    ),
    Case(
        "skip-list-parent-module-quanto",
        "node",
        load_node(
            G("quanto", "int8", components=["transformer"], options={"modules_to_not_convert": ["transformer_blocks"]})
        ),
        "option_parent_module",
        BACKEND,
        "options.modules_to_not_convert",
        "list the layers themselves",
    ),
    Case(
        "component-map-non-spec",
        "resolver",
        resolver(lambda env: ComponentMap.make({"transformer": "nf4"})),
        "spec_malformed",
        None,
        "map[transformer]",
        "BackendSpec.make",
    ),
    Case(
        "route-global-and-granular",
        "route",
        route(
            "POST",
            "/pipequant/validate",
            {
                "spec": {
                    "kind": "granular",
                    "backend": "torchao",
                    "components": {"transformer": {"backend": "torchao", "quant_type": "int8_weight_only"}},
                }
            },
            status=400,
        ),
        "spec_global_and_granular",
        None,
        "kind",
        'use "kind": "global"',
    ),
]


def test_catalogue_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 50
    assert {c.where for c in CASES} == {"node", "runner", "route", "resolver"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env):
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("only bad without a GPU")
    if case.setup:
        case.setup(env)
    out = case.run(env)
    assert set(out.codes) <= {case.code, *case.also} and case.code in out.codes, (out.codes, out.text)
    assert case.input in out.text, out.text
    assert case.valid in out.text, out.text
    if case.where == "route":
        assert (case.node, case.input) in out.tags, out.tags
    elif case.node is not None:
        # The node is named on the same line as the input and the fix.
        line = next((ln for ln in out.text.splitlines() if case.input in ln and case.valid in ln), out.text)
        assert case.node in line, out.text


# -- rows that need more than one assertion --------------------------------------------------------
@pytest.mark.parametrize("order", ["quantized-first", "unquantized-first", "same-spec"])
def test_mapped_twice_is_an_error_in_any_order(order):
    """Neither map silently wins: whichever comes first, the downstream map raises the same error."""
    first, second = {"quantized-first": (T8, None), "unquantized-first": (None, T8), "same-spec": (T8, T8)}[order]
    (upstream,) = PipeQuantComponentMap().build("transformer", first, None)
    with pytest.raises(ValidationError) as info:
        PipeQuantComponentMap().build("transformer", second, upstream)
    assert info.value.codes == ["component_mapped_twice"]
    text = str(info.value)
    assert text.startswith(f"{MAP} (transformer) › component:")
    assert "already mapped upstream" in text and "remove one of the two" in text
    assert upstream.as_dict() == {"transformer": first.without_components() if first else None}  # unchanged


def test_cli_reports_bad_input_with_exit_code(env, capsys, monkeypatch):
    """`python -m pipequant validate` prints the node/input message and exits 2 on bad input."""
    path = env.tmp / "bad.json"
    path.write_text(json.dumps(api(("2", "component", "transfomer"))))
    monkeypatch.setenv("PIPEQUANT_MODELS", str(env.root))  # cli._configure overwrites it; restored after
    assert cli.main(["validate", str(path), "--models", str(env.root)]) == 2
    err = capsys.readouterr().err
    assert f"{MAP} (transfomer) › component" in err and 'did you mean "transformer"' in err
    assert cli.main(["validate", str(path), "--set", "PipeQuantLoadPipeline.model"]) == 2
    assert "--set" in capsys.readouterr().err
    path.write_text("not json")
    assert cli.main(["run", str(path)]) == 2
    assert "is not JSON" in capsys.readouterr().err


def test_read_workflow_missing_file(tmp_path):
    with pytest.raises(ValidationError) as info:
        read_workflow(tmp_path / "nope.json")
    assert info.value.codes == ["workflow_unreadable"]


def test_valid_workflow_still_validates(env, bnb_cpu):
    """The base workflow the runner rows mutate is itself valid (so each row fails for its own reason)."""
    path = env.tmp / "ok.json"
    path.write_text(json.dumps(API))
    assert execute(cli.load_prompt(path), validate_only=True) == {}
    path.write_text(json.dumps(ui(lambda d: None)))
    prompt = cli.load_prompt(path)
    with contextlib.redirect_stdout(io.StringIO()):
        execute(prompt, validate_only=True)
