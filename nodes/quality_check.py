"""Plan Quality Check: how much worse is this plan than the unquantized model, on my prompt?"""

from __future__ import annotations

from ..resolver.constants import DEFAULT_DTYPE, LOAD_DTYPES
from ..resolver.decide import estimate, image_size_problems, prompt_problems
from ..resolver.files import list_pipelines
from ..resolver.keep import DiskCache
from ..resolver.known import DEVICES, OFFLOAD_MODES
from ..resolver.links import parse_components
from ..resolver.measure import BOTH, MEASURES, OWN_PROBLEMS, check_quality, components_problems
from ..resolver.problems import ValidationError
from . import host
from .backend import CONFIG_TYPE
from .messages import NodeInputError, describe, validation_result

QUALITY_NODE = "Plan Quality Check"


class PipeQuantQualityCheck:
    TITLE = "Plan Quality Check"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Measure what a quantization plan costs against the unquantized model (the reference, in the load dtype) "
        "on your own prompt and seed: each component's relative output error on one denoising step / one "
        "text-encoder pass (and its worst layers), and the images' PSNR, SSIM and LPIPS (LPIPS only when its "
        "weights are already on this machine). Component figures are remembered; Auto Quantization Plan ranks "
        "by them in its quality and balanced goals."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("table", "comparison")
    OUTPUT_TOOLTIPS = (
        "Per component: plan, relative error, worst layers; then PSNR / SSIM / LPIPS of the images.",
        "Per image: reference | plan | difference map (|difference| x 4). A black square when only "
        "components were measured.",
    )
    FUNCTION = "check"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    list_pipelines(host.model_roots()),
                    {"tooltip": "The pipeline to measure, as on Load Quantized Pipeline."},
                ),
                "prompt": (
                    "STRING",
                    {"default": "a photo of a cat", "multiline": True, "tooltip": "Your prompt: both runs use it."},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "tooltip": "The same seed for the reference and the plan (paired images).",
                    },
                ),
                "steps": (
                    "INT",
                    {"default": 20, "min": 1, "max": 200, "tooltip": "Denoising steps of the image comparison."},
                ),
                "width": (
                    "INT",
                    {"default": 1024, "min": 16, "max": 4096, "step": 16, "tooltip": "Image width in pixels."},
                ),
                "height": (
                    "INT",
                    {"default": 1024, "min": 16, "max": 4096, "step": 16, "tooltip": "Image height in pixels."},
                ),
                "measure": (
                    list(MEASURES),
                    {
                        "default": BOTH,
                        "tooltip": "components: one step per component (cheap). images: two full sampling runs, "
                        "PSNR / SSIM / LPIPS. both: the two.",
                    },
                ),
            },
            "optional": {
                "quantization": (
                    CONFIG_TYPE,
                    {"tooltip": "The plan to measure, as Load Quantized Pipeline takes it. Unconnected = none."},
                ),
                "dtype": (
                    list(LOAD_DTYPES),
                    {"default": DEFAULT_DTYPE, "tooltip": "The reference's dtype and the plan's load dtype."},
                ),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto = ComfyUI's GPU when there is one."}),
                "offload": (
                    list(OFFLOAD_MODES),
                    {
                        "default": "none",
                        "tooltip": "As on the Load node; model or sequential offload lets a reference that does "
                        "not fit run anyway.",
                    },
                ),
                "components": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Comma-separated components to measure; empty = the denoiser and every text "
                        "encoder.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt):
        return validation_result(prompt_problems(prompt), QUALITY_NODE)

    @classmethod
    def check_model(cls, model, width=None, height=None, components=None, **_other):
        """Before Run, on its own model (the editor's live check): the size the model takes and the
        components it can measure (the plan itself is checked as on the Load node)."""
        found = components_problems(model, components) if isinstance(components, str) else []
        return image_size_problems(model, width, height) + found

    def check(
        self,
        model,
        prompt,
        seed,
        steps,
        width,
        height,
        measure,
        quantization=None,
        dtype=DEFAULT_DTYPE,
        device="auto",
        offload="none",
        components="",
    ):
        import torch

        names, problems = parse_components(components)
        if problems:
            raise NodeInputError(problems, describe(problems, QUALITY_NODE))
        progress = host.Progress(1)

        def on_progress(done, total):
            progress.update(done, total)
            host.check_interrupt()

        host.check_interrupt()
        folder = host.disk_cache_folder()
        try:
            report = check_quality(
                model,
                quantization,
                roots=host.model_roots(),
                gguf_roots=host.gguf_roots(),
                dtype=dtype,
                device=host.device_for(device),
                offload=offload,
                prompt=prompt,
                seed=seed,
                steps=steps,
                width=width,
                height=height,
                measures=measure,
                components=list(names) if names else None,
                progress=on_progress,
                check_interrupt=host.check_interrupt,
                disk_cache=DiskCache(folder) if folder is not None else None,
                make_room=lambda plan: host.free_comfy_models(plan.device, estimate(plan)["total"]["bytes_after"]),
            )
        except ValidationError as exc:
            own = [p for p in exc.problems if p.code in OWN_PROBLEMS]
            plan = [p for p in exc.problems if p.code not in OWN_PROBLEMS]
            text = "\n".join(
                t for t in (describe(own, QUALITY_NODE), describe(plan, QUALITY_NODE, attribute=True)) if t
            )
            raise NodeInputError(exc.problems, text) from None
        image = report.comparison if report.comparison is not None else torch.zeros(1, 64, 64, 3)
        return (report.table(), image)
