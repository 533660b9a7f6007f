"""Measuring what a plan costs: each component's error against the reference, and paired-seed images."""

from .quality import BOTH, COMPONENTS, MEASURES, OWN_PROBLEMS, check_quality, components_problems

__all__ = ["BOTH", "COMPONENTS", "MEASURES", "OWN_PROBLEMS", "check_quality", "components_problems"]
