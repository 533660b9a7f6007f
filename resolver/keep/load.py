"""Load a pipeline with a validated plan: component by component, reusing cached ones.

Each nn.Module component loads through its backend's `load_component` with the config its
backend builds for it (unquantized ones through their class's `from_pretrained`); then
`DiffusionPipeline.from_pretrained` assembles the pipeline from them and loads the tokenizers and
scheduler. Loading per component gives per-component timing, progress, cache reuse and errors
that name the component and its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from ..constants import COMPILE_MODES, DEFAULT_DTYPE, DIFFUSERS, NOT_A_MODEL, PREQUANTIZED, denoiser_names
from ..decide.plan import Plan
from ..decide.prepare import prepare
from ..decide.slow_plan import compile_kept_eager
from ..files.inspect_model import ComponentInfo
from ..files.roots import INDEX
from ..files.safetensors_header import HeaderError, read_header
from ..known import catalogue
from ..problems import Problem, ValidationError
from ..run.blocks import install_interrupt_hooks
from ..run.compile import CompileState, compile_component
from ..run.context import diffusers_context
from ..run.lora import hand_out_plain
from ..user_cache import is_off
from . import deferred_write, stream
from .cache import COMPONENT_CACHE, ComponentCache, free_memory, trim_heap
from .disk_cache import DiskCache
from .memory import main_device
from .report import component_row, format_table, other_row
from .save import cause_text

# Never the network: every diffusers/transformers call reads the local folder only.
OFFLINE = {"local_files_only": True}


class LoadError(RuntimeError):
    """A load that passed validation failed inside diffusers/transformers; names what failed."""

    def __init__(self, component: str, files: list[str], cause: BaseException):
        self.component, self.files = component, files
        # a bare exception (no message) is named by where it was raised: an error always names its cause
        self.cause_type = type(cause).__name__
        self.cause_message = cause_text(cause).removeprefix(f"{self.cause_type}: ").removeprefix(self.cause_type + " ")
        super().__init__(
            f'loading component "{component}" from {", ".join(files) or "(no files)"} failed: {cause_text(cause)}'
        )


class PipelineReleased(RuntimeError):
    """The pipeline's weights were given back to the host (ComfyUI's memory management)."""


@dataclass(eq=False)  # identity semantics: the cache tracks live results in a WeakSet
class LoadResult:
    _pipeline: object
    plan: Plan
    rows: list[dict]
    loras: tuple = ()  # the adapter stack (resolver.lora.LoraSpec) this pipeline object stands for
    holder: object = field(default=None, repr=False)  # the cache that may release this pipeline
    released: str = ""  # why the pipeline was emptied, once it was
    compiled: CompileState | None = None  # its notes grow if compile falls back to eager at run time
    load_notes: list[str] = field(default_factory=list)  # what happened during the load (disk cache)
    compiled_more: tuple = ()  # the other denoisers' states (Wan 2.2's transformer_2)

    @property
    def notes(self) -> list[str]:
        states = [s for s in (self.compiled, *self.compiled_more) if s is not None]
        placed = [s.placed for s in self.loras if getattr(s, "placed", "")]  # which expert took which LoRA
        return [*self.plan.notes, *self.load_notes, *(n for s in states for n in s.notes), *placed]

    @property
    def pipeline(self):
        if self._pipeline is None:
            raise PipelineReleased(
                f"the pipeline {self.plan.model.folder.name} was unloaded ({self.released}); "
                "run the workflow again to reload it"
            )
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

    def with_lora(self, spec) -> "LoadResult":
        """The same loaded pipeline with one more adapter on its stack (this object is unchanged);
        the copy is held by the same cache, so a release empties it too."""
        new = replace(self, loras=self.loras + (spec,))
        if self.holder is not None:
            self.holder.hold(new)
        return new

    @property
    def table(self) -> str:
        return format_table(self.rows, self.notes)

    def report(self) -> dict:
        from .report import totals

        return {
            "plan": self.plan.describe(),
            "components": self.rows,
            "totals": totals(self.rows),
            "notes": list(self.notes),
        }


def _component_files_key(info: ComponentInfo, mtime_key: tuple) -> str:
    prefix = info.name + "/"
    relevant = [e for e in mtime_key if e[0].startswith(prefix) or e[0] == "model_index.json"]
    return hashlib.sha1(repr(relevant).encode()).hexdigest()[:16]


def cache_key(plan: Plan, name: str, compile: str = "none") -> tuple:
    """Compiled and eager copies of the denoiser are separate entries: compile changes the module
    in place, and a workflow without compile must never receive a compiled one."""
    row = plan.components[name]
    info = plan.model.components[name]
    files = _component_files_key(info, plan.model.mtime_key)
    gguf = str(row.gguf_path) if row.gguf_path else ""
    mode = compile if name in denoiser_names(plan.components) else "none"
    return (str(plan.model.folder), name, files, row.fingerprint(), gguf, plan.device, plan.offload, mode, info.variant)


def plan_load(
    model_dir: Path,
    spec=None,
    *,
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    gguf_roots: Iterable[Path] = (),
    allow_pickle: bool = False,
    compile: str = "none",
    variant: str | None = None,
) -> Plan:
    """Inspect + validate + plan (`decide.prepare`); raises ValidationError with every problem.
    Reads no weights. Warnings (a slow plan) become the plan's notes. `variant` ("fp16"): the
    weight variant to read where a component has it."""
    return prepare(
        model_dir,
        spec,
        dtype=dtype,
        device=device,
        offload=offload,
        gguf_roots=gguf_roots,
        allow_pickle=allow_pickle,
        compile=compile,
        variant=variant,
    ).plan_or_raise()


def load(
    model_dir: Path,
    spec=None,
    *,
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    gguf_roots: Iterable[Path] = (),
    allow_pickle: bool = False,
    cache: ComponentCache | None = COMPONENT_CACHE,
    progress: Callable[[int, int, str], None] | None = None,
    compile: str = "none",
    compile_backend="inductor",
    variant: str | None = None,
    disk_cache: DiskCache | None = None,
) -> LoadResult:
    plan = plan_load(
        model_dir,
        spec,
        dtype=dtype,
        device=device,
        offload=offload,
        gguf_roots=gguf_roots,
        allow_pickle=allow_pickle,
        compile=compile,
        variant=variant,
    )
    return load_plan(
        plan,
        allow_pickle=allow_pickle,
        cache=cache,
        progress=progress,
        compile=compile,
        compile_backend=compile_backend,
        disk_cache=disk_cache,
    )


def load_plan(
    plan: Plan,
    *,
    allow_pickle: bool = False,
    cache: ComponentCache | None = COMPONENT_CACHE,
    progress: Callable[[int, int, str], None] | None = None,
    compile: str = "none",
    compile_backend="inductor",
    disk_cache: DiskCache | None = None,
    write_later: bool = False,
) -> LoadResult:
    """Load a plan made by `plan_load`: cached components are reused, the rest load and are cached.
    `compile` (none/regional/full) wraps the denoiser for torch.compile; it compiles on first use.
    `write_later`: new disk-cache entries are written in the background once the pipeline is
    returned (keep.deferred_write), so the load does not wait for them; else before it returns."""
    if compile not in COMPILE_MODES:
        raise ValidationError(
            [
                Problem(
                    "compile_unknown",
                    "compile",
                    f'unknown compile mode "{compile}"',
                    "use one of: " + ", ".join(COMPILE_MODES),
                )
            ]
        )
    modules = plan.modules()
    loaded, rows, fresh, others, configs, notes = {}, {}, [], {}, {}, []
    to_write = []  # (plan row, snapshot, config): disk-cache entries written after the load
    try:
        with diffusers_context():
            for i, row in enumerate(modules):
                key = cache_key(plan, row.name, compile)
                entry = cache.get(key) if cache is not None else None
                if entry is not None:
                    hand_out_plain(entry.module)  # adapters other pipelines loaded on it stay off
                    loaded[row.name] = entry.module
                    rows[row.name] = {**entry.report, "reused": True, "load_seconds": 0.0}
                    configs[row.name] = getattr(entry.module, "pipequant_quantization_config", None)
                else:
                    start = time.perf_counter()
                    module, config, disk = _load_or_read(plan, row, allow_pickle, disk_cache, write_later)
                    if disk is _LATER:
                        disk = _snapshot_or_write(plan, row, module, config, disk_cache, to_write)
                    module.pipequant_quantization_config = configs[row.name] = config
                    loaded[row.name] = module
                    rows[row.name] = component_row(
                        row, plan.model.components[row.name], module, time.perf_counter() - start, config
                    )
                    _stream_fields(rows[row.name], module, notes)
                    if disk is not None:
                        rows[row.name].update(disk.row_fields())
                        notes += _disk_notes(row.name, disk)
                    fresh.append((key, row.name))
                if progress:
                    progress(i + 1, len(modules), row.name)
            for name, row in plan.components.items():
                if name not in loaded and row.action == NOT_A_MODEL:
                    others[name] = _load_other(plan.model.components[name])
            pipeline = _assemble(plan, {**loaded, **others}, allow_pickle)
            pipeline.quantization_config = _quantization_config(plan, configs, loaded)
            _place(pipeline, plan)
            compiled = _prepare_denoisers(plan, loaded, compile, compile_backend)
    except ValidationError:
        raise
    except Exception as exc:
        failed = next((r for r in modules if r.name not in loaded), None) or next(
            (r for n, r in plan.components.items() if n not in others and r.action == NOT_A_MODEL), None
        )
        component = failed.name if failed is not None else "pipeline"
        info = plan.model.components.get(component)
        if failed is not None and failed.from_file and failed.gguf_path is not None:
            files = [str(failed.gguf_path)]  # its weights come from the backend's file
        elif info is not None and not info.is_module:
            files = _broken_first(
                sorted(p for p in info.folder.iterdir() if p.is_file()) if info.folder.is_dir() else []
            )
        elif info is None:
            files = [str(plan.model.folder / INDEX)]
        else:
            files = _broken_first([Path(f) for f in (info.weight_files or info.pickle_files)] if info else [])
        # Drop every reference to partly loaded weights: the traceback's frames, and this frame's
        # locals (the LoadError's traceback keeps this frame alive as long as a caller holds it).
        traceback.clear_frames(exc.__traceback__)
        loaded.clear()
        others.clear()
        to_write.clear()
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
    main, *more = compiled or [None]
    result = LoadResult(pipeline, plan, ordered, compiled=main, load_notes=notes, compiled_more=tuple(more))
    if cache is not None:
        result.holder = cache
        cache.hold(result)
    for row, copy_, config in to_write:  # the user has the pipeline; the entries follow
        outcome = deferred_write.WRITER.schedule(disk_cache, plan, row, copy_, config, rows[row.name])
        rows[row.name].update(outcome.row_fields())
    return result


def _prepare_denoisers(plan: Plan, loaded: dict, compile: str, compile_backend) -> list[CompileState | None]:
    """Hook every denoiser's blocks for Cancel within a step (both of Wan 2.2's experts), then wrap
    each for compile, where compile is not measured slower than eager; their compile states, the main
    denoiser's first."""
    states = []
    for name in denoiser_names(loaded):
        install_interrupt_hooks(loaded[name])
        spec = plan.components[name].spec
        quant = catalogue.get_backend(spec.backend).quant_type(spec.quant_type) if spec is not None else None
        if compile != "none" and compile_backend == "inductor":  # the figures were measured with inductor
            why = compile_kept_eager(
                spec.backend if spec else None, spec.quant_type if spec else plan.dtype, plan.device
            )
            if why is not None:  # never slower than eager without a word: validation warned, the report says it
                states.append(
                    CompileState(name, "none", notes=[f"compile ({compile}) not applied: {name} runs eager; {why}"])
                )
                continue
        states.append(compile_component(loaded[name], name, compile, quant, backend=compile_backend))
    return states


