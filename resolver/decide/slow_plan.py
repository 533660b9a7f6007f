"""Warn where a plan's denoiser is predicted slower than bf16, naming a faster plan of the same size.

Quantized is usually slower than bf16 (README "Facts", Speed: torchao int8 dynamic 0.10x eager),
and a user who quantizes to fit a GPU should not pay for it unknowingly. Predictions come only from
measured figures (`measured.py`); a plan never measured gets no warning. A warning never blocks a run.
"""

from __future__ import annotations

from ..constants import denoiser_name
from ..known import catalogue, devices, measured
from ..problems import Problem

SLOW = 0.9  # below this fraction of bf16's step speed, say so


def compile_kept_eager(backend: str | None, quant_type: str, target: str) -> str | None:
    """Why compile must not be applied to a denoiser of this plan on `target` (None: compile it):
    measured slower than eager there, or failing there. Only figures of the target's own device
    class count (a CPU figure says nothing about a GPU)."""
    gen = measured.generation(devices.compute_capability(target))
    figure = measured.compile_figure(backend, quant_type, gen)
    if figure is None:
        return None
    plan = f"{backend} {quant_type}" if backend else quant_type
    if figure["fails"]:
        return f"compile of {plan} fails on {gen} ({figure['fails']}; {figure['source']})"
    if figure["factor"] is not None and figure["factor"] < 1.0:
        return f"{plan} runs at {figure['factor']:.2f}x its eager speed when compiled on {gen} ({figure['source']})"
    return None


def compile_warnings(assigned: dict, model, target: str, compile: str) -> list[Problem]:
    """Before Run: where the denoiser will stay eager although compile was asked for, and why; or
    where it will be compiled without a measurement that compiling it gains here."""
    name = denoiser_name(model.components)
    if compile == "none" or name is None:
        return []
    spec = assigned.get(name)
    backend, quant_type = (spec.backend, spec.quant_type) if spec is not None else (None, "bfloat16")
    why = compile_kept_eager(backend, quant_type, target)
    if why is None:
        gen = measured.generation(devices.compute_capability(target))
        if measured.compile_figure(backend, quant_type, gen) is not None:
            return []  # measured faster compiled
        plan = f"{backend} {quant_type}" if backend else quant_type
        return [
            Problem(
                "compile_not_measured",
                "compile",
                f"{name} will be compiled, but compile of {plan} was never measured on {gen}: "
                "it may run slower than eager, as some quantized plans do when compiled",
                'set compile to "none" to be sure of eager speed, or measure it: '
                "python -m bench.step_speed --modes eager,regional",
                name,
                severity="warning",
            )
        ]
    return [
        Problem(
            "compile_kept_eager",
            "compile",
            f"{name} will run eager, not compiled: {why}",
            'set compile to "none" (the same speed), or pick a plan that gains from compile here',
            name,
            severity="warning",
        )
    ]


def _mode(compile: str) -> str:
    return "eager" if compile == "none" else "regional"  # full compile: the nearest measured figure


def _figure(backend: str, quant_type: str, gen: str, mode: str):
    """(speed, mode measured) for one plan, the compiled figure first when compiling, else None."""
    for m in dict.fromkeys((mode, "eager")):
        found = measured.speed_factor(backend, quant_type, gen, m)
        if found is not None:
            return found["speed"], m
    return None


def _generations(gen: str) -> list[str]:
    """Where to look for figures: this generation, then (for a GPU) the nearest measured GPU one."""
    if gen == measured.CPU:
        return [gen]
    order = list(measured.data()["generations"])
    here = order.index(gen) if gen in order else 0
    return sorted(order, key=lambda g: (g != gen, abs(order.index(g) - here)))


def _bits(quant) -> float:
    return quant.bits + 8 * quant.scale_bytes_per_weight


def _runs_here(backend, quant, library: str, target: str, cc) -> bool:
    if backend.needs_file or not backend.installed() or library not in backend.libraries:
        return False
    if target == "cpu":
        return not quant.needs_cuda and backend.cpu_supported(library)
    return not (quant.min_compute_capability and cc is not None and cc < quant.min_compute_capability)


def _describe(backend: str, quant_type: str, mode: str) -> str:
    return f"{backend} {quant_type}" + (" with compile regional" if mode != "eager" else "")


def slow_plan_warnings(assigned: dict, model, target: str, compile: str = "none") -> list[Problem]:
    """`assigned`: component -> its BackendSpec (or None); `target`: the resolved device."""
    name = denoiser_name(model.components)
    spec = assigned.get(name) if name else None
    backend = catalogue.get_backend(spec.backend) if spec is not None else None
    quant = backend.quant_type(spec.quant_type) if backend is not None else None
    if quant is None:
        return []
    cc = devices.compute_capability(target)
    library = model.components[name].library
    mode = _mode(compile)
    if mode != "eager" and compile_kept_eager(backend.name, quant.name, target):
        mode = "eager"  # it will run eager (compile_warnings says why)
    for gen in _generations(measured.generation(cc)):
        figure = _figure(backend.name, quant.name, gen, mode)
        if figure is not None:
            break
    else:
        return []
    speed, measured_mode = figure
    if speed >= SLOW:
        return []
    best = None
    for other in (catalogue.get_backend(n) for n in catalogue.backend_names()):
        for q in other.quant_types:
            if (other.name, q.name) == (backend.name, quant.name) or _bits(q) > _bits(quant) + 1e-9:
                continue
            if not _runs_here(other, q, library, target, cc):
                continue
            for m in dict.fromkeys((mode, "regional")):
                found = _figure(other.name, q.name, gen, m)
                if found is not None and found[0] > speed and (best is None or found[0] > best[0]):
                    best = (found[0], _describe(other.name, q.name, found[1]))
    how = (
        "measured with compile"
        if measured_mode != "eager"
        else ("measured eager; compiled not measured" if mode != "eager" else "measured eager")
    )
    message = f"{backend.name} {quant.name} on {name} is predicted at {speed:.2f}x bf16's step speed on {gen} ({how})"
    if best is not None:
        suggestion = f"faster at the same memory: {best[1]} ({best[0]:.2f}x bf16)"
    else:
        suggestion = "no faster plan of this size was measured here; bf16 is faster if it fits"
    return [Problem("slow_plan", "quantization", message, suggestion, name, severity="warning")]
