"""Stand-ins for the two ComfyUI nodes our workflows end in, so they run without ComfyUI."""
from __future__ import annotations

from pathlib import Path


class SaveImage:
    """Writes PNGs as ComfyUI's SaveImage does: <prefix>_<counter>_.png in the output folder."""

    output_dir = Path("output")
    CATEGORY = "image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save_images(self, images, filename_prefix="ComfyUI"):
        import numpy as np
        from PIL import Image

        folder = Path(self.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = Path(str(filename_prefix)).name or "ComfyUI"  # never a path out of the output folder
        existing = len(list(folder.glob(f"{prefix}_*_.png")))
        written = []
        for i, image in enumerate(images):
            array = (image.cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
            path = folder / f"{prefix}_{existing + i + 1:05d}_.png"
            Image.fromarray(array).save(path)
            written.append(str(path))
        return {"ui": {"images": written}}


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def save_images(self, images, filename_prefix="preview"):
        return super().save_images(images, "preview")


BUILTIN_NODES = {"SaveImage": SaveImage, "PreviewImage": PreviewImage}
