"""Load a pipeline with a validated plan: component by component, reusing cached ones.

Each nn.Module component loads through its own class's `from_pretrained` with the config that
diffusers' `PipelineQuantizationConfig._resolve_quant_config` picks for it (so diffusers'
`config_mapping` bookkeeping is kept), GGUF ones through `from_single_file`; then
`DiffusionPipeline.from_pretrained` assembles the pipeline from them and loads the tokenizers and
scheduler. Loading per component gives per-component timing, progress, cache reuse and errors
that name the component and its files.
"""
from __future__ import annotations

import hashlib
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .cache import COMPONENT_CACHE, ComponentCache, free_memory, trim_heap
from .inspect_model import ComponentInfo, inspect_model
from .memory import main_device
from .plan import GGUF, NOT_A_MODEL, PREQUANTIZED, Plan, make_plan
from .problems import ValidationError, errors
from .report import component_row, format_table, other_row
from .roots import INDEX
from .validate import validate
from .variant import problems as variant_problems


# Never the network: every diffusers/transformers call reads the local folder only.
OFFLINE = {"local_files_only": True}


class LoadError(RuntimeError):
    """A load that passed validation failed inside diffusers/transformers; names what failed."""

    def __init__(self, component: str, files: list[str], cause: BaseException):
        self.component, self.files = component, files
        self.cause_type, self.cause_message = type(cause).__name__, str(cause).strip().splitlines()[0][:400] if str(cause).strip() else ""
        super().__init__(f'loading component "{component}" from {", ".join(files) or "(no files)"} failed: '
                         f"{self.cause_type}: {self.cause_message}")


@contextmanager
def diffusers_context():
    """ComfyUI runs nodes under torch.inference_mode(); torchao/quanto tensors break there when
    moved or offloaded (DESIGN.md). All diffusers work runs outside it, without autograd."""
    import torch

    _quiet_progress_bars()
    with torch.inference_mode(False), torch.no_grad():
        yield