def _broken_first(files: list[Path]) -> list[str]:
    """The component's files that are now broken (e.g. truncated since validation, a tokenizer
    file that is not JSON), else all of them."""
    from ..safe_files import FileProblem, read_json

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

    config = PipelineQuantizationConfig(quant_mapping=mapping)
    # diffusers fills config_mapping (what it prints) as it resolves each component in its own
    # from_pretrained; PipeQuant loads the components itself, so it records them here.
    config.config_mapping.update(mapping)
    return config


_LATER = object()  # _load_or_read's outcome for a component whose entry is to be written later


def _load_or_read(plan: Plan, row, allow_pickle: bool, disk_cache: DiskCache | None, write_later: bool = False):
    """(module, config, disk cache Outcome, None or _LATER). Without `write_later` the disk cache
    writes a fresh entry inside its `load` call, before this returns the module to anything else
    (see DiskCache.load); with it, a miss returns the quantized module and _LATER."""
    if disk_cache is None:
        return (*_load_component(plan, row, allow_pickle), None)
    quantize = lambda: _load_component(plan, row, allow_pickle)  # noqa: E731
    load_saved = lambda folder: _load_saved(plan, row, folder)  # noqa: E731
    if write_later and not deferred_write.needs_now(plan):
        found = deferred_write.probe(disk_cache, plan, row, quantize, load_saved)
        if found is None:
            return (*quantize(), _LATER)
        module, config, outcome = found
    else:
        module, config, outcome = disk_cache.load(plan, row, quantize, load_saved)
    if config is None:  # read from an entry: the config it was saved with
        config = getattr(getattr(module, "hf_quantizer", None), "quantization_config", None)
    return module, config, outcome


