"""Quantize as the weights stream in: a diffusers component read a few megabytes at a time.

diffusers' `from_pretrained` memory-maps a whole shard and keeps it mapped while its quantizer
converts the Linear weights, so the process peaks at about 5x the resident quantized bytes while
loading (bench/results/memory: torchao int8 4.94x, quanto 4.35x at 200M parameters). Here the
component is built on the meta device exactly as diffusers builds it, then its tensors are read
with plain bounded reads (no mmap), a batch of a few megabytes at a time, and each batch goes
through the function diffusers' own loader runs per shard (`load_model_dict_into_meta`) with the
backend's own quantizer: the same casts, the same `quantize_` / `freeze` / SDNQ calls, so the
tensors are bit for bit those of `from_pretrained` (tests/test_stream_load.py). Each batch's
load-dtype copy is freed before the next is read.

Where the backend's scheme gives each weight row its own scale (torchao int8/float8, quanto
int8/float8, SDNQ int8/float8: `Backend.row_quantizer`), a weight is quantized a megabyte of rows at
a time into tensors a keeper thread allocates (`_ByRows`; torchao's and quanto's int8 rows by their
arithmetic written out, checked against the library's own result: known/rows.py): at par
with diffusers' loader in time or faster, at ~1.2x the resident bytes, so the default streams those
components. The others stream by default only where their library's peak would not fit in the RAM
available (streaming them whole costs 1.2-1.5x the CPU time).

`why_not` says where this cannot be done (a transformers model, a device map, files that are not
exactly the model's tensors, a pre-quantized or torchao-serialised file); the caller then takes
diffusers' path and the report says so.
"""

from __future__ import annotations

import copy
import logging
import mmap
import os
import traceback
from pathlib import Path

from ..constants import DIFFUSERS, TRANSFORMERS
from ..files.safetensors_header import HeaderError, TensorSpan, read_spans
from ..known.backends.base import diffusers_skeleton, finish_quantized_load
from ..known.rows import owner_of
from ..safe_files import FileProblem, open_regular, read_json_object
from .cache import trim_heap

log = logging.getLogger("pipequant")

# Bytes read before they are handed on: small against any component worth quantizing, large enough
# that the per-batch cost (one state_dict() walk of the model in diffusers' loader) stays negligible.
MIN_BATCH = 8 * 1024 * 1024
MAX_BATCH = 64 * 1024 * 1024
BATCHES = 48  # a component is read in at least this many batches where it is large enough
# How far the process may grow past what it held after the last trim of the heap, as a share of the
# component's bytes (at least MIN_GROWTH), before the heap is trimmed again. glibc keeps the freed
# load-dtype copies and the quantizers' temporaries as holes between the quantized weights: left
# alone the heap grows by about the bytes read (SDNQ: ~45 MB per 7 MB batch at 200M parameters).
# A trim hands the pages back, so the next batch faults them in again: a smaller share, a lower peak
# and more CPU (bench/results/peak_load). That is the whole CPU cost of streaming: its user time is
# at par with diffusers' loader, its system time (page faults) 2-5x. The quantizers allocate and free
# about 10x the checkpoint's bytes in temporaries (torchao int8: ~4 GB of page faults for a 379 MB
# transformer when every temporary is a fresh mapping), and on glibc 2.36 those 64-byte-aligned
# blocks fragment the heap (3.3x resident with no trim at all). Tried without a lasting gain (200M,
# torchao): one reused read buffer, quantizing in a worker thread (its arena grows the same),
# copying the kept tensors into another thread's heap, building the model in a helper thread, a
# fixed mmap threshold, reading in size order. Some processes never fragment (1.20x peak, CPU at
# par with no tuning); which ones is not decided by the hash seed and was not found (with address
# randomisation off, 7 of 7 fragmented). What fragments it is glibc's per-thread cache (tcache):
# each 64-byte-aligned block torch allocates leaves a 32-96 byte sliver that tcache holds as "in
# use", small long-lived objects then live in those slivers, and freed temporaries can no longer
# merge. With GLIBC_TUNABLES=glibc.malloc.tcache_count=0 (start-up only: no call changes it in a
# running process) and reads plus kept tensors moved into anonymous mappings of their own plus
# mallopt (no trim, 32 MB mmap threshold) during the load, the transformer alone loads at 153-166k
# faults and 1.22-1.48x peak (diffusers' loader: 160k, 5x). Without the tunable that scheme was
# no better than this code (commit 29f291e, reverted; its figures in bench/README.md): the tcache
# still fragments most processes, and fresh mappings per read cost system time of their own. Also
# without a gain: a fresh thread per batch (its tcache is emptied at exit: 3.3x with no trim), a
# small allocation to shift the heap's alignment, trimming only near a peak bound,
# glibc.malloc.hugetlb=1 (130k faults, 2.7 s of system time), compacting the heap in place after
# each batch (bench/README.md, round five). What works is keeping the temporaries and the kept
# tensors in different heaps, where the quantizer can run on rows (_ByRows).
GROWTH_SHARE = 1 / 16
MIN_GROWTH = 16 * 1024 * 1024
# Quantized by rows (_ByRows) the loading thread's heap keeps no temporaries, so its growth is the
# weights kept: trimmed at 1/16 the process faulted 100-180k pages (200M, torchao), at 1/4 66-85k
# at a peak of 1.19-1.26x the resident bytes, with no trim 60k at 1.26-1.32x.
ROWS_GROWTH_SHARE = 1 / 4

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
WEIGHTS = "diffusion_pytorch_model"  # diffusers' weights name (SAFETENSORS_WEIGHTS_NAME)
TRANSFORMERS_WEIGHTS = "model"  # transformers' (SAFE_WEIGHTS_NAME)

TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


class CannotStream(Exception):
    """This component loads through diffusers' own path; the message says why."""


def why_not(library: str, folder: Path, variant: str | None, kwargs: dict) -> str | None:
    """Why this component cannot stream (None: it can), before anything is built or read."""
    if library != DIFFUSERS and not _transformers_reads_lazily():
        return "transformers models load through transformers' own loader (before transformers 5)"
    if kwargs.get("device_map"):
        return "a device map (the component is quantized on the GPU)"
    if not kwargs.get("use_safetensors", True):
        return "pickle weights"
    try:
        files(folder, variant, library)
    except CannotStream as exc:
        return str(exc)
    return None


# diffusers' own loader peaks at up to ~3x the checkpoint's bytes on the CPU (peak 3.3-6x the
# quantized resident bytes, which are about half the bf16 checkpoint: bench/results/peak_load).
LIBRARY_PEAK_PER_FILE_BYTE = 3


def library_loader_fits(folder: Path, variant: str | None, library: str = DIFFUSERS) -> bool:
    """Whether its library's own (faster) loader's peak for this component fits in the host RAM
    available now. Streaming costs 1.2-1.5x the load's CPU time (bench/results/peak_load), so by
    default it runs only where the library's peak would not fit."""
    from ..known.machine import available_ram_bytes

    try:
        checkpoint = sum(path.stat().st_size for path in files(folder, variant, library))
    except (CannotStream, OSError):
        return True  # why_not says why it cannot stream anyway
    available = available_ram_bytes()
    return available is None or LIBRARY_PEAK_PER_FILE_BYTE * checkpoint <= available


def files(folder: Path, variant: str | None, library: str = DIFFUSERS) -> list[Path]:
    """The safetensors files `library` (diffusers or transformers, which name variants alike) would
    read for this component, in its order: the shards its index names (sorted, as both read them),
    else the single weights file."""
    stem = WEIGHTS if library == DIFFUSERS else TRANSFORMERS_WEIGHTS
    suffix = f".{variant}" if variant else ""
    index = folder / f"{stem}.safetensors.index{suffix}.json"
    single = folder / f"{stem}{suffix}.safetensors"
    if index.is_file():
        try:
            weight_map = read_json_object(index).get("weight_map")
        except FileProblem as exc:
            raise CannotStream(str(exc)) from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CannotStream(f"{index.name} has no weight_map of file names")
        names = sorted(set(weight_map.values()))
        if any(Path(n).name != n or not n.endswith(".safetensors") for n in names):
            raise CannotStream(f"{index.name} names files outside its folder or not safetensors")
        shards = [folder / n for n in names]
    elif single.is_file():
        shards = [single]
    else:
        raise CannotStream(f"no {single.name} or sharded index in {folder.name}")
    return shards


