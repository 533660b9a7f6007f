"""Plan Quality Check: what a quantization plan costs a model's images, on the user's own prompt.

Loads the reference (no quantization, the load dtype) and runs it once on the prompt, capturing each
measured component's first call (one denoising step, one text-encoder pass); with images, it runs
every step and keeps the image. Then it lets the reference pipeline go (only the measured reference
components stay, for their layers' weights), loads the plan, runs each quantized component on the
captured inputs (relative error + worst layers) and, with images, the same prompt, seed, steps and
size (PSNR, SSIM, LPIPS when its weights are here, a side-by-side with a difference map).

Component figures are written to the quality cache (decide/planner/figures.py, which the auto
planner reads) and read back instead of measuring again.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..constants import DEFAULT_DTYPE, KEEP, PREQUANTIZED
from ..decide.estimate import estimate
from ..decide.limits import image_size_problems, prompt_problems
from ..decide.plan import Plan, is_autoencoder
from ..decide.planner import figures
from ..decide.prepare import prepare
from ..keep.cache import COMPONENT_CACHE, free_memory
from ..keep.load import load_plan
from ..links import parse_components
from ..problems import Problem, ValidationError
from ..run.context import diffusers_context
from ..run.sample import generate
from ..safe_files import FileProblem, read_json_object
from .component_error import capture_first_calls, measure
from .image_compare import compare, side_by_side

COMPONENTS, IMAGES, BOTH = "components", "images", "both"
MEASURES = (COMPONENTS, IMAGES, BOTH)
MAX_STEPS = 200
FIT_SHARE = 0.8  # the reference's weights may take this share of the free device memory (the rest: activations)
# Problems with the check's own inputs (the rest concern the plan: the Backend/Map nodes, the model)
OWN_PROBLEMS = (
    "steps_invalid",
    "measure_unknown",
    "metrics_missing",
    "component_not_measurable",
    "component_not_called",
)
_DEFAULT = object()


@dataclass
class QualityReport:
    model: str
    plan: str  # the whole plan in words
    dtype: str
    inputs: dict
    components: dict[str, dict] = field(default_factory=dict)  # name -> plan, relative_error, worst_layers, cached
    images: dict | None = None  # psnr, ssim, lpips, lpips_note
    comparison: object = None  # IMAGE tensor (batch, H, 3W, 3): reference | plan | difference
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The command's --json object (issue 27): exactly these keys."""
        images = None
        if self.images is not None:
            images = {k: self.images[k] for k in ("psnr", "ssim", "lpips")}
        return {
            "components": {
                n: {"plan": c["plan"], "relative_error": c["relative_error"]} for n, c in self.components.items()
            },
            "images": images,
        }

    def table(self) -> str:
        i = self.inputs
        lines = [
            f"Plan quality of {self.model}: {self.plan} against the {self.dtype} reference — "
            f'prompt "{_short(i["prompt"])}", seed {i["seed"]}, {i["steps"]} steps, {i["width"]}x{i["height"]}'
        ]
        if self.components:
            lines.append(f"{'component':<16} {'plan':<34} {'rel. error':>10}  worst layers")
            for name, c in self.components.items():
                worst = ", ".join(f"{w['layer']} {w['relative_error']:.4f}" for w in c["worst_layers"]) or "-"
                cached = " (cached)" if c["cached"] else ""
                lines.append(f"{name:<16} {c['plan']:<34} {c['relative_error']:>10.5f}  {worst}{cached}")
        if self.images is not None:
            m = self.images
            psnr = "inf (identical)" if math.isinf(m["psnr"]) else f"{m['psnr']:.2f} dB"
            lp = f"{m['lpips']:.4f}" if m["lpips"] is not None else "skipped"
            lines.append(f"images: PSNR {psnr}, SSIM {m['ssim']:.4f}, LPIPS {lp}")
            if m.get("lpips_note"):
                lines.append(f"note: {m['lpips_note']}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            "relative error = ||plan - reference|| / ||reference|| of the component's output on the same inputs "
            "(one denoising step, one text-encoder pass); worst layers: each Linear against the reference layer "
            "on its own input"
        )
        return "\n".join(lines)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def component_plan_label(row) -> str:
    if row.spec is not None and row.from_file:
        return f"{row.spec.backend} file ({Path(str(row.gguf_path)).name})"
    if row.spec is not None:
        opts = row.spec.options_dict
        extra = "".join(f" {k}={v}" for k, v in sorted(figures.normalized_options(row.spec.backend, opts).items()))
        return f"{row.spec.backend} {row.spec.quant_type}{extra}"
    if row.action == PREQUANTIZED:
        return "pre-quantized (as saved)"
    return f"unquantized ({row.load_dtype})"


def _plan_words(plan: Plan) -> str:
    quantized = [f"{r.name} {component_plan_label(r)}" for r in plan.modules() if r.action != KEEP]
    return "; ".join(quantized) if quantized else "no quantization"


