"""Save a quantized pipeline so it loads pre-quantized next time (faster: no quantize-on-load).

A save never overwrites nor shadows a model: the name must be free in every model root, the
Hugging Face cache included (a later root's "my-flux" would otherwise resolve to the new copy). It
writes into the first plain model folder, never into a root with names of its own (the hub cache). It is written into a hidden temporary
folder in the same root and renamed into place only when complete; a failure removes it. An
exclusive lock (a folder created with mkdir) decides which of two saves to one name wins.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..files.roots import Root
from ..known import catalogue
from ..problems import Problem, ValidationError
from ..run.context import diffusers_context
from ..run.lora import strip_adapters
from ..safe_files import FileProblem, read_bytes

if TYPE_CHECKING:  # annotations only: save is imported by the disk cache, which the loader imports
    from .load import LoadResult

FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always fullmatch: "$" accepts a final newline
PARTIAL, LOCK = ".pipequant-partial-", ".pipequant-lock-"


class SaveError(RuntimeError):
    """Writing failed midway (disk full, permissions); nothing is left behind under the name."""

    def __init__(self, dest: Path, cause: BaseException):
        self.code, self.dest = "save_failed", dest
        component = _failed_component(cause)
        where = f' while writing "{component}"' if component else ""
        super().__init__(f"saving to {dest} failed{where} ({cause_text(cause)}); nothing was left behind")


def cause_text(exc: BaseException) -> str:
    """`Type: first line`, and where an exception carries no message (a bare NotImplementedError),
    the library function that raised it, so the error always names its cause."""
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text.splitlines()[0][:400]}"
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return f"{type(exc).__name__} with no message"
    last = frames[-1]
    where = "/".join(Path(last.filename).parts[-2:])
    return f"{type(exc).__name__} with no message, raised in {last.name}() at {where}:{last.lineno}"


def _failed_component(exc: BaseException) -> str | None:
    """The pipeline component diffusers' save_pretrained was writing when `exc` was raised."""
    tb = exc.__traceback__
    name = None
    while tb is not None:
        name = tb.tb_frame.f_locals.get("pipeline_component_name", name)
        tb = tb.tb_next
    return name if isinstance(name, str) else None


def _roots(roots) -> list[Path | Root]:
    """Plain folders as Paths; Root objects (the hub cache, whose names are not its sub-folders) kept."""
    if roots is None:
        return []
    if isinstance(roots, (str, Path, Root)):
        roots = [roots]
    return [r if isinstance(r, Root) else Path(r) for r in roots]


def _plain(root) -> bool:
    """A folder a save may write into: not read-only, and its names are its sub-folders."""
    return not isinstance(root, Root) or (type(root).locate is Root.locate and not root.read_only)


def _where(root) -> Path | None:
    return root.path if isinstance(root, Root) else root


def _target(root, folder_name: str) -> Path | None:
    """What `folder_name` names under `root` (None: nothing there)."""
    return root.locate(folder_name) if isinstance(root, Root) else root / folder_name


def write_root(roots) -> Path | None:
    """The folder a save writes into: the first plain model folder."""
    return next((_where(r) for r in _roots(roots) if _plain(r)), None)


def folder_problems(folder_name, roots: Iterable[Path] | Path | None) -> list[Problem]:
    """Whether `folder_name` is a plain name, free in every root (what the Save node and the editor
    check before a run; PipeQuant never overwrites nor shadows a model)."""
    roots = _roots(roots)
    if write_root(roots) is None:
        return [
            Problem(
                "no_model_folder",
                "folder_name",
                "there is no diffusers model folder to save into",
                "configure a diffusers model path",
            )
        ]
    if not isinstance(folder_name, str) or not FOLDER_NAME.fullmatch(folder_name) or ".." in folder_name:
        return [
            Problem(
                "folder_name_invalid",
                "folder_name",
                f"{ascii(folder_name)[:80]} is not a plain folder name",
                "use letters, digits, '.', '_' and '-' only (up to 128), e.g. flux-nf4",
            )
        ]
    first = write_root(roots)
    for root in roots:
        try:
            target = _target(root, folder_name)
        except OSError:
            target = None
        if target is None:
            continue
        if os.path.islink(target) and not os.path.exists(target):
            return [
                Problem(
                    "folder_exists",
                    "folder_name",
                    f"{target} is a link to nothing (its target is gone)",
                    "remove the dangling link or pick a new name; PipeQuant never writes through a link",
                )
            ]
        if os.path.lexists(target):
            shadow = "" if _where(root) == first else f" (in {root}: a copy in {first} would hide it)"
            return [
                Problem(
                    "folder_exists",
                    "folder_name",
                    f"{target} already exists{shadow}",
                    "pick a new name; PipeQuant never overwrites or shadows a model",
                )
            ]
    return []


def plan_problems(plan) -> list[Problem]:
    """What stops a pipeline loaded with `plan` from being saved (the catalogue's savable rules):
    known before any weight is read, so the editor shows it before Run."""
    problems = []
    for row in plan.modules():
        if row.spec is None:
            continue
        backend = catalogue.get_backend(row.spec.backend)
        if not backend.quant_type(row.spec.quant_type).savable:
            problems.append(
                Problem(
                    "not_savable",
                    "pipeline",
                    f'"{row.name}" is quantized with {backend.name} {row.spec.quant_type}, which cannot be saved',
                    "save another quant type, and quantize to this one on load",
                    row.name,
                )
            )
        elif row.library not in backend.savable:
            can = [b for b in catalogue.backend_names() if row.library in catalogue.get_backend(b).savable]
            problems.append(
                Problem(
                    "not_savable",
                    "pipeline",
                    f'"{row.name}" is quantized with {backend.name}, which cannot be saved for a {row.library} model',
                    f"for {row.name} use one of: {', '.join(can)}",
                    row.name,
                )
            )
    if plan.offload != "none":
        problems.append(
            Problem(
                "offloaded",
                "pipeline",
                "an offloaded pipeline cannot be saved",
                'load it with offload "none" to save it',
            )
        )
    return problems


