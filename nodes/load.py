"""Load Quantized Pipeline: validate the whole plan against the model, then load it."""

from __future__ import annotations

from ..resolver.constants import COMPILE_MODES, DEFAULT_DTYPE, LOAD_DTYPES
from ..resolver.decide import files_key, first_use_notes, prepare
from ..resolver.files import DEFAULT as DEFAULT_VARIANT
from ..resolver.files import choices, list_pipelines, resolve_model
from ..resolver.keep import COMPONENT_CACHE, DiskCache, load_plan
from ..resolver.known import DEVICES, OFFLOAD_MODES
from ..resolver.problems import ValidationError, errors
from . import host
from .backend import CONFIG_TYPE
from .messages import NodeInputError, describe, validation_result

PIPELINE_TYPE = "DIFFUSERS_PIPELINE"
# The Load node's defaults, one home: its widgets and the editor's live checks (routes) read them.
DEFAULTS = {
    "dtype": DEFAULT_DTYPE,
    "device": "auto",
    "offload": "none",
    "allow_pickle": False,
    "variant": DEFAULT_VARIANT,
    "disk_cache": True,
    "compile": "none",
}


class PipeQuantLoadPipeline:
    TITLE = "Load Quantized Pipeline"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Load a diffusers pipeline folder (one with model_index.json, under models/diffusers) with the "
        "connected quantization. Everything is validated before any weight is read; components whose "
        "plan did not change are reused from memory."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (PIPELINE_TYPE, "STRING")
    RETURN_NAMES = ("pipeline", "report")
    OUTPUT_TOOLTIPS = ("The loaded diffusers pipeline.", "Per-component load report (plan, bytes, seconds).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    list_pipelines(host.model_roots()),
                    {"tooltip": "A diffusers pipeline folder under ComfyUI's models/diffusers (or extra model paths)."},
                ),
                "dtype": (
                    list(LOAD_DTYPES),
                    {"default": DEFAULTS["dtype"], "tooltip": "dtype of the weights that are not quantized."},
                ),
                "device": (
                    list(DEVICES),
                    {"default": DEFAULTS["device"], "tooltip": "auto = ComfyUI's GPU when there is one, else CPU."},
                ),
                "offload": (
                    list(OFFLOAD_MODES),
                    {
                        "default": DEFAULTS["offload"],
                        "tooltip": "none: whole pipeline on the device. model: each model "
                        "moves to the GPU only while it runs. sequential: layer by "
                        "layer (least memory, slowest).",
                    },
                ),
            },
            "optional": {
                "quantization": (
                    CONFIG_TYPE,
                    {
                        "tooltip": "From Quantization Backend (whole pipeline) or "
                        "Per-Component Map. Unconnected = no quantization."
                    },
                ),
                "allow_pickle": (
                    "BOOLEAN",
                    {
                        "default": DEFAULTS["allow_pickle"],
                        "tooltip": "Also load components that only have pickle weights (.bin, "
                        ".pt). Pickle files can run arbitrary code when loaded: turn "
                        "this on only for files you trust. Off = safetensors only.",
                    },
                ),
                "variant": (
                    variant_choices(),
                    {
                        "default": DEFAULTS["variant"],
                        "tooltip": "Which weight files to read where the folder has "
                        "variants (model.fp16.safetensors: fp16). default = the "
                        "plain files; a component without the variant's files "
                        "loads its plain ones.",
                    },
                ),
                "disk_cache": (
                    "BOOLEAN",
                    {
                        "default": DEFAULTS["disk_cache"],
                        "tooltip": "Keep quantized components on disk (models/pipequant_cache) "
                        "and load them from there next time instead of quantizing "
                        "again. Off = quantize this load from the original files.",
                    },
                ),
                "compile": (
                    list(COMPILE_MODES),
                    {
                        "default": DEFAULTS["compile"],
                        "tooltip": "torch.compile the denoiser. regional: its repeated "
                        "blocks (fast to compile, as fast as full). full: the "
                        "whole model. It compiles on the first run (seconds to "
                        "minutes) and not again; a new resolution may recompile "
                        "once. Layers a backend cannot compile stay eager, and a "
                        "failed compile falls back to eager (see the report).",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        """ComfyUI files a failure here once per argument this takes (7 errors for one wrong input),
        so it takes the model alone and checks what the model decides alone: that the name is a
        readable pipeline folder. Every input together is checked first thing when the node runs
        (`plan`, before a weight is read), and live in the editor."""
        problems = prepare(model, roots=host.model_roots(), allow_pickle=True, plan=False).problems
        return validation_result([p for p in problems if p.input == "model"], cls.TITLE)

    @classmethod
    def check(cls, model, dtype, device, offload, allow_pickle=False, variant=DEFAULT_VARIANT, compile="none"):
        """The loader's own inputs together (no quantization spec): True, or the text naming each input at fault."""
        prepared = prepare(
            model,
            roots=host.model_roots(),
            dtype=dtype,
            device=device,
            offload=offload,
            allow_pickle=allow_pickle,
            compile=compile,
            variant=variant,
            plan=False,
        )
        return validation_result(prepared.problems, PipeQuantLoadPipeline.TITLE)

    @classmethod
    def IS_CHANGED(cls, model, **kwargs):
        """Re-run when the pipeline's files change on disk (ComfyUI otherwise reuses the output)."""
        # ...and after ComfyUI unloaded this pipeline to free memory (the next run reloads it).
        key = files_key(model, host.model_roots())
        try:
            return f"{key}:{COMPONENT_CACHE.releases(resolve_model(model, host.model_roots()))}"
        except ValidationError:
            return key

    @classmethod
    def plan(cls, *args, **kwargs):
        """The validated plan (what the runner's `validate` passes downstream)."""
        return cls.prepared(*args, **kwargs).plan

    @classmethod
    def prepared(
        cls,
        model,
        dtype,
        device,
        offload,
        quantization=None,
        allow_pickle=False,
        variant=DEFAULT_VARIANT,
        compile="none",
        *,
        check_fit=False,
        **_load_only,
    ):
        """Validate the whole plan, reading no weights; errors name the node and input at fault
        (upstream Backend/Map nodes included). The runner's `validate` calls this with every input
        (`_load_only`: inputs that matter only when loading). Returns `decide.prepare`'s result, whose
        estimate the load reuses. `check_fit` (the load): a plan certain to run out of memory is
        refused, one that may is noted; the editor shows the same live (routes.estimate). Validation
        alone skips it: the estimate builds models, and `validate`'s cold start imports no torch."""
        prepared = prepare(
            model,
            quantization,
            roots=host.model_roots(),
            gguf_roots=host.gguf_roots(),
            dtype=dtype,
            device=host.device_for(device),
            offload=offload,
            allow_pickle=allow_pickle,
            compile=compile,
            variant=variant,
        )
        try:
            plan = prepared.plan_or_raise()
            found = prepared.fit_problems() if check_fit else []
            if errors(found):  # a certain out-of-memory: refused before a weight is read
                raise ValidationError(errors(found))
            plan.notes += [f"warning: {p}" for p in found if p.severity == "warning"]
            return prepared
        except ValidationError as exc:
            raise NodeInputError(
                exc.problems, describe(exc.problems, PipeQuantLoadPipeline.TITLE, attribute=True)
            ) from None

    def load(
        self,
        model,
        dtype,
        device,
        offload,
        quantization=None,
        allow_pickle=False,
        variant=DEFAULT_VARIANT,
        disk_cache=True,
        compile="none",
    ) -> tuple:
        prepared = self.prepared(
            model, dtype, device, offload, quantization, allow_pickle, variant, compile, check_fit=True
        )
        plan = prepared.plan
        host.free_comfy_models(plan.device, prepared.estimate()["total"]["bytes_after"])
        for note in first_use_notes(plan):
            host.progress_text(note)
        progress = host.Progress(len(plan.modules()))
        folder = host.disk_cache_folder() if disk_cache is not False else None
        result = load_plan(
            plan,
            allow_pickle=allow_pickle is True,
            progress=lambda i, n, name: progress.update(i, n),
            compile=compile,
            disk_cache=DiskCache(folder) if folder is not None else None,
            write_later=True,  # the user has the pipeline before its disk-cache entries are written
        )
        host.track_loaded(result)
        return (result, result.table)


def variant_choices() -> list[str]:
    """ "default" plus the variants the listed pipelines have (fp16, bf16, ...)."""
    roots = host.model_roots()
    folders = []
    for name in list_pipelines(roots):
        try:
            folders.append(resolve_model(name, roots))
        except ValidationError:
            continue
    return choices(folders)