def _load_saved(plan: Plan, row, folder: Path):
    """A disk cache entry loads exactly as a pre-quantized component folder does (safetensors only)."""
    from ..files.inspect_model import WEIGHT_STEMS
    from ..safe_files import read_json_object

    source = plan.model.components[row.name]
    files = tuple(
        p
        for p in sorted(folder.iterdir())
        if p.suffix == ".safetensors" and p.name.split(".")[0].split("-")[0] in WEIGHT_STEMS
    )
    method = read_json_object(folder / "config.json").get("quantization_config") or {}
    info = replace(
        source,
        folder=folder,
        weight_files=files,
        pickle_files=(),
        prequantized=str(method.get("quant_method")) if isinstance(method, dict) else None,
    )
    module, _ = _load_component(plan, replace(row, action=PREQUANTIZED, spec=None), False, info)
    return module


def _snapshot_or_write(plan: Plan, row, module, config, disk_cache: DiskCache, to_write: list):
    """Before the module goes anywhere: its snapshot queued for a write after the load (the disk
    cache Outcome for the report is set then), or, where it cannot be copied, the entry written now."""
    try:
        to_write.append((row, deferred_write.snapshot(module), config))
        return None
    except Exception:  # noqa: BLE001 (a module deepcopy refuses: write it the synchronous way)
        return deferred_write.WRITER.write_now(disk_cache, plan, row, module, config)


