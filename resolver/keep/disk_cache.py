"""On-disk cache of quantized components: quantize a component once, load it pre-quantized after.

Folder layout (one folder, outside every model root: an entry is a component folder without a
model_index.json, so it is never a pipeline and never reachable by a model name):

    <folder>/<key>/              one entry: the component as save_pretrained writes it, plus ENTRY_FILE
    <folder>/<key>.lock          flock'd (exclusive) by the load that writes or evicts that entry
    <folder>/.tmp-<key>/         a write in progress; renamed to <key> only once complete
    <folder>/.trash-<key>-<n>/   an entry being deleted: renamed away first, so no reader sees it half gone

The key hashes everything that changes the quantized weights: the source component's files
(size, mtime and the sha256 of each safetensors header), the component's plan fingerprint, the
load dtype, where it is quantized, and the versions of torch, diffusers, transformers and the
backend's own library. Entries are checked on every read (listed files present, sizes and header
hashes as written); a broken one is deleted and rebuilt, with a warning. Nothing here can fail a
load: a read-only folder, a full disk or a lock that never comes mean "do not cache", and why.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib
import json
import logging
import math
import os
import shutil
import stat
import struct
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..decide.plan import QUANTIZE
from ..files.roots import walk_pipeline
from ..files.safetensors_header import MAX_HEADER, HeaderError, read_header
from ..known import catalogue
from ..safe_files import FileProblem

log = logging.getLogger("pipequant.disk_cache")

ENV_FOLDER = "PIPEQUANT_DISK_CACHE"  # a folder, or "off"
ENV_LIMIT_GB = "PIPEQUANT_DISK_CACHE_GB"
DEFAULT_LIMIT_GB = 64.0
OFF_WORDS = ("off", "0", "false", "no", "none")
ENTRY_FILE = "pipequant-entry.json"
FORMAT = 1  # bump when the entry layout or key material changes
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LOCK_WAIT_SECONDS = 1800.0  # another load quantizing the same component: wait for its entry


def default_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pipequant" / "quantized"


def configured_folder(fallback: Path | None = None) -> Path | None:
    """PIPEQUANT_DISK_CACHE if set ("off" turns the cache off), else `fallback` (ComfyUI's
    `pipequant_cache` folder), else the user's cache folder."""
    raw = os.environ.get(ENV_FOLDER, "").strip()
    if raw.lower() in OFF_WORDS:
        return None
    if raw:
        return Path(raw).expanduser()
    return Path(fallback) if fallback is not None else default_folder()


def limit_bytes() -> int:
    """PIPEQUANT_DISK_CACHE_GB, read when used; a bad value falls back to the default, logged."""
    raw = os.environ.get(ENV_LIMIT_GB, "").strip()
    gb = DEFAULT_LIMIT_GB
    if raw:
        try:
            gb = float(raw)
            if not math.isfinite(gb) or gb < 0:
                raise ValueError
        except ValueError:
            log.warning("%s=%r is not a size in GB (e.g. 64); using %g GB", ENV_LIMIT_GB, raw, DEFAULT_LIMIT_GB)
            gb = DEFAULT_LIMIT_GB
    return int(gb * 1024**3)


# -- what can be cached, and under which key ---------------------------------------------------
def not_cacheable(row) -> str | None:
    """Why this component's plan gets no entry (None: it does). Only on-the-fly quantization is
    worth caching (a kept or pre-quantized component already loads from its own files, a GGUF one
    from its file), and only where the catalogue says save_pretrained can write it."""
    if row.action != QUANTIZE or row.spec is None:
        return f"nothing to cache ({row.action})"
    backend = catalogue.get_backend(row.spec.backend)
    quant_type = backend.quant_type(row.spec.quant_type)
    if backend.needs_file:
        return f"{backend.name} loads from its own file"
    if quant_type is None or not quant_type.savable:
        return f"{backend.name} {row.spec.quant_type} cannot be saved"
    if row.library not in backend.savable:
        return f"{backend.name} cannot save a {row.library} model"
    return None


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return "absent"
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    dists = metadata.packages_distributions().get(module_name.split(".")[0], [])
    return ",".join(sorted(f"{d}={metadata.version(d)}" for d in set(dists))) or "unknown"


