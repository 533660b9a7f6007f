"""Let diffusers' bitsandbytes quantizers load on CPU, for the CPU baseline only.

diffusers refuses bnb without a GPU ("No GPU found") although bitsandbytes 0.50 runs 4-bit and
8-bit layers on CPU (DESIGN.md). The benchmark applies the same patch as the tests: the two
quantizers skip `validate_environment` and default their device map to CPU. It is applied
explicitly (the results say so) and only where no GPU is present; both the PipeQuant and the
plain-diffusers runs see it.
"""
from __future__ import annotations

_APPLIED = False


def needed() -> bool:
    import torch

    return not torch.cuda.is_available()


def apply() -> bool:
    """Patch once; returns whether the patch is in force."""
    global _APPLIED
    if _APPLIED:
        return True
    from diffusers.quantizers.bitsandbytes import bnb_quantizer as q

    def validate_environment(self, *args, **kwargs):
        return None

    def update_device_map(self, device_map):
        return device_map if device_map is not None else {"": "cpu"}

    for cls in (q.BnB4BitDiffusersQuantizer, q.BnB8BitDiffusersQuantizer):
        cls.validate_environment = validate_environment
        cls.update_device_map = update_device_map
    _APPLIED = True
    return True
