"""What every backend declares and does: the one surface the rest of the resolver asks.

A backend is a frozen dataclass: fields are facts (its quant types, its options, what it needs,
what it can do), methods are hooks (how a component's config is built, how a component loads,
what runs after the load). The rest of the resolver never names a backend; it asks this object.
Adding a backend is one module in this folder plus one line in ``__init__.py``; ``..catalogue``
is the only place that lists them. Facts that apply to one quant type only live on
:class:`QuantType`.

New per-backend facts go here as a field with a safe default (documented on the field), or as a
method with a default implementation that subclasses override, never as a branch on ``name``
elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...constants import DIFFUSERS, LOAD_DTYPES, TRANSFORMERS  # noqa: F401 (re-exported to the backends)

if TYPE_CHECKING:
    from ..rows import RowQuantizer


@dataclass(frozen=True)
class Option:
    """One backend option a user may set in the Backend node's `options` JSON."""

    name: str
    type: str  # "bool" | "int" | "float" | "str_list" | "choice"
    default: Any
    help: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None

    def describe(self) -> dict:
        out = {"name": self.name, "type": self.type, "default": self.default, "help": self.help}
        if self.choices:
            out["choices"] = list(self.choices)
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


@dataclass(frozen=True)
class QuantType:
    """A user-facing quantization type of one backend (e.g. torchao `int8_weight_only`)."""

    name: str
    label: str
    bits: float  # bits per quantized weight, for memory estimates
    options: tuple[str, ...] = ()  # backend options that apply to this type
    needs_cuda: bool = False
    min_compute_capability: tuple[int, int] | None = None
    compute_dtypes: tuple[str, ...] = LOAD_DTYPES
    # Extra bytes per quantized weight for scales/zero points (per-channel or per-group).
    scale_bytes_per_weight: float = 0.0
    savable: bool = True  # False where save_pretrained cannot write this type (the backend may otherwise)
    lora: bool = True  # whether a component of this type takes a LoRA through diffusers + peft
    help: str = ""
    # torch.compile: whether this type is meant to run compiled (slow eager, fast compiled), and the
    # layers (regexes on qualified module names) that fail to compile and stay eager, with why.
    compile_recommended: bool = False
    compile_eager_layers: tuple[str, ...] = ()
    compile_eager_reason: str = ""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "bits": self.bits,
            "options": list(self.options),
            "needs_cuda": self.needs_cuda,
            "min_compute_capability": list(self.min_compute_capability) if self.min_compute_capability else None,
            "compute_dtypes": list(self.compute_dtypes),
            "savable": self.savable,
            "lora": self.lora,
            "help": self.help,
            "compile_recommended": self.compile_recommended,
        }


