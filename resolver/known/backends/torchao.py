"""torchao backend. Both libraries want an `AOBaseConfig` instance, not a string (README "Facts")."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..rows import WrittenRows, owner_of, scratch_tensor
from .base import MODULES_TO_NOT_CONVERT, Backend, Option, QuantType, module_skip_list

GROUP_SIZE = Option(
    "group_size",
    "choice",
    128,
    "Weights per scale for int4 (smaller: better quality, more memory).",
    choices=(32, 64, 128, 256),
)
GRANULARITY = Option(
    "granularity",
    "choice",
    "per_row",
    "Scale granularity of float8 dynamic; per_tensor fails on small layers.",
    choices=("per_row", "per_tensor"),
)

# Linear layers fed one row per image (timestep/guidance/pooled-text embedders, the norms'
# modulation): int8 dynamic's compiled matmul rejects them (H100 measurement, README "Facts").
BATCH_ONE_LAYERS = (
    r"(^|\.)(time_text_embed|time_embed|timestep_embedder|guidance_embedder|text_embedder|add_embedding)\.",
    r"(^|\.)norm[^.]*\.linear$",
)


def _ao_config(quant_type: str, options: dict):
    import torchao.quantization as ao

    if quant_type == "int8_weight_only":
        return ao.Int8WeightOnlyConfig()
    if quant_type == "int8_dynamic":
        return ao.Int8DynamicActivationInt8WeightConfig()
    if quant_type == "int4_weight_only":
        # The default packing needs the `mslk` kernels, absent from torchao wheels (README "Facts").
        return ao.Int4WeightOnlyConfig(group_size=int(options["group_size"]), int4_packing_format="tile_packed_to_4d")
    if quant_type == "float8_weight_only":
        return ao.Float8WeightOnlyConfig()
    if quant_type == "float8_dynamic":
        granularity = ao.PerTensor() if options["granularity"] == "per_tensor" else ao.PerRow()
        return ao.Float8DynamicActivationFloat8WeightConfig(granularity=granularity)
    raise KeyError(quant_type)


# Configs whose weights get one scale per row (PerRow, their default), so a row's values depend on
# that row alone, and the function in torchao.quantization.quant_api that their transform (what
# `quantize_` runs per Linear) calls on the weight. A config set per-tensor is caught when the rows
# are opened up (keep/stream.py).
ROW_FUNCTIONS = {
    "Int8WeightOnlyConfig": "_int8_weight_only_quantize_tensor",
    "Int8DynamicActivationInt8WeightConfig": "_int8_dynamic_activation_int8_weight_quantize_tensor",
    "Float8WeightOnlyConfig": "_float8_weight_only_quant_tensor",
}


# Their weights are torchao's Int8Tensor.from_hp with its defaults: symmetric, zero points 0.
INT8_FUNCTIONS = ("_int8_weight_only_quantize_tensor", "_int8_dynamic_activation_int8_weight_quantize_tensor")


class _AORows(WrittenRows):
    """The weight half of torchao's transform, on some rows (the module half in `put`). Called
    directly: the transform's own module handling costs as much as the math on a megabyte of rows.
    int8 rows are written by `_int8_rows` where it gives torchao's own result."""

    def __init__(self, ao_config, function, module_repr, inductor_settings):
        super().__init__()
        self.ao_config, self.function = ao_config, function
        self.module_repr, self.inductor_settings = module_repr, inductor_settings

    def takes(self, module, name):
        import torch

        return type(module) is torch.nn.Linear and name.rpartition(".")[2] == "weight"

    def quantize(self, module, rows):
        return self.function(rows, self.ao_config)

    def writer(self, module, sample):
        if self.function.__name__ not in INT8_FUNCTIONS or type(sample).__name__ != "Int8Tensor":
            return None
        names, attributes = sample.__tensor_flatten__()
        per_row = list(attributes.get("block_size", ())) == [1, sample.shape[-1]]
        if set(names) != {"qdata", "scale", "zero_point"} or not per_row:
            return None
        int8_range = (-64, 63) if attributes.get("reduce_range") else (-128, 127)
        return partial(_int8_rows, int8_range=int8_range)

    def assemble(self, sample, inner, shape):
        if list(getattr(sample, "block_size", [1]))[0] != 1:
            raise ValueError("not one scale per row")
        _, attributes = sample.__tensor_flatten__()
        return type(sample).__tensor_unflatten__(inner, attributes, shape, None)

    def put(self, model, name, tensor):
        """The rest of the transform: the inductor settings, the parameter, the repr."""
        import types

        import torch

        module, tensor_name = owner_of(model, name)
        if getattr(self.ao_config, "set_inductor_config", False):
            self.inductor_settings()
        module._parameters[tensor_name] = torch.nn.Parameter(tensor, requires_grad=False)
        module.extra_repr = types.MethodType(
            partial(self.module_repr, original_extra_repr=module.extra_repr, parameter_name=tensor_name), module
        )


