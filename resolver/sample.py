"""Run a loaded pipeline: text -> images as a float tensor (B, H, W, 3) in 0..1."""
from __future__ import annotations

import inspect
from typing import Callable

from .blocks import interrupt_check
from .load import diffusers_context


def generate(pipeline, *, prompt: str, negative_prompt: str = "", steps: int = 20, guidance_scale: float = 3.5,
             width: int = 1024, height: int = 1024, seed: int = 0, batch_size: int = 1,
             max_sequence_length: int = 0, on_step: Callable[[int, int], None] | None = None,
             check_interrupt: Callable[[], None] | None = None):
    """`on_step(step, total)` runs after every step; raising from it stops sampling there.
    `check_interrupt()` runs before every block of the denoiser; raising from it stops within the step."""
    import torch

    accepted = inspect.signature(pipeline.__call__).parameters
    kwargs = {"prompt": [prompt] * batch_size, "num_inference_steps": steps, "guidance_scale": guidance_scale,
              "width": width, "height": height, "output_type": "np",
              "generator": torch.Generator("cpu").manual_seed(seed)}
    if negative_prompt and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = [negative_prompt] * batch_size
    if max_sequence_length and "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = max_sequence_length
    if on_step is not None and "callback_on_step_end" in accepted:
        def callback(pipe, step, timestep, callback_kwargs):
            on_step(step + 1, steps)
            return {}

        kwargs["callback_on_step_end"] = callback
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    with diffusers_context(), interrupt_check(check_interrupt):
        images = pipeline(**kwargs).images
    return torch.from_numpy(images).float().clamp(0, 1)