@dataclass(frozen=True)
class Backend:
    """Base class: subclasses fill the fields and implement `build_config` (and override hooks)."""

    name: str  # the key in diffusers'/transformers' AUTO_QUANTIZATION_CONFIG_MAPPING
    label: str
    modules: tuple[str, ...]  # import names that must be present
    pip: str  # what installs it
    quant_types: tuple[QuantType, ...]
    options: tuple[Option, ...] = ()
    libraries: tuple[str, ...] = (DIFFUSERS, TRANSFORMERS)  # component libraries it can quantize
    savable: tuple[str, ...] = ()  # libraries whose quantized models save_pretrained can write
    # Libraries whose loader for this backend refuses to run without a GPU (`cpu_supported` asks
    # the library itself at run time; this is the documented fact).
    gpu_only_libraries: tuple[str, ...] = ()
    global_mode: bool = True  # usable in a global (whole-pipeline) spec
    needs_file: bool = False  # GGUF: weights come from a file, not from on-the-fly quantization
    file_suffix: str = ""  # for needs_file backends: the suffix of that file (".gguf") ...
    file_kind: str = ""  # ... and what users call it ("GGUF")
    # Whether the config itself carries a compute dtype (bnb 4-bit, GGUF); for the others a
    # non-auto compute_dtype is the dtype the component is loaded in.
    config_compute_dtype: bool = False
    # Whether diffusers' enable_sequential_cpu_offload works on its models; where it does not,
    # `sequential_offload_error` is what fails (shown to the user).
    sequential_offload: bool = True
    sequential_offload_error: str = ""
    # The project a user knows it by (both bitsandbytes backends: "bitsandbytes"); "" = `name`.
    family: str = ""
    # What save_pretrained records as quantization_config.quant_method; "" = `name`.
    quant_method: str = ""
    # Added to the notes of every plan with a component on this backend (why it loads differently).
    plan_note: str = ""
    # Whether its diffusers quantizer converts each weight as it is loaded (one module at a time), so
    # the pack may stream a diffusers component's weights in bounded batches (keep/stream.py) and
    # keep the peak while loading near the resident bytes.
    streams: bool = False
    # diffusers LoRA loader mixins (by class name) that cannot load a LoRA onto this backend's
    # models, and why; per quant type, QuantType.lora. Measured on CPU (resolver/lora.py uses it).
    lora_refused_loaders: tuple[str, ...] = ()
    lora_note: str = ""
    help: str = ""
    deprecated: str = ""  # why and what instead, when the library deprecates this backend (still works)
    # Bytes its 1-byte tensors (int8/float8 data) should start at in a file it saved: a disk-cache
    # entry is written so, and then read mapped instead of copied (0: no need).
    saved_alignment: int = 0

    # -- lookups ---------------------------------------------------------------------------
    def quant_type(self, name: str) -> QuantType | None:
        return next((q for q in self.quant_types if q.name == name), None)

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def with_defaults(self, options: dict) -> dict:
        """`options` with every option the user left out set to its declared default."""
        return {o.name: o.default for o in self.options} | dict(options)

    @property
    def family_name(self) -> str:
        return self.family or self.name

    @property
    def saved_as(self) -> str:
        return self.quant_method or self.name

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def lora_support(self, quant_type: str | None, loader_classes: tuple[str, ...]) -> str | None:
        """Why a component of this backend cannot take a LoRA in a pipeline whose class has
        `loader_classes` in its MRO, or None when it can."""
        q = self.quant_type(quant_type) if quant_type else None
        if q is not None and not q.lora:
            return f"{self.name} {q.name} cannot take a LoRA: {self.lora_note or 'peft has no layer for it'}"
        refused = [c for c in loader_classes if c in self.lora_refused_loaders]
        if refused:
            return f"{self.name} cannot take a LoRA in this pipeline ({refused[0]}): {self.lora_note}"
        return None

    def cpu_supported(self, library: str) -> bool:
        """Whether a component of `library` can be quantized with this backend without a GPU."""
        return library not in self.gpu_only_libraries

    def target_problems(self, quant_type: str, device: str) -> list:
        """Problems of running `quant_type` on `device` that the fields above do not say (a missing
        build tool, for example): a list of `Problem` located at "quant_type"."""
        return []

    def first_use_note(self, quant_type: str, device: str) -> str:
        """What a first load of `quant_type` on `device` does beyond loading (e.g. builds a C++
        extension for minutes): shown as progress text and logged; "" when nothing."""
        return ""

    def skips(self, library: str, module_name: str, entry: str) -> bool:
        """Whether a `modules_to_not_convert` entry keeps the Linear `module_name` unquantized, as
        the library's quantizer matches it: the module itself, one of its parents, or a part of
        its dotted name. The estimate and validation ask this, so they agree with the load."""
        return entry == module_name or entry in module_name.split(".") or module_name.startswith(entry + ".")

    def expands_per_library(self) -> bool:
        """Whether a global spec must become one config per component library: diffusers
        refuses a global config when its and transformers' config classes take different
        arguments (torchao, quanto). Computed, as diffusers computes it."""
        from ..class_facts import config_parameters

        params = [config_parameters(lib, self.name) for lib in (DIFFUSERS, TRANSFORMERS)]
        return None not in params and params[0] != params[1]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "installed": self.installed(),
            "install": self.pip,
            "quant_types": [q.describe() for q in self.quant_types],
            "options": [o.describe() for o in self.options],
            "libraries": list(self.libraries),
            "savable": list(self.savable),
            "global_mode": self.global_mode,
            "needs_file": self.needs_file,
            "cpu": {lib: self.cpu_supported(lib) for lib in self.libraries},
            "lora_refused_loaders": list(self.lora_refused_loaders),
            "lora_note": self.lora_note,
            "help": self.help,
            "deprecated": self.deprecated,
        }

    # -- what the quantizer converts (for estimates) ----------------------------------------
    def quantized_weights(self, model, library: str, config, candidates: list[str]) -> set[str]:
        """Which of `candidates` (Linear weight names of `model`, a throwaway meta-device instance
        of the component) the library's own quantizer quantizes: it is asked, not second-guessed,
        so its skip lists (``modules_to_not_convert``, ``_keep_in_fp32_modules``, tied and output
        embeddings) are the ones a real load applies. The model may be modified."""
        if library == DIFFUSERS:
            from diffusers.quantizers.auto import DiffusersAutoQuantizer

            quantizer = DiffusersAutoQuantizer.from_config(config, pre_quantized=False)
            keep = type(model)._keep_in_fp32_modules
            keep = (
                ([keep] if isinstance(keep, str) else list(keep)) if keep and quantizer.use_keep_in_fp32_modules else []
            )
            quantizer.preprocess_model(model=model, device_map=None, keep_in_fp32_modules=keep)
            params = dict(model.named_parameters())
            return {
                n for n in candidates if n in params and quantizer.check_if_quantized_param(model, params[n], n, {})
            }
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
        quantizer.preprocess_model(model=model, device_map=None, dtype=None)
        return {n for n in candidates if quantizer.param_needs_quantization(model, n)}

    # -- hooks -----------------------------------------------------------------------------
    def config_class(self, library: str) -> type:
        """The library's own config class for this backend, read from its AUTO mapping."""
        from ..class_facts import config_mapping

        return config_mapping(library)[self.name]

    def config_for(self, library: str, quant_type: str, compute_dtype, options: dict):
        """The real config object for a component of `library`: `options` as the user gave them
        (validated), defaulted here from the `Option` declarations, then `build_config`."""
        return self.build_config(library, quant_type, compute_dtype, self.with_defaults(options))

    def build_config(self, library: str, quant_type: str, compute_dtype, options: dict):
        """Return the real config object for a component of `library`. `compute_dtype` is a
        torch.dtype (already resolved from "auto"); `options` are validated and defaulted
        (call `config_for`, which defaults them)."""
        raise NotImplementedError

    def load_component(
        self,
        model_class: type,
        config,
        *,
        folder: Path,
        pipeline_folder: Path,
        name: str,
        file: Path | None = None,
        **kwargs,
    ):
        """Load component `name` quantized with `config` (from `build_config`). `folder` is its
        folder in `pipeline_folder`; `file` the weights file of a `needs_file` backend; `kwargs`
        are `from_pretrained` arguments (dtype, use_safetensors, low_cpu_mem_usage, device_map)."""
        return model_class.from_pretrained(str(folder), quantization_config=config, **kwargs)

    def read_file(self, path: Path):
        """For a `needs_file` backend: the file's summary (`.tensors`, `.params`), read from its
        header only; raises ValueError for a file it cannot read."""
        raise NotImplementedError

    def after_load(self, module, *, prequantized: bool) -> None:
        """Runs on every component this backend quantized, once loaded (`prequantized`: it was
        read from a copy saved quantized, not quantized now). Default: nothing."""

    def read_saved(self, model_class: type, library: str, folder: Path, dtype, names: dict, read: Any):
        """A component this backend saved (a disk-cache entry, a saved pipeline's folder) rebuilt
        without the library's own loader, on the CPU: `names` are the tensors its files hold (name ->
        shape), `read()` reads them (name -> tensor, as safetensors maps them). None where this backend
        has no such reader or the files are not what it expects (nothing read yet): the library's
        `from_pretrained` reads it then. Its float32 tensors hold the file's values (not rounded through
        the load dtype, as diffusers' loader rounds SDNQ's scales): the loader does not read them again.
        Default: None."""
        return None

    def saved_read_context(self):
        """The context the library's `from_pretrained` reads a copy this backend saved in (a disk
        cache entry, a saved pipeline's folder), where `read_saved` does not. Default: none."""
        return contextlib.nullcontext()

    def row_quantizer(self, config, dtype) -> RowQuantizer | None:
        """For a diffusers component quantized with `config`, loaded in `dtype`: how its library quantizes a few rows
        of a weight, where the library's scheme treats each row on its own (a scale per row), so a
        streamed load (keep/stream.py) may quantize a weight a megabyte of rows at a time and get
        the whole weight's tensors bit for bit. None (the default): weights are quantized whole."""
        return None


