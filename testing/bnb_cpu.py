"""Let diffusers' bitsandbytes quantizers load on CPU, inside a ``with`` block only.

diffusers refuses bitsandbytes without a GPU ("No GPU found. A GPU is needed for quantization.")
and defaults the device map to the current CUDA device, although bitsandbytes 0.50 runs 4-bit
and 8-bit layers on CPU (README "Facts"); transformers' bnb path loads on CPU as it is. Inside
:func:`bnb_on_cpu` the two diffusers quantizers skip ``validate_environment`` and a missing device
map becomes ``{"": "cpu"}`` (an explicit one is kept); on exit the originals are back. The tests
(fixture ``bnb_cpu``) and the benchmarks' CPU baseline use this same patch.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def needed() -> bool:
    """True where the patch makes a difference: no CUDA GPU."""
    import torch

    return not torch.cuda.is_available()


def _validate_environment(self, *args, **kwargs):
    return None


def _update_device_map(self, device_map):
    return {"": "cpu"} if device_map is None else device_map


@contextlib.contextmanager
def bnb_on_cpu() -> Iterator[None]:
    """Patch diffusers' ``BnB4BitDiffusersQuantizer`` and ``BnB8BitDiffusersQuantizer``; undo on exit."""
    from diffusers.quantizers.bitsandbytes import bnb_quantizer as q

    names = ("validate_environment", "update_device_map")
    saved = [
        (cls, name, cls.__dict__[name])
        for cls in (q.BnB4BitDiffusersQuantizer, q.BnB8BitDiffusersQuantizer)
        for name in names
    ]
    try:
        for cls, _name, _old in saved:
            cls.validate_environment = _validate_environment
            cls.update_device_map = _update_device_map
        yield
    finally:
        for cls, name, old in saved:
            setattr(cls, name, old)
