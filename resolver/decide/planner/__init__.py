"""Auto plan: choose each component's quantization to fit a device and budget, and say why.

``auto_plan(model, profile, budget_bytes, goal, ...)`` reads only headers and configs. It returns
an `AutoPlan` whose `spec` is the same `ComponentMap` a chain of Per-Component Maps produces, so
it loads through the ordinary path; or raises `NothingFits` naming the smallest reachable peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from ...files import shape_store
from ...files.inspect_model import ModelInfo
from ...known import measured
from ...links.spec import BackendSpec, ComponentMap
from ...problems import Problem, ValidationError
from ..limits import temporal_factor
from .candidates import (
    DENOISER,
    VAE,
    Choice,
    Unavailable,
    component_choices,
    load_dtype_for,
    roles,
    with_measured_errors,
)
from .device import GIB, DeviceProfile, ProfileError, detect
from .search import GOALS, OFFLOAD_ORDER, Peak, error_score, goal_key, peak, search, smallest, speed_of
from .working import WorkingMemory, working_memory

MEASURED_GOALS = ("quality", "balanced")  # goals ranked by error: a measured figure replaces the proxy there
ESTIMATE_NOTE = (
    "Peak = weights on the device + the denoiser's activations or the VAE decode, whichever is larger; "
    "the working memory is an estimate per model family (resolver/data/measurements.json)."
)


ERROR_MARK = {"measured": " m", "proxy": " p", "reference": "  ", None: "  "}
ERROR_LEGEND = (
    "error: m = measured on this model (Plan Quality Check), p = proxy (one quantized Linear on Gaussian "
    "data, resolver/data/measurements.json)"
)


def _error_source(c: Choice) -> str | None:
    """Where a choice's error figure comes from: measured on this model, the proxy, or none (reference)."""
    if c.error is None:
        return None
    if c.error_measured:
        return "measured"
    return "reference" if c.backend is None and not c.prequantized else "proxy"


class NothingFits(ValueError):
    def __init__(self, message: str, smallest_peak: int, mode: str):
        super().__init__(message)
        self.smallest_peak, self.mode = smallest_peak, mode


@dataclass
class AutoPlan:
    model: ModelInfo
    profile: DeviceProfile
    goal: str
    budget: int
    dtype: str
    offload: str
    choices: dict[str, Choice]
    roles: dict[str, str]
    peak: Peak
    working: WorkingMemory
    reasons: dict[str, str]
    rejected: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> ComponentMap:
        return ComponentMap.make(
            {
                n: (BackendSpec.make(c.backend, c.quant_type, "auto", c.options_dict) if c.backend else None)
                for n, c in self.choices.items()
                if not c.prequantized
            }
        )

    @property
    def fits(self) -> bool:
        return self.peak.total <= self.budget

    def to_json(self) -> dict:
        """The command's --json shape (issue 12), plus what the editor shows."""
        return {
            "components": {
                n: {
                    "backend": c.backend,
                    "quant_type": c.quant_type,
                    "options": c.options_dict,
                    "predicted_bytes": c.bytes,
                    "speed": c.speed,
                    "error_proxy": c.error,  # the figure ranked: measured where error_source says so
                    "error_source": _error_source(c),
                    "unquantized_modules": list(c.kept_linears),
                    "role": self.roles.get(n),
                    "why": self.reasons[n],
                }
                for n, c in self.choices.items()
            },
            "offload": self.offload,
            "dtype": self.dtype,
            "predicted_peak_bytes": self.peak.total,
            "predicted_resident_bytes": sum(c.bytes for c in self.choices.values()),
            "working_bytes": self.peak.working,
            "budget_bytes": self.budget,
            "fits": self.fits,
            "goal": self.goal,
            "device": self.profile.describe(),
            "working_memory": self.working.describe(),
            "spec": self.spec.to_dict(),
            "rejected": self.rejected,
            "notes": self.notes,
            "variant": self.model.variant,
        }

    def table(self, verbose: bool = True) -> str:
        """The plan as text; `verbose=False` sums the rejected choices up by reason (the CLI's
        default: 59 lines under a 4-row answer hid it), True lists each."""

        def gib(b):
            return f"{b / GIB:.2f}"

        lines = [
            (
                f"Auto plan for {self.model.folder.name} on {self.profile.name} — goal {self.goal}, budget "
                f"{gib(self.budget)} GiB, load dtype {self.dtype}, offload {self.offload}"
                + (f", weights from the {self.model.variant} files" if self.model.variant else "")
            ),
            f"{'component':<16} {'choice':<34} {'GiB':>7} {'speed':>6} {'error':>8}  why",
        ]
        for n, c in self.choices.items():
            speed = "—" if self.roles.get(n) != DENOISER else ("?" if c.speed is None else f"{c.speed:.2f}")
            err = "?" if c.error is None else f"{c.error:.3f}" + ERROR_MARK[_error_source(c)]
            lines.append(f"{n:<16} {c.label:<34} {gib(c.bytes):>7} {speed:>6} {err:>8}  {self.reasons[n]}")
        lines.append(
            f"predicted peak {gib(self.peak.total)} GiB of {gib(self.budget)} GiB "
            f"(weights {gib(self.peak.resident)} + working {gib(self.peak.working)}, on the device: "
            f"{self.peak.where}) — an estimate"
        )
        lines.append(ERROR_LEGEND)
        lines += [f"note: {n}" for n in self.notes]
        if self.rejected and verbose:
            lines.append(f"rejected ({len(self.rejected)}):")
            lines += [f"  {r['component']}: {r['choice']} — {r['reason']}" for r in self.rejected]
        elif self.rejected:
            lines.append(f"rejected ({len(self.rejected)}), most common reasons first (--verbose lists each):")
            lines += [f"  {n} × {reason}" for reason, n in rejected_reasons(self.rejected)[:REASONS_SHOWN]]
            rest = len(rejected_reasons(self.rejected)) - REASONS_SHOWN
            if rest > 0:
                lines.append(f"  … and {rest} other reason{'s' if rest > 1 else ''}")
        return "\n".join(lines)


