"""Starting from an image on a loaded pipeline: image-to-image, inpainting and image-to-video, each
diffusers' own variant pipeline built from the same components (`from_pipe`, nothing reloaded), fed
ComfyUI IMAGE / MASK tensors."""

from __future__ import annotations

import weakref

from ..problems import Problem, ValidationError

IMAGE2IMAGE, INPAINT = "image-to-image", "inpainting"
_variants: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pipeline -> {kind: variant pipeline}


def _problem(code: str, field: str, message: str, suggestion: str) -> ValidationError:
    return ValidationError([Problem(code, field, message, suggestion)])


def check_inputs(image, mask, denoise, batch_size: int) -> None:
    """Shapes, batch and denoise, before any work (ComfyUI IMAGE: B,H,W,3; MASK: B,H,W or H,W)."""
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float)) or not 0.0 <= denoise <= 1.0:
        raise _problem(
            "denoise_invalid",
            "denoise",
            f"{denoise!r} is not a denoise strength",
            "use a number from 0 (keep the image) to 1 (redraw it fully)",
        )
    if image is None:
        if mask is not None:
            raise _problem(
                "mask_without_image",
                "mask",
                "a mask was given without an image",
                "connect the image to inpaint to the image input",
            )
        return
    if getattr(image, "ndim", 0) != 4 or image.shape[-1] not in (3, 4):
        raise _problem(
            "image_invalid",
            "image",
            f"image has shape {tuple(getattr(image, 'shape', ()))}",
            "connect a ComfyUI IMAGE (batch, height, width, 3), e.g. from Load Image",
        )
    _check_pixels(image, "image", image.shape[1], image.shape[2])
    if image.shape[0] not in (1, batch_size):
        raise _problem(
            "image_batch_mismatch",
            "image",
            f"the image batch holds {image.shape[0]} images and batch_size is {batch_size}",
            f"use one image or set batch_size to {image.shape[0]}",
        )
    if mask is not None:
        if getattr(mask, "ndim", 0) not in (2, 3):
            raise _problem(
                "mask_invalid",
                "mask",
                f"mask has shape {tuple(getattr(mask, 'shape', ()))}",
                "connect a ComfyUI MASK (batch, height, width)",
            )
        _check_pixels(mask, "mask", mask.shape[-2], mask.shape[-1])
        if mask.ndim == 3 and mask.shape[0] not in (1, image.shape[0]):
            raise _problem(
                "mask_batch_mismatch",
                "mask",
                f"the mask batch holds {mask.shape[0]} masks and the image batch {image.shape[0]}",
                "use one mask, or one per image",
            )


def _check_pixels(tensor, field: str, height: int, width: int) -> None:
    """Not empty (a 0-pixel side cannot be resized), finite (NaN turns the whole result black)."""
    import torch

    if height < 1 or width < 1 or tensor.shape[0] < 1:
        raise _problem(
            f"{field}_empty",
            field,
            f"the {field} is empty ({width}x{height} pixels, {tensor.shape[0]} in the batch)",
            f"connect a {field} with at least one pixel",
        )
    values = torch.as_tensor(tensor)
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise _problem(
            f"{field}_nonfinite",
            field,
            f"the {field} holds NaN or infinite values: the result would be black",
            f"check the node that makes the {field} (a NaN from a failed decode or a division by zero)",
        )


def to_pixels(image, mask, width: int, height: int, batch_size: int):
    """(image B,3,H,W in 0..1, mask B,1,H,W in 0..1 or None), resized to width x height."""
    import torch
    import torch.nn.functional as F

    pixels = image[..., :3].movedim(-1, 1).float().clamp(0, 1)
    if pixels.shape[-2:] != (height, width):
        print(f"PipeQuant Sampler: image {pixels.shape[-1]}x{pixels.shape[-2]} resized to {width}x{height}")
        pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        pixels = pixels.clamp(0, 1)
    pixels = pixels.expand(batch_size, -1, -1, -1) if pixels.shape[0] == 1 else pixels
    if mask is None:
        return pixels.contiguous(), None
    m = (mask if mask.ndim == 3 else mask[None]).float().clamp(0, 1)[:, None]
    if m.shape[-2:] != (height, width):
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    m = m.expand(pixels.shape[0], -1, -1, -1) if m.shape[0] == 1 else m
    return pixels.contiguous(), torch.as_tensor(m).contiguous()


def variant(pipeline, kind: str):
    """The family's image-to-image or inpainting pipeline over the same modules (cached per pipeline)."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    per_pipeline = _variants.setdefault(pipeline, {})
    if kind not in per_pipeline:
        auto = AutoPipelineForInpainting if kind == INPAINT else AutoPipelineForImage2Image
        try:
            per_pipeline[kind] = auto.from_pipe(pipeline)
        except ValueError:
            field = "mask" if kind == INPAINT else "image"
            raise _problem(
                f"no_{'inpaint' if kind == INPAINT else 'img2img'}_variant",
                field,
                f"{type(pipeline).__name__} has no {kind} pipeline in diffusers",
                "disconnect it, or use a family that has one (FLUX, SD3, SDXL, SD)",
            ) from None
        per_pipeline[kind].set_progress_bar_config(disable=True)
    return per_pipeline[kind]


def round_trip(pipeline, pixels):
    """denoise 0: no step runs, the image only goes through the VAE (as in ComfyUI). B,H,W,3 in 0..1."""
    vae = pipeline.vae
    device = getattr(pipeline, "_execution_device", None) or vae.device
    x = (pixels * 2 - 1).to(device=device, dtype=vae.dtype)
    decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return ((decoded.float() + 1) / 2).clamp(0, 1).movedim(1, -1).cpu()


# -- image-to-video ---------------------------------------------------------------------------
#: text-to-video pipeline -> its image-to-video pipeline over the same components (diffusers has
#: no AutoPipeline for video). Only where the same transformer takes both: LTX conditions on the
#: first latent frame; Wan's I2V transformers take 36 input channels (16 for T2V), so a Wan T2V
#: folder cannot start from an image and its I2V folders take the image themselves.
IMAGE_TO_VIDEO = {"LTXPipeline": "LTXImageToVideoPipeline"}


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
