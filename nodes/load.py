"""Load Quantized Pipeline: validate the whole plan against the model, then load it."""
from __future__ import annotations

from ..resolver import catalogue
from ..resolver.cache import COMPONENT_CACHE
from ..resolver.devices import DEVICES, OFFLOAD_MODES
from ..resolver.estimate import estimate
from ..resolver.inspect_model import inspect_model
from ..resolver.load import LoadResult, load_plan, plan_load
from ..resolver.roots import list_pipelines, resolve_model
from ..resolver.problems import ValidationError
from ..resolver.validate import LOAD_DTYPES, validate
from ..resolver.variant import DEFAULT as DEFAULT_VARIANT
from ..resolver.variant import choices
from ..resolver.variant import problems as variant_problems
from . import comfy
from .backend import CONFIG_TYPE
from .messages import LOAD_NODE, NodeInputError, describe, validation_result

PIPELINE_TYPE = "DIFFUSERS_PIPELINE"


class PipeQuantLoadPipeline:
    DESCRIPTION = ("Load a diffusers pipeline folder (one with model_index.json, under models/diffusers) with the "
                   "connected quantization. Everything is validated before any weight is read; components whose "
                   "plan did not change are reused from memory.")
    CATEGORY = "PipeQuant"
    RETURN_TYPES = (PIPELINE_TYPE, "STRING")
    RETURN_NAMES = ("pipeline", "report")
    OUTPUT_TOOLTIPS = ("The loaded diffusers pipeline.", "Per-component load report (plan, bytes, seconds).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (list_pipelines(comfy.model_roots()), {
                    "tooltip": "A diffusers pipeline folder under ComfyUI's models/diffusers (or extra model paths)."}),
                "dtype": (list(LOAD_DTYPES), {"default": "bfloat16",
                                              "tooltip": "dtype of the weights that are not quantized."}),
                "device": (list(DEVICES), {"default": "auto",
                                           "tooltip": "auto = ComfyUI's GPU when there is one, else CPU."}),
                "offload": (list(OFFLOAD_MODES), {"default": "none",
                                                  "tooltip": "none: whole pipeline on the device. model: each model "
                                                             "moves to the GPU only while it runs. sequential: layer by "
                                                             "layer (least memory, slowest)."}),
            },
            "optional": {
                "quantization": (CONFIG_TYPE, {"tooltip": "From Quantization Backend (whole pipeline) or "
                                                          "Per-Component Map. Unconnected = no quantization."}),
                "allow_pickle": ("BOOLEAN", {"default": False,
                                             "tooltip": "Also load components that only have pickle weights (.bin, "
                                                        ".pt). Pickle files can run arbitrary code when loaded: turn "
                                                        "this on only for files you trust. Off = safetensors only."}),
                "variant": (variant_choices(), {"default": DEFAULT_VARIANT,
                                                "tooltip": "Which weight files to read where the folder has "
                                                           "variants (model.fp16.safetensors: fp16). default = the "
                                                           "plain files; a component without the variant's files "
                                                           "loads its plain ones."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model, dtype, device, offload, allow_pickle=False, variant=DEFAULT_VARIANT):
        try:
            folder = resolve_model(model, comfy.model_roots())
            info = inspect_model(folder, variant=variant)
            problems = variant_problems(info, variant) + validate(
                None, info, dtype=dtype, device=device, offload=offload, allow_pickle=allow_pickle is True)
        except ValidationError as exc:
            problems = exc.problems
        return validation_result(problems, LOAD_NODE)

    @classmethod
    def IS_CHANGED(cls, model, **kwargs):
        """Re-run when the pipeline's files change on disk (ComfyUI otherwise reuses the output)."""
        try:
            info = inspect_model(resolve_model(model, comfy.model_roots()))
            # ...and after ComfyUI unloaded this pipeline to free memory (the next run reloads it).
            return f"{hash(info.mtime_key)}:{COMPONENT_CACHE.releases(info.folder)}"
        except ValidationError:
            return ""  # VALIDATE_INPUTS reports it

    def load(self, model, dtype, device, offload, quantization=None, allow_pickle=False,
             variant=DEFAULT_VARIANT) -> tuple:
        result = load_pipeline(model, dtype, device, offload, quantization, allow_pickle=allow_pickle, variant=variant)
        return (result, result.table)


def variant_choices() -> list[str]:
    """"default" plus the variants the listed pipelines have (fp16, bf16, ...)."""
    roots = comfy.model_roots()
    folders = []
    for name in list_pipelines(roots):
        try:
            folders.append(resolve_model(name, roots))
        except ValidationError:
            continue
    return choices(folders)


def plan_pipeline(model, dtype, device, offload, quantization=None, *, allow_pickle: bool = False,
                  variant: str = DEFAULT_VARIANT):
    """Validate the whole plan against the model, reading no weights; errors name the node and
    input at fault (upstream Backend/Map nodes included)."""
    if device == "auto":
        device = comfy.default_device()
    try:
        folder = resolve_model(model, comfy.model_roots())
        return plan_load(folder, quantization, dtype=dtype, device=device, offload=offload,
                         gguf_roots=comfy.gguf_roots(), allow_pickle=allow_pickle, variant=variant)
    except ValidationError as exc:
        raise NodeInputError(exc.problems, describe(exc.problems, LOAD_NODE, attribute=True)) from None


def first_use_notes(plan) -> list[str]:
    """What this load does first beyond loading (e.g. quanto builds its C++ extension), once each."""
    notes = [catalogue.get_backend(r.spec.backend).first_use_note(r.spec.quant_type, plan.device)
             for r in plan.modules() if r.spec is not None]
    return list(dict.fromkeys(n for n in notes if n))


def load_pipeline(model, dtype, device, offload, quantization=None, *, allow_pickle: bool = False,
                  variant: str = DEFAULT_VARIANT) -> LoadResult:
    """Validate everything, then free ComfyUI's own models and load."""
    allow_pickle = allow_pickle is True  # only an explicit true opts in (never a truthy string from a workflow)
    plan = plan_pipeline(model, dtype, device, offload, quantization, allow_pickle=allow_pickle, variant=variant)
    comfy.free_comfy_models(plan.device, estimate(plan)["total"]["bytes_after"])
    for note in first_use_notes(plan):
        comfy.progress_text(note)
    progress = comfy.Progress(len(plan.modules()))
    result = load_plan(plan, allow_pickle=allow_pickle, progress=lambda i, n, name: progress.update(i, n))
    comfy.track_loaded(result)
    return result
