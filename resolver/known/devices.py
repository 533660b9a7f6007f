"""Device names the loader accepts, and what the machine actually has."""

from __future__ import annotations

import os
import re
import sys

DEVICES = ("auto", "cuda", "cpu")
OFFLOAD_MODES = ("none", "model", "sequential")
NO_GPU_UNLESS = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm, WSL's GPU
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def is_known_device(device: str) -> bool:
    return isinstance(device, str) and (device in DEVICES or bool(_CUDA_INDEX.match(device)))


def cuda_available() -> bool:
    """torch's answer; on Linux without NVIDIA or ROCm device files, "no" without importing torch
    (2-3 s), so validating a workflow on a CPU machine stays fast."""
    if (
        "torch" not in sys.modules
        and sys.platform.startswith("linux")
        and not any(os.path.exists(p) for p in NO_GPU_UNLESS)
    ):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is there, else "cpu"."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def cuda_device_exists(device: str) -> bool:
    if not cuda_available():
        return False
    import torch

    m = _CUDA_INDEX.match(device)
    return m is None or int(m.group(1)) < torch.cuda.device_count()


def compute_capability(device: str) -> tuple[int, int] | None:
    if not device.startswith("cuda") or not cuda_available():
        return None
    import torch

    return torch.cuda.get_device_capability(torch.device(device))