def _spans(paths: list[Path]) -> list[tuple[Path, TensorSpan]]:
    found, seen = [], set()
    for path in paths:
        try:
            spans, metadata = read_spans(path)
        except HeaderError as exc:
            raise CannotStream(str(exc)) from None
        if metadata and set(metadata) - {"format"}:
            raise CannotStream(f"{path.name} carries metadata a quantizer may read ({', '.join(sorted(metadata))})")
        # diffusers reads a shard's tensors in safetensors' order (sorted by name)
        for span in sorted(spans, key=lambda s: s.info.name):
            if span.info.name in seen:
                raise CannotStream(f"{span.info.name} is in more than one file")
            if span.info.dtype not in TORCH_DTYPES:
                raise CannotStream(f"{span.info.name} has dtype {span.info.dtype}")
            seen.add(span.info.name)
            found.append((path, span))
    return found


def _read(handle, span: TensorSpan, raw=None):
    """One tensor, read into memory of its own (no mapping of the file), or into `raw` (uint8, its
    size)."""
    import torch

    size = span.end - span.start
    raw = torch.empty(size, dtype=torch.uint8) if raw is None else raw
    view, done = memoryview(raw.numpy()), 0
    handle.seek(span.start)
    while done < size:
        n = handle.readinto(view[done:])
        if not n:
            raise OSError(f"{span.info.name}: the file ended {size - done} bytes early")
        done += n
    return raw.view(getattr(torch, TORCH_DTYPES[span.info.dtype])).reshape(span.info.shape)


def resident_bytes() -> int:
    """The process's resident set, from one read of /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _HeapBound:
    """Called between reads: trims the heap once the process has grown past what it held after the
    last trim by `share` of the component's `total` bytes (at least MIN_GROWTH)."""

    def __init__(self, total: int, share: float = GROWTH_SHARE):
        self.growth = max(MIN_GROWTH, int(share * total))
        self.mark = resident_bytes()

    def __call__(self) -> None:
        if resident_bytes() > self.mark + self.growth:
            trim_heap()
            self.mark = resident_bytes()