def _stream_fields(row: dict, module, notes: list) -> None:
    """The row says whether the component was quantized as its weights streamed in; one that could
    not is named in the notes (its peak while loading is its library's own)."""
    why = getattr(module, "pipequant_streamed", None)
    if why is None:
        return
    row["streamed"] = why == ""
    if why:
        row["stream_reason"] = why
        notes.append(f"{row['component']}: read by {row['library']}' own loader, not streamed ({why})")


def _disk_notes(name: str, disk) -> list[str]:
    notes = [f"disk cache: {disk.warning}"] if disk.warning else []
    if disk.status == "not cached":
        notes.append(f"disk cache: {name} not cached: {disk.reason}")
    return notes


def _load_component(plan: Plan, row, allow_pickle: bool, info: ComponentInfo | None = None):
    """Load one component as planned; returns (module, the config it was quantized with or None)."""
    import torch

    info = info or plan.model.components[row.name]
    cls = info.model_class()
    config = row.build_config()
    kwargs = {
        "use_safetensors": not (allow_pickle and not info.weight_files),
        "low_cpu_mem_usage": True,
        "dtype": getattr(torch, row.load_dtype),
        **OFFLINE,
    }
    if info.variant:
        kwargs["variant"] = info.variant  # the files inspection read (and the estimate counted)
    backend = row.backend
    saved_by = catalogue.backend_for_saved(info.prequantized)
    read_by_backend = False  # rebuilt by the backend's own reader: every tensor as its file holds it
    if backend is None:
        module = _read_saved(saved_by, cls, info, kwargs) if saved_by is not None else None
        read_by_backend = module is not None
        if module is None:
            with saved_by.saved_read_context() if saved_by is not None else contextlib.nullcontext():
                module = cls.from_pretrained(str(info.folder), **kwargs)
    else:
        if plan.device.startswith("cuda") and plan.offload == "none":
            # Quantize where the model will run: torchao's int4 packing has only a CUDA kernel,
            # and quantizing on the GPU is faster and spares CPU RAM.
            kwargs["device_map"] = {"": plan.device}
        module, config, why = _stream(row, info, cls, config, kwargs)
        if module is None:
            module = backend.load_component(
                cls,
                config,
                folder=info.folder,
                pipeline_folder=plan.model.folder,
                name=row.name,
                file=row.gguf_path,
                **kwargs,
            )
        if why is not None:
            module.pipequant_streamed = why  # "": it streamed; else why the library's loader read it
    module.eval()
    if saved_by is not None and backend is None and not read_by_backend and kwargs["dtype"] != torch.float32:
        _restore_float32(module, info.weight_files)
    if backend is not None or saved_by is not None:
        (backend or saved_by).after_load(module, prequantized=backend is None)
    return module, config


