"""Model roots: the only folders PipeQuant reads from, and the one check that keeps it inside them.

Pipelines and GGUF files are chosen by *name* from the configured roots, never by free path. Every
path read is checked by `contained` after following links: inspection, validation, the editor's
routes, the estimate and the load all go through it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..problems import Problem, ValidationError
from ..safe_files import FileProblem, os_problem, regular_stat
from ..suggest import did_you_mean

MODELS_ENV = "PIPEQUANT_MODELS"
GGUF_ENV = "PIPEQUANT_GGUF"
MAX_DEPTH = 2  # a pipeline is "name" or "org/name" under a root
MAX_NAME = 255  # one path part, as file systems allow
MAX_PATH = 1024
MAX_ENTRIES = 50_000  # files + folders in one pipeline folder (a real one has < 100)
INDEX = "model_index.json"
# One part of a name: no separators, no control characters, not "." or ".." (checked apart).
_PART = re.compile(r"[^/\\\x00-\x1f\x7f]+")


def env_roots(var: str = MODELS_ENV) -> list[Path]:
    """The folders listed in an environment variable, `os.pathsep`-separated."""
    return [Path(p) for p in os.environ.get(var, "").split(os.pathsep) if p]


@dataclass(frozen=True)
class Root:
    """A configured folder. A plain model folder allows nothing outside what it contains."""

    path: Path
    read_only: bool = False

    def allows_link(self, link: Path, target: Path) -> bool:
        """Whether `link`, inside this root, may lead to `target`, outside the folder being read.
        Never, for a model folder. The place for a root with its own rule (the Hugging Face hub
        cache: a snapshot's links into the same repo's blobs/ folder, and nowhere else)."""
        return False

    # A root whose names are not its sub-folders (the Hugging Face hub cache: `org/name` stands
    # for `models--org--name/snapshots/<rev>`) overrides these two.
    def locate(self, name: str) -> Path | None:
        """The folder pipeline `name` stands for under this root."""
        return self.path / name

    def vet(self, folder: Path) -> None:
        """Raise FileProblem if this root refuses `folder` for a reason of its own (the hub cache:
        an unreadable refs/main). Nothing, for a model folder."""

    def candidates(self) -> Iterator[tuple[str, Path]]:
        """(name, folder) of every folder holding a model_index.json, before any check."""
        for index in (
            sorted(self.path.glob(INDEX))
            + sorted(self.path.glob("*/" + INDEX))
            + sorted(self.path.glob("*/*/" + INDEX))
        ):
            if index.parent != self.path:
                yield index.parent.relative_to(self.path).as_posix(), index.parent


# Pipeline folders found through a root with its own link rule, so that every later walk of the
# folder (inspection, the estimate, the load) applies that rule without being handed the root.
_VOUCHED: dict[Path, Root] = {}


def as_root(root: Root | Path | str) -> Root:
    return root if isinstance(root, Root) else Root(Path(root))


# Roots with their own link rule (the hub cache), so that a pipeline folder inspected by path alone
# (inspect_model(folder)) is walked under the rule of the root that holds it.
LINK_ROOTS: list[Root] = []


def root_holding(folder: Path | str) -> Root | None:
    """The registered link-rule root that `folder` lies in (by its path, before links), if any."""
    folder = Path(os.path.abspath(folder))
    return next((r for r in LINK_ROOTS if is_within(folder, Path(os.path.abspath(r.path)))), None)


def real_path(path: Path | str) -> Path:
    """`path` with every link followed; a loop or an over-long path is a FileProblem."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        raise os_problem(exc, path) from None
    except ValueError:  # an embedded NUL byte
        raise FileProblem("name_invalid", path, "the path contains a NUL character", "use a plain name") from None


def is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def contained(path: Path | str, folder: Path | str, root: Root | None = None) -> bool:
    """THE containment check: `path`, after every link, stays inside `folder` (a pipeline folder,
    or the root a file was found in) -- or `root` vouches for the link (see Root.allows_link)."""
    real = real_path(path)
    if is_within(real, real_path(folder)):
        return True
    return root is not None and root.allows_link(Path(path), real)


