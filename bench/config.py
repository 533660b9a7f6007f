"""What the benchmarks load: sizes, plans, and each plan's plain-diffusers equivalent.

One place lists the plans. Each has the PipeQuant spec (what the Backend / Per-Component Map
nodes produce) and a builder for the `PipelineQuantizationConfig` a diffusers user would write
by hand for the same result: global where diffusers' global mode works (bitsandbytes), granular
(one config class per library) where it does not (torchao, quanto; README "Facts").
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SIZES = ("20m", "200m")
ALL_SIZES = ("tiny", "20m", "200m", "2b")

# Shard the transformer the way the hub does (FLUX.1-dev: 3 transformer shards, 2 T5 shards):
# a few shards per transformer at every size. Text encoders and VAE stay single-file (tiny).
SHARD_SIZE = {"tiny": "4MB", "20m": "16MB", "200m": "128MB", "2b": "1GB", "t5-130m": "128MB"}

# The components a global spec quantizes by default (PipeQuant keeps the VAE unquantized).
QUANTIZED = ("transformer", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class Plan:
    key: str  # short name used in tables and JSON
    label: str
    spec: dict | None  # PipeQuant spec as JSON (None: unquantized)
    savable: bool = False  # Save Quantized Pipeline accepts it
    bits: float = 16.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def _global(backend: str, quant_type: str) -> dict:
    return {
        "kind": "global",
        "backend": backend,
        "quant_type": quant_type,
        "compute_dtype": "auto",
        "options": {},
        "components": None,
    }


def _one(backend: str, quant_type: str) -> dict:
    return {"backend": backend, "quant_type": quant_type, "compute_dtype": "auto", "options": {}}


PLANS: dict[str, Plan] = {
    "bf16": Plan("bf16", "bf16 (no quantization)", None, bits=16),
    "nf4": Plan(
        "nf4",
        "bnb nf4",
        _global("bitsandbytes_4bit", "nf4"),
        savable=True,
        bits=4,
        note="diffusers' bnb quantizer patched to run on CPU (pipequant/testing/bnb_cpu.py)",
    ),
    "int8wo": Plan(
        "int8wo",
        "torchao int8 weight-only",
        _global("torchao", "int8_weight_only"),
        savable=True,
        bits=8,
        note="plain diffusers needs a granular map (global mode fails for torchao)",
    ),
    "quanto8": Plan(
        "quanto8",
        "quanto int8",
        _global("quanto", "int8"),
        bits=8,
        note="plain diffusers needs a granular map (global mode fails for quanto)",
    ),
    # quanto-quantized transformers models cannot be saved: the savable quanto plan quantizes
    # the transformer only.
    "quanto8_tr": Plan(
        "quanto8_tr",
        "quanto int8, transformer only",
        {"kind": "granular", "components": {"transformer": _one("quanto", "int8")}},
        savable=True,
        bits=8,
    ),
    # sdnq (SD.Next's engine, GPL-3.0, optional): only the disk-cache bench uses it (its plain-diffusers
    # twin is not in the other benchmarks). SDNQ_USE_TORCH_COMPILE=0 keeps its first use eager on CPU.
    "sdnq8_tr": Plan(
        "sdnq8_tr",
        "sdnq int8, transformer only",
        {"kind": "granular", "components": {"transformer": _one("sdnq", "int8")}},
        savable=True,
        bits=8,
    ),
}

OVERHEAD_PLANS = ("bf16", "nf4", "int8wo", "quanto8")  # benchmark 1, 2 and 5
PREQUANT_PLANS = ("nf4", "int8wo", "quanto8_tr")  # benchmark 4: one per savable backend
# Benchmark 3: plan A is the global plan; plan B switches text_encoder_2 to another backend.
REUSE_SWITCH = {"nf4": "int8wo", "int8wo": "quanto8", "quanto8": "nf4"}
REUSE_COMPONENT = "text_encoder_2"


def reuse_plan_b(a: str) -> dict:
    """Plan A with text_encoder_2 switched to REUSE_SWITCH[a]'s backend (a granular map)."""
    spec_a, spec_b = PLANS[a].spec, PLANS[REUSE_SWITCH[a]].spec
    comps = {name: _one(spec_a["backend"], spec_a["quant_type"]) for name in QUANTIZED}
    comps[REUSE_COMPONENT] = _one(spec_b["backend"], spec_b["quant_type"])
    return {"kind": "granular", "components": comps}


def plain_quantization_config(plan_key: str, dtype: str = "bfloat16"):
    """The `PipelineQuantizationConfig` a diffusers user writes for the same plan (None for bf16)."""
    import torch
    from diffusers import PipelineQuantizationConfig

    if plan_key == "bf16":
        return None
    if plan_key == "nf4":  # global mode works for bitsandbytes
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": getattr(torch, dtype),
            },
            components_to_quantize=list(QUANTIZED),
        )
    if plan_key == "int8wo":
        import diffusers
        import transformers
        from torchao.quantization import Int8WeightOnlyConfig

        return PipelineQuantizationConfig(
            quant_mapping={
                "transformer": diffusers.TorchAoConfig(Int8WeightOnlyConfig()),
                "text_encoder": transformers.TorchAoConfig(Int8WeightOnlyConfig()),
                "text_encoder_2": transformers.TorchAoConfig(Int8WeightOnlyConfig()),
            }
        )
    if plan_key in ("quanto8", "quanto8_tr"):
        import diffusers
        import transformers

        mapping = {"transformer": diffusers.QuantoConfig(weights_dtype="int8")}
        if plan_key == "quanto8":
            mapping.update(
                text_encoder=transformers.QuantoConfig(weights="int8"),
                text_encoder_2=transformers.QuantoConfig(weights="int8"),
            )
        return PipelineQuantizationConfig(quant_mapping=mapping)
    raise KeyError(plan_key)