REASONS_SHOWN = 5


def rejected_reasons(rejected: list[dict]) -> list[tuple[str, int]]:
    """(reason, how many choices) by count: a reason without its numbers ("more error (0.092 vs
    0.000)" counts as "more error")."""
    counts: dict[str, int] = {}
    for r in rejected:
        reason = r["reason"].split(" (")[0]
        counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _offload_ok(choice: Choice, mode: str) -> str | None:
    """Why a quantized choice cannot run in an offload mode, asked of validation (None: it can)."""
    if choice.backend is None or mode == "none":
        return None
    return _offload_problem(choice.backend, choice.quant_type, mode)


@cache
def _offload_problem(backend_name: str, quant_type: str, mode: str) -> str | None:
    from ...known import catalogue

    backend = catalogue.get_backend(backend_name)
    if backend.quant_type(quant_type).needs_cuda:
        return f"{backend.name} {quant_type} is quantized on the GPU and cannot be offloaded to the CPU"
    if mode == "sequential" and not getattr(backend, "sequential_offload", True):
        return (
            f"sequential CPU offload fails with {getattr(backend, 'family_name', backend.label)} "
            f'("{getattr(backend, "sequential_offload_error", "")}")'
        )
    return None


def _budget_problem(message: str, suggestion: str) -> ValidationError:
    return ValidationError([Problem("budget_invalid", "budget_gb", message, suggestion)])


