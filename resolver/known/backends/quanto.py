"""optimum-quanto backend. diffusers calls the weight type `weights_dtype`, transformers `weights`."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...problems import Problem
from ..rows import WrittenRows, owner_of, scratch_tensor
from .base import (
    DIFFUSERS,
    MODULES_TO_NOT_CONVERT,
    Backend,
    QuantType,
    as_diffusers_cast,
    finish_quantized_load,
    meta_shortcuts,
    module_skip_list,
    put_tensor,
    saved_diffusers_skeleton,
)

# Packed int4/int2 weights are unpacked on CPU by quanto's C++ extension, which
# torch.utils.cpp_extension builds on first use (about 5 minutes here, with a C++ compiler and ninja).
PACKED = ("int4", "int2")
BUILD_NOTE = (
    "optimum-quanto builds its C++ extension on first use on CPU (about 5 minutes, progress stays at 0 "
    "meanwhile; needs a C++ compiler and ninja)"
)


def _cpp_build_dir() -> Path | None:
    spec = importlib.util.find_spec("optimum.quanto")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "library" / "extensions" / "cpp" / "build"


def cpp_extension_built() -> bool:
    """Whether quanto's CPU extension is built for the running torch (what quanto itself checks)."""
    import torch

    build = _cpp_build_dir()
    if build is None:
        return False
    version = build / "pytorch_version.txt"
    try:
        return version.read_text().strip() == torch.__version__ and any(build.glob("quanto_cpp*.so"))
    except OSError:
        return False


def missing_build_tools() -> list[str]:
    """The tools torch.utils.cpp_extension needs to build the extension that are not on PATH."""
    compiler = os.environ.get("CXX", "c++")
    return [tool for tool in (compiler, "ninja") if shutil.which(tool) is None]


def _quantize_symmetric_meta(base, dtype, axis, scale):
    """quanto::quantize_symmetric on the meta device: `dtype` data of the broadcast shape."""
    import torch

    return torch.empty(torch.broadcast_shapes(base.shape, scale.shape), dtype=dtype, device="meta")


def _needs_build(quant_type: str, device: str) -> bool:
    return quant_type in PACKED and str(device).startswith("cpu") and not cpp_extension_built()


# Weight types quanto scales per output row (axis 0, no groups): a row's values depend on it alone.
ROW_WEIGHTS = ("int8", "float8")


class _QuantoRows(WrittenRows):
    """The quantized weight `freeze` makes (the module's own `qweight`), computed for some rows;
    qint8 rows with quanto's default optimizer are written by `_qint8_rows` where it gives quanto's
    own result."""

    def sample_key(self, module, rows):
        qtypes = (getattr(module.weight_qtype, "name", None), getattr(module.activation_qtype, "name", None))
        return (rows.shape[1], rows.dtype, *qtypes, type(module.optimizer).__name__, module.weight_group_size)

    def writer(self, module, sample):
        names, meta = sample.__tensor_flatten__()
        ok = (
            type(sample).__name__ == "WeightQBytesTensor"
            and set(names) == {"_data", "_scale"}
            and (meta.get("qtype"), meta.get("axis")) == ("qint8", "0")
            and type(module.optimizer).__name__ == "AbsmaxOptimizer"
        )
        return _qint8_rows if ok else None

    def takes(self, module, name):
        from optimum.quanto import QModuleMixin

        return (
            isinstance(module, QModuleMixin)
            and name.rpartition(".")[2] == "weight"
            and module.weight_group_size is None
        )

    def quantize(self, module, rows):
        from types import SimpleNamespace

        holder = SimpleNamespace(
            weight=rows,
            weight_qtype=module.weight_qtype,
            optimizer=module.optimizer,
            weight_group_size=module.weight_group_size,
            activation_qtype=module.activation_qtype,
        )
        return type(module).qweight.fget(holder)

    def assemble(self, sample, inner, shape):
        names, meta = sample.__tensor_flatten__()
        if meta.get("axis") != "0":
            raise ValueError("not one scale per row")
        meta = dict(meta, size=str(list(shape)), stride=str([shape[1], 1]))
        return type(sample).__tensor_unflatten__(inner, meta, shape, None)

    def put(self, model, name, tensor):
        import torch

        module, tensor_name = owner_of(model, name)
        setattr(module, tensor_name, torch.nn.Parameter(tensor, requires_grad=False))


