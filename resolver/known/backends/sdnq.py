"""SDNQ (SD.Next's quantization engine, `pip install sdnq`, GPL-3.0: an optional extra).

Quantizes on the fly on CPU and GPU and saves. One config class serves both libraries: diffusers'
`SDNQConfig` is a factory returning `sdnq.SDNQConfig`, and transformers learns about SDNQ only
when `sdnq` is imported (it registers its quantizer then), so the config is built after that import.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rows import RowQuantizer
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


# SDNQ's layer setup (`sdnq_quantize_layer`) pops these before it quantizes the weight.
_LAYER_KWARGS = ("return_device", "quantization_device", "non_blocking", "use_dynamic_quantization")
# Choices that make the weight's result depend on more than its own row: a low-rank fit of the
# whole weight, a rotation, a codebook, a search over types, random rounding, a transposed layout.
_WHOLE_WEIGHT = (
    "use_svd",
    "use_hadamard",
    "use_codebook",
    "use_dynamic_quantization",
    "use_stochastic_rounding",
    "use_quantized_matmul",
)


def _keeps_rows_apart(setting) -> bool:
    """Whether SDNQ settings (`setting(name)`: a config's attribute or a layer's quant kwarg) keep
    each weight row on its own: an unpacked signed type, float scales, none of _WHOLE_WEIGHT, and
    quantized where it stays."""
    from sdnq.common import dtype_dict

    weights = dtype_dict.get(setting("weights_dtype"))
    return (
        weights is not None
        and not weights["is_packed"]
        and not weights["is_unsigned"]
        and not any(setting(k) for k in _WHOLE_WEIGHT)
        and setting("scale_dtype") in (None, "none")
        and setting("zero_point_dtype") in (None, "none")
        and setting("quantization_device") is None
        and setting("return_device") is None
    )


class _SDNQRows(RowQuantizer):
    """SDNQ's `create_quantized_param` for some rows of a Linear weight, where its scheme keeps each
    row on its own: an unpacked type (int8, float8) with float scales and none of _WHOLE_WEIGHT.
    Its groups then split a row and never span two; what the whole weight changes is only the row
    count in the dequantizer's shapes. A result is (dequantizer, SDNQ's tensors by name)."""

    SHAPES = ("result_shape", "original_shape", "quantized_weight_shape", "quantized_scale_shape")
    SHAPES += ("quantized_zero_point_shape",)

    def __init__(self, config, dtype):
        self.config, self.dtype, self.kwargs = config, dtype, {}

    def takes(self, module, name):
        from sdnq.common import linear_types
        from sdnq.utils import check_param_name_in, check_quant_is_allowed, get_quant_kwargs

        kind = type(module).__name__
        if name.rpartition(".")[2] != "weight" or kind not in linear_types:
            return False
        # what SDNQ's check_if_quantized_param asks, without its side effect on the config
        if check_param_name_in(name, self.config.modules_to_not_convert) is not None:
            return False
        if not check_quant_is_allowed(kind, module.weight, self.config):
            return False
        kwargs = get_quant_kwargs(module, self.config, torch_dtype=self.dtype, param_name=name)
        if not _keeps_rows_apart(kwargs.get):
            return False
        self.kwargs[module] = {k: v for k, v in kwargs.items() if k not in _LAYER_KWARGS}
        return True

    def quantize(self, module, rows):
        import torch
        from sdnq.quantizer import sdnq_quantize_layer_weight

        # as create_quantized_param hands it on: float32 (float64 stays)
        weight = rows.detach().to(dtype=torch.float32 if rows.dtype != torch.float64 else torch.float64)
        return sdnq_quantize_layer_weight(weight, **self.kwargs[module])

    def parts(self, quantized):
        return {n: t for n, t in quantized[1].items() if t is not None}

    def assemble(self, sample, inner, shape):
        import copy

        import torch

        dequantizer, tensors = sample
        whole = copy.copy(dequantizer)
        for attribute in self.SHAPES:
            value = getattr(whole, attribute)
            if value is not None:
                setattr(whole, attribute, torch.Size((shape[0], *value[1:])))
        return whole, {n: inner.get(n) for n in tensors}  # SDNQ's order, its None entries kept

    def put(self, model, name, quantized):
        """The rest of `sdnq_quantize_layer`: the wrapper layer, its tensors as parameters, the
        Nones as attributes, the wrapper in the parent's place."""
        import torch
        from sdnq.forward import get_forward_func
        from sdnq.layers import get_sdnq_wrapper_class

        dequantizer, tensors = quantized
        module_name = name.rpartition(".")[0]
        parent_name, _, child = module_name.rpartition(".")
        layer = model.get_submodule(module_name)
        del self.kwargs[layer]
        layer.sdnq_dequantizer = dequantizer
        layer = get_sdnq_wrapper_class(
            layer,
            get_forward_func(
                type(layer).__name__, dequantizer.quantized_matmul_dtype, dequantizer.use_quantized_matmul
            ),
        )
        for key, value in tensors.items():
            if value is None:
                setattr(layer, key, value)
            else:
                setattr(layer, key, torch.nn.Parameter(value, requires_grad=False))
                getattr(layer, key)._is_hf_initialized = True
        setattr(model.get_submodule(parent_name), child, layer)


@dataclass(frozen=True)
class SDNQ(Backend):
    def row_quantizer(self, config, dtype):
        """Where the config's own choices keep rows apart (_SDNQRows); a layer whose own settings
        (SDNQ's per-module configs) do not is quantized whole."""
        return _SDNQRows(config, dtype) if _keeps_rows_apart(lambda k: getattr(config, k, None)) else None

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
