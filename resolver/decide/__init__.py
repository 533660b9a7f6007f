"""Deciding before a weight is read: validation, the per-component plan, estimates, the auto planner."""

from .validate import validate
