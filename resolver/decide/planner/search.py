"""Pick the best per-component combination that fits: on the device first, then model offload,
then sequential offload; a deprecated backend only when nothing else fits anywhere."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .candidates import DENOISER, IMPORTANCE, VAE, Choice
from .working import WorkingMemory

GOALS = ("quality", "balanced", "speed", "smallest")
OFFLOAD_ORDER = ("none", "model", "sequential")
UNKNOWN_ERROR = 1.0  # an unmeasured error ranks below every measured one
UNKNOWN_SPEED = 0.0  # an unmeasured speed ranks below every measured one
BALANCE = 0.1  # balanced: error points one unit of (1/speed - 1) is worth


@dataclass(frozen=True)
class Peak:
    total: int
    resident: int  # weights on the device at the peak
    working: int  # activations / decode at the peak
    where: str  # what is on the device at the peak


def peak(
    combo: tuple[Choice, ...], roles: dict[str, str], offload: str, wm: WorkingMemory, tiled: bool = False
) -> Peak:
    vae = wm.vae_decode_tiled if tiled else wm.vae_decode

    def work(c: Choice) -> int:
        role = roles.get(c.component)
        return wm.denoiser if role == DENOISER else vae if role == VAE else 0

    if offload == "none":
        resident = sum(c.bytes for c in combo)
        working = max(wm.denoiser, vae)
        return Peak(resident + working, resident, working, "every component")
    size = (lambda c: c.bytes) if offload == "model" else (lambda c: c.largest_tensor)
    top = max(combo, key=lambda c: size(c) + work(c))
    where = top.component if offload == "model" else f"one layer of {top.component}"
    return Peak(size(top) + work(top), size(top), work(top), where)


def error_score(combo, roles) -> float:
    return sum(IMPORTANCE[roles[c.component]] * (UNKNOWN_ERROR if c.error is None else c.error) for c in combo)


def speed_of(combo, roles) -> float:
    """The denoiser's speed factor: it runs every step; the encoders run once."""
    for c in combo:
        if roles.get(c.component) == DENOISER:
            return UNKNOWN_SPEED if c.speed is None else c.speed
    return 1.0


def goal_key(goal: str, combo, roles, pk: Peak) -> tuple:
    err, speed = error_score(combo, roles), speed_of(combo, roles)
    if goal == "quality":
        return (round(err, 9), -speed, pk.total)
    if goal == "speed":
        return (-speed, round(err, 9), pk.total)
    if goal == "smallest":
        return (pk.total, round(err, 9), -speed)
    slowness = (1 / speed - 1) if speed > 0 else 1 / 0.05
    return (round(err + BALANCE * slowness, 9), pk.total)


def _dominated(a: Choice, b: Choice, is_denoiser: bool) -> bool:
    """b is at least as good as a on every axis any goal or offload mode looks at, and better on one."""
    ea = UNKNOWN_ERROR if a.error is None else a.error
    eb = UNKNOWN_ERROR if b.error is None else b.error
    axes_b_better = [b.bytes <= a.bytes, b.largest_tensor <= a.largest_tensor, eb <= ea, b.deprecated <= a.deprecated]
    if is_denoiser:
        sa = UNKNOWN_SPEED if a.speed is None else a.speed
        sb = UNKNOWN_SPEED if b.speed is None else b.speed
        axes_b_better.append(sb >= sa)
        strictly = (b.bytes, b.largest_tensor, eb, b.deprecated, -sb) != (
            a.bytes,
            a.largest_tensor,
            ea,
            a.deprecated,
            -sa,
        )
    else:
        strictly = (b.bytes, b.largest_tensor, eb, b.deprecated) != (a.bytes, a.largest_tensor, ea, a.deprecated)
    return all(axes_b_better) and strictly


def pareto(choices: list[Choice], is_denoiser: bool) -> list[Choice]:
    """Drop choices another one beats on every axis: the optimum under every goal survives."""
    kept = []
    for i, a in enumerate(choices):
        if any(_dominated(a, b, is_denoiser) for j, b in enumerate(choices) if j != i):
            continue
        if any(_same(a, k, is_denoiser) for k in kept):
            continue  # identical figures: the catalogue's first one stands for both
        kept.append(a)
    return kept


def _same(a: Choice, b: Choice, is_denoiser: bool) -> bool:
    same = (a.bytes, a.largest_tensor, a.error, a.deprecated) == (b.bytes, b.largest_tensor, b.error, b.deprecated)
    return same and (not is_denoiser or a.speed == b.speed)


@dataclass(frozen=True)
class Best:
    combo: tuple[Choice, ...]
    offload: str
    peak: Peak
    key: tuple


def search(
    per_component: dict[str, list[Choice]], roles, goal: str, budget: int, wm: WorkingMemory, modes=OFFLOAD_ORDER
) -> Best | None:
    names = list(per_component)
    pruned = {n: pareto(per_component[n], roles.get(n) == DENOISER) for n in names}
    for allow_deprecated in (False, True):
        pools = [[c for c in pruned[n] if allow_deprecated or not c.deprecated] for n in names]
        for mode in modes:
            best = None
            for combo in itertools.product(*pools):
                pk = peak(combo, roles, mode, wm)
                if pk.total > budget:
                    continue
                key = goal_key(goal, combo, roles, pk)
                if best is None or key < best.key:
                    best = Best(combo, mode, pk, key)
            if best is not None:
                return best
    return None


def smallest(
    per_component: dict[str, list[Choice]], roles, wm: WorkingMemory, modes=OFFLOAD_ORDER, tiled: bool = False
) -> tuple[Peak, str]:
    """The smallest reachable peak and its offload mode (for the "nothing fits" message)."""
    best = None
    for mode in modes:
        combo = tuple(
            min(cs, key=lambda c: c.bytes if mode != "sequential" else c.largest_tensor)
            for cs in per_component.values()
        )
        pk = peak(combo, roles, mode, wm, tiled)
        if best is None or pk.total < best[0].total:
            best = (pk, mode)
    return best
