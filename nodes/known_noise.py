"""Drop four third-party warnings that a CPU ComfyUI server prints once the pack first uses its
backends (a vanilla start has none). Each is dropped on the logger that emits it and only when its
text matches, so every other warning of those libraries still shows. (The headless runner quiets
third-party logging more broadly: runner/quiet.py.)"""

from __future__ import annotations

import logging

# logger name -> the start of the message to drop
KNOWN_NOISE = {
    # bitsandbytes 0.50 on CPU: an optional kernel from the Hub that the pack never fetches (no network).
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # torchao registers its enums with torch's pytree, which torch 2.14 deprecates (twice at import).
    "torch.utils._pytree": "%s is an Enum subclass and is now natively supported by torch.compile",
    # diffusers' torchao quantizer looks for tensor classes this torchao no longer has.
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
}


class DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_known_noise() -> None:
    """Idempotent: a logger gets its filter once."""
    for name, start in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(DropMessage(start))


quiet_known_noise()  # at the pack's import, before anything it uses emits them
