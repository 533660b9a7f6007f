"""Device names the loader accepts, and what the machine actually has."""
from __future__ import annotations

import re

DEVICES = ("auto", "cuda", "cpu")
OFFLOAD_MODES = ("none", "model", "sequential")
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def is_known_device(device: str) -> bool:
    return isinstance(device, str) and (device in DEVICES or bool(_CUDA_INDEX.match(device)))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is there, else "cpu"."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def cuda_device_exists(device: str) -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    m = _CUDA_INDEX.match(device)
    return m is None or int(m.group(1)) < torch.cuda.device_count()


def compute_capability(device: str) -> tuple[int, int] | None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(torch.device(device))
