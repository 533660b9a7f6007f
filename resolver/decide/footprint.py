"""The bytes a component will hold once loaded, per parameter, as the libraries decide them.

A real load keeps some parameters out of quantization (the quantizer's skip lists) and some in
float32 (the model class's `_keep_in_fp32_modules`); both are read from the libraries here, on a
meta-device instance of the component (no weights, no initialisation: ~0.04 s for the 12 B FLUX
transformer), never from a hand-written list; each quantizer is asked about one block per run of
alike blocks (below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..constants import LOAD_DTYPES
from ..files import shape_store
from ..files.inspect_model import ComponentInfo
from ..files.meta_build import BuildRefused, build_on_meta, paused_gc, skipping_init, structural_copy
from ..known.catalogue import DIFFUSERS
from ..problems import Problem, ValidationError

FLOAT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Tensor:
    name: str
    numel: int
    floating: bool
    itemsize: int  # of a non-floating tensor (kept as it is by every load)
    kept: bool = False  # a non-persistent buffer: built by the model at `itemsize`, never cast by the load


@dataclass(frozen=True)
class Layout:
    """Every distinct parameter and buffer of a component, and its Linear weights."""

    tensors: tuple[Tensor, ...]
    linear_weights: tuple[tuple[str, int, int], ...]  # (parameter name, out_features, in_features)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)


def meta_model(info: ComponentInfo):
    """A fresh instance of the component on the meta device, from its checked config, within the
    bounds of `meta_build` (no weights read; an absurd config is a ValidationError)."""
    where = f"{info.name}/config.json"
    try:
        return build_on_meta(info.model_class(), info.library, info.config_dict, where)
    except BuildRefused as exc:
        raise ValidationError([Problem(exc.code, "model", str(exc), exc.suggestion, info.name)]) from None


class _Shape:
    """A component as far as its tensors' shapes go: library, class and config (without the
    "_"-prefixed bookkeeping keys such as _name_or_path). Caches below are keyed by it, so a second
    folder with the same architecture (another copy, a fine-tune) builds nothing; `info` builds."""

    __slots__ = ("key", "info")

    def __init__(self, info: ComponentInfo):
        self.info = info
        config = tuple(kv for kv in info.config if not str(kv[0]).startswith("_"))
        self.key = (info.library, info.class_name, config)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Shape) and other.key == self.key


@lru_cache(maxsize=4)
def _shared_model(shape: _Shape):
    """One meta instance per shape for the readers here (layout, dtype plan); never modified:
    `quantized_weights`, whose quantizer rewrites the model, works on a structural copy."""
    return meta_model(shape.info)


def layout(info: ComponentInfo) -> Layout:
    return _layout(_Shape(info))


@lru_cache(maxsize=64)
def _layout(shape: _Shape) -> Layout:
    stored = shape_store.get(shape.key, "layout")
    if stored is not None:
        try:
            return Layout(
                tuple(Tensor(n, int(k), bool(f), int(i), bool(kept)) for n, k, f, i, kept in stored["tensors"]),
                tuple((n, int(o), int(i)) for n, o, i in stored["linears"]),
            )
        except (KeyError, TypeError, ValueError):
            pass  # not what this version writes: build it again
    return _layout_built(shape)


@paused_gc()
def _layout_built(shape: _Shape) -> Layout:
    import torch

    model = _shared_model(shape)
    tensors = []
    seen = set()
    # Buffers outside the state dict (PixArt's sin-cos position table, rotary frequencies) are not
    # in the weight files: the loaders leave them in the dtype the model builds them in (float32).
    transient = {
        f"{prefix}.{b}" if prefix else b
        for prefix, m in model.named_modules()
        for b in getattr(m, "_non_persistent_buffers_set", ())
    }
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        tensors.append(Tensor(name, t.numel(), t.is_floating_point(), t.element_size(), name in transient))
    linears = tuple(
        (f"{name}.weight", m.out_features, m.in_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    found = Layout(tuple(tensors), linears)
    shape_store.put(
        shape.key,
        "layout",
        {
            "tensors": [[t.name, t.numel, t.floating, t.itemsize, t.kept] for t in found.tensors],
            "linears": list(linears),
        },
    )
    return found


def fp32_names(info: ComponentInfo, load_dtype: str) -> frozenset[str]:
    """Parameters the load keeps in float32 although `load_dtype` was asked for (the class's
    `_keep_in_fp32_modules`, with each library's own matching and dtype rule)."""
    return _fp32_names(_Shape(info), load_dtype)


@lru_cache(maxsize=256)
def _fp32_names(shape: _Shape, load_dtype: str) -> frozenset[str]:
    stored = shape_store.get(shape.key, f"fp32:{load_dtype}")
    if isinstance(stored, list):
        return frozenset(stored)
    found = _fp32_names_built(shape, load_dtype)
    shape_store.put(shape.key, f"fp32:{load_dtype}", sorted(found))
    return found


def _fp32_names_built(shape: _Shape, load_dtype: str) -> frozenset[str]:
    import torch

    info = shape.info
    dtype = getattr(torch, load_dtype)
    names = [t.name for t in layout(info).tensors if t.floating]
    cls = info.model_class()
    if info.library == DIFFUSERS:
        keep = cls._keep_in_fp32_modules
        if not keep:
            return frozenset()
        keep = [keep] if isinstance(keep, str) else list(keep)
        return frozenset(n for n in names if any(k in n.split(".") for k in keep))
    # transformers: the model's dtype plan, matched as its loader matches it.
    from transformers.core_model_loading import build_glob_alternation

    plan = _shared_model(shape)._get_dtype_plan(dtype)
    plan = {k: v for k, v in plan.items() if v == torch.float32}
    if not plan:
        return frozenset()
    pattern, _, _ = build_glob_alternation(list(plan))
    return frozenset(n for n in names if pattern.search(n))


def quantized_weights(info: ComponentInfo, backend_name: str, quant_type: str, options: tuple) -> frozenset[str]:
    """Linear weights the backend's quantizer quantizes in this component for one config."""
    return _quantized_weights(_Shape(info), backend_name, quant_type, options)


@lru_cache(maxsize=256)
def _quantized_weights(shape: _Shape, backend_name: str, quant_type: str, options: tuple) -> frozenset[str]:
    fact = f"quantized:{backend_name}:{quant_type}:{options!r}"
    stored = shape_store.get(shape.key, fact)
    if isinstance(stored, list):
        return frozenset(stored)
    found = _quantized_weights_built(shape, backend_name, quant_type, options)
    shape_store.put(shape.key, fact, sorted(found))
    return found


def _quantized_weights_built(shape: _Shape, backend_name: str, quant_type: str, options: tuple) -> frozenset[str]:
    import torch

    info = shape.info

    from ..known import catalogue

    backend = catalogue.get_backend(backend_name)
    full = {o.name: o.default for o in backend.options} | dict(options)
    config = backend.build_config(info.library, quant_type, torch.bfloat16, full)
    candidates = [name for name, _, _ in layout(info).linear_weights]
    with paused_gc():
        return answer_from_fold(
            _folded_model(shape),
            _shared_model(shape),
            config,
            candidates,
            lambda model, names: _ask(backend, model, info.library, config, names),
        )


def _ask(backend, model, library: str, config, candidates: set[str]) -> set[str]:
    # The quantizer rewrites the model it is given: a structural copy (milliseconds) instead of a
    # new build per quant type (0.04-0.12 s for a 8-12B transformer).
    copy = structural_copy(model, own_tensors=True)
    with skipping_init():  # the quantizer's new layers (bnb, quanto) are built on meta too
        return set(backend.quantized_weights(copy, library, config, sorted(candidates)))


@lru_cache(maxsize=4)
def _folded_model(shape: _Shape) -> Folded:
    """The shared meta instance with its runs of alike blocks cut to their first, second and last."""
    return fold_runs(_shared_model(shape))


@shape_store.batched()
def compute_shape_facts(info: ComponentInfo, log=print) -> dict:
    """Every fact a plan can ask of this component, computed (and stored) now: its layout, the
    float32-kept names for each load dtype, what each quant type of each backend quantizes (with
    default options). What a backend cannot build here is left for plan time, and logged. Returns
    the class's config defaults, {"library.Class": {...}} (what the shipped seed compares with)."""
    from ..known import catalogue
    from ..known.class_facts import config_defaults

    layout(info)
    for dtype in LOAD_DTYPES:
        fp32_names(info, dtype)
    for name in catalogue.backend_names():
        backend = catalogue.get_backend(name)
        if info.library not in backend.libraries or backend.needs_file:
            continue
        for quant in backend.quant_types:
            try:
                quantized_weights(info, name, quant.name, ())
            except Exception as exc:  # a library's own refusal: asked again at plan time
                log(f"{info.name} {name} {quant.name}: not computed ({type(exc).__name__}: {exc})"[:200])
    return {f"{info.library}.{info.class_name}": config_defaults(info.model_class(), info.library)}


def component_bytes(
    info: ComponentInfo, load_dtype: str, quantized: frozenset[str] = frozenset(), storage: dict | None = None
) -> int:
    """Resident bytes: quantized weights at `storage`'s cost, the rest at the load dtype (or
    float32 where the library keeps it), non-floating tensors as they are."""
    lay = layout(info)
    fp32 = fp32_names(info, load_dtype)
    width = FLOAT_BYTES[load_dtype]
    shapes = {name: (out, inp) for name, out, inp in lay.linear_weights}
    total = 0.0
    for t in lay.tensors:
        if t.name in quantized:
            out, _ = shapes[t.name]
            total += t.numel * storage["bytes_per_weight"] + out * storage["bytes_per_row"] + storage["bytes_per_layer"]
        elif t.floating and t.kept:
            total += t.numel * t.itemsize
        elif t.floating:
            total += t.numel * (4 if t.name in fp32 else width)
        else:
            total += t.numel * t.itemsize
    return round(total)


# -- one block per run of alike blocks ---------------------------------------------------------------
# Each quantizer is asked about a copy of the component in which each run of at least MIN_RUN
# consecutive alike children of a numbered container (ModuleList, Sequential: the same classes and
# parameter and buffer shapes and dtypes, all the way down) keeps its first, second and last block;
# every block between the second and the last answers as the second does. Asking every block of
# SD3.5 Large's 38 joint blocks, T5-XXL's 24 layers and CLIP-G's 32 cost 2 s of CPU for a new model
# in a warm process (issue 25). Rules that name a block by number are what could tell those blocks
# apart: the first block is kept for the rules libraries ship (SDNQ keeps FLUX's
# "single_transformer_blocks.0.norm.linear" unquantized, and a first block's layer in five other
# families); a quantizer that treats the last block apart is caught by comparing it with the second
# (`second_and_last_agree`); a quantization config naming a block by number ("transformer_blocks.7",
# a pattern with \d) is asked of the whole model (`names_blocks`). tests/test_block_fold.py checks
# the folded answer against the whole model's for every backend and quant type on FLUX.1-dev, SDXL
# and every family with six blocks.
MIN_RUN = 4  # a run of three keeps all three: nothing to fold
# a dotted name with a number for a part ("blocks.7", "layers.0.mlp"; not "0.2.8"), or a regex digit
_BLOCK_NUMBER = re.compile(r"[A-Za-z_]\w*\.\d+(\.|$)|\\d")


class Folded:
    """A structural copy of a model with the middle blocks of each run removed, and the way back
    from a name in the whole model to the name that answers for it."""

    def __init__(self, model, stand_ins: dict[str, dict[str, str]], runs: list[tuple[str, str, str]]):
        self.model = model
        self.stand_ins = stand_ins  # container path -> {dropped child key: kept key answering for it}
        self.runs = runs  # (container path, second key, last key) of every folded run
        self._names: dict[str, str] = {}  # name_for's answers: each quant type asks the same names
        self.parameters = {n for n, _ in model.named_parameters(remove_duplicate=False)}

    def name_for(self, name: str) -> str:
        """The name in the folded model that answers for `name` of the whole model."""
        found = self._names.get(name)
        if found is None:
            parts = name.split(".")
            for i in range(len(parts)):
                keys = self.stand_ins.get(".".join(parts[:i]))
                if keys is not None and parts[i] in keys:
                    parts[i] = keys[parts[i]]
            found = self._names[name] = ".".join(parts)
        return found

    def second_and_last_agree(self, names: set[str], answer: set[str]) -> bool:
        """Whether each run's second and last block got the same answer for every name in them."""
        for path, second, last in self.runs:
            head, tail = _child(path, second), _child(path, last)
            seconds = {n[len(head) :] for n in names if n.startswith(head)}
            lasts = {n[len(tail) :] for n in names if n.startswith(tail)}
            if seconds != lasts:
                return False
            if any((head + rest in answer) != (tail + rest in answer) for rest in seconds):
                return False
        return True


def _child(path: str, key: str) -> str:
    """The prefix of names inside child `key` of the container at `path` ("" for the model)."""
    return f"{path}.{key}." if path else f"{key}."


def answer_from_fold(folded: Folded, whole, config, candidates: list[str], ask) -> frozenset[str]:
    """Which of `candidates` (names in the whole model) the quantizer quantizes: `ask(model, names)`
    of the folded model, or of the `whole` model where the config names blocks by number, a name
    maps to one the folded copy does not hold, or the folded answer shows the last block of a run
    treated apart from the second."""
    asked = {folded.name_for(n) for n in candidates}
    if not names_blocks(config) and asked <= folded.parameters:
        answer = ask(folded.model, asked)
        if folded.second_and_last_agree(asked, answer):
            return frozenset(n for n in candidates if folded.name_for(n) in answer)
    return frozenset(ask(whole, set(candidates)))


def names_blocks(config) -> bool:
    """Whether any string in the quantization config (its skip lists, patterns) names a block by
    its number, so that blocks of one run may be answered differently."""
    values = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    return any(_BLOCK_NUMBER.search(text) for text in _strings(values))


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _strings(v)


def fold_runs(model) -> Folded:
    """A structural copy of `model` (files/meta_build.structural_copy: fresh containers, shared
    tensors) with each run of alike blocks cut to its first, second and last."""
    signatures: dict[int, tuple] = {}
    stand_ins: dict[str, dict[str, str]] = {}
    leave_out: dict[int, set[str]] = {}
    runs: list[tuple[str, str, str]] = []
    for path, module in model.named_modules():
        children = module._modules
        if len(children) < MIN_RUN or not all(k.isdigit() for k in children):
            continue
        keys = list(children)
        start = 0
        while start < len(keys):
            end = start + 1
            first = _signature(children[keys[start]], signatures)
            while end < len(keys) and _signature(children[keys[end]], signatures) == first:
                end += 1
            if end - start >= MIN_RUN:
                for key in keys[start + 2 : end - 1]:
                    stand_ins.setdefault(path, {})[key] = keys[start + 1]
                    leave_out.setdefault(id(module), set()).add(key)
                runs.append((path, keys[start + 1], keys[end - 1]))
            start = end
    return Folded(structural_copy(model, leave_out=leave_out), stand_ins, runs)


def _signature(module, memo: dict[int, tuple]) -> tuple | None:
    """What a quantizer could tell one block from another by, other than its place: the classes of
    it and every submodule, every parameter's and buffer's shape, dtype and gradient flag."""
    if module is None:
        return None
    found = memo.get(id(module))
    if found is None:
        found = (
            type(module),
            tuple(_tensor(k, p) for k, p in module._parameters.items()),
            tuple(_tensor(k, b) for k, b in module._buffers.items()),
            tuple(sorted(getattr(module, "_non_persistent_buffers_set", ()))),
            tuple((k, _signature(c, memo)) for k, c in module._modules.items()),
        )
        memo[id(module)] = found
    return found


def _tensor(key: str, tensor) -> tuple:
    if tensor is None:
        return (key, None)
    return (key, tuple(tensor.shape), tensor.dtype, tensor.requires_grad, type(tensor))
