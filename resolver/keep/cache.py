"""Process-wide cache of loaded components, so changing one component's plan reloads only it.

Keyed by (model folder + its files' mtimes, component, the component's plan fingerprint, device,
offload). Bounded by bytes with LRU eviction; a component is stored only after a whole load
succeeded, so a failed load never leaves a partial entry.

`release` is how a host (ComfyUI's "Unload models" / memory pressure) takes memory back: it drops
the cache's entries for a module and empties every live pipeline that uses it, so nothing keeps
the weights alive; `releases(folder)` tells the loader that the next run must load again.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

from ..known.machine import total_ram_bytes, total_vram_bytes

BUDGET_ENV = "PIPEQUANT_CACHE_GB"
RAM_SHARE, VRAM_SHARE = 0.5, 0.8  # of the machine's RAM and GPU memory, when the env var is unset
log = logging.getLogger(__name__)


def machine_budget() -> int:
    """Half the RAM plus 80 % of the GPU's memory: components live in one or the other."""
    return int(RAM_SHARE * total_ram_bytes() + VRAM_SHARE * total_vram_bytes())


def budget_from_env() -> int:
    """The cache budget in bytes: $PIPEQUANT_CACHE_GB (GB, >= 0), read when used, else the
    machine's share. A malformed value falls back with a warning (it must never stop ComfyUI
    from loading the pack)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return machine_budget()
    try:
        gb = float(raw)
        if not math.isfinite(gb) or gb < 0:
            raise ValueError(raw)
    except ValueError:
        budget = machine_budget()
        log.warning(
            "PipeQuant: %s=%r is not a size in GB (a number >= 0); using %.1f GB (half the RAM plus "
            "80 %% of the GPU memory)",
            BUDGET_ENV,
            raw,
            budget / 1024**3,
        )
        return budget
    return int(gb * 1024**3)


@dataclass
class Entry:
    module: Any
    nbytes: int
    report: dict  # the component's report row from the load that produced it


class ComponentCache:
    def __init__(self, budget_bytes: int | None = None):
        self._budget = budget_bytes  # None: PIPEQUANT_CACHE_GB, read at each use
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._holders: weakref.WeakSet = weakref.WeakSet()  # live results: .uses(module), .release(why)
        self._releases: dict[str, int] = {}  # model folder -> how many of its pipelines were released

    def get(self, key: Hashable) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, module: Any, nbytes: int, report: dict) -> None:
        """Store, then evict least-recently-used entries until within budget. The newest entry
        always stays, so the cache never exceeds its budget by more than one component."""
        with self._lock:
            self._entries[key] = Entry(module, nbytes, report)
            self._entries.move_to_end(key)
            budget = self.budget_bytes
            while self.total_bytes > budget and len(self._entries) > 1:
                self._entries.popitem(last=False)

    @property
    def budget_bytes(self) -> int:
        return self._budget if self._budget is not None else budget_from_env()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def keys(self) -> list:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        free_memory()

    # -- giving memory back to the host ---------------------------------------------------------
    def hold(self, holder) -> None:
        """Track a live result (a LoadResult) so that `release` can empty it."""
        with self._lock:
            self._holders.add(holder)

    def release(self, module, reason: str, *, collect: bool = True) -> int:
        """Drop `module` from the cache and empty every live pipeline using it; returns the bytes
        the cache held for it. `collect=False` leaves the garbage collection (loaded models hold
        reference cycles) to the caller, for callers that must not run finalizers right now."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e.module is module]
            freed = sum(self._entries.pop(k).nbytes for k in keys)
            for holder in [h for h in self._holders if h.uses(module)]:
                self._release_holder(holder, reason)
        if collect:
            free_memory()
        return freed

    def release_all(self, reason: str) -> int:
        """Empty the cache and every live pipeline (ComfyUI's "Unload models")."""
        with self._lock:
            freed = self.total_bytes
            self._entries.clear()
            for holder in list(self._holders):
                self._release_holder(holder, reason)
        free_memory()
        return freed

    def _release_holder(self, holder, reason: str) -> None:
        folder = holder.folder
        self._releases[folder] = self._releases.get(folder, 0) + 1
        self._holders.discard(holder)
        holder.release(reason)

    def releases(self, folder) -> int:
        """How often pipelines of `folder` were released: changes when the next run must reload."""
        with self._lock:
            return self._releases.get(str(folder), 0)


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them: after a 200M-parameter nf4 load
    RSS fell from 1001 to 526 MB in the benchmark). A no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def free_memory() -> None:
    gc.collect()
    trim_heap()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


COMPONENT_CACHE = ComponentCache()
