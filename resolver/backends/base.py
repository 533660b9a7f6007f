"""What every backend declares: its quant types, its options, what it needs and how it builds configs.

A backend is data plus one `build_config` method. The catalogue (``..catalogue``) is the only
place that lists them; validation, planning, the nodes and the web extension all read from it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

DIFFUSERS = "diffusers"
TRANSFORMERS = "transformers"

COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")


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
    compute_dtypes: tuple[str, ...] = ("bfloat16", "float16", "float32")
    # Extra bytes per quantized weight for scales/zero points (per-channel or per-group).
    scale_bytes_per_weight: float = 0.0
    savable: bool = True  # False where save_pretrained cannot write this type (the backend may otherwise)
    help: str = ""

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
            "help": self.help,
        }


@dataclass(frozen=True)
class Backend:
    """Base class: subclasses fill the fields and implement `build_config`."""

    name: str  # the key in diffusers'/transformers' AUTO_QUANTIZATION_CONFIG_MAPPING
    label: str
    modules: tuple[str, ...]  # import names that must be present
    pip: str  # what installs it
    quant_types: tuple[QuantType, ...]
    options: tuple[Option, ...] = ()
    libraries: tuple[str, ...] = (DIFFUSERS, TRANSFORMERS)  # component libraries it can quantize
    savable: tuple[str, ...] = ()  # libraries whose quantized models save_pretrained can write
    global_mode: bool = True  # usable in a global (whole-pipeline) spec
    needs_file: bool = False  # GGUF: weights come from a file, not from on-the-fly quantization
    # Whether the config itself carries a compute dtype (bnb 4-bit, GGUF); for the others a
    # non-auto compute_dtype is the dtype the component is loaded in.
    config_compute_dtype: bool = False
    help: str = ""
    deprecated: str = ""  # why and what instead, when the library deprecates this backend (still works)
    extra: dict = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------
    def quant_type(self, name: str) -> QuantType | None:
        return next((q for q in self.quant_types if q.name == name), None)

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def cpu_supported(self, library: str) -> bool:
        """Whether a component of `library` can be quantized with this backend without a GPU."""
        return True

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
            "help": self.help,
            "deprecated": self.deprecated,
        }

    # -- building --------------------------------------------------------------------------
    def config_class(self, library: str) -> type:
        """The library's own config class for this backend, read from its AUTO mapping."""
        from ..catalogue import config_mapping

        return config_mapping(library)[self.name]

    def build_config(self, library: str, quant_type: str, compute_dtype, options: dict):
        """Return the real config object for a component of `library`. `compute_dtype` is a
        torch.dtype (already resolved from "auto"); `options` are validated and defaulted."""
        raise NotImplementedError


def module_skip_list(options: dict) -> list[str] | None:
    skip = options.get("modules_to_not_convert")
    return list(skip) if skip else None


MODULES_TO_NOT_CONVERT = Option(
    "modules_to_not_convert",
    "str_list",
    [],
    "Module names (or name fragments) to leave unquantized, e.g. [\"proj_out\", \"norm_out\"].",
)
