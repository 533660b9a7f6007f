"""Measuring instruments: clocks, resident memory (CPU and CUDA), and the theoretical floor.

Peak RSS comes from the kernel's high-water mark (VmHWM), which `/proc/self/clear_refs` resets
(Linux >= 4.0), so peaks can be taken per phase of a load at no cost. A sampling thread splits
RSS into anonymous memory (tensors the process allocated) and file pages (mmapped safetensors),
which the high-water mark cannot tell apart.
"""

from __future__ import annotations

import math
import os
import re
import resource
import threading
import time

_STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in bytes (zeros where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"VmRSS": rss, "VmHWM": rss, "RssAnon": rss, "RssFile": 0}
    out = {}
    for key in _STATUS_KEYS:
        m = re.search(key + r":\s+(\d+)\s+kB", text)
        out[key] = int(m.group(1)) * 1024 if m else 0
    return out


def reset_peak() -> bool:
    """Reset the process's RSS high-water mark; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def io_read_bytes() -> int | None:
    """Bytes this process read through read()-like syscalls (`rchar`); None without /proc."""
    try:
        with open("/proc/self/io") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"rchar:\s+(\d+)", text)
    return int(m.group(1)) if m else None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _statm() -> tuple[int, int]:
    """(resident, file-backed resident) bytes, cheaply (one read of /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return int(fields[1]) * PAGE, int(fields[2]) * PAGE


class PhaseMeter:
    """Peak memory per phase of a load: `mark(name)` closes the phase that ran since the last mark.

    Each phase records the RSS high-water mark (exact), and with `sample=True` the peak
    anonymous and file-backed RSS seen by a thread sampling every `interval` seconds; on CUDA,
    `torch.cuda.max_memory_allocated`.
    """

    def __init__(self, cuda: bool = False, sample: bool = False, interval: float = 0.005):
        self.cuda = cuda
        self.phases: list[dict] = []
        self._lock = threading.Lock()
        self._max_anon = self._max_file = 0
        self._stop = threading.Event()
        self._thread = None
        self._sample = sample and os.path.exists("/proc/self/statm")
        self._interval = interval
        self.baseline = proc_status()
        try:
            rss0, file0 = _statm()
        except OSError:
            rss0 = file0 = 0
        self._base_anon, self._base_file = rss0 - file0, file0
        self.can_reset = reset_peak()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_baseline = torch.cuda.memory_allocated()
        self.start_time = time.perf_counter()
        self._phase_start = self.start_time
        self._overall = {"hwm": 0, "anon": 0, "file": 0, "cuda": 0}
        if self._sample:
            self._sample_once()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _sample_once(self) -> None:
        try:
            rss, file = _statm()
        except OSError:
            return
        with self._lock:
            self._max_anon = max(self._max_anon, rss - file)
            self._max_file = max(self._max_file, file)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample_once()

    def mark(self, name: str) -> dict:
        now = time.perf_counter()
        status = proc_status()
        base = self.baseline["VmRSS"]
        phase = {
            "phase": name,
            "seconds": round(now - self._phase_start, 4),
            "peak_rss": max(status["VmHWM"] - base, 0) if self.can_reset or not self.phases else None,
            "rss_after": status["VmRSS"] - base,
        }
        if self._sample:
            self._sample_once()
            with self._lock:
                phase["peak_anon"] = max(self._max_anon - self._base_anon, 0)
                phase["peak_file"] = max(self._max_file - self._base_file, 0)
                self._max_anon = self._max_file = 0
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            phase["cuda_peak"] = torch.cuda.max_memory_allocated() - self.cuda_baseline
            phase["cuda_after"] = torch.cuda.memory_allocated() - self.cuda_baseline
            torch.cuda.reset_peak_memory_stats()
            self._overall["cuda"] = max(self._overall["cuda"], phase["cuda_peak"])
        if phase["peak_rss"] is not None:
            self._overall["hwm"] = max(self._overall["hwm"], phase["peak_rss"])
        for key in ("anon", "file"):
            if f"peak_{key}" in phase:
                self._overall[key] = max(self._overall[key], phase[f"peak_{key}"])
        if self.can_reset:
            reset_peak()
        self.phases.append(phase)
        self._phase_start = time.perf_counter()
        return phase

    def stop(self) -> dict:
        """Overall peaks since construction, relative to the baseline RSS / CUDA allocation."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        status = proc_status()
        out = {
            "peak_rss": self._overall["hwm"] if self.can_reset else max(status["VmHWM"] - self.baseline["VmRSS"], 0),
            "rss_after": status["VmRSS"] - self.baseline["VmRSS"],
            "anon_after": status["RssAnon"] - self.baseline["RssAnon"],
            "file_after": status["RssFile"] - self.baseline["RssFile"],
            "baseline_rss": self.baseline["VmRSS"],
            "baseline_anon": self.baseline["RssAnon"],
            "peak_reset_supported": self.can_reset,
        }
        if self._sample:
            out["peak_anon"], out["peak_file"] = self._overall["anon"], self._overall["file"]
        if self.cuda:
            out["cuda_peak"] = self._overall["cuda"]
        return out


# -- the theoretical floor ------------------------------------------------------------------


def _logical_shape(weight):
    state = getattr(weight, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return tuple(state.shape)
    return tuple(weight.shape)


def _scheme(module, weight) -> tuple[str, float, int]:
    """(scheme, bits per weight, scale bytes for the whole layer) of one quantized Linear."""
    shape = _logical_shape(weight)
    numel = math.prod(shape)
    rows = shape[0] if shape else 1
    kind = type(weight).__name__
    if kind == "Params4bit":
        blocksize = getattr(getattr(weight, "quant_state", None), "blocksize", 64) or 64
        return "bnb-4bit", 4.0, math.ceil(numel / blocksize) * 4  # one fp32 absmax per block
    if kind == "Int8Params":
        return "bnb-8bit", 8.0, rows * 4  # one fp32 scale per row (SCB)
    bits = 8.0
    qtype = getattr(weight, "qtype", None)  # quanto
    if qtype is not None and getattr(qtype, "bits", None):
        bits = float(qtype.bits)
    if bits < 8:  # group-wise 4-/2-bit: one scale and one shift per group of 128 (quanto default)
        return f"{bits:g}-bit grouped", bits, math.ceil(numel / 128) * 2 * 2
    return "int8 per-row", bits, rows * 2  # one scale per output channel, at the load dtype


def _inner_bytes(t) -> int:
    from pipequant.resolver.keep import inner_tensors

    return sum(i.untyped_storage().nbytes() for i in inner_tensors(t) if i.device.type != "meta")


def component_floor(model, load_dtype: str = "bfloat16") -> dict:
    """The theoretical floor of one loaded component and where its real bytes exceed it.

    floor = quantized Linear weights x bits / 8 + their scales + every other tensor at the load
    dtype (integer buffers at their own width). "Quantized" means what the backend did quantize
    (layers it skipped, e.g. T5's `wo` under bitsandbytes, are the unquantized rest).
    """
    import torch

    from pipequant.resolver.constants import DTYPE_BYTES
    from pipequant.resolver.keep import is_quantized_weight, tensor_bytes

    width = DTYPE_BYTES[load_dtype]
    floor = 0
    excess = {"quant_metadata": 0, "wider_than_load_dtype": 0}
    quantized_params = plain_linear_params = 0
    schemes: dict[str, int] = {}
    quantized_weights = set()
    for _, module in model.named_modules():
        if is_quantized_weight(module):
            weight = module.weight
            quantized_weights.add(id(weight))
            scheme, bits, scale_bytes = _scheme(module, weight)
            numel = math.prod(_logical_shape(weight))
            layer_floor = math.ceil(numel * bits / 8) + scale_bytes
            floor += layer_floor
            excess["quant_metadata"] += _inner_bytes(weight) - layer_floor
            quantized_params += numel
            schemes[scheme] = schemes.get(scheme, 0) + 1
        elif isinstance(module, torch.nn.Linear) and isinstance(module.weight, torch.Tensor):
            plain_linear_params += module.weight.numel()
    seen = set()
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        if id(t) in quantized_weights or id(t) in seen or t.device.type == "meta":
            continue
        seen.add(id(t))
        if type(t) not in (torch.Tensor, torch.nn.Parameter):  # a subclass we did not classify
            floor += _inner_bytes(t)
            continue
        if t.is_floating_point():
            floor += t.numel() * width
            extra = t.numel() * (t.element_size() - width)
            if extra > 0:
                excess["wider_than_load_dtype"] += extra
        else:
            floor += t.numel() * t.element_size()
    actual = tensor_bytes(model)
    excess["other"] = actual - floor - excess["quant_metadata"] - excess["wider_than_load_dtype"]
    return {
        "bytes": actual,
        "floor": floor,
        "ratio": round(actual / floor, 4) if floor else None,
        "quantized_params": quantized_params,
        "unquantized_linear_params": plain_linear_params,
        "schemes": schemes,
        "excess": excess,
    }


def mapped_rss(suffix: str = ".safetensors") -> int:
    """Resident bytes of this process's file mappings whose path ends with `suffix`."""
    total, current = 0, None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping header line
                    parts = line.split()
                    current = parts[5] if len(parts) > 5 else None
                elif first == "Rss:" and current and current.endswith(suffix):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def trim_heap() -> bool:
    """Give freed heap memory back to the OS (glibc `malloc_trim`), so RSS shows live memory."""
    import gc

    gc.collect()
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