def plan_key_of(plan: Plan, name: str) -> str:
    row = plan.components[name]
    spec = row.spec
    return figures.plan_key(
        plan.model,
        name,
        spec.backend if spec is not None else None,
        spec.quant_type if spec is not None else None,
        spec.options_dict if spec is not None else {},
        row.load_dtype,
    )


def measurable(plan: Plan) -> list[str]:
    """Components a one-step run calls through their forward: every model but the VAE."""
    return [r.name for r in plan.modules() if not is_autoencoder(r.class_name)]


def _input_problems(prompt, steps, measures, components, names) -> list[Problem]:
    problems = prompt_problems(prompt)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        problems.append(Problem("steps_invalid", "steps", f"{steps!r:.40} is not a number of steps", "1 to 200"))
    if measures not in MEASURES:
        problems.append(
            Problem(
                "measure_unknown", "measure", f"{measures!r:.40} is not a measure", "one of: " + ", ".join(MEASURES)
            )
        )
    if measures in (IMAGES, BOTH) and importlib.util.find_spec("torchmetrics") is None:
        problems.append(
            Problem(
                "metrics_missing",
                "measure",
                "comparing images needs torchmetrics (PSNR, SSIM), which is not installed",
                'pip install torchmetrics (in PipeQuant\'s requirements), or measure "components" only',
            )
        )
    return problems + _unmeasurable(components, names)


def _unmeasurable(components, names) -> list[Problem]:
    from ..suggest import did_you_mean

    return [
        Problem(
            "component_not_measurable",
            "components",
            f'"{name}" is not a component this check can measure (the VAE is compared through the images)',
            did_you_mean(name, names),
        )
        for name in components or ()
        if name not in names
    ]


def components_problems(model, components: str) -> list[Problem]:
    """The check's `components` text against the model's folder, before Run (no plan, no weights):
    its syntax, then each name a component the check can measure (a model, not the VAE)."""
    names, found = parse_components(components)
    if found:
        return found
    measurable_names = [c.name for c in model.components.values() if c.is_module and not is_autoencoder(c.class_name)]
    return _unmeasurable(names, measurable_names)