@shape_store.batched()  # the facts it computes, written once per shape at the end
def auto_plan(
    model: ModelInfo,
    profile: DeviceProfile,
    budget_bytes: int | None = None,
    goal: str = "balanced",
    *,
    width: int = 1024,
    height: int = 1024,
    batch_size: int = 1,
    allow_offload: bool = True,
    variant: str | None = None,
    num_frames: int = 1,
) -> AutoPlan:
    if goal not in GOALS:
        raise ValidationError(
            [Problem("goal_unknown", "goal", f'unknown goal "{goal}"', "one of: " + ", ".join(GOALS))]
        )
    budget = profile.default_budget() if not budget_bytes else int(budget_bytes)
    if budget <= 0:
        raise _budget_problem(
            f"the budget is {budget / GIB:.2f} GiB: nothing can fit",
            "give a budget in GiB, or free memory on the device",
        )
    dtype = load_dtype_for(profile)
    role = roles(model)
    configs = {r: model.components[n].config_dict for n, r in role.items()}
    wm = working_memory(
        model.pipeline_class,
        width,
        height,
        batch_size,
        configs.get(DENOISER),
        configs.get(VAE),
        num_frames=num_frames,
        temporal=temporal_factor(model),
    )
    per, unavailable = {}, []
    for name in model.module_names:
        cs, un = component_choices(model, name, profile, dtype, variant)
        per[name] = with_measured_errors(model, cs, dtype) if goal in MEASURED_GOALS else cs
        unavailable += un
    modes = OFFLOAD_ORDER if allow_offload and not profile.is_cpu else ("none",)
    per_mode = {}
    incompatible = []
    for mode in modes:
        per_mode[mode] = {}
        for n, cs in per.items():
            ok = []
            for c in cs:
                why = _offload_ok(c, mode)
                if why:
                    incompatible.append((mode, c, why))
                else:
                    ok.append(c)
            per_mode[mode][n] = ok
    best = None
    for allow_deprecated in (False, True):
        for mode in modes:
            pools = {n: [c for c in cs if allow_deprecated or not c.deprecated] for n, cs in per_mode[mode].items()}
            best = search(pools, role, goal, budget, wm, modes=(mode,))
            if best is not None:
                break
        if best is not None:
            break
    if best is None:
        raise _nothing_fits(per_mode, role, wm, budget, modes, allow_offload, profile, width, height)
    chosen = {c.component: c for c in best.combo}
    plan = AutoPlan(model, profile, goal, budget, dtype, best.offload, chosen, role, best.peak, wm, {}, [], [])
    plan.reasons = {n: _why(plan, c) for n, c in chosen.items()}
    plan.rejected = _rejected(plan, per, unavailable, incompatible, per_mode[best.offload])
    plan.notes = _notes(plan, wm)
    return plan


def _why(plan: AutoPlan, c: Choice) -> str:
    role = plan.roles.get(c.component)
    if c.prequantized:
        return "saved quantized: loads as it is"
    gen = measured.generation(plan.profile.compute_capability)
    speed = (
        ""
        if role != DENOISER
        else (f", speed {c.speed:.2f}x bf16 on {gen}" if c.speed is not None else f", speed on {gen} not measured")
    )
    err = "" if c.error is None else f", error {c.error:.3f} ({_error_source(c)})"
    if c.backend is None:
        if role == VAE:
            return f"kept in {plan.dtype}: the VAE is the component quantization hurts most"
        return f"kept in {plan.dtype}: fits the budget without quantization"
    what = {
        "quality": "least error that fits",
        "speed": "fastest that fits",
        "smallest": "smallest footprint",
        "balanced": "best balance of error and speed that fits",
    }[plan.goal]
    if plan.goal in ("quality", "balanced") and role != DENOISER:
        what = "needed to fit: the budget cannot hold it unquantized" if plan.goal == "quality" else what
    unknown = " (error not measured)" if c.error is None else ""
    kept = ""
    if c.kept_linears:
        tails = sorted({n.split(".")[-1] for n in c.kept_linears})
        kept = f"; the quantizer keeps {len(c.kept_linears)} Linear layers unquantized ({', '.join(tails[:3])})"
    return f"{c.label}: {what}{speed}{err}{unknown}{kept}"


def _rejected(plan: AutoPlan, per, unavailable: list[Unavailable], incompatible, pool) -> list[dict]:
    out = [
        {"component": u.component, "choice": f"{u.backend} {u.quant_type or ''}".strip(), "reason": u.reason}
        for u in unavailable
    ]
    out += [
        {"component": c.component, "choice": c.label, "reason": f"{why} (offload {mode})"}
        for mode, c, why in incompatible
        if mode == plan.offload
    ]
    base = dict(plan.choices)
    for name, cs in per.items():
        chosen = base[name]
        for c in cs:
            if c == chosen or c not in pool.get(name, []):
                continue
            combo = tuple(c if n == name else base[n] for n in base)
            pk = peak(combo, plan.roles, plan.offload, plan.working)
            if pk.total > plan.budget:
                reason = f"over budget (peak {pk.total / GIB:.2f} GiB > {plan.budget / GIB:.2f} GiB)"
            elif c.deprecated:
                reason = "deprecated in diffusers: offered only when nothing else fits"
            else:
                reason = _worse(plan, combo, c, chosen)
            out.append({"component": name, "choice": c.label, "reason": reason})
    return out


