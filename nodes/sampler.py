"""Quantized Pipeline Sampler: prompt in, ComfyUI IMAGE out."""

from __future__ import annotations

from ..resolver.decide import frame_problems, image_size_problems, is_video, prompt_problems
from ..resolver.problems import ValidationError
from ..resolver.run import activate, generate
from . import host
from .load import PIPELINE_TYPE
from .messages import NodeInputError, describe, raise_for, validation_result


class PipeQuantSampler:
    TITLE = "Quantized Pipeline Sampler"  # the display name (nodes/__init__.py)
    DESCRIPTION = (
        "Generate images with a pipeline from Load Quantized Pipeline (or Apply LoRA). Uses the "
        "pipeline's own scheduler; stops within one block of the model when you press Cancel. Connect an image for "
        "image-to-image, and a mask too for inpainting."
    )
    CATEGORY = "PipeQuant"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = (
        "Images as ComfyUI IMAGE (batch, height, width, 3) in 0..1; a video's frames as one batch "
        "(batch x frames) for CreateVideo / SaveAnimatedWEBP.",
    )
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "From Load Quantized Pipeline."}),
                "prompt": ("STRING", {"default": "a photo of a cat", "multiline": True, "tooltip": "What to draw."}),
                "negative_prompt": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "What to avoid; ignored by pipelines without one (FLUX).",
                    },
                ),
                "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Denoising steps."}),
                "guidance_scale": (
                    "FLOAT",
                    {
                        "default": 3.5,
                        "min": 0.0,
                        "max": 30.0,
                        "step": 0.1,
                        "tooltip": "Prompt adherence (FLUX: distilled guidance).",
                    },
                ),
                "width": (
                    "INT",
                    {"default": 1024, "min": 16, "max": 4096, "step": 16, "tooltip": "Image width in pixels."},
                ),
                "height": (
                    "INT",
                    {"default": 1024, "min": 16, "max": 4096, "step": 16, "tooltip": "Image height in pixels."},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Random seed; the same seed gives the same image.",
                    },
                ),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Images per run."}),
            },
            "optional": {
                "max_sequence_length": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 512,
                        "tooltip": "T5 prompt length (FLUX/SD3); 0 = the pipeline's default.",
                    },
                ),
                "image": ("IMAGE", {"tooltip": "Start from this image (image-to-image); resized to width x height."}),
                "mask": ("MASK", {"tooltip": "With an image: redraw only where the mask is 1 (inpainting)."}),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "With an image: how much of it is redrawn (0 keeps it, 1 redraws "
                        "it fully); steps x denoise steps run.",
                    },
                ),
                "num_frames": (
                    "INT",
                    {
                        "default": 33,
                        "min": 1,
                        "max": 1025,
                        "tooltip": "Video pipelines (Wan, HunyuanVideo, LTX): frames to render, 4k+1 (LTX 8k+1). "
                        "Ignored by image pipelines.",
                    },
                ),
                "fps": (
                    "FLOAT",
                    {
                        "default": 24.0,
                        "min": 1.0,
                        "max": 120.0,
                        "step": 1.0,
                        "tooltip": "Frame rate for pipelines that condition on it (LTX); give the same to "
                        "CreateVideo. Ignored by the others.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt):
        """One input, so that ComfyUI files a failure once (it repeats it per argument); the
        negative prompt is checked when the node runs, first thing."""
        return validation_result(prompt_problems(prompt), PipeQuantSampler.TITLE)

    @classmethod
    def check(cls, prompt, negative_prompt):
        """Both prompts together (the headless runner's validate): True, or the text naming each at fault."""
        return validation_result(
            prompt_problems(prompt) + prompt_problems(negative_prompt, "negative_prompt"), PipeQuantSampler.TITLE
        )

    @classmethod
    def check_model(cls, model, width=None, height=None, num_frames=None, **_other):
        """Before Run, on the linked Load node's model (the editor's live check, the runner): the
        size it can take and, for a video, its frame rule (4k+1, LTX 8k+1) with the valid neighbours."""
        frames = frame_problems(model, num_frames) if num_frames is not None else []
        return image_size_problems(model, width, height) + frames

    def sample(
        self,
        pipeline,
        prompt,
        negative_prompt,
        steps,
        guidance_scale,
        width,
        height,
        seed,
        batch_size,
        max_sequence_length=0,
        image=None,
        mask=None,
        denoise=1.0,
        num_frames=33,
        fps=24.0,
    ):
        model = pipeline.plan.model
        raise_for(
            prompt_problems(prompt)
            + prompt_problems(negative_prompt, "negative_prompt")
            + image_size_problems(model, width, height)
            + frame_problems(model, num_frames),
            PipeQuantSampler.TITLE,
        )
        progress = host.Progress(steps)

        def on_step(step, total):
            progress.update(step, total)
            host.check_interrupt()

        host.check_interrupt()
        try:
            activate(pipeline)  # exactly the LoRA stack this pipeline object stands for
            images = generate(
                pipeline.pipeline,
                prompt=prompt,
                negative_prompt=negative_prompt,
                steps=steps,
                guidance_scale=guidance_scale,
                width=width,
                height=height,
                seed=seed,
                batch_size=batch_size,
                max_sequence_length=max_sequence_length,
                on_step=on_step,
                image=image,
                mask=mask,
                denoise=denoise,
                check_interrupt=host.check_interrupt,
                num_frames=num_frames if is_video(model) else 0,
                fps=fps,
            )
        except ValidationError as exc:
            raise NodeInputError(exc.problems, describe(exc.problems, PipeQuantSampler.TITLE)) from None
        return (images,)
