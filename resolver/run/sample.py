"""Run a loaded pipeline: text (and optionally an image and a mask) -> images as a float tensor
(B, H, W, 3) in 0..1; a video's frames as one batch (B*frames, H, W, 3)."""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Callable

from ..problems import Problem, ValidationError
from . import img2img
from .blocks import interrupt_check
from .context import diffusers_context

#: pipelines that rescale every request to the area of their default size (HiDream: about 1 MP,
#: whatever width x height is asked); their `default_sample_size` is set for the run so the area
#: is the one asked for, and the size is honoured.
RESCALES_TO_DEFAULT_AREA = ("HiDreamImagePipeline",)


@contextmanager
def _honour_size(pipeline, width: int, height: int):
    if type(pipeline).__name__ not in RESCALES_TO_DEFAULT_AREA or not getattr(pipeline, "vae_scale_factor", None):
        yield
        return
    before = pipeline.default_sample_size
    pipeline.default_sample_size = math.sqrt(width * height) / pipeline.vae_scale_factor
    try:
        yield
    finally:
        pipeline.default_sample_size = before


def generate(
    pipeline,
    *,
    prompt: str,
    negative_prompt: str = "",
    steps: int = 20,
    guidance_scale: float = 3.5,
    width: int = 1024,
    height: int = 1024,
    seed: int = 0,
    batch_size: int = 1,
    max_sequence_length: int = 0,
    on_step: Callable[[int, int], None] | None = None,
    image=None,
    mask=None,
    denoise: float = 1.0,
    check_interrupt: Callable[[], None] | None = None,
    num_frames: int = 0,
    fps: float = 0,
):
    """`on_step(step, total)` runs after every step; raising from it stops sampling there. With
    `image` it runs image-to-image (`denoise`: how much of it is redrawn), with `mask` too inpainting.
    `check_interrupt()` runs before every block of the denoiser; raising from it stops within the step.
    `num_frames` / `fps` go to a video pipeline (0: its default); with `image` a video starts from it."""
    import torch

    img2img.check_inputs(image, mask, denoise, batch_size)
    kwargs = {}
    is_video = "num_frames" in inspect.signature(pipeline.__call__).parameters
    if image is not None and is_video:
        pixels, _ = img2img.to_pixels(image[:1], None, width, height, 1)
        pipeline = img2img.image_to_video(pipeline)
        kwargs = {"image": img2img.first_frame(pixels)}
        steps_run = steps
    elif image is not None:
        pixels, mask_pixels = img2img.to_pixels(image, mask, width, height, batch_size)
        batch_size, steps_run = pixels.shape[0], int(steps * denoise)
        if steps_run < 1:
            with diffusers_context():
                return img2img.round_trip(pipeline, pixels)
        pipeline = img2img.variant(pipeline, img2img.INPAINT if mask_pixels is not None else img2img.IMAGE2IMAGE)
        kwargs = {"image": pixels, "mask_image": mask_pixels, "strength": float(denoise)}
    else:
        steps_run = steps
    accepted = inspect.signature(pipeline.__call__).parameters
    kwargs |= {
        "prompt": [prompt] * batch_size,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "width": width,
        "height": height,
        "output_type": "np",
        "generator": torch.Generator("cpu").manual_seed(seed),
    }
    if negative_prompt and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = [negative_prompt] * batch_size
    if num_frames and is_video:
        kwargs["num_frames"] = int(num_frames)
    for name in ("frame_rate", "fps"):
        if fps and name in accepted:
            kwargs[name] = fps
    if max_sequence_length and "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = max_sequence_length
    if on_step is not None and "callback_on_step_end" in accepted:

        def callback(pipe, step, timestep, callback_kwargs):
            on_step(step + 1, steps_run)
            return {}

        kwargs["callback_on_step_end"] = callback
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
    with diffusers_context(), interrupt_check(check_interrupt), _honour_size(pipeline, width, height):
        output = pipeline(**kwargs)
    out = as_image_batch(output)
    if not bool(torch.isfinite(out).all()):  # saved as a black image with no word otherwise
        dtype = str(getattr(pipeline, "dtype", "")).replace("torch.", "")
        raise ValidationError(
            [
                Problem(
                    "image_nonfinite",
                    "pipeline",
                    f"the pipeline produced NaN or infinite values (weights in {dtype or 'its dtype'}): "
                    "the image would be black",
                    "load in bfloat16 or float32 (float16 overflows in some models), and check the LoRA strengths",
                )
            ]
        )
    return out


def as_image_batch(output):
    """Video pipelines return `.frames` (batch, frames, H, W, 3), image pipelines `.images`; ComfyUI's video
    nodes take the frames as one IMAGE batch: (batch*frames, H, W, 3) float in 0..1."""
    import numpy as np
    import torch

    frames = getattr(output, "frames", None)
    if frames is None:
        return torch.from_numpy(np.asarray(output.images)).float().clamp(0, 1)
    array = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames.cpu().numpy()
    array = array.reshape(-1, *array.shape[-3:])
    return torch.from_numpy(array).float().clamp(0, 1)