def _qint8_rows(rows, out: dict, scratch: dict) -> None:
    """quanto's qint8 weight for `rows` (AbsmaxOptimizer along axis 0, then quantize_symmetric),
    written into `out`: the same operations on the same dtypes (optimum-quanto 0.2.7), in scratch
    memory reused from call to call: the 200M transformer streamed in 0.39-0.40 s on 2 threads,
    against 0.48-0.50 s with quanto's own call on each part and 0.48-0.51 s through diffusers'
    loader. quanto takes |x| twice before the maximum; once gives the same values. Checked against
    quanto's own result for each row length before use (WrittenRows)."""
    import torch

    values = torch.abs(rows, out=scratch_tensor(scratch, "values", rows.shape, rows.dtype))
    scale = values.amax(dim=1, keepdim=True) / 127  # qint8's qmax
    out["_scale"].copy_(scale)
    torch.div(rows, scale, out=values)
    out["_data"].copy_(values.round_().clamp_(-128, 127))


@dataclass(frozen=True)
class Quanto(Backend):
    def row_quantizer(self, config, dtype):
        return _QuantoRows() if getattr(config, "weights_dtype", None) in ROW_WEIGHTS else None

    def skips(self, library, module_name, entry):
        """diffusers' quanto replaces a Linear unless its *own* name is listed: a parent module's
        name ("transformer_blocks") keeps nothing out (diffusers/quantizers/quanto/utils.py)."""
        if library == DIFFUSERS:
            return module_name.rsplit(".", 1)[-1] == entry
        return super().skips(library, module_name, entry)

    def build_config(self, library, quant_type, compute_dtype, options):
        weights = {"weights_dtype" if library == DIFFUSERS else "weights": quant_type}
        return self.config_class(library)(**weights, modules_to_not_convert=module_skip_list(options))

    def target_problems(self, quant_type, device):
        if not _needs_build(quant_type, device):
            return []
        missing = missing_build_tools()
        if not missing:
            return []
        return [
            Problem(
                "needs_compiler",
                "quant_type",
                f"quanto {quant_type} on CPU needs optimum-quanto's C++ extension, built on first use, and "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not found on this server",
                "install a C++ compiler and ninja (e.g. apt-get install g++ ninja-build), or use quanto int8 "
                "or torchao int8_weight_only on CPU",
            )
        ]

    def first_use_note(self, quant_type, device):
        return BUILD_NOTE if _needs_build(quant_type, device) else ""

    def saved_read_context(self):
        """diffusers rebuilds a saved quanto model by quantizing its empty (meta) weights first
        (`freeze`): 140 layers spent 0.5 s in torch's meta clamp; the shape alone is known."""
        return meta_shortcuts({"quanto::quantize_symmetric": _quantize_symmetric_meta})

    def read_saved(self, model_class, library, folder, dtype, names, read):
        """A saved diffusers component with 8-bit weights, rebuilt as diffusers' own loader rebuilds it
        (the same skeleton, quantizer, casts and config) but without its costliest step: diffusers
        freezes every layer on the meta device first (quantizing empty weights: 0.23 s at 200M
        parameters) only to overwrite each quantized weight's parts with the file's. Here each weight
        is made once from its stored parts (quanto's own deserialisation,
        `WeightQBytesTensor.load_from_state_dict`). 4- and 2-bit weights (packed) keep diffusers' path."""
        if library != DIFFUSERS:
            return None
        return _read_saved_qbytes(model_class, folder, dtype, names, read)

    def after_load(self, module, *, prequantized):
        """quanto's CPU int8 kernel crashes the process (a segfault, not an exception) on int8
        data that is not 64-byte aligned, which weights memory-mapped from a saved safetensors
        file can be: copy those into fresh, aligned storage. (A disk-cache entry is written with its
        int8 data aligned, `saved_alignment`: it stays mapped, read from the disk when first used.)"""
        if not prequantized:
            return
        import torch

        for sub in module.modules():
            weight = getattr(sub, "weight", None)
            data = getattr(weight, "_data", None)
            if isinstance(data, torch.Tensor) and data.device.type == "cpu" and data.data_ptr() % 64:
                weight._data = data.clone()


_PACKED_HELP = (
    "On CPU, optimum-quanto builds a C++ extension on first use (about 5 minutes; needs a C++ compiler and ninja)."
)

