"""Where the pack keeps what it computed for the user (quantized components, measured figures, shape
facts): the folder a setting names, nothing when the setting turns it off, else a folder of its own
under the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path

#: what turns a folder setting off (PIPEQUANT_DISK_CACHE=off, PIPEQUANT_HF_CACHE=no, ...).
OFF_WORDS = ("off", "0", "false", "no", "none")


def is_off(raw: str) -> bool:
    return raw.strip().lower() in OFF_WORDS


def user_folder(name: str) -> Path:
    """~/.cache/pipequant/<name> ($XDG_CACHE_HOME honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pipequant" / name


def configured(env: str, default: Path | None) -> Path | None:
    """$env when set (None when it says off), else `default`."""
    raw = os.environ.get(env, "").strip()
    if is_off(raw):
        return None
    return Path(raw).expanduser() if raw else default
