"""Disk-cache entries written after the pipeline is handed back, so a first load costs no more
than a load without the cache.

The loader asks the disk cache for an entry through `probe` (a hit reads it; a miss returns None
and leaves no lock held), quantizes, and hands the new component to `schedule`. One background
thread then writes it through `DiskCache.load` itself, whose key lock and write-then-rename keep
every reader safe: a reader of the same key waits for the lock and then reads the whole entry, and
a write that dies leaves only a temporary folder that the cache sweeps.

What is written is a snapshot taken before the module leaves the loader: a copy of its module tree
that shares the weight tensors. Adapters a LoRA node injects, or wrappers compile adds later, change
the original's tree, never the snapshot's, so an entry is always the plain quantized component.
Plans whose weights move after the load (offload) are written at once instead (`needs_now`).

Bounded: one writer thread, at most MAX_PENDING components waiting; past that the component is
simply not cached this time (it is quantized again, and offered again, on the next load). The
process waits for pending writes at exit (the headless runner), at most EXIT_WAIT_SECONDS.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..decide.plan import QUANTIZE
from ..files.meta_build import structural_copy
from ..run.context import diffusers_context
from .disk_cache import DiskCache, Outcome, why_no_entry

log = logging.getLogger("pipequant.disk_cache")

MAX_PENDING = 4
EXIT_WAIT_SECONDS = 600.0
WRITING = "writing"  # the report's disk_cache status while the entry is written in the background


class _Miss(Exception):
    """Raised inside DiskCache.load instead of quantizing: the probe only looks."""


def probe(cache: DiskCache, plan, row, quantize: Callable[[], tuple], load_saved: Callable[[Path], object]):
    """DiskCache.load's (module, config, Outcome or None) where it reads an entry or where the
    component gets none (quantized now by `quantize`); None on a miss: quantize, `snapshot`, and
    `schedule` the write. A broken entry is deleted here, under the key's lock, as DiskCache does."""
    if row.action != QUANTIZE or why_no_entry(plan, row):
        return cache.load(plan, row, quantize, load_saved)

    def refuse():
        raise _Miss

    try:
        return cache.load(plan, row, refuse, load_saved)
    except _Miss:
        return None


def needs_now(plan) -> bool:
    """Offload moves weights between devices after the load: write before handing the module out."""
    return plan.offload != "none"


def snapshot(module):
    """A copy of the module tree sharing every parameter and buffer with `module`: later changes to
    the original's structure (adapters, hooks, replaced parameters) do not reach it; its weights are
    not copied."""
    return structural_copy(module)


@dataclass
class _Job:
    cache: DiskCache
    plan: object
    row: object
    module: object
    config: object
    report_row: dict | None = None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


class DeferredWriter:
    def __init__(self, max_pending: int = MAX_PENDING):
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=max_pending)
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.unfinished: list[_Job] = []

    def schedule(self, cache: DiskCache, plan, row, copy_, config, report_row: dict | None = None) -> Outcome:
        """Queue the write of `copy_` (the `snapshot` of a freshly quantized module); the Outcome
        for the report. `report_row` (the component's report row) gets the final status once the
        write ends."""
        job = _Job(cache, plan, row, copy_, config, report_row)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return Outcome("not cached", "the background writer is busy with earlier entries; cached on a later load")
        with self.lock:
            self.unfinished.append(job)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="pipequant-disk-cache-writer", daemon=True)
                self.thread.start()
        return Outcome(WRITING, "written in the background after the load")

    @staticmethod
    def write_now(cache: DiskCache, plan, row, module, config) -> Outcome:
        """Write before returning (offload plans); the same lock and checks as a background write.
        Under the same grad modes as the loader's own work (a new thread starts with torch's defaults)."""
        with diffusers_context():
            _, _, outcome = cache.load(plan, row, lambda: (module, config), lambda folder: None)
        return outcome

    def _run(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=1.0)
            except queue.Empty:
                with self.lock:
                    if self.jobs.empty():
                        self.thread = None
                        return
                continue
            try:
                job.outcome = self.write_now(job.cache, job.plan, job.row, job.module, job.config)
            except Exception as exc:  # noqa: BLE001 (a write never fails anything: the entry is just absent)
                job.outcome = Outcome("not cached", f"{type(exc).__name__}: {exc}"[:300])
            finally:
                if job.report_row is not None and job.outcome is not None:
                    job.report_row.update(job.outcome.row_fields())
                job.module = job.config = None  # let the weights go once written
                job.done.set()
                with self.lock:
                    self.unfinished.remove(job)
                self.jobs.task_done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every queued write; True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                pending = list(self.unfinished)
            if not pending:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            pending[0].done.wait(left)


WRITER = DeferredWriter()


def wait_for_writes(timeout: float | None = None) -> bool:
    return WRITER.wait(timeout)


atexit.register(wait_for_writes, EXIT_WAIT_SECONDS)
