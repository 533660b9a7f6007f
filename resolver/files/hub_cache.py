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

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..safe_files import FileProblem, read_bytes
from ..user_cache import is_off
from .roots import INDEX, Root, contained

ENV_VAR = "PIPEQUANT_HF_CACHE"
REPO_PREFIX = "models--"
_warned: set[str] = set()  # PIPEQUANT_HF_CACHE values already reported as not a folder
MAX_REF_BYTES = 256  # a revision is a 40-character commit hash (or a short branch-like name)


def cache_dir() -> Path | None:
    """The hub cache folder to read, or None when turned off or absent."""
    explicit = os.environ.get(ENV_VAR, "").strip()
    if is_off(explicit):
        return None
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir() and explicit not in _warned:  # said once, not at every model list
            _warned.add(explicit)
            logging.getLogger("pipequant").warning(
                "PipeQuant: %s=%r is not a folder; the Hugging Face cache is not read (use a folder, or off)",
                ENV_VAR,
                explicit[:200],
            )
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


def read_ref(repo: Path) -> str:
    """The revision `refs/main` names ("" when there is none), read like every other file: a regular
    file (not a link, FIFO or device), inside the repo folder, bounded, UTF-8. Else FileProblem."""
    ref = repo / "refs" / "main"
    if not os.path.lexists(ref):
        return ""
    if os.path.islink(ref) or os.path.islink(ref.parent) or not contained(ref, repo):
        raise FileProblem(
            "model_outside_roots",
            ref,
            f"{repo.name}/refs/main is a link; the hub writes it as a plain file",
            "delete the repo from the Hugging Face cache and download it again",
        )
    try:
        raw = read_bytes(ref, MAX_REF_BYTES)  # regular files only, opened without blocking
    except FileProblem as exc:  # "main is a named pipe": say which main
        raise FileProblem(exc.code, ref, f"{repo.name}/refs/{exc}", exc.suggestion) from None
    try:
        rev = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FileProblem(
            "ref_invalid",
            ref,
            f"{repo.name}/refs/main is not text (not UTF-8): not a revision",
            "delete the repo from the Hugging Face cache and download it again",
        ) from None
    if not rev or "/" in rev or "\\" in rev or rev in (".", "..") or not rev.isprintable():
        raise FileProblem(
            "ref_invalid",
            ref,
            f"{repo.name}/refs/main does not name a revision ({ascii(rev)[:60]})",
            "delete the repo from the Hugging Face cache and download it again",
        )
    return rev


def _snapshot(repo: Path) -> Path | None:
    """The revision refs/main names, else the most recently written snapshot. A refs/main that
    cannot be read safely raises FileProblem (the repo is refused, with that reason)."""
    snapshots = repo / "snapshots"
    rev = read_ref(repo)
    if rev and (snapshots / rev).is_dir() and not (snapshots / rev).is_symlink():
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

    def _repos(self) -> dict[str, Path | FileProblem]:
        """repo name -> its snapshot folder, for snapshots that hold a diffusers pipeline; or the
        FileProblem that refuses the repo (an unreadable refs/main)."""
        out: dict[str, Path | FileProblem] = {}
        try:
            entries = sorted(self.path.iterdir())
        except OSError:
            return out
        for repo in entries:
            name = _repo_name(repo)
            if name is None or repo.is_symlink() or not repo.is_dir():
                continue
            try:
                snapshot = _snapshot(repo)
            except FileProblem as exc:
                if os.path.isdir(repo / "snapshots"):
                    out[name] = exc
                continue
            if snapshot is not None and os.path.lexists(snapshot / INDEX):
                out[name] = snapshot
        return out

    def locate(self, name: str) -> Path | None:
        found = self._repos().get(name)
        if isinstance(found, FileProblem):
            return found.path.parent.parent  # the repo folder: vet() says why it is refused
        return found

    def candidates(self):
        for name, found in sorted(self._repos().items()):
            yield name, (found.path.parent.parent if isinstance(found, FileProblem) else found)

    def vet(self, folder: Path) -> None:
        """A repo folder handed out in place of a snapshot is one whose refs/main was refused."""
        if Path(folder).parent == self.path:
            read_ref(Path(folder))
            raise FileProblem("model_not_found", folder, f"{Path(folder).name} has no readable snapshot")

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
