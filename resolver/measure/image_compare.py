"""Paired-seed image comparison: PSNR and SSIM (torchmetrics), LPIPS only when its weights are
already on this machine (never a download), and a side-by-side image with a difference map.

Images are ComfyUI IMAGE tensors: (batch, height, width, 3) floats in 0..1.
"""

from __future__ import annotations

import math
from pathlib import Path

DIFF_GAIN = 4.0  # the difference map is |a - b| x this (clipped), so small errors are visible
LPIPS_NET = "alex"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, as torch.hub caches them


class MetricsUnavailable(RuntimeError):
    """torchmetrics is not installed."""


def _nchw(images):
    return images.permute(0, 3, 1, 2).float().clamp(0, 1)


def psnr_ssim(reference, images) -> tuple[float, float]:
    """PSNR (dB; inf for identical images) and SSIM (1 for identical images), averaged over the batch."""
    try:
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    except ImportError as exc:
        raise MetricsUnavailable(
            "the image comparison needs torchmetrics (pip install torchmetrics; it is in PipeQuant's requirements)"
        ) from exc
    ref, out = _nchw(reference), _nchw(images)
    if float((ref - out).abs().max()) == 0.0:
        return math.inf, 1.0  # torchmetrics divides by zero there
    psnr = float(peak_signal_noise_ratio(out, ref, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)))
    # The Gaussian window must fit the image: tiny images get a smaller one (an odd size).
    side = min(ref.shape[-1], ref.shape[-2])
    kernel = max(3, min(11, side if side % 2 else side - 1))
    ssim = float(structural_similarity_index_measure(out, ref, data_range=1.0, kernel_size=kernel))
    return psnr, ssim


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_unavailable() -> str | None:
    """Why LPIPS is skipped (None: it can run without a download)."""
    import importlib.util

    for module in ("lpips", "torchvision"):
        if importlib.util.find_spec(module) is None:
            return f"LPIPS skipped: the {module} package is not installed"
    if not (_torch_hub_checkpoints() / ALEXNET_FILE).is_file():
        return f"LPIPS skipped: its AlexNet weights ({ALEXNET_FILE}) are not on this machine (never downloaded)"
    return None


def lpips(reference, images) -> float:
    """LPIPS (AlexNet) averaged over the batch; call only when `lpips_unavailable()` is None."""
    import lpips as lpips_package  # the reference implementation; its linear heads ship in the package
    import torch

    with torch.no_grad():
        net = lpips_package.LPIPS(net=LPIPS_NET, verbose=False)
        ref, out = _nchw(reference) * 2 - 1, _nchw(images) * 2 - 1
        return float(net(out, ref).mean())


def side_by_side(reference, images):
    """(batch, H, 3W, 3): reference | plan | difference map (|a - b| x DIFF_GAIN, grey)."""
    import torch

    ref, out = reference.float().clamp(0, 1), images.float().clamp(0, 1)
    diff = ((out - ref).abs().mean(dim=-1, keepdim=True) * DIFF_GAIN).clamp(0, 1).expand_as(ref)
    return torch.cat([ref, out, diff], dim=2)


def compare(reference, images) -> dict:
    """{"psnr", "ssim", "lpips" (None when skipped), "lpips_note"}."""
    if reference.shape != images.shape:
        raise ValueError(f"images differ in shape: {tuple(reference.shape)} vs {tuple(images.shape)}")
    psnr, ssim = psnr_ssim(reference, images)
    note = lpips_unavailable()
    value = None if note else lpips(reference, images)
    return {"psnr": psnr, "ssim": ssim, "lpips": value, "lpips_note": note}