def _read_saved(backend, cls, info: ComponentInfo, kwargs: dict):
    """A saved quantized component (a disk-cache entry, a saved pipeline's folder) rebuilt by the
    backend that wrote it, where it has a reader of its own (`Backend.read_saved`); else None
    (nothing read). Its safetensors files are mapped as diffusers maps them (safetensors' own
    reader): a read into memory of the process's own cost more system time on a busy machine
    (0.15-0.6 s for 200 MB against 0.1 s mapped, bench/results/disk_cache)."""
    if kwargs.get("device_map") or info.variant or not kwargs["use_safetensors"] or not info.weight_files:
        return None
    files = [Path(f) for f in info.weight_files]
    names = {}
    try:
        for path in files:
            for tensor in read_header(path) if path.suffix == ".safetensors" else [None]:
                if tensor is None or tensor.name in names:
                    return None  # the library's loader reads it (or names what is wrong with it)
                names[tensor.name] = tuple(tensor.shape)
    except HeaderError:
        return None

    def read() -> dict:
        from safetensors import safe_open

        tensors = {}
        for path in files:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                tensors.update((name, f.get_tensor(name)) for name in f.keys())
        return tensors

    return backend.read_saved(cls, info.library, info.folder, kwargs["dtype"], names, read)


# PIPEQUANT_STREAM_LOAD: "auto" (default) streams a diffusers component whose backend quantizes its
# weights by rows (at par with the library's loader, at ~1.2x the resident bytes instead of ~5x:
# bench/results/peak_load), and any other component where its library's own loader's peak would not
# fit in the host RAM available (streaming it is slower); "on" streams wherever it can; "off" loads
# every component through its library's from_pretrained.
STREAM_ENV = "PIPEQUANT_STREAM_LOAD"


