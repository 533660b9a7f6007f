""" "Did you mean" suggestions for names a user typed."""

from __future__ import annotations

import difflib
from typing import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    name = name if isinstance(name, str) else str(name)
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """'did you mean "x"? Valid: a, b, c' — always lists what is valid."""
    candidates = list(candidates)
    guess = closest(name, candidates)
    valid = ", ".join(candidates) if candidates else "(none)"
    return (f'did you mean "{guess}"? ' if guess else "") + f"Valid: {valid}."