# -- names ---------------------------------------------------------------------------------------
def name_problem(name, field: str, what: str = "model") -> Problem | None:
    """What is wrong with a name typed or stored in a workflow (None: it is a plain relative name)."""
    if not isinstance(name, str) or not name.strip():
        return Problem(
            f"{what}_missing",
            field,
            f"no {what} selected",
            "pick a pipeline folder (one with model_index.json) from the list"
            if what == "model"
            else "pick a file from the list",
        )
    shown = ascii(name)[1:-1][:80]
    if len(name) > MAX_PATH or any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME for p in name.split("/")):
        return Problem(
            "name_too_long",
            field,
            f'"{shown}…" is longer than a file name can be ({len(name)} characters)',
            f"pick a {what} from the list",
        )
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return Problem(
            "name_invalid", field, f'"{shown}" holds a lone surrogate, not text', f"pick a {what} from the list"
        )
    parts = name.split("/")
    if (
        name.startswith(("/", "\\"))
        or Path(name).is_absolute()
        or "\\" in name
        or ".." in parts
        or "." in parts
        or (what == "model" and len(parts) > MAX_DEPTH)
        or not all(_PART.fullmatch(p) for p in parts)
    ):
        return Problem(
            f"{what}_outside_roots" if what == "model" else "gguf_file_missing",
            field,
            f'"{shown}" is not a {what} name: paths, "..", and absolute paths are refused',
            "pick a pipeline from the model list (folders under the configured diffusers model paths)"
            if what == "model"
            else "pick a file from the list",
        )
    return None


# -- pipeline folders ---------------------------------------------------------------------------------
def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _pipeline_entries(roots: Iterable[Root | Path]) -> Iterator[tuple[str, str]]:
    """(name, why it is refused, or "") for each folder with a model_index.json under the roots."""
    for root in map(as_root, roots):
        if not root.path.is_dir():
            continue
        for name, folder in root.candidates():
            if any(part.startswith(".") for part in name.split("/")):
                continue  # a save in progress (resolver/save.py), or a hidden folder
            bad_name = name_problem(name, "model")
            if bad_name is not None:  # resolve_model would refuse it: list only what loads
                yield name, bad_name.message
                continue
            try:
                root.vet(folder)
                if not contained(folder, root.path, root):
                    why = f"a link that leaves the model folder {root.path}"
                elif not _is_regular(folder / INDEX):
                    why = f"its {INDEX} is not a regular file"
                else:
                    why = ""
                    if type(root).allows_link is not Root.allows_link:  # its own rule: check every file now
                        for _ in walk_pipeline(folder, root):
                            pass
            except FileProblem as exc:
                why = str(exc)
            yield name, why


def list_pipelines(roots: Iterable[Root | Path]) -> list[str]:
    """Names ('/'-separated) of folders with a regular model_index.json, whose real location stays
    inside their root. What is listed is what `resolve_model` accepts."""
    return sorted({name for name, why in _pipeline_entries(roots) if not why})


def refused_pipelines(roots: Iterable[Root | Path]) -> list[tuple[str, str]]:
    """(name, why) of pipeline folders the model list leaves out, so that the editor and the log can
    say so instead of omitting them silently."""
    roots = list(roots)
    listed = set(list_pipelines(roots))
    return sorted({(name, why) for name, why in _pipeline_entries(roots) if why and name not in listed})


def _fail(code: str, field: str, message: str, suggestion: str) -> ValidationError:
    return ValidationError([Problem(code, field, message, suggestion)])