def library_versions(row) -> dict[str, str]:
    names = ["torch", "diffusers", "transformers", "safetensors"]
    if row.spec is not None:
        names += list(catalogue.get_backend(row.spec.backend).modules)
    return {n: _version(n) for n in names}


def _header_sha(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise HeaderError(f"{path.name} is too short to be safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise HeaderError(f"{path.name} has a {n}-byte header: not safetensors")
        return hashlib.sha256(raw + f.read(n)).hexdigest()


def _source_files(plan, name: str) -> list[list]:
    """The component's files as the inspection saw them (path, mtime, size), with header hashes."""
    prefix = name + "/"
    return [
        [rel, mtime, size, _header_sha(plan.model.folder / rel) if rel.endswith(".safetensors") else None]
        for rel, mtime, size in plan.model.mtime_key
        if rel.startswith(prefix)
    ]


def quantize_device(plan) -> str:
    """Where the component's weights are quantized: on the GPU when it loads there without offload."""
    return plan.device.split(":")[0] if plan.offload == "none" else "cpu"


def entry_key(plan, row) -> str:
    material = {
        "format": FORMAT,
        "class": [row.library, row.class_name],
        "source": _source_files(plan, row.name),
        "plan": row.fingerprint(),
        "load_dtype": row.load_dtype,
        "pipeline_dtype": plan.dtype,
        "quantize_on": quantize_device(plan),
        "versions": library_versions(row),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


# -- one load's dealings with the cache --------------------------------------------------------
@dataclass
class Outcome:
    """What the cache did for one component; shown in the report."""

    status: str  # "read" | "written" | "not cached"
    reason: str = ""  # why not cached
    warning: str | None = None  # a broken entry that was deleted and rebuilt
    key: str | None = None
    config: str | None = None  # config class name recorded in a read entry

    def row_fields(self) -> dict:
        fields = {"disk_cache": self.status, "disk_cache_reason": self.reason}
        if self.config is not None:
            fields["config"] = self.config
        return fields


class BrokenEntry(Exception):
    pass


class DiskCache:
    """`writer(module, folder)` writes one component (resolver.save.save_component, the Save node's
    own path); tests inject a failing one to play a full disk."""

    def __init__(
        self,
        folder: Path,
        *,
        limit: int | None = None,
        writer: Callable | None = None,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ):
        self.folder = Path(folder)
        self.limit = limit
        self.writer = writer
        self.lock_wait = lock_wait

    # -- the loader's one call ----------------------------------------------------------------
    def load(self, plan, row, quantize: Callable[[], tuple], load_saved: Callable[[Path], object]) -> tuple:
        """(module, config, Outcome or None where the cache has no business): the component read from its entry, or quantized by
        `quantize()` and written as a new entry. `load_saved(folder)` loads a pre-quantized folder.

        INVARIANT: the entry is written here, right after quantizing and before the loader hands
        the module to anything else, so an entry is always the plain quantized component: never
        one carrying a LoRA adapter, offload hooks or compiled wrappers."""
        if row.action != QUANTIZE:
            return (*quantize(), None)  # kept, pre-quantized or GGUF: already loads from its own files
        why = not_cacheable(row)
        if why:
            return (*quantize(), Outcome("not cached", why))
        key = entry_key(plan, row)
        found, warning = self._read(key, load_saved, delete_broken=False)
        if found is not None:
            return found[0], None, Outcome("read", key=key, warning=warning, config=found[1])
        with ExitStack() as held:
            try:
                held.enter_context(self._locked(key))
            except OSError as exc:
                return (*quantize(), Outcome("not cached", _why(exc, self.folder), warning, key))
            except TimeoutError as exc:
                return (*quantize(), Outcome("not cached", str(exc), warning, key))
            # Again under the lock: a concurrent load may have written the entry meanwhile (or
            # rebuilt a broken one); a broken entry is deleted only here, so never someone else's new one.
            found, again = self._read(key, load_saved, delete_broken=True)
            warning = again or warning
            if found is not None:
                return found[0], None, Outcome("read", key=key, warning=warning, config=found[1])
            module, config = quantize()
            reason = self._write(key, plan, row, module, config)
            return module, config, Outcome("written" if reason is None else "not cached", reason or "", warning, key)

    # -- reading ------------------------------------------------------------------------------
    def _read(self, key: str, load_saved, delete_broken: bool) -> tuple[tuple | None, str | None]:
        path = self.folder / key
        if not path.exists():
            return None, None
        try:
            manifest = check_entry(path, key)
            module = load_saved(path)
        except Exception as exc:  # noqa: BLE001 (a broken entry must never fail the load: rebuild it)
            warning = f"disk cache entry {key} was broken ({type(exc).__name__}: {_first_line(exc)}); " + (
                "deleted and rebuilt" if delete_broken else "not used"
            )
            if delete_broken:
                log.warning(warning)
                self._delete(path)
            return None, warning
        try:
            os.utime(path / ENTRY_FILE)  # last use, for LRU eviction
        except OSError:
            pass  # a read-only cache still serves reads
        return (module, manifest.get("config")), None

    # -- writing ------------------------------------------------------------------------------
    def _write(self, key: str, plan, row, module, config) -> str | None:
        """Write the entry atomically; returns why it was not written, or None."""
        from .memory import tensor_bytes
        from .save import save_component

        limit = self.limit if self.limit is not None else limit_bytes()
        size = tensor_bytes(module)
        if size > limit:
            return f"the component ({_gb(size)}) is larger than the cache limit ({_gb(limit)}, {ENV_LIMIT_GB})"
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError as exc:
            return _why(exc, self.folder)
        if free < size * 1.1 + 64 * 1024**2:
            return f"only {_gb(free)} free in {self.folder} for a {_gb(size)} entry"
        tmp = self.folder / f".tmp-{key}"
        try:
            if tmp.exists():  # left by a writer that died: we hold the key's lock, so nobody uses it
                shutil.rmtree(tmp)
            tmp.mkdir()
            (self.writer or save_component)(module, tmp)
            files = _describe_files(tmp)
            if not any(name.endswith(".safetensors") for name in files):
                raise BrokenEntry("the writer produced no safetensors file")
            info = plan.model.components[row.name]
            manifest = {
                "format": FORMAT,
                "key": key,
                "created": time.time(),
                "source": {
                    "model": str(plan.model.folder),
                    "component": row.name,
                    "folder": str(info.folder),
                    "class": row.class_name,
                    "library": row.library,
                },
                "plan": row.describe(),
                "versions": library_versions(row),
                "config": type(config).__name__ if config is not None else None,
                "bytes": sum(f["size"] for f in files.values()),
                "files": files,
            }
            _write_synced(tmp / ENTRY_FILE, json.dumps(manifest, indent=1))
            _fsync_tree(tmp)
            if (self.folder / key).exists():  # a broken entry that could not be renamed away earlier
                shutil.rmtree(self.folder / key)
            os.rename(tmp, self.folder / key)
            _fsync(self.folder)
        except (OSError, BrokenEntry) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return _why(exc, self.folder) if isinstance(exc, OSError) else str(exc)
        self.evict(keep=key, limit=limit)
        return None

    # -- housekeeping -------------------------------------------------------------------------
    def entries(self) -> list[dict]:
        """Every entry, least recently used first: key, bytes, last used, source and plan."""
        out = []
        if not self.folder.is_dir():
            return out
        for path in self.folder.iterdir():
            if path.name.startswith(".") or path.suffix == ".lock" or not path.is_dir() or path.is_symlink():
                continue
            try:
                manifest = json.loads((path / ENTRY_FILE).read_text())
                used = (path / ENTRY_FILE).stat().st_mtime
            except (OSError, ValueError):
                manifest, used = {}, path.stat().st_mtime
            size = manifest.get("bytes") if isinstance(manifest.get("bytes"), int) else _du(path)
            out.append(
                {
                    "key": path.name,
                    "path": str(path),
                    "bytes": size,
                    "last_used": used,
                    "created": manifest.get("created"),
                    "source": manifest.get("source") or {},
                    "plan": manifest.get("plan") or {},
                    "valid": bool(manifest),
                }
            )
        return sorted(out, key=lambda e: e["last_used"])

    def evict(self, *, keep: str | None = None, limit: int | None = None) -> list[str]:
        """Delete least-recently-used entries until the cache is within its limit."""
        limit = limit if limit is not None else (self.limit if self.limit is not None else limit_bytes())
        self._sweep()
        entries = self.entries()
        total = sum(e["bytes"] for e in entries)
        removed = []
        for e in entries:
            if total <= limit:
                break
            if e["key"] != keep and self._delete_if_free(e["key"]):
                total -= e["bytes"]
                removed.append(e["key"])
        return removed

    def clear(self, older_than_days: float | None = None) -> list[dict]:
        """Delete every entry (or those not used for `older_than_days`); entries being written are left."""
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        self._sweep()
        return [
            e for e in self.entries() if (cutoff is None or e["last_used"] < cutoff) and self._delete_if_free(e["key"])
        ]

    def _delete_if_free(self, key: str) -> bool:
        try:
            with self._locked(key, wait=0.0):
                self._delete(self.folder / key)
                (self.folder / f"{key}.lock").unlink(missing_ok=True)  # safe: _locked re-checks the inode
            return True
        except (OSError, TimeoutError):
            return False  # in use by a load right now

    def _sweep(self) -> None:
        """Remove what dead processes left: trash, and temp folders whose key nobody holds."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(".trash-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.folder.glob(".tmp-*"):
            try:
                with self._locked(path.name[len(".tmp-") :], wait=0.0):
                    shutil.rmtree(path, ignore_errors=True)
            except (OSError, TimeoutError):
                pass

    def _delete(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    @contextmanager
    def _locked(self, key: str, wait: float | None = None):
        """An exclusive flock on <key>.lock; raises OSError (folder not writable) or TimeoutError.
        The lock file may be unlinked by whoever holds it (eviction): a lock taken on a file that
        is no longer at that path is dropped and taken again on the new one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.lock"
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another load has held the cache entry {key} for too long") from None
                time.sleep(0.1)
                continue
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock


def check_entry(path: Path, key: str) -> dict:
    """The entry's manifest, after checking the entry is whole: raises BrokenEntry if not."""
    if path.is_symlink() or not path.is_dir():
        raise BrokenEntry("not a folder")
    try:
        manifest = json.loads((path / ENTRY_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BrokenEntry(f"{ENTRY_FILE} unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("key") != key:
        raise BrokenEntry(f"{ENTRY_FILE} is not an entry for {key}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not any(name.endswith(".safetensors") for name in files):
        raise BrokenEntry("no safetensors files listed")
    try:
        present = [rel for rel, _ in walk_pipeline(path)]  # the roots module's check: regular files, no links out
    except FileProblem as exc:
        raise BrokenEntry(str(exc)) from None
    for p in path.rglob("*"):
        if p.suffix in PICKLE_SUFFIXES or p.is_symlink():
            raise BrokenEntry(f"{p.name} does not belong in an entry (pickle or link)")
    if set(files) - set(present):
        raise BrokenEntry(f"{min(set(files) - set(present))} is missing")
    for name, meta in files.items():
        p = path / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise BrokenEntry(f"{name!r} leaves the entry")
        try:
            st = p.lstat()
        except OSError:
            raise BrokenEntry(f"{name} is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise BrokenEntry(f"{name} is not a regular file")
        if st.st_size != meta.get("size"):
            raise BrokenEntry(f"{name} is {st.st_size} bytes, written as {meta.get('size')}")
        if name.endswith(".safetensors"):
            try:
                read_header(p)  # also checks the file holds all the data its header promises
                if _header_sha(p) != meta.get("header_sha256"):
                    raise BrokenEntry(f"{name}'s header changed since it was written")
            except (HeaderError, OSError) as exc:
                raise BrokenEntry(str(exc)) from None
    return manifest


def _describe_files(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            meta = {"size": p.stat().st_size}
            if p.suffix == ".safetensors":
                meta["header_sha256"] = _header_sha(p)
            out[p.relative_to(folder).as_posix()] = meta
    return out


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Make every file of a new entry durable before the rename that publishes it."""
    for p in sorted(folder.rglob("*")):
        _fsync(p)
    _fsync(folder)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gb(n: float) -> str:
    return f"{n / 1024**3:.2f} GB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _why(exc: OSError, folder: Path) -> str:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return f"the disk holding {folder} is full"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"the cache folder {folder} is not writable ({os.strerror(exc.errno)})"
    return f"cannot write to the cache folder {folder} ({exc.strerror or exc})"