def _quiet_progress_bars() -> None:
    """PipeQuant reports progress per component itself; the libraries' bars are noise in ComfyUI's log."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class PipelineReleased(RuntimeError):
    """The pipeline's weights were given back to the host (ComfyUI's memory management)."""


@dataclass(eq=False)  # identity semantics: the cache tracks live results in a WeakSet
class LoadResult:
    _pipeline: object
    plan: Plan
    rows: list[dict]
    released: str = ""  # why the pipeline was emptied, once it was

    @property
    def pipeline(self):
        if self._pipeline is None:
            raise PipelineReleased(f"the pipeline {self.plan.model.folder.name} was unloaded ({self.released}); "
                                   "run the workflow again to reload it")
        return self._pipeline

    @property
    def folder(self) -> str:
        return str(self.plan.model.folder)

    def uses(self, module) -> bool:
        pipeline = self._pipeline
        return pipeline is not None and any(c is module for c in pipeline.components.values())

    def release(self, reason: str) -> None:
        """Drop the reference to the pipeline, so its weights can be freed."""
        self._pipeline, self.released = None, reason

    @property
    def table(self) -> str:
        return format_table(self.rows, self.plan.notes)

    def report(self) -> dict:
        from .report import totals

        return {"plan": self.plan.describe(), "components": self.rows, "totals": totals(self.rows)}


def _component_files_key(info: ComponentInfo, mtime_key: tuple) -> str:
    prefix = info.name + "/"
    relevant = [e for e in mtime_key if e[0].startswith(prefix) or e[0] == "model_index.json"]
    return hashlib.sha1(repr(relevant).encode()).hexdigest()[:16]


def cache_key(plan: Plan, name: str) -> tuple:
    row = plan.components[name]
    info = plan.model.components[name]
    files = _component_files_key(info, plan.model.mtime_key)
    gguf = str(row.gguf_path) if row.gguf_path else ""
    return (str(plan.model.folder), name, files, row.fingerprint(), gguf, plan.device, plan.offload, info.variant)


def plan_load(model_dir: Path, spec=None, *, dtype: str = "bfloat16", device: str = "auto", offload: str = "none",
              gguf_roots: Iterable[Path] = (), allow_pickle: bool = False, variant: str | None = None) -> Plan:
    """Inspect + validate + plan; raises ValidationError with every problem. Reads no weights.
    `variant` ("fp16"): the weight variant to read where a component has it."""
    model = inspect_model(model_dir, variant=variant)
    found = errors(variant_problems(model, variant) + validate(
        spec, model, dtype=dtype, device=device, offload=offload, gguf_roots=gguf_roots, allow_pickle=allow_pickle))
    if found:
        raise ValidationError(found)
    plan = make_plan(spec, model, dtype=dtype, device=device, offload=offload, gguf_roots=gguf_roots)
    plan.variant = model.variant
    return plan


def load(model_dir: Path, spec=None, *, dtype: str = "bfloat16", device: str = "auto", offload: str = "none",
         gguf_roots: Iterable[Path] = (), allow_pickle: bool = False, cache: ComponentCache | None = COMPONENT_CACHE,
         progress: Callable[[int, int, str], None] | None = None, variant: str | None = None) -> LoadResult:
    plan = plan_load(model_dir, spec, dtype=dtype, device=device, offload=offload, gguf_roots=gguf_roots,
                     allow_pickle=allow_pickle, variant=variant)
    return load_plan(plan, allow_pickle=allow_pickle, cache=cache, progress=progress)


def load_plan(plan: Plan, *, allow_pickle: bool = False, cache: ComponentCache | None = COMPONENT_CACHE,
              progress: Callable[[int, int, str], None] | None = None) -> LoadResult:
    """Load a plan made by `plan_load`: cached components are reused, the rest load and are cached."""
    modules = plan.modules()
    pqc = plan.pipeline_quantization_config()
    loaded, rows, fresh, others, configs = {}, {}, [], {}, {}
    try:
        with diffusers_context():
            for i, row in enumerate(modules):
                key = cache_key(plan, row.name)
                entry = cache.get(key) if cache is not None else None
                if entry is not None:
                    loaded[row.name] = entry.module
                    rows[row.name] = {**entry.report, "reused": True, "load_seconds": 0.0}
                    configs[row.name] = getattr(entry.module, "pipequant_quantization_config", None)
                else:
                    start = time.perf_counter()
                    module, config = _load_component(plan, row, pqc, allow_pickle)
                    module.pipequant_quantization_config = configs[row.name] = config
                    loaded[row.name] = module
                    rows[row.name] = component_row(row, plan.model.components[row.name], module,
                                                   time.perf_counter() - start, config)
                    fresh.append((key, row.name))
                if progress:
                    progress(i + 1, len(modules), row.name)
            for name, row in plan.components.items():
                if name not in loaded and row.action == NOT_A_MODEL:
                    others[name] = _load_other(plan.model.components[name])
            pipeline = _assemble(plan, {**loaded, **others}, allow_pickle)
            pipeline.quantization_config = _quantization_config(plan, configs, loaded)
            _place(pipeline, plan)
    except ValidationError:
        raise
    except Exception as exc:
        failed = next((r for r in modules if r.name not in loaded), None) or next(
            (r for n, r in plan.components.items() if n not in others and r.action == NOT_A_MODEL), None)
        component = failed.name if failed is not None else "pipeline"
        info = plan.model.components.get(component)
        if failed is not None and failed.action == GGUF and failed.gguf_path is not None:
            files = [str(failed.gguf_path)]  # a GGUF component's weights come from its .gguf file
        elif info is not None and not info.is_module:
            files = _broken_first(sorted(p for p in info.folder.iterdir() if p.is_file()) if info.folder.is_dir() else [])
        elif info is None:
            files = [str(plan.model.folder / INDEX)]
        else:
            files = _broken_first([Path(f) for f in (info.weight_files or info.pickle_files)] if info else [])
        # Drop every reference to partly loaded weights: the traceback's frames, and this frame's
        # locals (the LoadError's traceback keeps this frame alive as long as a caller holds it).
        traceback.clear_frames(exc.__traceback__)
        loaded.clear()
        others.clear()
        module = entry = pipeline = None  # noqa: F841
        free_memory()
        raise LoadError(component, files, exc) from None
    # Rows after placement show the final device; bytes do not change when moving.
    for name, row in rows.items():
        if not row["reused"]:
            row["device"] = main_device(loaded[name])
    if cache is not None:
        for key, name in fresh:
            cache.put(key, loaded[name], rows[name]["bytes"], rows[name])
    ordered = [rows[n] if n in rows else other_row(c) for n, c in plan.components.items()]
    if fresh:
        # Quantizing left freed bf16 temporaries in the heap (0.5-0.8 GB at 200M parameters); giving
        # them back takes ~30 ms, off the load's path (ctypes releases the GIL).
        threading.Thread(target=trim_heap, name="pipequant-trim-heap", daemon=True).start()
    result = LoadResult(pipeline, plan, ordered)
    if cache is not None:
        cache.hold(result)
    return result


def _broken_first(files: list[Path]) -> list[str]:
    """The component's files that are now broken (e.g. truncated since validation, a tokenizer
    file that is not JSON), else all of them."""
    from .safe_files import FileProblem, read_json
    from .safetensors_header import HeaderError, read_header

    broken = []
    for f in files:
        try:
            if f.suffix == ".safetensors":
                read_header(f)
            elif f.suffix == ".json":
                read_json(f)
        except (HeaderError, FileProblem, OSError):
            broken.append(f)
    return [str(f) for f in (broken or files)]


def _load_other(info: ComponentInfo):
    """A tokenizer, scheduler or processor, loaded as diffusers would (from its subfolder), but
    here, so a broken file is reported with its component's name."""
    return info.model_class().from_pretrained(str(info.folder), **OFFLINE)