def _batches(spans: list[tuple[Path, TensorSpan]]):
    """Consecutive tensors in groups of at most the batch size (one tensor at least)."""
    total = sum(s.end - s.start for _, s in spans)
    limit = min(MAX_BATCH, max(MIN_BATCH, total // BATCHES))
    batch, size = [], 0
    for item in spans:
        length = item[1].end - item[1].start
        if batch and size + length > limit:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += length
    if batch:
        yield batch


# Load-dtype bytes of a weight quantized at a time where its backend quantizes by rows: the
# quantizers' temporaries (~4x these bytes) stay small and of the same few sizes, so the heap reuses
# them (larger: 2-8 MB fell to glibc's fresh mappings, 0.15-0.55 M page faults, slower).
ROW_BYTES = 1 << 20
CAN_RELEASE_PAGES = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")  # not on Windows


class _ByRows:
    """Quantizes the weights a backend's RowQuantizer takes ROW_BYTES of rows at a time on the
    loading thread, into tensors allocated whole by a keeper thread. The tensors the model keeps
    then live in the keeper's heap, and the quantizers' temporaries live and die in the loading
    thread's: no kept block between them, so no holes to trim and no pages faulted in twice. (The
    same quantizers run whole fragment the heap in most processes: bench/README.md, streamed loads.)
    The keeper only allocates: it never starts an OpenMP team of its own, which would make OpenMP
    put its threads to sleep between parallel regions (more OpenMP threads than cores): with the
    quantizer in a worker thread instead, once the loading thread had run one parallel op, the 200M
    transformer's rows took 0.79 s of wall time for 0.89 s of CPU time on 2 threads (0.49 s before).
    Such a weight is mapped from its file (`read`) and handed to diffusers' loader alone, whose call
    to the quantizer's `create_quantized_param` lands here."""

    def __init__(self, rows, quantizer, bound_heap):
        import torch

        self.rows, self.bound_heap = rows, bound_heap
        self.quantizer, self.original = quantizer, quantizer.create_quantized_param
        self.inference = torch.is_inference_mode_enabled()  # the keeper allocates in the same mode
        self.buffer, self.taken, self.keeper, self.maps = None, set(), None, {}
        quantizer.create_quantized_param = self._create_quantized_param

    def takes(self, model, name: str, span: TensorSpan) -> bool:
        import torch

        if len(span.info.shape) != 2 or span.info.shape[0] < 2 or span.info.dtype not in ("F32", "F16", "BF16"):
            return False
        module, _ = owner_of(model, name)
        meta = torch.empty(span.info.shape, dtype=getattr(torch, TORCH_DTYPES[span.info.dtype]), device="meta")
        taken = self.rows.takes(module, name) and self.quantizer.check_if_quantized_param(
            model, meta, name, {}, param_device="cpu"
        )
        if taken:
            self.taken.add(name)
        return taken

    def read(self, handle, span: TensorSpan):
        """The weight as the file's pages, mapped: no copy (reading it into a buffer cost 0.08 s of a
        0.4 s load at 200M parameters); `release` hands the pages back once it is quantized. Where
        they cannot be handed back (no madvise), read into one buffer reused for each."""
        import torch

        if not CAN_RELEASE_PAGES:
            size = span.end - span.start
            if self.buffer is None or self.buffer.numel() < size:
                self.buffer = None  # the smaller one goes before the larger one is made
                self.buffer = torch.empty(size, dtype=torch.uint8)
            return _read(handle, span, self.buffer[:size])
        mapped = self.maps.get(handle.fileno())
        if mapped is None:  # private: a quantizer that wrote to its input would not reach the file
            mapped = self.maps[handle.fileno()] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=span.end - span.start, offset=span.start)
        return raw.view(getattr(torch, TORCH_DTYPES[span.info.dtype])).reshape(span.info.shape)

    def release(self, handle, span: TensorSpan) -> None:
        """The pages `read` mapped for this weight leave the process (the mapping stays)."""
        if CAN_RELEASE_PAGES:
            start = span.start // PAGE * PAGE
            self.maps[handle.fileno()].madvise(mmap.MADV_DONTNEED, start, span.end - start)

    def allocate(self, spans):
        """(path, span, memory of its size) for each of `spans`, allocated by the keeper: the
        tensors the model keeps as read stay out of the loading thread's heap too."""
        import torch

        sizes = [s.end - s.start for _, s in spans]
        raws = self._in_keeper(lambda: [torch.empty(n, dtype=torch.uint8) for n in sizes]) if spans else []
        return [(p, s, raw) for (p, s), raw in zip(spans, raws)]

    def _create_quantized_param(self, model, param, name, device, *args, **kwargs):
        if name not in self.taken:
            return self.original(model, param, name, device, *args, **kwargs)
        module, _ = owner_of(model, name)
        try:
            whole = self._quantize(module, param)
        except (ValueError, TypeError, RuntimeError, AttributeError) as exc:
            # Its message only: the exception's frames hold the weight and the model.
            log.warning("PipeQuant: %s is quantized whole, not by rows: %s", name, str(exc) or type(exc).__name__)
            traceback.clear_frames(exc.__traceback__)
            whole = None
        if whole is None:  # the library quantizes it whole, from a copy (the file's pages go back)
            return self.original(model, param.clone(), name, device, *args, **kwargs)
        self.rows.put(model, name, whole)
        self.bound_heap()

    def _quantize(self, module, weight):
        """The whole weight's quantized tensor, or None where the library's result for two rows is not
        one row per weight row (a per-tensor scale). No part is kept across calls: its blocks would
        sit between the next parts' temporaries."""
        import torch

        with torch.no_grad():
            sample = self.rows.sample(module, weight)
            parts = self.rows.parts(sample)
            if not all(isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == 2 for t in parts.values()):
                return None  # some tensor is not one row per weight row: not a per-row scheme
            count = weight.shape[0]
            shapes = {n: ((count, *t.shape[1:]), t.dtype) for n, t in parts.items()}
            del parts
            whole = self._in_keeper(lambda: {n: torch.empty(shape, dtype=dt) for n, (shape, dt) in shapes.items()})
            step = max(2, ROW_BYTES // max(1, weight[0].numel() * weight.element_size()))
            for start in range(0, count, step):
                part = slice(start, start + step)
                self.rows.quantize_into(module, weight[part], {n: t[part] for n, t in whole.items()})
        return self.rows.assemble(sample, whole, weight.shape)

    def _in_keeper(self, job):
        """`job()` (allocations only) in the keeper thread, in this thread's inference mode (ComfyUI
        runs nodes in it; a tensor made in it is an inference tensor, as the library's would be)."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        def in_mode():
            with torch.inference_mode(self.inference):
                return job()

        if self.keeper is None:
            self.keeper = ThreadPoolExecutor(1, thread_name_prefix="pipequant-keep")
        return self.keeper.submit(in_mode).result()

    def close(self) -> None:
        self.quantizer.create_quantized_param = self.original
        if self.keeper is not None:
            self.keeper.shutdown()
        self.buffer, self.maps = None, {}  # a mapping goes with the last tensor on it


def _put(model, state: dict, quantizer, dtype, keep) -> None:
    """`state`'s tensors into `model` as diffusers' loader puts a shard's. (Not a closure: a frame
    keeps its function after `traceback.clear_frames`, and the function its closure: the model.)"""
    from diffusers.models.model_loading_utils import load_model_dict_into_meta

    state = quantizer.maybe_update_state_dict(state)
    load_model_dict_into_meta(
        model, state, dtype=dtype, hf_quantizer=quantizer, keep_in_fp32_modules=keep, unexpected_keys=[]
    )


def load(model_class, quantization_config, folder: Path, variant: str | None, dtype, name_or_path: str, rows=None):
    """`model_class.from_pretrained(name_or_path, quantization_config=..., dtype=dtype,
    low_cpu_mem_usage=True)` on the CPU, read in bounded batches; the weights `rows` (the backend's
    RowQuantizer, or None) takes are quantized by rows (_ByRows). Raises CannotStream before any
    weight is read where the files are not exactly the model's tensors."""
    from diffusers.quantizers.auto import DiffusersAutoQuantizer

    paths = files(folder, variant)
    spans = _spans(paths)
    config = copy.deepcopy(model_class.load_config(str(folder), local_files_only=True))
    if config.get("quantization_config") is not None:
        raise CannotStream("the component is saved pre-quantized")
    config["quantization_config"] = quantization_config
    quantizer = DiffusersAutoQuantizer.from_config(quantization_config, pre_quantized=False)
    model, keep, dtype = diffusers_skeleton(model_class, config, quantizer, dtype)
    names = [s.info.name for _, s in spans]
    if quantizer.maybe_update_loaded_keys(list(names), [str(p) for p in paths]) != names:
        raise CannotStream("the quantizer reads these files' keys its own way")
    quantizer.preprocess_model(model=model, device_map=None, keep_in_fp32_modules=keep)
    expected = set(model.state_dict())
    missing = quantizer.update_missing_keys(model, sorted(expected - set(names)), prefix="")
    unexpected = set(names) - expected
    if missing or unexpected:
        raise CannotStream(
            f"the files and the model disagree ({len(missing)} tensors missing, {len(unexpected)} unexpected)"
        )
    # diffusers' loader walks the whole model for its state_dict on every call (14 ms per batch at 200M
    # parameters, a third of the load); it reads only names and shapes of tensors not yet loaded,
    # which this snapshot answers the same.
    snapshot = model.state_dict()
    model.state_dict = lambda *args, **kwargs: snapshot
    handles = {}
    total = sum(s.end - s.start for _, s in spans)
    bound_heap = _HeapBound(total, GROWTH_SHARE if rows is None else ROWS_GROWTH_SHARE)
    by_rows = _ByRows(rows, quantizer, bound_heap) if rows is not None else None

    try:
        for batch in _batches(spans):
            state = {}
            for path, span in batch:
                if path not in handles:
                    handles[path] = open_regular(path)
            if by_rows is None:
                rest = [(path, span, None) for path, span in batch]
            else:
                taken = {s.info.name for p, s in batch if by_rows.takes(model, s.info.name, s)}
                for path, span in batch:
                    if span.info.name in taken:  # alone through diffusers' loader, quantized by rows
                        _put(model, {span.info.name: by_rows.read(handles[path], span)}, quantizer, dtype, keep)
                        by_rows.release(handles[path], span)
                rest = by_rows.allocate([(p, s) for p, s in batch if s.info.name not in taken])
            for path, span, raw in rest:
                state[span.info.name] = _read(handles[path], span, raw)
            _put(model, state, quantizer, dtype, keep)
            del state  # the load-dtype copies of quantized weights go now, before the next read
            bound_heap()
    finally:
        del model.state_dict
        if by_rows is not None:
            by_rows.close()
        for handle in handles.values():
            handle.close()
    trim_heap()  # the holes since the last trim, before the next component loads
    return finish_quantized_load(model, quantizer, name_or_path, dtype)


# -- transformers models ------------------------------------------------------------------------------
# transformers 5 reads a checkpoint lazily: `from_pretrained` maps every shard and hands its loop one
# slice per tensor, which it reads (`slice[...]`), casts and quantizes one at a time. The mapped pages
# it has read stay in the process until the end, and its quantizers' temporaries fragment the heap:
# peak 2.5-5x the resident bytes for a 234M T5 encoder with torchao int8. Handed the same tensors as
# slices that read with bounded reads (no mapping) and keep the heap bounded as above, the same loop
# gives the same tensors at 1.34x (bench/results/peak_load).


def _transformers_reads_lazily() -> bool:
    try:
        from transformers import core_model_loading  # noqa: F401  (transformers 5's lazy loading loop)
    except ImportError:
        return False
    return True


class _LazyTensor:
    """One checkpoint tensor, read into memory of its own when transformers' loader asks for it."""

    def __init__(self, handle, span: TensorSpan, bound_heap: _HeapBound):
        self.handle, self.span, self.bound_heap = handle, span, bound_heap

    def get_shape(self) -> list[int]:
        return list(self.span.info.shape)

    def get_dtype(self) -> str:
        return self.span.info.dtype

    def __getitem__(self, index):
        self.bound_heap()
        tensor = _read(self.handle, self.span)
        return tensor if index is Ellipsis else tensor[index]


def load_transformers(model_class, quantization_config, folder: Path, variant: str | None, dtype, name_or_path: str):
    """`model_class.from_pretrained(name_or_path, quantization_config=..., dtype=dtype)` on the CPU,
    its tensors read one at a time with bounded reads: transformers' own loading loop and quantizer,
    handed the checkpoint as a state dict of lazy tensors. Raises CannotStream before any weight is
    read where the files or the config are not what that loop would read itself."""
    paths = files(folder, variant, TRANSFORMERS)
    spans = _spans(paths)
    config = model_class.config_class.from_pretrained(str(folder), local_files_only=True)
    if getattr(config, "quantization_config", None) is not None:
        raise CannotStream("the component is saved pre-quantized")
    bound_heap = _HeapBound(sum(s.end - s.start for _, s in spans))
    handles = {path: open_regular(path) for path in paths}
    try:
        state = {span.info.name: _LazyTensor(handles[path], span, bound_heap) for path, span in spans}
        model = model_class.from_pretrained(
            None, config=config, state_dict=state, quantization_config=quantization_config, dtype=dtype
        )
    finally:
        for handle in handles.values():
            handle.close()
    trim_heap()
    model.name_or_path = model.config._name_or_path = name_or_path  # from_pretrained(None) says "None"
    model.eval()
    return model
