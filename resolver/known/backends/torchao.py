"""torchao backend. Both libraries want an `AOBaseConfig` instance, not a string (README "Facts")."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TorchAO(Backend):
    def build_config(self, library, quant_type, compute_dtype, options):
        return self.config_class(library)(
            quant_type=_ao_config(quant_type, options), modules_to_not_convert=module_skip_list(options)
        )


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