def lora_problems(result: LoadResult) -> list[Problem]:
    if not result.loras:
        return []
    return [
        Problem(
            "lora_applied",
            "pipeline",
            "this pipeline has LoRAs applied; a saved copy holds the base weights only",
            "connect the Load node's output directly to Save",
        )
    ]


def save_problems(result: LoadResult, folder_name: str, roots: Iterable[Path] | Path | None) -> list[Problem]:
    return folder_problems(folder_name, roots) + plan_problems(result.plan) + lora_problems(result)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _name_lock(root: Path, folder_name: str):
    """Exclusive ownership of `folder_name` in `root` while saving. A lock left by a killed save
    (its process is gone) is taken over, with that save's partial folders."""
    lock = root / f"{LOCK}{folder_name}"
    for attempt in (1, 2):
        try:
            os.mkdir(lock)
            break
        except FileExistsError:
            try:  # bounded, regular files only: a planted FIFO must not hang the save
                pid = int(read_bytes(lock / "pid", 32)) if not lock.is_symlink() else None
            except (OSError, ValueError, FileProblem):
                pid = None
            if attempt == 2 or pid is None or _alive(pid):
                raise ValidationError(
                    [
                        Problem(
                            "save_in_progress",
                            "folder_name",
                            f'another save to "{folder_name}" is running in {root}',
                            "wait for it, or pick another name",
                        )
                    ]
                ) from None
            _remove_partials(root, folder_name)
            shutil.rmtree(lock, ignore_errors=True)
    try:
        (lock / "pid").write_text(str(os.getpid()))
        yield
    finally:
        shutil.rmtree(lock, ignore_errors=True)


def _remove_partials(root: Path, folder_name: str) -> None:
    """The partial folders of saves to exactly `folder_name` (`flux` must not take `flux-nf4`'s):
    matched by their full name, never a glob of the user's text."""
    mine = re.compile(re.escape(f"{PARTIAL}{folder_name}-") + "[0-9a-f]{8}")
    for stale in root.iterdir():
        if mine.fullmatch(stale.name) and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def drop_load_only_conversions(module) -> None:
    """A transformers model loaded pre-quantized (from a disk cache entry or a saved folder) keeps
    the weight conversions it was read with, to undo them on save; the quantizers' deserialising
    ones (torchao's) cannot be undone (`reverse_op` raises a bare NotImplementedError), and need not
    be: the quantizer writes its own serialised layout. Keep only those a save can reverse."""
    conversions = getattr(module, "_weight_conversions", None)
    if not isinstance(conversions, list):
        return
    kept = []
    for conversion in conversions:
        try:
            conversion.reverse_transform()
        except NotImplementedError:
            continue
        kept.append(conversion)
    if len(kept) != len(conversions):
        module._weight_conversions = kept or None


def save_component(module, dest: Path) -> None:
    """Write one component pre-quantized, with the arguments DiffusionPipeline.save_pretrained
    gives each component (what save() below writes per component, and what the disk cache
    writes): safetensors, and no PEFT adapter layout."""
    import inspect

    drop_load_only_conversions(module)
    accepts = inspect.signature(module.save_pretrained).parameters
    kwargs = {}
    if "safe_serialization" in accepts:
        kwargs["safe_serialization"] = True
    if "save_peft_format" in accepts:
        kwargs["save_peft_format"] = False
    module.save_pretrained(str(dest), **kwargs)


def save(result: LoadResult, folder_name: str, roots: Iterable[Path] | Path | None) -> Path:
    """Write the pipeline to `<first root>/<folder_name>`, atomically; returns that folder."""
    roots = _roots(roots)
    problems = save_problems(result, folder_name, roots)
    if problems:
        raise ValidationError(problems)
    root = write_root(roots)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / folder_name
    with _name_lock(root, folder_name):
        problems = folder_problems(folder_name, roots)  # taken while we waited for the lock?
        if problems:
            raise ValidationError(problems)
        partial = root / f"{PARTIAL}{folder_name}-{uuid.uuid4().hex[:8]}"
        strip_adapters(result.pipeline)  # adapters other workflows loaded on shared modules are not weights
        for module in result.pipeline.components.values():
            drop_load_only_conversions(module)  # read from the disk cache or a saved copy: still savable
        try:
            with diffusers_context():
                result.pipeline.save_pretrained(str(partial), safe_serialization=True)
            os.rename(partial, dest)  # same file system: atomic; dest is known not to exist
        except Exception as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SaveError(dest, exc) from None
    return dest


def describe_save(result: LoadResult, dest: Path) -> str:
    """What was written where, named from the plan (not from the workflow's folder name)."""
    parts = [f"{r.name}: {r.spec.backend} {r.spec.quant_type}" for r in result.plan.modules() if r.spec is not None]
    model = result.plan.model.folder.name
    return f"saved {model} ({'; '.join(parts) or 'unquantized'}) to {dest}"