def resolve_model(name: str, roots: Iterable[Root | Path], field: str = "model") -> Path:
    """The folder of pipeline `name` under one of `roots`; refuses anything that would leave them."""
    roots = [as_root(r) for r in roots]
    bad = name_problem(name, field)
    if bad is not None:
        raise ValidationError([bad])
    for root in roots:
        candidate = root.locate(name)
        if candidate is None:
            continue
        index = candidate / INDEX
        try:
            root.vet(candidate)
            if not os.path.lexists(index):
                continue
            if not contained(candidate, root.path, root):
                raise _fail(
                    "model_outside_roots",
                    field,
                    f'"{name}" is a link that leaves the model folder {root.path}',
                    "copy or move the pipeline into the model folder instead of linking it",
                )
            regular_stat(index)
            for _ in walk_pipeline(candidate, root):  # nor may any file or folder in it leave it
                pass
        except FileProblem as exc:
            raise _fail(
                exc.code, field, f'"{name}": {exc}', exc.suggestion or "fix or remove that pipeline folder"
            ) from None
        if type(root).allows_link is not Root.allows_link:
            _VOUCHED[real_path(candidate)] = root
        return candidate
    if not roots:
        raise _fail(
            "model_not_found",
            field,
            f'no pipeline "{name}": no model folders are configured',
            "put pipelines under ComfyUI's models/diffusers; on the command line pass "
            f"--models DIR or set {MODELS_ENV}",
        )
    where = ", ".join(str(r.path) for r in roots)
    raise _fail(
        "model_not_found", field, f'no pipeline "{name}" under {where}', did_you_mean(name, list_pipelines(roots))
    )


def walk_pipeline(folder: Path, root: Root | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, stat) of every regular file in a pipeline folder, links followed. Raises
    FileProblem for anything the load must not open: a link leaving the folder, a FIFO or device,
    a link loop, too many entries."""
    folder = Path(folder)
    root = root if root is not None else root_holding(folder)
    top = real_path(folder)
    root = root or _VOUCHED.get(top)
    seen = {top}
    stack, count = [(folder, "")], 0
    while stack:
        current, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            raise FileProblem(
                "file_unreadable",
                current,
                f"{prefix or folder.name} cannot be listed ({exc.strerror})",
                "check its permissions",
            ) from None
        for entry in entries:
            count += 1
            if count > MAX_ENTRIES:
                raise FileProblem(
                    "model_too_many_files",
                    folder,
                    f"{folder.name} holds more than {MAX_ENTRIES:,} files and folders: not a pipeline folder",
                    "point at the pipeline folder itself",
                )
            rel = prefix + entry.name
            path = Path(entry.path)
            try:
                if not contained(path, folder, root):
                    raise FileProblem(
                        "model_outside_roots",
                        path,
                        f"{rel} is a link that leaves the pipeline folder",
                        "copy the files into the model folder instead of linking them",
                    )
                st = os.stat(path)
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    regular_stat(path)  # raises not_a_regular_file
            except FileProblem as exc:  # name it by its place in the pipeline: "tokenizer/tokenizer.json"
                message = str(exc)
                if not message.startswith(rel):
                    message = (
                        rel + message[len(entry.name) :] if message.startswith(entry.name) else f"{rel}: {message}"
                    )
                raise FileProblem(exc.code, path, message, exc.suggestion) from None
            if stat.S_ISDIR(st.st_mode):
                real = real_path(path)
                if real not in seen:  # a link to a folder already walked is walked once
                    seen.add(real)
                    stack.append((path, rel + "/"))
            else:
                yield rel, st


# -- single files found by name (GGUF) ---------------------------------------------------------------
def list_files(roots: Iterable[Root | Path], suffix: str = ".gguf") -> list[str]:
    names = set()
    for root in map(as_root, roots):
        if not root.path.is_dir():
            continue
        for p in root.path.rglob(f"*{suffix}"):
            name = p.relative_to(root.path).as_posix()
            if name_problem(name, "file", "file") is not None:
                continue  # a name find_file refuses (a newline, a control character): not listed
            try:
                if _is_regular(p) and contained(p, root.path, root):
                    names.add(name)
            except FileProblem:
                continue
    return sorted(names)


def find_file(name: str, roots: Iterable[Root | Path]) -> Path | None:
    """The regular file `name` under one of the roots, or None; never a path outside them."""
    if name_problem(name, "file", "file") is not None:
        return None
    for root in map(as_root, roots):
        candidate = root.path / name
        try:
            if _is_regular(candidate) and contained(candidate, root.path, root):
                return candidate
        except FileProblem:
            continue
    return None
