"""What the machine has: total and available RAM, GPU memory (the cache's default budget, the load path)."""

from __future__ import annotations

import os
import sys

FALLBACK_RAM = 16 * 1024**3  # where the OS does not say


def total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return FALLBACK_RAM


def available_ram_bytes() -> int | None:
    """Host RAM the OS can hand out now (MemAvailable; psutil elsewhere), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def total_vram_bytes() -> int:
    """GPU memory of the first CUDA device; 0 without one. torch is asked only if already
    imported, so reading the budget never pays torch's import."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    try:
        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except (RuntimeError, AssertionError):
        pass
    return 0