def _int8_rows(rows, out: dict, scratch: dict, int8_range: tuple[int, int]) -> None:
    """torchao's Int8Tensor.from_hp (symmetric, a scale per row) for `rows`, written into `out`: the
    same operations on the same dtypes (torchao 0.18's choose_qparams_affine and quantize_affine), in
    scratch memory reused from call to call. The 200M transformer streamed in 0.36-0.43 s on 2
    threads, against 0.56-0.62 s with torchao's function on each part and 0.46-0.57 s through
    diffusers' loader. Two steps differ without changing a bit: a row's largest magnitude is |x|'s
    maximum, not max(-min(min x, 0), max(max x, 0)) (one pass, not two: the same value, NaN
    included), and the zero point (0) is not added before the clamp (that only turns -0.0 into 0.0,
    as the int8 cast does). Checked against torchao's own result for each row length before use
    (WrittenRows)."""
    import torch

    low, high = int8_range
    magnitude = torch.abs(rows, out=scratch_tensor(scratch, "magnitude", rows.shape, rows.dtype))
    scale = magnitude.amax(dim=1, keepdim=True) / (float(high - low) / 2)
    out["scale"].copy_(torch.clamp(scale, min=torch.finfo(torch.float32).eps))  # float32, torchao's scale_dtype
    values = torch.mul(rows, 1.0 / out["scale"], out=scratch_tensor(scratch, "values", rows.shape, torch.float32))
    out["qdata"].copy_(values.round_().clamp_(low, high))
    out["zero_point"].zero_()


@dataclass(frozen=True)
class TorchAO(Backend):
    def build_config(self, library, quant_type, compute_dtype, options):
        return self.config_class(library)(
            quant_type=_ao_config(quant_type, options), modules_to_not_convert=module_skip_list(options)
        )

    def row_quantizer(self, config, dtype):
        ao_config = getattr(config, "quant_type", None)
        name = ROW_FUNCTIONS.get(type(ao_config).__name__)
        try:  # torchao's own pieces, private ones included: where one is gone, weights quantize whole
            from torchao.quantization import quant_api
            from torchao.quantization.utils import _module_extra_repr, recommended_inductor_config_setter
        except ImportError:
            return None
        function = getattr(quant_api, name, None) if name else None
        if function is None:
            return None
        return _AORows(ao_config, function, _module_extra_repr, recommended_inductor_config_setter)


TORCHAO = TorchAO(
    name="torchao",
    label="torchao",
    modules=("torchao",),
    pip="pip install torchao",
    quant_types=(
        QuantType(
            "int8_weight_only",
            "int8 weight-only",
            8,
            ("modules_to_not_convert",),
            scale_bytes_per_weight=0.0,
            help="Half of bf16 memory; works on CPU.",
        ),
        QuantType(
            "int8_dynamic",
            "int8 dynamic activation + int8 weight",
            8,
            ("modules_to_not_convert",),
            help="int8 matmuls; slow without torch.compile.",
            compile_recommended=True,
            compile_eager_layers=BATCH_ONE_LAYERS,
            compile_eager_reason='torch._int_mm needs more than 16 rows ("self.size(0) needs to be greater '
            'than 16"); these layers see one row per image',
        ),
        QuantType(
            "int4_weight_only",
            "int4 weight-only (CUDA, bf16)",
            4,
            ("group_size", "modules_to_not_convert"),
            needs_cuda=True,
            compute_dtypes=("bfloat16",),
            scale_bytes_per_weight=4 / 128,
            savable=False,
            lora=False,
            help="Quarter of bf16 memory; tinygemm kernels need CUDA and bfloat16. Its GPU-specific "
            "packing is not saved.",
        ),
        QuantType(
            "float8_weight_only",
            "float8 weight-only",
            8,
            ("modules_to_not_convert",),
            help="Half of bf16 memory; works on CPU.",
        ),
        QuantType(
            "float8_dynamic",
            "float8 dynamic activation + float8 weight",
            8,
            ("granularity", "modules_to_not_convert"),
            needs_cuda=True,
            min_compute_capability=(8, 9),
            compile_recommended=True,
            help="Per-row scales (per-tensor fails on small layers). Meant to be used with compile: "
            "the fastest plan measured with regional compile on Hopper (1.65x bf16), slower than bf16 "
            "without it. Needs compute capability 8.9+ (Ada, Hopper).",
        ),
    ),
    options=(GROUP_SIZE, GRANULARITY, MODULES_TO_NOT_CONVERT),
    # int8 and float8 tensor subclasses round-trip through safetensors bit for bit (measured on CPU).
    savable=("diffusers", "transformers"),
    # peft 0.21's torchao LoRA layer refuses int4 weights ("only supports int8 weights for now").
    lora_note="peft's torchao LoRA layer takes int8 and float8 weights only; use int8_weight_only for that component",
    streams=True,
    help="PyTorch-native int8/int4/float8 tensor subclasses; composes with torch.compile.",
)
