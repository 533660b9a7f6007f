"""Whether a plan's weights fit the machine, before anything is read.

bf16 FLUX.1-dev holds 33.7 GB of weights: on a CPU with 24 GB of RAM, or a 24 GB GPU without
offload, the load runs for minutes and then exhausts memory. The estimate knows the bytes per
component; this compares them with the memory where they will live:
- on a GPU without offload, every component sits in VRAM: more than the card has is a certain
  out-of-memory (an error); more than is free now is a warning (ComfyUI may free its own models);
- on a GPU with model offload, the largest component must fit in VRAM, the rest waits in RAM;
- on the CPU, everything sits in RAM (swap may keep it alive, slowly: a warning).
Each problem names the fix: the Auto Quantization Plan node, a smaller quantization, or offload.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..problems import Problem
from .plan import Plan

GB = 1000**3  # as the estimate and the report print sizes
MARGIN_FRACTION, MARGIN_MIN = 0.05, 512 * 1024**2  # CUDA context, allocator slack, the host's own use


@dataclass(frozen=True)
class Memory:
    """One pool of memory: "RAM" or a GPU's VRAM."""

    name: str
    total_bytes: int
    free_bytes: int

    def usable(self, of_total: bool = False) -> int:
        base = self.total_bytes if of_total else self.free_bytes
        return max(0, base - max(MARGIN_MIN, int(self.total_bytes * MARGIN_FRACTION)))


def machine_memory(device: str) -> tuple[Memory, Memory | None]:
    """(RAM, the GPU's VRAM or None) as the machine has them now."""
    from .planner.device import detect

    ram_profile = detect("cpu")
    ram = Memory("RAM", ram_profile.total_bytes, ram_profile.free_bytes)
    if not str(device).startswith("cuda"):
        return ram, None
    gpu = detect(device)
    if gpu.is_cpu:  # no CUDA here (a plan made for another machine): nothing to compare
        return ram, None
    return ram, Memory(f"VRAM ({gpu.name})", gpu.total_bytes, gpu.free_bytes)


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def fit_problems(plan: Plan, estimate: dict, memory: tuple[Memory, Memory | None] | None = None) -> list[Problem]:
    """Problems on the Load node's device/offload inputs when the plan's weights will not fit."""
    rows = estimate.get("components", [])
    if not rows:
        return []
    total = sum(r["bytes_after"] for r in rows)
    largest = max(rows, key=lambda r: r["bytes_after"])
    ram, vram = memory if memory is not None else machine_memory(plan.device)
    if ram.total_bytes <= 0:
        return []  # the OS did not say
    problems = []
    fix = (
        "let the Auto Quantization Plan node pick a plan that fits, or quantize the largest components "
        "(the transformer and the T5 text encoder) to 8 or 4 bits with a Quantization Backend"
    )
    if vram is not None and vram.total_bytes > 0:
        offload = plan.offload
        on_gpu = (
            total if offload == "none" else largest["bytes_after"] if offload == "model" else 0
        )  # sequential offload streams layer by layer
        what = "the plan's weights" if offload == "none" else f'its largest component ("{largest["component"]}")'
        gpu_fix = fix + (
            '; or set offload to "model" (one component on the GPU at a time)' if offload == "none" else ""
        )
        if on_gpu > vram.usable(of_total=True):
            problems.append(
                Problem(
                    "plan_exceeds_memory",
                    "offload" if offload != "none" else "device",
                    f"{what} need {_gb(on_gpu)} of GPU memory; {vram.name} has {_gb(vram.total_bytes)}: "
                    "the load would run out of memory",
                    gpu_fix,
                )
            )
        elif on_gpu > vram.usable():
            problems.append(
                Problem(
                    "plan_may_not_fit",
                    "device",
                    f"{what} need {_gb(on_gpu)} of GPU memory; {_gb(vram.free_bytes)} of {vram.name} is free now",
                    gpu_fix + "; or free memory (ComfyUI's Unload Models)",
                    severity="warning",
                )
            )
        in_ram = total if offload != "none" else 0
    else:
        in_ram = total
    if in_ram > ram.usable():
        over_total = in_ram > ram.usable(of_total=True)
        problems.append(
            Problem(
                "plan_exceeds_memory" if over_total else "plan_may_not_fit",
                "device",
                f"the plan's weights need {_gb(in_ram)} of RAM; this machine has {_gb(ram.total_bytes)}"
                + ("" if over_total else f", {_gb(ram.free_bytes)} free now")
                + (": the load would exhaust memory (or swap for a long time)" if over_total else ""),
                fix + ("" if vram is None else "; or use a GPU with more memory"),
                severity="warning",  # swap may keep it alive: said loudly, not refused
            )
        )
    return problems
