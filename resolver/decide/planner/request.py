"""The planner's inputs as the node, the route and the command give them: checked, then planned."""

from __future__ import annotations

from pathlib import Path

from ...files.variant import normalize as normalize_variant
from ...problems import Problem, ValidationError, errors
from ..limits import frame_problems
from ..prepare import prepare
from . import AutoPlan, auto_plan
from .device import GIB, DeviceProfile, ProfileError, detect
from .search import GOALS

MAX_BUDGET_GB = 100_000
SIDE = (64, 8192)
MAX_BATCH = 64


def _bad(field: str, message: str, suggestion: str) -> ValidationError:
    return ValidationError([Problem(f"{field}_invalid", field, message, suggestion)])


def check_inputs(budget_gb, goal, width, height, batch_size) -> list[Problem]:
    problems = []
    if isinstance(budget_gb, bool) or not isinstance(budget_gb, (int, float)) or not 0 <= budget_gb <= MAX_BUDGET_GB:
        problems.append(
            Problem(
                "budget_invalid",
                "budget_gb",
                f"{budget_gb!r:.40} is not a budget in GiB",
                f"a number from 0 (detect the device's free memory) to {MAX_BUDGET_GB}",
            )
        )
    if goal not in GOALS:
        problems.append(Problem("goal_unknown", "goal", f"{goal!r:.40} is not a goal", "one of: " + ", ".join(GOALS)))
    for field, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not SIDE[0] <= value <= SIDE[1] or value % 8:
            problems.append(
                Problem(
                    f"{field}_invalid",
                    field,
                    f"{value!r:.40} is not an image {field}",
                    f"a multiple of 8 from {SIDE[0]} to {SIDE[1]}",
                )
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        problems.append(
            Problem(
                "batch_size_invalid",
                "batch_size",
                f"{batch_size!r:.40} is not a batch size",
                f"a whole number from 1 to {MAX_BATCH}",
            )
        )
    return problems


def profile_from(data) -> DeviceProfile:
    try:
        return DeviceProfile.from_dict(data)
    except ProfileError as exc:
        raise _bad(
            "device_profile",
            str(exc),
            '{"name": "RTX 4090", "total_gb": 24, "free_gb": 23, "compute_capability": [8, 9]}',
        ) from None


MAX_FRAMES = 1025  # the Sampler's and the Auto Plan node's widget maximum


def plan_for(
    folder: Path,
    *,
    budget_gb: float = 0,
    goal: str = "balanced",
    width: int = 1024,
    height: int = 1024,
    batch_size: int = 1,
    allow_offload: bool = True,
    profile: DeviceProfile | None = None,
    variant: str | None = None,
    num_frames: int = 1,
) -> AutoPlan:
    """Check the inputs, inspect the model (headers only; `variant`'s files where a component has
    them, as the Load node will read) and plan. Raises ValidationError for bad input, `NothingFits`
    when no plan fits."""
    problems = check_inputs(budget_gb, goal, width, height, batch_size)
    if not isinstance(allow_offload, bool):  # the route's JSON: "false" is a string, and truthy
        problems.append(
            Problem(
                "allow_offload_invalid",
                "allow_offload",
                f"{allow_offload!r:.40} is not true or false",
                "send a JSON boolean: true or false",
            )
        )
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
        problems.append(
            Problem(
                "frames_invalid",
                "num_frames",
                f"{num_frames!r:.40} is not a frame count",
                f"a whole number from 1 to {MAX_FRAMES}",
            )
        )
    if problems:
        raise ValidationError(problems)
    prepared = prepare(folder, variant=variant, plan=False)  # as the Load node checks it (a missing variant)
    wrong = errors(prepared.problems)
    if prepared.model is not None:
        wrong += frame_problems(prepared.model, num_frames)  # a video's frame rule (4k+1); nothing for images
    if wrong:
        raise ValidationError(wrong)
    model = prepared.model
    profile = profile or detect()
    budget = int(budget_gb * GIB) if budget_gb else None
    return auto_plan(
        model,
        profile,
        budget,
        goal,
        width=width,
        height=height,
        batch_size=batch_size,
        allow_offload=allow_offload,
        variant=normalize_variant(variant),
        num_frames=num_frames,
    )