def _worse(plan: AutoPlan, combo, c: Choice, chosen: Choice) -> str:
    if plan.roles.get(c.component) == DENOISER:
        s_new, s_old = speed_of(combo, plan.roles), speed_of(tuple(plan.choices.values()), plan.roles)
        if s_new < s_old and plan.goal in ("speed", "balanced"):
            return (
                f"slower ({'unmeasured' if c.speed is None else f'{c.speed:.2f}x'} vs "
                f"{'unmeasured' if chosen.speed is None else f'{chosen.speed:.2f}x'} bf16)"
            )
    e_new, e_old = error_score(combo, plan.roles), error_score(tuple(plan.choices.values()), plan.roles)
    if e_new > e_old:
        if c.error is None:
            return "error not measured: ranked below measured choices"
        return f"more error ({c.error:.3f} vs {chosen.error or 0:.3f})"
    if c.bytes > chosen.bytes:
        return f"larger ({c.bytes / GIB:.2f} vs {chosen.bytes / GIB:.2f} GiB) for no gain"
    return f"ranked lower for goal {plan.goal}"


def _notes(plan: AutoPlan, wm: WorkingMemory) -> list[str]:
    notes = [ESTIMATE_NOTE]
    if plan.offload != "none":
        notes.append(
            f'set offload = "{plan.offload}" on Load Quantized Pipeline: nothing fits with every component '
            "on the device" + (" or with model offload" if plan.offload == "sequential" else "")
        )
    if wm.vae_decode > plan.peak.working or (plan.peak.working == wm.vae_decode and wm.vae_decode > wm.denoiser):
        notes.append(
            f"the VAE decode ({wm.vae_decode / GIB:.2f} GiB) sets the peak: VAE tiling "
            f"(pipe.vae.enable_tiling()) would cut it to about {wm.vae_decode_tiled / GIB:.2f} GiB"
        )
    unknown = [n for n, c in plan.choices.items() if c.backend and (c.speed is None and plan.roles.get(n) == DENOISER)]
    if unknown:
        gen = measured.generation(plan.profile.compute_capability)
        notes.append(
            f"speed on {gen} not measured for {', '.join(plan.choices[n].label for n in unknown)}: "
            "ranked by error instead"
        )
    return notes


def _nothing_fits(per_mode, role, wm, budget, modes, allow_offload, profile, width, height) -> NothingFits:
    pk, mode = smallest(per_mode[modes[-1]], role, wm, modes=modes)
    tiled, _ = smallest(per_mode[modes[-1]], role, wm, modes=modes, tiled=True)
    fixes = [f"a budget of at least {pk.total / GIB:.2f} GiB"]
    if not allow_offload and not profile.is_cpu:
        with_offload, _ = smallest(per_mode[modes[-1]], role, wm)
        fixes.append(f"allowing offload (smallest then {with_offload.total / GIB:.2f} GiB)")
    if tiled.total < pk.total:
        fixes.append(f"VAE tiling (smallest then {tiled.total / GIB:.2f} GiB)")
    if pk.working > 0:
        fixes.append(f"a lower resolution than {width}x{height} (working memory {pk.working / GIB:.2f} GiB of it)")
    message = (
        f"no plan fits {budget / GIB:.2f} GiB: the smallest reachable peak is {pk.total / GIB:.2f} GiB "
        f"(offload {mode}, weights {pk.resident / GIB:.2f} + working {pk.working / GIB:.2f} GiB). "
        f"What would make it fit: {'; '.join(fixes)}"
    )
    return NothingFits(message, pk.total, mode)


__all__ = [
    "GOALS",
    "AutoPlan",
    "DeviceProfile",
    "NothingFits",
    "ProfileError",
    "auto_plan",
    "detect",
    "goal_key",
    "peak",
    "search",
]
