"""Pipeline to ComfyUI: the loaded pipeline's (quantized) denoiser as a MODEL and its VAE as a VAE,
for core's KSampler, VAEDecode and everything else that takes them."""

from __future__ import annotations

import logging

from ..resolver.problems import Problem
from ..resolver.run import families_text, family_of, model_family
from . import comfy_memory, host
from .load import PIPELINE_TYPE
from .messages import raise_for
from .prompt_checks import verdict

log = logging.getLogger("pipequant")

TO_COMFY_NODE = "Pipeline to ComfyUI"
# The `expert` input: which of the pipeline's denoisers becomes the MODEL (None: its one, first denoiser).
EXPERTS = {"first": None, "second": "transformer_2"}
EXPERT_TOOLTIP = (
    "Which of the pipeline's denoisers becomes the MODEL. Wan 2.2 A14B has two experts: 'first' = transformer "
    "(high noise, the first steps), 'second' = transformer_2 (low noise, the last steps). Use two of these nodes "
    "into two KSamplerAdvanced split at the step the log names (the pipeline's boundary_ratio). Every other "
    "pipeline has one denoiser: keep 'first'."
)


def unmapped_problem(pipeline_class: str, folder_name: str, denoiser: str | None = None) -> Problem:
    """The refusal of a family the bridge does not map, as the node, the live check and the queue say it."""
    what = f"{pipeline_class} ({folder_name}{f', denoiser {denoiser}' if denoiser else ''})"
    return Problem(
        code="bridge_family",
        input="pipeline",
        message=f"{what} has no ComfyUI mapping",
        suggestion=f"the families that work: {families_text()}; use Quantized Pipeline Sampler for the others",
    )


def family_problems(result, node: str) -> list[Problem]:
    """The loaded pipeline's family must be one the bridge maps (checked before anything is built)."""
    if family_of(result.pipeline) is not None:
        return []
    return [unmapped_problem(type(result.pipeline).__name__, result.plan.model.folder.name)]


def model_family_problems(model) -> list[Problem]:
    """The same verdict before Run, from the folder (model_index.json and the denoiser's config)."""
    family, denoiser = model_family(model)
    return [] if family is not None else [unmapped_problem(model.pipeline_class, model.folder.name, denoiser)]


def expert_problems(result, expert: str, node: str) -> list[Problem]:
    """The second expert exists only in a two-denoiser pipeline (Wan 2.2 A14B)."""
    component = EXPERTS.get(expert, "?")
    if component is None or getattr(result.pipeline, component, None) is not None:
        return []
    return [
        Problem(
            code="bridge_expert",
            input="expert",
            message=f"{type(result.pipeline).__name__} ({result.plan.model.folder.name}) has one denoiser; "
            f"'{expert}' is Wan 2.2 A14B's low-noise {component}",
            suggestion="set expert to 'first' for this pipeline (or load a Wan 2.2 A14B pipeline)",
        )
    ]


class PipeQuantToComfy:
    TITLE = "Pipeline to ComfyUI"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Hand a loaded (quantized) pipeline to ComfyUI's own nodes: MODEL for KSampler / SamplerCustom / "
        "ModelSampling* / FluxGuidance, VAE for VAEDecode / VAEEncode. The MODEL runs the pipeline's own "
        "diffusers denoiser (its quantized weights and Apply LoRA stack) under ComfyUI's samplers and memory "
        "management. Families: " + families_text() + "."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ("MODEL", "VAE")
    RETURN_NAMES = ("model", "vae")
    OUTPUT_TOOLTIPS = (
        "The pipeline's denoiser as a ComfyUI MODEL (the family's latent format and sampling). Core LoRA "
        "loaders are refused on it: use Apply LoRA before this node.",
        "The pipeline's VAE as a ComfyUI VAE.",
    )
    FUNCTION = "convert"

    @classmethod
    def VALIDATE_INPUTS(cls, pipeline):
        """Only `pipeline` (one error, on that input): ComfyUI passes None for a linked input, so the
        verdict on the Load node's model comes from the queued prompt (prompt_checks.py)."""
        return verdict()

    CHECKED_AT_QUEUE = True  # prompt_checks.on_prompt keeps check_model's verdict for VALIDATE_INPUTS

    @classmethod
    def check_model(cls, model, **_inputs):
        """Before Run (the queue's check and the runner's): the folder's family is one the bridge maps."""
        return model_family_problems(model)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (
                    PIPELINE_TYPE,
                    {"tooltip": "From Load Quantized Pipeline (or Apply LoRA). Families: " + families_text() + "."},
                ),
            },
            "optional": {
                "expert": (list(EXPERTS), {"default": "first", "tooltip": EXPERT_TOOLTIP}),
            },
        }

    def convert(self, pipeline, expert="first"):
        raise_for(
            family_problems(pipeline, TO_COMFY_NODE) + expert_problems(pipeline, expert, TO_COMFY_NODE), TO_COMFY_NODE
        )
        from .bridge import build_model, build_vae
        from .bridge.wan import boundary_note

        mm = host.model_management
        if mm is None:
            raise RuntimeError(f"{TO_COMFY_NODE} needs ComfyUI (comfy.model_management is not importable)")
        pipe = pipeline.pipeline
        model = build_model(pipeline, mm, EXPERTS[expert])
        note = boundary_note(pipe, model.model)
        if note:
            log.info(note)
        # One owner per module: ComfyUI manages the denoiser (and the wrapped VAE) through these
        # patchers now, not through the pack's component entries.
        comfy_memory.hand_over(mm, model.model.diffusion_model.denoiser)
        vae = build_vae(pipe.vae, pipeline.plan.model.folder.name)
        if getattr(getattr(vae, "first_stage_model", None), "vae", None) is pipe.vae:
            comfy_memory.hand_over(mm, pipe.vae)
        return (model, vae)
