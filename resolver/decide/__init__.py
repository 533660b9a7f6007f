"""Deciding before a weight is read: validation, the per-component plan, estimates, the auto planner."""

from .estimate import component_estimate, estimate
from .footprint import compute_shape_facts
from .limits import VIDEO_INPUTS, frame_problems, image_size_problems, is_video, prompt_problems, video_inputs
from .plan import KEEP, QUANTIZE, Plan
from .planner import NothingFits
from .planner.figures import ENV_FOLDER, library_versions
from .planner.request import check_inputs, plan_for, profile_from
from .planner.search import GOALS
from .prepare import files_key, first_use_notes, prepare
from .validate import validate

__all__ = [
    "VIDEO_INPUTS",
    "ENV_FOLDER",
    "GOALS",
    "KEEP",
    "NothingFits",
    "Plan",
    "QUANTIZE",
    "check_inputs",
    "component_estimate",
    "compute_shape_facts",
    "estimate",
    "files_key",
    "first_use_notes",
    "frame_problems",
    "image_size_problems",
    "is_video",
    "library_versions",
    "plan_for",
    "prepare",
    "profile_from",
    "prompt_problems",
    "validate",
    "video_inputs",
]
