"""SDNQ (SD.Next's quantization engine, `pip install sdnq`, GPL-3.0: an optional extra).

Quantizes on the fly on CPU and GPU and saves. One config class serves both libraries: diffusers'
`SDNQConfig` is a factory returning `sdnq.SDNQConfig`, and transformers learns about SDNQ only
when `sdnq` is imported (it registers its quantizer then), so the config is built after that import.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import (
    DIFFUSERS,
    MODULES_TO_NOT_CONVERT,
    TRANSFORMERS,
    Backend,
    Option,
    QuantType,
    as_diffusers_cast,
    finish_quantized_load,
    meta_shortcuts,
    module_skip_list,
    put_tensor,
    saved_diffusers_skeleton,
)

GROUP_SIZE = Option(
    "group_size",
    "int",
    0,
    "Weights per scale; 0 = SDNQ's choice (64 for 4-bit, 1024 for 8-bit Linear layers), -1 = one scale per row.",
    min=-1,
    max=4096,
)
USE_SVD = Option(
    "use_svd",
    "bool",
    False,
    "Keep a low-rank correction of the quantization error (SVDQuant): better quality, slower load.",
)
QUANTIZED_MATMUL = Option(
    "use_quantized_matmul",
    "bool",
    False,
    "Run the matmul in int8/fp8 instead of dequantizing the weights (faster on GPUs that support it).",
)
OPTIONS = (MODULES_TO_NOT_CONVERT, GROUP_SIZE, USE_SVD, QUANTIZED_MATMUL)
NAMES = tuple(o.name for o in OPTIONS)


def _type(name: str, bits: int, group: int, help: str) -> QuantType:
    # One float32 scale per group (SDNQ's default group for Linear layers: 2 ** (bits + 2)).
    return QuantType(name, name, bits, NAMES, scale_bytes_per_weight=4 / group, help=help)


@dataclass(frozen=True)
class SDNQ(Backend):
    def config_class(self, library: str) -> type:
        import sdnq  # noqa: F401 (transformers' mapping gains "sdnq" only now)

        from ..class_facts import config_mapping

        if self.name not in config_mapping(library):
            config_mapping.cache_clear()  # read before the import
        return config_mapping(library)[self.name]

    def saved_read_context(self):
        """SDNQ rebuilds a saved model by quantizing its empty (meta) weights first: 129 layers spent
        0.44-0.9 s in torch's meta clamp_; the shape alone is known."""
        return meta_shortcuts()

    def read_saved(self, model_class, library, folder, dtype, names, read):
        """A saved diffusers component, rebuilt as diffusers' own loader rebuilds it (the same skeleton,
        SDNQ's own layer replacement on the meta device, its own `create_quantized_param` per quantized
        tensor, the same casts and config) without the loader's per-tensor bookkeeping. Each SDNQ tensor
        goes to SDNQ as the file holds it: diffusers casts the float32 scales to the load dtype first
        (and `keep.load` puts the exact values back after), here they are exact from the start."""
        if library != DIFFUSERS:
            return None
        return _read_saved_diffusers(self, model_class, folder, dtype, names, read)

    def build_config(self, library, quant_type, compute_dtype, options):
        import sdnq  # registers SDNQ's quantizer with transformers

        return sdnq.SDNQConfig(
            weights_dtype=quant_type,
            group_size=int(options.get("group_size", 0)),
            use_svd=bool(options.get("use_svd", False)),
            use_quantized_matmul=bool(options.get("use_quantized_matmul", False)),
            modules_to_not_convert=module_skip_list(options),
        )


SDNQ_BACKEND = SDNQ(
    name="sdnq",
    label="SDNQ (SD.Next)",
    modules=("sdnq",),
    pip='pip install sdnq  (GPL-3.0; or pip install "pipequant[sdnq]")',
    quant_types=(
        _type("int8", 8, 1024, "8-bit integer weights."),
        _type("float8_e4m3fn", 8, 1024, "8-bit float weights."),
        _type("int6", 6, 256, "6-bit integer weights."),
        _type("int4", 4, 64, "4-bit integer weights."),
        _type("uint4", 4, 64, "4-bit unsigned weights with a zero point."),
    ),
    options=OPTIONS,
    libraries=(DIFFUSERS, TRANSFORMERS),
    savable=(DIFFUSERS, TRANSFORMERS),
    streams=True,
    help="SD.Next's quantization engine: on the fly on CPU and GPU, any bit width, saves pre-quantized. GPL-3.0.",
)


def _read_saved_diffusers(backend, model_class, folder, dtype, names, read):
    """SDNQ.read_saved for a diffusers model; None where the files are not exactly its tensors."""
    import torch

    start = saved_diffusers_skeleton(model_class, folder, dtype)
    if start is None:
        return None
    model, quantizer, keep, dtype = start
    with backend.saved_read_context():
        quantizer.preprocess_model(model=model, device_map=None, keep_in_fp32_modules=keep)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if expected != {name: tuple(shape) for name, shape in names.items()}:
        return None  # diffusers' loader reads it (or names what is wrong with it)
    modules = dict(model.named_modules())
    cpu = torch.device("cpu")
    for name, tensor in read().items():
        if quantizer.check_if_quantized_param(model, tensor, name):
            quantizer.create_quantized_param(model, tensor, name, cpu, dtype=dtype)
        else:
            owner, _, attr = name.rpartition(".")
            put_tensor(modules[owner], attr, as_diffusers_cast(name, tensor, dtype, keep))
    return finish_quantized_load(model, quantizer, folder, dtype)
