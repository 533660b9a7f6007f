"""Turn a validated spec and an inspected model into a per-component plan and real configs.

Diffusers' global mode only works where the diffusers and transformers config classes share a
signature. The plan therefore always expands to one config per component, each built by its
backend from its own library's class; components whose weights come from a backend's file load
through that backend's `load_component`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..constants import ACTIONS, DEFAULT_DTYPE, KEEP, NOT_A_MODEL, PREQUANTIZED, QUANTIZE
from ..files.inspect_model import ModelInfo
from ..files.roots import find_file
from ..known import catalogue, devices
from ..links.spec import BackendSpec, ComponentMap


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    library: str | None
    class_name: str | None
    action: str
    spec: BackendSpec | None = None  # the per-component spec (no component list)
    load_dtype: str = DEFAULT_DTYPE
    compute_dtype: str = DEFAULT_DTYPE
    gguf_path: Path | None = None  # the weights file of a backend that reads one (`from_file`)
    reason: str = ""

    @property
    def backend(self):
        """The catalogue's backend for this component's spec, or None."""
        return catalogue.get_backend(self.spec.backend) if self.spec is not None else None

    @property
    def from_file(self) -> bool:
        """Weights come from the backend's own file (GGUF): the action is the backend's name."""
        return self.action not in ACTIONS

    def build_config(self):
        """The real diffusers/transformers config object for this component, or None."""
        if self.spec is None:
            return None
        import torch

        return self.backend.config_for(
            self.library, self.spec.quant_type, getattr(torch, self.compute_dtype), self.spec.options_dict
        )

    def fingerprint(self) -> str:
        """What makes this component's loaded weights differ: spec, dtypes and file."""
        spec = self.spec.fingerprint() if self.spec else "none"
        return f"{self.action}:{spec}:{self.load_dtype}:{self.compute_dtype}"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "library": self.library,
            "class": self.class_name,
            "action": self.action,
            "backend": self.spec.backend if self.spec else None,
            "quant_type": self.spec.quant_type if self.spec else None,
            "load_dtype": self.load_dtype,
            "compute_dtype": self.compute_dtype,
            "gguf_file": str(self.gguf_path) if self.gguf_path else None,
            "reason": self.reason,
        }


@dataclass
class Plan:
    model: ModelInfo
    dtype: str
    device: str
    offload: str
    components: dict[str, ComponentPlan]
    notes: list[str] = field(default_factory=list)
    variant: str | None = None  # diffusers weight variant ("fp16"); None: the plain files

    def modules(self) -> list[ComponentPlan]:
        return [c for c in self.components.values() if c.action != NOT_A_MODEL]

    def pipeline_quantization_config(self):
        """diffusers' own PipelineQuantizationConfig for the components it can quantize, or None.
        The loader does not use it (it builds each component's config through its backend)."""
        mapping = {c.name: c.build_config() for c in self.components.values() if c.action == QUANTIZE}
        if not mapping:
            return None
        from diffusers import PipelineQuantizationConfig

        return PipelineQuantizationConfig(quant_mapping=mapping)

    def describe(self) -> dict:
        return {
            "model": str(self.model.folder),
            "dtype": self.dtype,
            "device": self.device,
            "offload": self.offload,
            "components": [c.describe() for c in self.components.values()],
            "notes": list(self.notes),
        }


def _assignments(spec, model: ModelInfo) -> dict[str, BackendSpec | None]:
    if spec is None:
        return {}
    if isinstance(spec, ComponentMap):
        return spec.as_dict()
    names = spec.components if spec.components is not None else default_components(spec, model)
    return {n: spec.without_components() for n in names}


def is_autoencoder(class_name: str | None) -> bool:
    return bool(class_name) and (
        class_name.startswith("Autoencoder") or class_name in ("VQModel", "AsymmetricAutoencoderKL")
    )


def default_components(spec: BackendSpec, model: ModelInfo) -> list[str]:
    """What a global spec with no component list quantizes: every model the backend can take,
    except the VAE (small, quality-sensitive, and quanto's int8 CPU kernel fails on its attention):
    name it in `components` to quantize it anyway."""
    backend = catalogue.get_backend(spec.backend)
    return [
        n
        for n in model.module_names
        if model.components[n].library in backend.libraries
        and not is_autoencoder(model.components[n].class_name)
        and not model.components[n].prequantized
    ]


def make_plan(
    spec,
    model: ModelInfo,
    *,
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    gguf_roots: Iterable[Path] = (),
) -> Plan:
    """Assumes `validate` found no errors."""
    assigned = _assignments(spec, model)
    components: dict[str, ComponentPlan] = {}
    libraries = set()
    for name, info in model.components.items():
        if not info.is_module:
            components[name] = ComponentPlan(
                name,
                info.library,
                info.class_name,
                NOT_A_MODEL,
                load_dtype=dtype,
                compute_dtype=dtype,
                reason="tokenizer/scheduler: nothing to quantize",
            )
            continue
        one = assigned.get(name)
        if one is None and info.prequantized:
            components[name] = ComponentPlan(
                name,
                info.library,
                info.class_name,
                PREQUANTIZED,
                load_dtype=dtype,
                compute_dtype=dtype,
                reason=f"saved quantized with {info.prequantized}",
            )
            continue
        if one is None:
            if name in assigned:
                why = "left unquantized in the map"
            elif isinstance(spec, BackendSpec) and spec.components is None and is_autoencoder(info.class_name):
                why = "VAE kept unquantized by default (name it in components to quantize it)"
            else:
                why = "not selected for quantization"
            components[name] = ComponentPlan(
                name, info.library, info.class_name, KEEP, load_dtype=dtype, compute_dtype=dtype, reason=why
            )
            continue
        backend = catalogue.get_backend(one.backend)
        compute = dtype if one.compute_dtype == "auto" else one.compute_dtype
        load_dtype = dtype if backend.config_compute_dtype else compute
        if backend.needs_file:
            components[name] = ComponentPlan(
                name,
                info.library,
                info.class_name,
                backend.name,
                one,
                load_dtype,
                compute,
                find_file(one.gguf_file, gguf_roots),
            )
        else:
            libraries.add(info.library)
            components[name] = ComponentPlan(name, info.library, info.class_name, QUANTIZE, one, load_dtype, compute)
    notes = []
    if (
        isinstance(spec, BackendSpec)
        and len(libraries) > 1
        and catalogue.get_backend(spec.backend).expands_per_library()
    ):
        notes.append(
            f"global {spec.backend} expanded per library: diffusers rejects one global config for it "
            "(its diffusers and transformers config classes differ)"
        )
    used = [c.backend for c in components.values() if c.action != NOT_A_MODEL and c.spec is not None]
    notes += list(dict.fromkeys(b.plan_note for b in used if b.plan_note))
    return Plan(model, dtype, devices.resolve_device(device), offload, components, notes)
