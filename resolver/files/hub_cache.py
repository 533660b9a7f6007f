"""The Hugging Face hub cache as a read-only model root: pipelines users already downloaded.

Layout (huggingface_hub): `<cache>/models--org--name/snapshots/<rev>/<files>`, every file a link
into the same repo's `blobs/` (`../../blobs/<hash>`), `refs/main` naming the current revision.
A snapshot is listed by its repo name (`org/name`). Its links are followed only when they end,
as regular files, inside that repo's own `blobs/`; any other link (out of the cache, into another
repo, a linked folder) refuses the whole snapshot, as the ordinary roots refuse links that leave
them. Nothing is ever written here (saves go to the first ordinary model folder).

On by default when the cache exists. Where: $PIPEQUANT_HF_CACHE, else $HF_HUB_CACHE, else
$HF_HOME/hub, else ~/.cache/huggingface/hub. Off: PIPEQUANT_HF_CACHE=off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .roots import INDEX, Root

ENV_VAR = "PIPEQUANT_HF_CACHE"
OFF = ("off", "0", "false", "no", "none")
REPO_PREFIX = "models--"


def cache_dir() -> Path | None:
    """The hub cache folder to read, or None when turned off or absent."""
    explicit = os.environ.get(ENV_VAR, "").strip()
    if explicit.lower() in OFF:
        return None
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("HF_HUB_CACHE", "").strip():
        path = Path(os.environ["HF_HUB_CACHE"].strip()).expanduser()
    elif os.environ.get("HF_HOME", "").strip():
        path = Path(os.environ["HF_HOME"].strip()).expanduser() / "hub"
    else:
        path = Path.home() / ".cache" / "huggingface" / "hub"
    return path if path.is_dir() else None


def default_root() -> list[HubCacheRoot]:
    """[the hub cache root] when there is one, else []: to append to the model roots."""
    folder = cache_dir()
    return [HubCacheRoot(folder)] if folder is not None else []


def _repo_name(folder: Path) -> str | None:
    """`models--org--name` -> `org/name` (models without an org: `name`)."""
    if not folder.name.startswith(REPO_PREFIX):
        return None
    parts = folder.name[len(REPO_PREFIX) :].split("--")
    if not 1 <= len(parts) <= 2 or not all(parts):
        return None
    return "/".join(parts)


def _snapshot(repo: Path) -> Path | None:
    """The revision refs/main names, else the most recently written snapshot."""
    snapshots = repo / "snapshots"
    try:
        rev = (repo / "refs" / "main").read_text().strip()
    except OSError:
        rev = ""
    if rev and "/" not in rev and rev not in (".", "..") and (snapshots / rev).is_dir():
        return snapshots / rev
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


@dataclass(frozen=True)
class HubCacheRoot(Root):
    """A read-only model root whose pipelines are hub-cache snapshots, named `org/name`."""

    read_only: bool = True

    def __str__(self) -> str:
        return f"{self.path} (Hugging Face cache)"

    def _repos(self) -> dict[str, Path]:
        """repo name -> its snapshot folder, for snapshots that hold a diffusers pipeline."""
        out: dict[str, Path] = {}
        try:
            entries = sorted(self.path.iterdir())
        except OSError:
            return out
        for repo in entries:
            name = _repo_name(repo)
            if name is None or repo.is_symlink() or not repo.is_dir():
                continue
            snapshot = _snapshot(repo)
            if snapshot is not None and os.path.lexists(snapshot / INDEX):
                out[name] = snapshot
        return out

    def locate(self, name: str) -> Path | None:
        return self._repos().get(name)

    def candidates(self):
        yield from sorted(self._repos().items())

    def allows_link(self, link: Path, target: Path) -> bool:
        """A link in `models--org--name/snapshots/<rev>/` may end only at a regular file inside
        that same repo's real (not linked) `blobs/` folder."""
        try:
            rel = Path(link).relative_to(self.path)
        except ValueError:
            return False
        if len(rel.parts) < 4 or rel.parts[1] != "snapshots" or _repo_name(self.path / rel.parts[0]) is None:
            return False
        blobs = self.path / rel.parts[0] / "blobs"
        if blobs.is_symlink() or not blobs.is_dir():
            return False
        real_blobs = Path(os.path.realpath(blobs))
        return target.parent == real_blobs and target.is_file() and not target.is_symlink()