def meta_shortcuts(custom_ops: dict | None = None):
    """A context in which shape-only work on the meta device skips torch's Python reference
    implementations, which cost 0.3-7 ms per op on CPU: a quantizer that rebuilds its layers on the
    meta device before reading saved weights (quanto's freeze, SDNQ's pre-quantized conversion)
    spent 0.5-0.9 s of a 200M transformer's cached read there. Answered at once, as torch answers
    them: clamp/clip/round/abs of a meta tensor by numbers (same shape, strides and dtype); in place,
    those and div_/mul_ of a floating meta tensor by a number (the tensor itself); amax over
    dimensions of a contiguous meta tensor; div of two contiguous floating meta tensors of one dtype
    whose broadcast shape is one of theirs (contiguous, that dtype). `custom_ops` maps a custom op's
    name ("quanto::quantize_symmetric") to a function of its arguments giving its meta result.
    Anything else, and every real tensor, runs as it always does."""
    import torch
    from torch.overrides import TorchFunctionMode

    T = torch.Tensor
    same = {torch.clamp, torch.clip, torch.round, torch.abs, T.clamp, T.clip, T.round, T.abs}
    in_place = {T.clamp_, T.clip_, T.round_}
    scaled = {T.div_, T.mul_}  # by a number, in place
    reduce_max = {torch.amax, T.amax}
    divide = {torch.div, torch.true_divide, T.div, T.true_divide}
    custom = dict(custom_ops or {})

    def meta_only(args, kwargs) -> bool:
        rest = (*args[1:], *kwargs.values())
        return (
            bool(args)
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
            and not any(isinstance(a, torch.Tensor) for a in rest)
            and not ({"out", "decimals", "rounding_mode"} & set(kwargs))
        )

    def amax(x, dim=(), keepdim=False, **kwargs):
        keepdim = kwargs.pop("keepdims", keepdim)
        if kwargs or not x.is_contiguous():
            return None
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not dims:
            dims = list(range(x.ndim))
        dims = {d % x.ndim for d in dims} if x.ndim else set()
        shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keepdim or i not in dims]
        return torch.empty(shape, dtype=x.dtype, device="meta")

    def div(a, b, **kwargs):
        if kwargs or not all(isinstance(t, torch.Tensor) and t.is_meta and t.is_contiguous() for t in (a, b)):
            return None
        if a.dtype != b.dtype or not a.dtype.is_floating_point:
            return None
        shape = torch.broadcast_shapes(a.shape, b.shape)
        if shape not in (a.shape, b.shape):
            return None
        return torch.empty(shape, dtype=a.dtype, device="meta")

    class MetaShortcuts(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "_qualified_op_name", None)
            if name in custom and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return custom[name](*args, **kwargs)
            if (func in same or func in in_place) and meta_only(args, kwargs):
                x = args[0]
                return x if func in in_place else torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
            if func in scaled and meta_only(args, kwargs) and args[0].dtype.is_floating_point and len(args) == 2:
                return args[0]
            found = None
            if func in reduce_max and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                found = amax(*args, **kwargs)
            elif func in divide and len(args) == 2:
                found = div(*args, **kwargs)
            return found if found is not None else func(*args, **kwargs)

    return MetaShortcuts()