def _quantization_config(plan: Plan, configs: dict, loaded: dict):
    """What diffusers sets on a pipeline it quantized: a PipelineQuantizationConfig holding each
    quantized component's real config (GGUF and pre-quantized components included)."""
    mapping = {n: c for n, c in configs.items() if c is not None}
    for name, row in plan.components.items():
        quantizer = getattr(loaded.get(name), "hf_quantizer", None)
        if row.action == PREQUANTIZED and getattr(quantizer, "quantization_config", None) is not None:
            mapping[name] = quantizer.quantization_config
    if not mapping:
        return None
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping=mapping)


def _load_component(plan: Plan, row, pqc, allow_pickle: bool):
    import torch

    info = plan.model.components[row.name]
    cls = info.model_class()
    load_dtype = getattr(torch, row.load_dtype)
    if row.action == GGUF:
        from diffusers import GGUFQuantizationConfig

        config = GGUFQuantizationConfig(compute_dtype=getattr(torch, row.compute_dtype))
        module = cls.from_single_file(str(row.gguf_path), quantization_config=config, config=str(plan.model.folder),
                                      subfolder=row.name, dtype=load_dtype, **OFFLINE)
        return module, config
    is_diffusers = info.library == "diffusers"
    config = pqc._resolve_quant_config(is_diffusers=is_diffusers, module_name=row.name) if pqc else None
    kwargs = {"use_safetensors": not (allow_pickle and not info.weight_files), "low_cpu_mem_usage": True,
              "dtype": load_dtype, **OFFLINE}
    if info.variant:
        kwargs["variant"] = info.variant  # the files inspection read (and the estimate counted)
    if config is not None:
        kwargs["quantization_config"] = config
        if plan.device.startswith("cuda") and plan.offload == "none":
            # Quantize where the model will run: torchao's int4 packing has only a CUDA kernel,
            # and quantizing on the GPU is faster and spares CPU RAM.
            kwargs["device_map"] = {"": plan.device}
    module = cls.from_pretrained(str(info.folder), **kwargs)
    module.eval()
    if info.prequantized == "quanto":
        _align_quanto_weights(module)
    return module, config


def _align_quanto_weights(module) -> None:
    """quanto's CPU int8 kernel crashes the process (a segfault, not an exception) on int8 data
    that is not 64-byte aligned, which weights memory-mapped from a saved safetensors file can be.
    Copy those into fresh, aligned storage."""
    import torch

    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        data = getattr(weight, "_data", None)
        if isinstance(data, torch.Tensor) and data.device.type == "cpu" and data.data_ptr() % 64:
            weight._data = data.clone()


def _assemble(plan: Plan, loaded: dict, allow_pickle: bool):
    import torch
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(
        str(plan.model.folder), dtype=getattr(torch, plan.dtype), use_safetensors=not allow_pickle,
        trust_remote_code=False, custom_pipeline=None, **OFFLINE, **loaded)


def _place(pipeline, plan: Plan) -> None:
    if plan.offload == "model":
        pipeline.enable_model_cpu_offload(device=plan.device)
    elif plan.offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=plan.device)
    elif plan.device != "cpu":
        pipeline.to(plan.device)
