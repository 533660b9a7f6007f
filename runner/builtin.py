"""Stand-ins for the ComfyUI core nodes our workflows use (SaveImage, PreviewImage, LoadImage,
SaveAnimatedWEBP), so they run without ComfyUI."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..resolver.files import contained, list_files
from ..resolver.problems import Problem, ValidationError
from ..resolver.safe_files import FileProblem
from ..resolver.suggest import did_you_mean

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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
        counter = _last_counter(folder, prefix)
        written = []
        for image in images:
            array = (image.cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
            while True:  # never overwrite: an image written meanwhile (another run) takes the next number
                counter += 1
                path = folder / f"{prefix}_{counter:05d}_.png"
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                except FileExistsError:
                    continue
                break
            with os.fdopen(fd, "wb") as f:
                Image.fromarray(array).save(f, format="PNG")
            written.append(str(path))
        return {"ui": {"images": written}}


def _last_counter(folder: Path, prefix: str) -> int:
    """The highest number among <prefix>_<number>_.png (scanned, not counted: files deleted in the
    middle or other prefixes must not make a number come twice); the prefix matched literally."""
    pattern = re.compile(re.escape(prefix) + r"_([0-9]{1,18})_\.png")
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.fullmatch(name))]
    return max(numbers, default=0)


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def save_images(self, images, filename_prefix="preview"):
        return super().save_images(images, "preview")


class SaveAnimatedWEBP(SaveImage):
    """Writes the IMAGE batch as one animated WebP, as ComfyUI's SaveAnimatedWEBP does (a video's
    frames from the Sampler): <prefix>_<counter>_.webp in the output folder."""

    CATEGORY = "image/animation"
    METHODS = {"default": 4, "fastest": 0, "slowest": 6}

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "lossless": ("BOOLEAN", {"default": True}),
                "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
                "method": (list(cls.METHODS),),
            }
        }

    def save_images(self, images, filename_prefix="ComfyUI", fps=6.0, lossless=True, quality=80, method="default"):
        import numpy as np
        from PIL import Image

        folder = Path(self.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = Path(str(filename_prefix)).name or "ComfyUI"
        frames = [Image.fromarray((i.cpu().numpy() * 255).clip(0, 255).astype(np.uint8)) for i in images]
        path = folder / f"{prefix}_{len(list(folder.glob(f'{prefix}_*_.webp'))) + 1:05d}_.webp"
        frames[0].save(
            path,
            save_all=True,
            append_images=frames[1:],
            duration=int(1000.0 / fps),
            lossless=lossless,
            quality=quality,
            method=self.METHODS.get(method, 4),
        )
        return {"ui": {"images": [str(path)], "animated": [True]}}


class LoadImage:
    """Reads an image by name from the input folder, as ComfyUI's LoadImage does: (IMAGE, MASK), the
    mask being 1 - alpha (zeros, 64 x 64, without alpha). Names only: no paths out of the folder."""

    input_dir = Path("input")
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        names = [n for suffix in IMAGE_SUFFIXES for n in list_files([cls.input_dir], suffix)]
        return {"required": {"image": (sorted(names), {"image_upload": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        try:
            cls.resolve(image)
        except ValidationError as exc:
            return str(exc)
        return True

    @classmethod
    def resolve(cls, name) -> Path:
        folder = Path(cls.input_dir)

        def fail(code, message, fix):
            return ValidationError([Problem(code, "image", message, fix)])

        if (
            not isinstance(name, str)
            or not name
            or Path(name).is_absolute()
            or "\\" in name
            or ".." in Path(name).parts
            or not name.lower().endswith(IMAGE_SUFFIXES)
        ):
            raise fail(
                "image_outside_input",
                f"{name!r:.80} is not an image name in the input folder",
                f"use a {'/'.join(IMAGE_SUFFIXES)} file name under {folder} (--input DIR)",
            )
        path = folder / name
        if not os.path.lexists(path):
            names = [n for suffix in IMAGE_SUFFIXES for n in list_files([folder], suffix)]
            raise fail("image_not_found", f'no image "{name}" in {folder}', did_you_mean(name, names))
        try:
            inside = contained(path, folder)
        except FileProblem as exc:
            raise fail(exc.code, f'"{name}": {exc}', exc.suggestion) from None
        if not inside or not path.is_file():
            raise fail(
                "image_outside_input",
                f'"{name}" is a link out of the input folder, or not a file',
                "copy the image into the input folder",
            )
        return path

    def load_image(self, image):
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        with Image.open(self.resolve(image)) as raw:
            picture = ImageOps.exif_transpose(raw)
            rgb = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]
            if "A" in picture.getbands():
                alpha = np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)[None]
            else:
                mask = torch.zeros((1, 64, 64), dtype=torch.float32)
        return (rgb, mask)


BUILTIN_NODES = {
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "LoadImage": LoadImage,
    "SaveAnimatedWEBP": SaveAnimatedWEBP,
}