def diffusers_skeleton(model_class, config: dict, quantizer, dtype):
    """The component on the meta device as diffusers' `from_pretrained` builds it before its
    quantizer replaces layers: (model, the float32-kept module names, the load dtype after the
    quantizer's say). Weights are neither initialised nor allocated."""
    import accelerate
    import torch
    from diffusers.models.modeling_utils import no_init_weights

    quantizer.validate_environment(torch_dtype=dtype, device_map=None)
    dtype = quantizer.update_torch_dtype(dtype)
    keep = model_class._keep_in_fp32_modules
    if keep is not None and getattr(quantizer, "use_keep_in_fp32_modules", False):
        keep = keep if isinstance(keep, list) else [keep]
    else:
        keep = []
    default = model_class._set_default_torch_dtype(dtype)
    try:
        with no_init_weights(), accelerate.init_empty_weights():
            model = model_class.from_config(config)
    finally:
        torch.set_default_dtype(default)
    return model, keep, dtype


def saved_diffusers_skeleton(model_class, folder: Path, dtype):
    """(model, quantizer, the float32-kept module names, the load dtype) for a diffusers component saved
    quantized in `folder`, as diffusers' `from_pretrained` has them before its quantizer's
    `preprocess_model`: the folder's config, its quantization config merged as diffusers merges it,
    the pre-quantized quantizer and the meta skeleton. None where config.json has no quantization config."""
    from diffusers.quantizers.auto import DiffusersAutoQuantizer

    config = model_class.load_config(str(folder), local_files_only=True)
    if not isinstance(config.get("quantization_config"), dict):
        return None
    config["quantization_config"] = DiffusersAutoQuantizer.merge_quantization_configs(
        config["quantization_config"], None
    )
    quantizer = DiffusersAutoQuantizer.from_config(config["quantization_config"], pre_quantized=True)
    model, keep, dtype = diffusers_skeleton(model_class, config, quantizer, dtype)
    return model, quantizer, keep, dtype


