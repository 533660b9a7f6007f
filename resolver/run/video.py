"""Video pipelines: their frames as one ComfyUI IMAGE batch, and image-to-video from a start image.

Video pipelines return `.frames` (batch, frames, H, W, 3) where image pipelines return `.images`;
ComfyUI's video nodes (CreateVideo, SaveAnimatedWEBP) take the frames as one IMAGE batch.
"""

from __future__ import annotations

import weakref

from ..problems import Problem, ValidationError

#: text-to-video pipeline -> its image-to-video pipeline over the same components (diffusers has
#: no AutoPipeline for video). Only where the same transformer takes both: LTX conditions on the
#: first latent frame; Wan's I2V transformers take 36 input channels (16 for T2V), so a Wan T2V
#: folder cannot start from an image and its I2V folders take the image themselves.
IMAGE_TO_VIDEO = {"LTXPipeline": "LTXImageToVideoPipeline"}
_variants: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def as_image_batch(output):
    """(batch*frames, H, W, 3) float in 0..1 from a pipeline output (`.frames` or `.images`)."""
    import numpy as np
    import torch

    frames = getattr(output, "frames", None)
    if frames is None:
        return torch.from_numpy(np.asarray(output.images)).float().clamp(0, 1)
    array = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames.cpu().numpy()
    array = array.reshape(-1, *array.shape[-3:])
    return torch.from_numpy(array).float().clamp(0, 1)


def takes_image(pipeline) -> bool:
    import inspect

    return "image" in inspect.signature(pipeline.__call__).parameters


def image_to_video(pipeline):
    """The pipeline that starts a video from an image: itself when it takes one (Wan I2V, LTX
    image-to-video folders), else its family's image-to-video pipeline over the same modules."""
    if takes_image(pipeline):
        return pipeline
    name = IMAGE_TO_VIDEO.get(type(pipeline).__name__)
    per_pipeline = _variants.setdefault(pipeline, {})
    if name is not None and name not in per_pipeline:
        import diffusers

        try:
            per_pipeline[name] = getattr(diffusers, name).from_pipe(pipeline)
        except (ValueError, TypeError):
            name = None
    if name is None:
        raise ValidationError(
            [
                Problem(
                    "no_image_to_video",
                    "image",
                    f"{type(pipeline).__name__} cannot start a video from an image",
                    "disconnect the image, or load the family's image-to-video pipeline (e.g. Wan2.1-I2V, LTX-Video)",
                )
            ]
        )
    variant = per_pipeline[name]
    variant.set_progress_bar_config(disable=True)
    return variant


def first_frame(pixels):
    """The start image as PIL (what the image-to-video pipelines take), from B,3,H,W in 0..1."""
    from PIL import Image

    array = (pixels[0].movedim(0, -1).clamp(0, 1) * 255).round().byte().cpu().numpy()
    return Image.fromarray(array)