def _stream(row, info: ComponentInfo, cls, config, kwargs: dict):
    """(module or None, config, why): the component quantized as its weights stream in
    (keep/stream.py) where its backend and files allow, why "" ; else None, a fresh config for the
    library's own loader (a quantizer that started may have changed its config's skip list) and why
    not (None: the backend does not stream at all)."""
    mode = os.environ.get(STREAM_ENV, "auto").strip().lower()
    if not row.backend.streams or row.gguf_path is not None or is_off(mode):
        return None, config, None
    rows = row.backend.row_quantizer(config, kwargs["dtype"]) if row.library == DIFFUSERS else None
    needed = mode == "on" or not stream.library_loader_fits(info.folder, info.variant, row.library)
    if not needed and rows is None:
        return None, config, None  # room for the library's own, faster loader: nothing to say
    why = stream.why_not(row.library, info.folder, info.variant, kwargs)
    if why is not None and not needed:
        return None, config, None  # streamed only because it is as fast; the library's loader fits
    if why is None:
        try:
            if row.library == DIFFUSERS:
                module = stream.load(
                    cls, config, info.folder, info.variant, kwargs["dtype"], str(info.folder), rows=rows
                )
            else:
                module = stream.load_transformers(
                    cls, config, info.folder, info.variant, kwargs["dtype"], str(info.folder)
                )
        except stream.CannotStream as exc:
            why, config = (str(exc) if needed else None), row.build_config()
        else:
            return module, config, ""
    return None, config, why


def _restore_float32(module, files) -> None:
    """A pre-quantized copy keeps its float32 tensors (SDNQ's scales) in float32, but diffusers
    casts every float tensor it reads to the load dtype, and the layer casts it back: bf16-rounded
    scales (0.4 % on the output). Put back the exact values the file holds, so a saved or cached
    copy reproduces the original bit for bit. Only plain float32 tensors are read again."""
    import torch
    from safetensors import safe_open

    targets = {
        name: t
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if type(t) in (torch.Tensor, torch.nn.Parameter) and t.dtype == torch.float32
    }
    if not targets:
        return
    for path in files:
        if Path(path).suffix != ".safetensors":
            continue
        wanted = [t.name for t in read_header(Path(path)) if t.name in targets and t.dtype == "F32"]
        if not wanted:
            continue
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in wanted:
                exact, held = f.get_tensor(name), targets[name]
                if exact.shape == held.shape and not torch.equal(exact.to(held.device), held.data):
                    held.data.copy_(exact)


def _assemble(plan: Plan, loaded: dict, allow_pickle: bool):
    import diffusers
    import torch

    # The pipeline's own class (validated as built into diffusers), not DiffusionPipeline: from the
    # base class, diffusers reads `_optional_components` of the base, so a component the pipeline
    # declares optional (Wan's transformer and transformer_2) was loaded again from disk, unquantized,
    # in place of the module handed in.
    pipeline_class = getattr(diffusers, plan.model.pipeline_class, None) or diffusers.DiffusionPipeline
    return pipeline_class.from_pretrained(
        str(plan.model.folder),
        dtype=getattr(torch, plan.dtype),
        use_safetensors=not allow_pickle,
        trust_remote_code=False,
        custom_pipeline=None,
        **OFFLINE,
        **loaded,
    )


def _place(pipeline, plan: Plan) -> None:
    if plan.offload == "model":
        pipeline.enable_model_cpu_offload(device=plan.device)
    elif plan.offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=plan.device)
    elif plan.device != "cpu":
        pipeline.to(plan.device)