def as_diffusers_cast(name: str, tensor, dtype, keep: list):
    """The cast diffusers' loader gives a tensor it reads (load_model_dict_into_meta): floating tensors
    to the load dtype, float32 in modules kept in float32, a quantizer's float8 data as stored."""
    import torch

    if not torch.is_floating_point(tensor):
        return tensor
    if any(k in name.split(".") for k in keep):
        return tensor.to(torch.float32)
    if tensor.dtype == getattr(torch, "float8_e4m3fn", None):
        return tensor
    return tensor.to(dtype)


def put_tensor(module, attr: str, tensor) -> None:
    """A plain tensor read from a file in the place of `module`'s parameter or buffer `attr`, as
    diffusers' loader puts it (a parameter keeps its requires_grad)."""
    import torch

    held = module._parameters.get(attr)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=held.requires_grad)
    else:
        module._buffers[attr] = tensor


def finish_quantized_load(model, quantizer, folder: Path | str, dtype):
    """What diffusers' `from_pretrained` does once a quantized model's weights are in (a saved copy
    read, or weights quantized as they streamed in): every tensor read (none left on the meta device,
    else RuntimeError), the quantizer's postprocess, the model's `hf_quantizer`, its config's name and
    pre-quantization dtype, eval mode. Returns the model."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"{len(left)} tensors were not read from {folder} (first: {left[0]})")
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    model.register_to_config(_name_or_path=str(folder), _pre_quantization_dtype=dtype)
    model.eval()
    return model


def module_skip_list(options: dict) -> list[str] | None:
    skip = options.get("modules_to_not_convert")
    return list(skip) if skip else None


MODULES_TO_NOT_CONVERT = Option(
    "modules_to_not_convert",
    "str_list",
    [],
    'Module names (or name fragments) to leave unquantized, e.g. ["proj_out", "norm_out"].',
)