def _free_device_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (None elsewhere: a CPU reference runs from RAM as it is)."""
    if not device.startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def reference_offload(plan: Plan) -> str:
    """The reference's offload mode: the plan's own, or "model" when its weights would not fit the
    device with every component on it (the issue: the reference streams or offloads if it does not fit)."""
    if plan.offload != "none":
        return plan.offload
    free = _free_device_bytes(plan.device)
    if free is None:
        return plan.offload
    weights = estimate(plan)["total"]["bytes_after"]
    return "model" if weights > FIT_SHARE * free else plan.offload


# -- the figures cache (write side; the planner reads it) -------------------------------------------------
def _entry_path(where: Path, key: str) -> Path:
    return where / f"{key}{figures.SUFFIX}"


def cached_figure(where: Path | None, key: str) -> dict | None:
    if where is None:
        return None
    try:
        entry = read_json_object(_entry_path(where, key), limit=figures.MAX_ENTRY_BYTES)
    except FileProblem:
        return None
    if entry.get("written_by") != figures.WRITER or entry.get("format") != figures.FORMAT:
        return None
    return entry


def write_figure(where: Path | None, key: str, entry: dict) -> str | None:
    """Atomic write of one entry; never replaces a file this pack did not write. Returns a note on failure."""
    if where is None:
        return None
    path = _entry_path(where, key)
    try:
        where.mkdir(parents=True, exist_ok=True)
        if path.exists() and cached_figure(where, key) is None:
            return f"{path} exists and was not written by PipeQuant: left alone, figure not cached"
        fd, tmp = tempfile.mkstemp(prefix=".writing-", suffix=".tmp", dir=where)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"written_by": figures.WRITER, "format": figures.FORMAT, **entry}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        return f"figure not cached ({exc})"
    return None


# -- the check ------------------------------------------------------------------------------------------------
def check_quality(
    model: str,
    spec=None,
    *,
    roots: Iterable[Path],
    gguf_roots: Iterable[Path] = (),
    dtype: str = DEFAULT_DTYPE,
    device: str = "auto",
    offload: str = "none",
    prompt: str = "a photo of a cat",
    seed: int = 0,
    steps: int = 20,
    width: int = 1024,
    height: int = 1024,
    guidance_scale: float = 3.5,
    max_sequence_length: int = 0,
    measures: str = BOTH,
    components: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    cache_folder=_DEFAULT,
    disk_cache=None,
    component_cache=COMPONENT_CACHE,
    make_room: Callable[[Plan], None] | None = None,
) -> QualityReport:
    """Raises ValidationError for bad input before any weight is read. `make_room(plan)` runs before
    each load (the node frees ComfyUI's models there, as the Load node does)."""
    start = time.perf_counter()
    plan = prepare(
        model, spec, roots=roots, gguf_roots=gguf_roots, dtype=dtype, device=device, offload=offload
    ).plan_or_raise()
    reference_plan = prepare(model, None, roots=roots, dtype=dtype, device=device, offload=offload).plan_or_raise()
    offload_note = None
    if reference_offload(reference_plan) != offload:
        reference_plan = prepare(model, None, roots=roots, dtype=dtype, device=device, offload="model").plan_or_raise()
        offload_note = (
            f"the unquantized reference does not fit the free memory of {device}: it ran with model offload "
            "(each component on the device only while it runs; same numbers, slower)"
        )
    names = measurable(plan)
    problems = _input_problems(prompt, steps, measures, components, names) + image_size_problems(
        plan.model, width, height
    )
    if problems:
        raise ValidationError(problems)
    where = figures.folder() if cache_folder is _DEFAULT else cache_folder
    inputs = {
        "prompt": prompt,
        "seed": seed,
        "steps": steps,
        "width": width,
        "height": height,
        "guidance_scale": guidance_scale,
        "max_sequence_length": max_sequence_length,
    }
    report = QualityReport(plan.model.folder.name, _plan_words(plan), plan.dtype, inputs)
    if offload_note:
        report.notes.append(offload_note)
    want_components = measures in (COMPONENTS, BOTH)
    want_images = measures in (IMAGES, BOTH)
    chosen = list(components) if components else names
    keys = {n: plan_key_of(plan, n) for n in chosen}
    todo = []
    for name in chosen if want_components else ():
        hit = cached_figure(where, figures.entry_key(keys[name], inputs))
        if hit is not None:
            report.components[name] = {
                "plan": hit["plan"],
                "relative_error": float(hit["relative_error"]),
                "worst_layers": hit.get("worst_layers", []),
                "cached": True,
            }
        else:
            todo.append(name)
    if not todo and not want_images:
        report.seconds = time.perf_counter() - start
        return report
    sample = {
        "prompt": prompt,
        "guidance_scale": guidance_scale,
        "width": width,
        "height": height,
        "seed": seed,
        "max_sequence_length": max_sequence_length,
        "check_interrupt": check_interrupt,
    }
    reference_steps = steps if want_images else 1
    total = reference_steps + (steps if want_images else 0) + len(todo)
    done = 0

    def stepped(offset):
        def on_step(step, _total):
            if progress is not None:
                progress(offset + step, total)

        return on_step

    if make_room is not None:
        make_room(reference_plan)
    reference = load_plan(reference_plan, cache=None)  # not kept: the check must not fill the cache
    try:
        with capture_first_calls({n: reference.pipeline.components[n] for n in todo}) as calls:
            reference_images = generate(reference.pipeline, steps=reference_steps, on_step=stepped(done), **sample)
        done += reference_steps
        missing = [n for n in todo if n not in calls]
        if missing:
            raise ValidationError(
                [
                    Problem(
                        "component_not_called",
                        "components",
                        f"the pipeline never called {', '.join(missing)} through its forward in a run",
                        "measure the components it calls (the denoiser and the text encoders)",
                    )
                ]
            )
        reference_modules = {n: reference.pipeline.components[n] for n in todo}
    finally:
        reference.release("Plan Quality Check: reference run done")
        reference = None
    try:
        if make_room is not None:
            make_room(plan)
        quantized = load_plan(plan, cache=component_cache, disk_cache=disk_cache)
        if want_images:
            images = generate(quantized.pipeline, steps=steps, on_step=stepped(done), **sample)
            done += steps
            report.images = compare(reference_images, images)
            report.comparison = side_by_side(reference_images, images)
        for name in todo:
            if check_interrupt is not None:
                check_interrupt()
            with diffusers_context():
                result = measure(quantized.pipeline.components[name], calls[name], reference_modules[name])
            done += 1
            if progress is not None:
                progress(done, total)
            row = plan.components[name]
            entry = {
                "plan": component_plan_label(row),
                "relative_error": result.relative_error,
                "worst_layers": result.worst_layers,
                "cached": False,
            }
            report.components[name] = entry
            note = write_figure(
                where,
                figures.entry_key(keys[name], inputs),
                {
                    "plan_key": keys[name],
                    "model": plan.model.folder.name,
                    "component": name,
                    "plan": entry["plan"],
                    "load_dtype": row.load_dtype,
                    "relative_error": result.relative_error,
                    "worst_layers": result.worst_layers,
                    "inputs": inputs,
                    "versions": figures.library_versions(row.spec.backend if row.spec else None),
                    "measured_at": time.time(),
                },
            )
            if note:
                report.notes.append(note)
    finally:
        reference_modules = calls = None  # noqa: F841 - the reference weights go now
        free_memory()
    order = {n: i for i, n in enumerate(chosen)}
    report.components = dict(sorted(report.components.items(), key=lambda kv: order.get(kv[0], 0)))
    report.seconds = time.perf_counter() - start
    return report
