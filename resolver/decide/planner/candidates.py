"""Per component, every choice the catalogue offers, with its predicted bytes, speed and error,
or the reason it is not available on the target device."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import cache, lru_cache

from ...constants import denoiser_names
from ...files import shape_store
from ...files.inspect_model import ComponentInfo, ModelInfo
from ...known import catalogue, measured
from ...known.catalogue import DIFFUSERS
from ..estimate import component_estimate, quantized_params, storage_for
from ..footprint import FLOAT_BYTES, layout
from ..plan import KEEP, PREQUANTIZED, QUANTIZE, is_autoencoder
from . import figures
from .device import DeviceProfile

DENOISER, VAE, TEXT, SMALL_TEXT = "denoiser", "vae", "text encoder", "small text encoder"
# How much a component's error counts for the quality goal: quantization hurts the VAE most,
# then the small (CLIP) text encoder, then the denoiser, then large text encoders (T5).
IMPORTANCE = {VAE: 8.0, SMALL_TEXT: 4.0, DENOISER: 2.0, TEXT: 1.0}


@dataclass(frozen=True)
class Choice:
    component: str
    backend: str | None
    quant_type: str | None  # None with backend None: kept in the load dtype
    options: tuple = ()
    bytes: int = 0
    largest_tensor: int = 0  # bytes of the largest single tensor (sequential offload holds one layer)
    speed: float | None = None  # against bf16 on the target generation; None: not measured
    speed_source: str = ""
    error: float | None = None  # relative RMS output error; None: not measured
    deprecated: bool = False
    prequantized: bool = False
    kept_linears: tuple[str, ...] = ()  # Linear layers the quantizer leaves unquantized
    error_measured: bool = False  # error measured on this model (Plan Quality Check), not the proxy

    @property
    def label(self) -> str:
        if self.prequantized:
            return "pre-quantized (as saved)"
        if self.backend is None:
            return "unquantized"
        opts = "".join(f" +{k}" for k, v in self.options if v is True)
        return f"{self.backend} {self.quant_type}{opts}"

    @property
    def options_dict(self) -> dict:
        return dict(self.options)


@dataclass(frozen=True)
class Unavailable:
    component: str
    backend: str
    quant_type: str | None
    reason: str


def roles(model: ModelInfo) -> dict[str, str]:
    """denoiser / vae / text encoder / small text encoder, from class and size."""
    modules = {n: model.components[n] for n in model.module_names}
    out = {}
    diffusers_models = [n for n, c in modules.items() if c.library == "diffusers" and not is_autoencoder(c.class_name)]
    # Every denoiser by name (Wan 2.2's two experts), else the largest diffusers model.
    denoisers = set(denoiser_names(diffusers_models)) or {max(diffusers_models, key=lambda n: modules[n].params)}
    denoisers = denoisers if diffusers_models else set()
    texts = [n for n, c in modules.items() if c.library != "diffusers"]
    smallest = min(texts, key=lambda n: modules[n].params, default=None) if len(texts) > 1 else None
    for n, c in modules.items():
        if is_autoencoder(c.class_name):
            out[n] = VAE
        elif n in denoisers:
            out[n] = DENOISER
        elif n == smallest:
            out[n] = SMALL_TEXT
        else:
            out[n] = TEXT
    return out


def load_dtype_for(profile: DeviceProfile) -> str:
    """bfloat16 where the hardware has it (CPU, compute capability 8.0+), else float16."""
    return "bfloat16" if profile.is_cpu or profile.compute_capability >= (8, 0) else "float16"


@cache
def deprecated(backend_name: str) -> bool:
    """Whether diffusers itself warns that this backend is deprecated (asked, not listed)."""
    backend = catalogue.get_backend(backend_name)
    if getattr(backend, "deprecated", False):
        return True
    # Asking builds a config (imports diffusers and the backend's library): the answer is kept on disk,
    # per installed library versions, like the shapes' facts.
    stored = shape_store.get(("backend", backend_name), "deprecated")
    if isinstance(stored, bool):
        return stored
    found = _deprecated_asked(backend)
    shape_store.put(("backend", backend_name), "deprecated", found)
    return found


def _deprecated_asked(backend) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backend.build_config(
                DIFFUSERS, backend.quant_types[0].name, None, {o.name: o.default for o in backend.options}
            )
        except Exception:  # noqa: BLE001 - a config that cannot be built is judged elsewhere
            return False
    return any(issubclass(w.category, FutureWarning) and "deprecated" in str(w.message) for w in caught)


def _option_variants(backend, quant_type) -> list[dict]:
    """Option sets worth comparing (those the data file measured separately, e.g. double_quant)."""
    rows = [
        r
        for r in measured.data().get("storage", [])
        if r["backend"] == backend.name and r["quant_type"] == quant_type.name
    ]
    variants, seen = [], set()
    for r in rows:
        opts = {k: v for k, v in (r.get("options") or {}).items() if k in quant_type.options and backend.option(k)}
        key = tuple(sorted(opts.items()))
        if key not in seen:
            seen.add(key)
            variants.append(opts)
    return variants or [{}]


def _unavailable_reason(backend, qt, info: ComponentInfo, profile: DeviceProfile, dtype: str) -> str | None:
    if info.library not in backend.libraries:
        return f"{backend.label} cannot quantize {info.library} models"
    if not backend.installed():
        return f"backend not installed: {backend.pip}"  # the hint has its own parentheses
    if qt.needs_cuda and profile.is_cpu:
        return "needs a CUDA GPU"
    if qt.min_compute_capability and (profile.is_cpu or profile.compute_capability < qt.min_compute_capability):
        want = ".".join(map(str, qt.min_compute_capability))
        return f"not on this GPU (needs compute capability {want}+)"
    if dtype not in qt.compute_dtypes:
        return f"needs {' or '.join(qt.compute_dtypes)}; this device loads in {dtype}"
    if profile.is_cpu and not backend.cpu_supported(info.library):
        return f"{backend.label} needs a GPU to quantize {info.library} models"
    return None


def _largest(info: ComponentInfo, dtype: str, quantized: frozenset, storage: dict | None) -> int:
    lay = layout(info)
    shapes = {n: o for n, o, _ in lay.linear_weights}
    best = 0
    for t in lay.tensors:
        if t.name in quantized and storage is not None:
            size = t.numel * storage["bytes_per_weight"] + shapes[t.name] * storage["bytes_per_row"]
        else:
            size = t.numel * (FLOAT_BYTES[dtype] if t.floating else t.itemsize)
        best = max(best, size)
    return int(best)


def component_choices(
    model: ModelInfo, name: str, profile: DeviceProfile, dtype: str, variant: str | None = None
) -> tuple[list[Choice], list[Unavailable]]:
    """Every choice for one component on the profile's kind of device (cached: the budget, the
    free memory and the resolution do not change them)."""
    cs, un = _choices(model.components[name], profile.compute_capability, dtype, variant)
    return list(cs), list(un)


def with_measured_errors(model: ModelInfo, choices: list[Choice], dtype: str) -> list[Choice]:
    """Each quantized choice whose (model files, component, plan, library versions) has a measured
    error (Plan Quality Check) gets it in place of the proxy."""
    entries = figures.read_entries()
    if not entries:
        return choices
    out = []
    for c in choices:
        if c.backend is not None and not c.prequantized:
            key = figures.plan_key(model, c.component, c.backend, c.quant_type, c.options_dict, dtype)
            found = figures.measured_error(key, entries)
            if found is not None:
                c = replace(c, error=found["relative_error"], error_measured=True)
        out.append(c)
    return out


@lru_cache(maxsize=256)
def _choices(info: ComponentInfo, cc: tuple[int, int] | None, dtype: str, variant: str | None):
    name = info.name
    profile = DeviceProfile("", 0, 0, cc)
    gen = measured.generation(cc)
    if info.prequantized:
        est = component_estimate(info, PREQUANTIZED, dtype, dtype, variant=variant)
        return (
            Choice(name, None, None, (), est["bytes_after"], est["bytes_after"], None, "", None, prequantized=True),
        ), ()
    keep = component_estimate(info, KEEP, dtype, dtype, variant=variant)
    choices = [
        Choice(
            name,
            None,
            None,
            (),
            keep["bytes_after"],
            _largest(info, dtype, frozenset(), None),
            1.0,
            "unquantized is the reference",
            0.0,
        )
    ]
    unavailable: list[Unavailable] = []
    if is_autoencoder(info.class_name):
        unavailable.append(
            Unavailable(
                name,
                "*",
                None,
                "the VAE stays in the load dtype: quantizing it saves little and hurts the decoded image most",
            )
        )
        return tuple(choices), tuple(unavailable)
    for backend_name in catalogue.backend_names():
        backend = catalogue.get_backend(backend_name)
        if backend.needs_file:
            unavailable.append(
                Unavailable(name, backend.name, None, "needs a pre-quantized file: pick it on a Backend node")
            )
            continue
        for qt in backend.quant_types:
            reason = _unavailable_reason(backend, qt, info, profile, dtype)
            if reason:
                unavailable.append(Unavailable(name, backend.name, qt.name, reason))
                continue
            for opts in _option_variants(backend, qt):
                est = component_estimate(info, QUANTIZE, dtype, dtype, backend.name, qt.name, opts, variant=variant)
                speed = measured.speed_factor(backend.name, qt.name, gen)
                error = measured.error_proxy(backend.name, qt.name, opts)
                storage = storage_for(backend.name, qt.name, opts)
                largest = _largest(info, dtype, quantized_params(info, backend.name, qt.name, opts), storage)
                choices.append(
                    Choice(
                        name,
                        backend.name,
                        qt.name,
                        tuple(sorted(opts.items())),
                        est["bytes_after"],
                        largest,
                        speed["speed"] if speed else None,
                        speed["source"] if speed else "",
                        error["rel_rms_error"] if error else None,
                        deprecated(backend.name),
                        kept_linears=tuple(est["unquantized_linears"]),
                    )
                )
    return tuple(choices), tuple(unavailable)