QUANTO = Quanto(
    name="quanto",
    label="optimum-quanto",
    modules=("optimum.quanto",),
    pip="pip install optimum-quanto",
    quant_types=(
        QuantType(
            "int8",
            "int8",
            8,
            ("modules_to_not_convert",),
            help="Half of bf16 memory; int8 weights, works on CPU and GPU.",
        ),
        QuantType(
            "int4",
            "int4",
            4,
            ("modules_to_not_convert",),
            scale_bytes_per_weight=4 / 128,
            help="Quarter of bf16 memory, per-group scales. " + _PACKED_HELP,
        ),
        QuantType(
            "int2",
            "int2",
            2,
            ("modules_to_not_convert",),
            scale_bytes_per_weight=4 / 128,
            help="An eighth of bf16 memory; visible quality loss. " + _PACKED_HELP,
        ),
        QuantType(
            "float8",
            "float8",
            8,
            ("modules_to_not_convert",),
            help="Half of bf16 memory; float8 weights, slow to load (a 2x peak) and slow on CPU.",
        ),
    ),
    options=(MODULES_TO_NOT_CONVERT,),
    savable=("diffusers",),  # quanto-quantized transformers models cannot be saved (README "Facts")
    # Measured (diffusers 0.42.1, peft 0.21.2): FLUX's loader reads `<layer>.weight` from the state
    # dict to expand LoRA shapes, and quanto stores it as `weight._data` (KeyError). UNet pipelines load.
    lora_refused_loaders=("FluxLoraLoaderMixin",),
    lora_note="diffusers' FLUX LoRA loader cannot read quanto weights; keep that component unquantized "
    "or use bitsandbytes, torchao int8/float8 or GGUF for it",
    streams=True,
    saved_alignment=64,  # its CPU int8 kernel's need (after_load)
    help="Quanto weight quantization; works on CPU.",
    deprecated="diffusers 0.42 deprecates quanto (removed in diffusers 1.0); it still works here. "
    "For new workflows use torchao (int8/float8) or SDNQ.",
)


def _read_saved_qbytes(model_class, folder, dtype, names, read):
    """Quanto.read_saved for a diffusers model; None where the files are not exactly its tensors."""
    import torch
    from diffusers.models.modeling_utils import no_init_weights
    from optimum.quanto import QModuleMixin, WeightQBytesTensor

    start = saved_diffusers_skeleton(model_class, folder, dtype)
    if start is None:
        return None
    model, quantizer, keep, dtype = start
    # diffusers' own layer replacement, without the freeze on meta that a pre-quantized load adds
    quantizer.pre_quantized = False
    try:
        with no_init_weights():  # the new layers' weights are replaced by the file's
            quantizer.preprocess_model(model=model, device_map=None, keep_in_fp32_modules=keep)
    finally:
        quantizer.pre_quantized = True
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QModuleMixin) and m.weight_qtype is not None}
    if any(m.weight_qtype.bits != 8 or m.frozen for m in layers.values()):
        return None
    expected = dict(model.state_dict())
    for name in layers:
        weight = f"{name}.weight" if name else "weight"
        expected.pop(weight)
        expected[f"{weight}._data"] = expected[f"{weight}._scale"] = None  # shapes checked by quanto
    if set(expected) != set(names):
        return None
    for name, shape in names.items():
        held = expected[name]
        if held is not None and tuple(held.shape) != tuple(shape):
            return None  # diffusers' loader names the mismatch
    modules = dict(model.named_modules())
    parts: dict[str, dict] = {}
    for name, tensor in read().items():
        tensor = as_diffusers_cast(name, tensor, dtype, keep)
        owner, _, attr = name.rpartition(".")
        layer = owner.removesuffix("weight").removesuffix(".")
        if attr in ("_data", "_scale") and owner.endswith("weight") and layer in layers:
            parts.setdefault(layer, {})[attr] = tensor
            continue
        put_tensor(modules[owner], attr, tensor)
    for name, layer in layers.items():
        weight = WeightQBytesTensor.load_from_state_dict(
            parts[name],
            "",
            qtype=layer.weight_qtype,
            axis=0,
            size=layer.weight.size(),
            stride=layer.weight.stride(),
            activation_qtype=layer.activation_qtype,
            missing_keys=[],
        )
        layer.weight = torch.nn.Parameter(weight.optimize())  # as quanto's own _load_from_state_dict
    return finish_quantized_load(model, quantizer, folder, dtype)
