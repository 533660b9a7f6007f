"""On-disk cache of quantized components: quantize a component once, load it pre-quantized after.

Folder layout (the configured folder, outside every model root: an entry is a component folder
without a model_index.json, so it is never a pipeline and never reachable by a model name):

    <folder>/                              holds nothing but STORE: a folder that holds anything else
                                           (models, someone's files) is refused as the cache's folder
    <folder>/pipequant-disk-cache/         STORE, the cache's own folder, marked by MARKER_FILE
        pipequant-disk-cache.json          MARKER_FILE: says this folder is the disk cache's
        <key>/                             one entry: the component as save_pretrained writes it, plus
                                           ENTRY_FILE (its manifest, carrying OWNER)
        <key>.lock                         flock'd (exclusive) by the load that writes or evicts that entry
        .tmp-<key>/                        a write in progress; renamed to <key> only once complete
        .trash-<key>-<n>/                  an entry being deleted: renamed away first, so no reader sees it half gone

The cache touches only what it wrote: inside its marked folder, names of the shapes above, and as
entries only folders whose manifest carries OWNER and their own key. Everything else is left alone
and reported (`skipped`). Locks are opened without following links.

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
import re
import shutil
import stat
import struct
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..decide.plan import QUANTIZE
from ..files.meta_build import BuildRefused, check_config
from ..files.roots import walk_pipeline
from ..files.safetensors_header import DTYPE_BYTES, MAX_HEADER, HeaderError, read_header, read_spans
from ..known import catalogue, devices, measured
from ..known.class_facts import config_defaults, distribution_versions
from ..safe_files import FileProblem, open_regular, read_bytes, read_json
from ..user_cache import configured, user_folder
from .save import cause_text

log = logging.getLogger("pipequant.disk_cache")

ENV_FOLDER = "PIPEQUANT_DISK_CACHE"  # a folder, or "off"
ENV_LIMIT_GB = "PIPEQUANT_DISK_CACHE_GB"
# "1": cache every plan that can be saved, also where reading a copy was measured not to pay (the
# disk-cache benchmark sets it to measure those plans again)
ENV_EVERY_PLAN = "PIPEQUANT_DISK_CACHE_EVERY_PLAN"
# The quantize-once goal: a cold load that reads the cached copy takes at most this share of the
# cold first load's time; a plan measured above it on the device it quantizes on gets no entry.
PAYS = 0.3
DEFAULT_LIMIT_GB = 64.0
ENTRY_FILE = "pipequant-entry.json"
STORE = "pipequant-disk-cache"  # the cache's own subfolder of the configured folder
MARKER_FILE = "pipequant-disk-cache.json"
NEW_STORE = ".pipequant-disk-cache-new-"  # a store being made, beside STORE
MARKER = {"owner": "pipequant", "purpose": "disk cache of quantized components", "layout": 2}
OWNER = "pipequant-disk-cache"  # every manifest carries it: an entry the cache wrote
FORMAT = 2  # bump when the entry layout or key material changes
KEY = re.compile(r"[0-9a-f]{32}")
TRANSIENT = re.compile(r"\.(tmp-[0-9a-f]{32}|trash-[0-9a-f]{32}-[0-9]+-[0-9]+)")
REWRITTEN_FIELDS = ("quantization_config", "transformers_version", "architectures")
MAX_SMALL_FILE = 16 * 1024 * 1024  # an entry's config files are hashed whole; weights by their header
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LOCK_WAIT_SECONDS = 1800.0  # another load quantizing the same component: wait for its entry


def default_folder() -> Path:
    return user_folder("quantized")


def configured_folder(fallback: Path | None = None) -> Path | None:
    """PIPEQUANT_DISK_CACHE if set ("off" turns the cache off), else `fallback` (ComfyUI's
    `pipequant_cache` folder), else the user's cache folder."""
    return configured(ENV_FOLDER, Path(fallback) if fallback is not None else default_folder())


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


def does_not_pay(plan, row) -> str | None:
    """Why a copy of this component is not worth writing (None: it is, or it was never measured):
    reading it cold was measured above PAYS of quantizing it cold, on the device class it is
    quantized on, for components at least this one's size (measurements.json, "disk_cache"): int8
    weights quantized as they stream in cost little more than reading the bf16 files, and their
    copy is half those bytes."""
    if os.environ.get(ENV_EVERY_PLAN, "").strip() == "1" or row.spec is None:
        return None
    device = quantize_device(plan)
    gen = measured.generation(devices.compute_capability(plan.device) if device != "cpu" else None)
    figure = measured.disk_cache_figure(row.spec.backend, row.spec.quant_type, gen)
    if figure is None or figure["second_over_first"] <= PAYS:
        return None
    checkpoint = sum(size for rel, _, size in plan.model.mtime_key if _weights_of(rel, row.name))
    if checkpoint < figure["min_checkpoint_bytes"]:
        return None  # smaller than every component measured: no figure (none is borrowed)
    return (
        f"reading a cached {row.spec.backend} {row.spec.quant_type} copy was measured at "
        f"{figure['second_over_first']:.2f}x the time of quantizing it on load on {gen} (the cache pays at "
        f"{PAYS}x or less; {figure['source']}), so none is written ({ENV_EVERY_PLAN}=1 writes it anyway)"
    )


def why_no_entry(plan, row) -> str | None:
    """Why this component gets no entry under its plan (None: it gets one)."""
    return not_cacheable(row) or does_not_pay(plan, row)


def _weights_of(rel: str, name: str) -> bool:
    return rel.startswith(name + "/") and rel.endswith(".safetensors")


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return "absent"
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    return distribution_versions(module_name) or "unknown"


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


class Refused(Exception):
    """The configured folder cannot be the cache's: it holds what the cache did not write."""


class DiskCache:
    """`writer(module, folder)` writes one component (resolver.save.save_component, the Save node's
    own path); tests inject a failing one to play a full disk. `folder` is the configured folder;
    the entries live in its marked subfolder `store`."""

    def __init__(
        self,
        folder: Path,
        *,
        limit: int | None = None,
        writer: Callable | None = None,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ):
        self.folder = Path(folder)
        self.store = self.folder / STORE
        self.limit = limit
        self.writer = writer
        self.lock_wait = lock_wait

    # -- whose folder this is -------------------------------------------------------------------
    def refusal(self) -> str | None:
        """Why the configured folder cannot hold the cache (None: it can). It may hold only the
        cache's marked store; a store without the marker is someone else's folder of that name."""
        try:
            st = self.folder.stat()
        except FileNotFoundError:
            return None  # made on the first write
        except OSError as exc:
            return _why(exc, self.folder)
        if not stat.S_ISDIR(st.st_mode):
            return f"the cache folder {self.folder} is not a folder"
        try:
            foreign = sorted(p.name for p in self.folder.iterdir() if p.name != STORE and not _new_store(p.name))
        except OSError as exc:
            return _why(exc, self.folder)
        if foreign and all(_legacy(n) for n in foreign):
            return (
                f"the cache folder {self.folder} holds {len(foreign)} item(s) of an earlier PipeQuant's disk cache "
                f"(entries straight in the folder); the cache no longer touches them: delete them by hand, "
                f"or point {ENV_FOLDER} at a new folder"
            )
        if foreign:
            shown = ", ".join(ascii(n)[1:-1][:60] for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            return (
                f"the cache folder {self.folder} holds {len(foreign)} item(s) the disk cache did not write "
                f"({shown}); it needs a folder of its own: point {ENV_FOLDER} at a new or empty folder"
            )
        if os.path.lexists(self.store):
            try:
                self._check_marker()
            except Refused as exc:
                return str(exc)
        return None

    def _check_marker(self) -> None:
        st = self.store.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{self.store} is not a folder (a link or a file): not the disk cache's")
        marker = self.store / MARKER_FILE
        if not os.path.lexists(marker):
            raise Refused(f"{self.store} has no {MARKER_FILE}: it is not the disk cache's folder; left alone")
        try:
            found = read_json(marker, limit=64 * 1024)
        except FileProblem as exc:
            raise Refused(f"{self.store}'s marker is unreadable ({exc}); left alone") from None
        if not isinstance(found, dict) or found.get("owner") != MARKER["owner"]:
            raise Refused(f"{self.store}'s {MARKER_FILE} is not the disk cache's marker; left alone")

    def _open_store(self) -> None:
        """Make (or check) the marked store before writing into it; raises OSError or Refused."""
        why = self.refusal()
        if why:
            raise Refused(why)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(self.store):
            # Made whole, then renamed into place: a concurrent load never sees a store without its marker.
            new = self.folder / f"{NEW_STORE}{os.getpid()}-{time.monotonic_ns()}"
            new.mkdir()
            try:
                _write_synced(new / MARKER_FILE, json.dumps(MARKER))
                os.rename(new, self.store)
            except OSError:
                if not os.path.lexists(self.store):
                    raise
            finally:
                shutil.rmtree(new, ignore_errors=True)  # another load's store won the rename
        self._check_marker()

    # -- the loader's one call ----------------------------------------------------------------
    def load(self, plan, row, quantize: Callable[[], tuple], load_saved: Callable[[Path], object]) -> tuple:
        """(module, config, Outcome or None where the cache has no business): the component read from its entry, or quantized by
        `quantize()` and written as a new entry. `load_saved(folder)` loads a pre-quantized folder.

        INVARIANT: the entry is written here, right after quantizing and before the loader hands
        the module to anything else, so an entry is always the plain quantized component: never
        one carrying a LoRA adapter, offload hooks or compiled wrappers."""
        if row.action != QUANTIZE:
            return (*quantize(), None)  # kept, pre-quantized or GGUF: already loads from its own files
        why = why_no_entry(plan, row) or self.refusal()
        if why:
            return (*quantize(), Outcome("not cached", why))
        key = entry_key(plan, row)
        source = plan.model.components[row.name]
        found, warning = self._read(key, source, load_saved, delete_broken=False)
        if found is not None:
            return found[0], None, Outcome("read", key=key, warning=warning, config=found[1])
        with ExitStack() as held:
            try:
                held.enter_context(self._locked(key))
            except OSError as exc:
                return (*quantize(), Outcome("not cached", _why(exc, self.store), warning, key))
            except (TimeoutError, Refused) as exc:
                return (*quantize(), Outcome("not cached", str(exc), warning, key))
            # Again under the lock: a concurrent load may have written the entry meanwhile (or
            # rebuilt a broken one); a broken entry is deleted only here, so never someone else's new one.
            found, again = self._read(key, source, load_saved, delete_broken=True)
            warning = again or warning
            if found is not None:
                return found[0], None, Outcome("read", key=key, warning=warning, config=found[1])
            module, config = quantize()
            reason = self._write(key, plan, row, module, config)
            return module, config, Outcome("written" if reason is None else "not cached", reason or "", warning, key)

    # -- reading ------------------------------------------------------------------------------
    def _read(self, key: str, source, load_saved, delete_broken: bool) -> tuple[tuple | None, str | None]:
        path = self.store / key
        if not os.path.lexists(path):
            return None, None
        try:
            manifest = check_entry(path, key)
            check_entry_config(path, source)
            module = load_saved(path)
        except Exception as exc:  # noqa: BLE001 (a broken entry must never fail the load: rebuild it)
            warning = f"disk cache entry {key} was broken ({cause_text(exc)}); " + (
                "deleted and rebuilt" if delete_broken else "not used"
            )
            if delete_broken:  # at its own key, in the marked store: the cache's, even with no manifest left
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
            free = shutil.disk_usage(self.store).free
        except OSError as exc:
            return _why(exc, self.store)
        if free < size * 1.1 + 64 * 1024**2:
            return f"only {_gb(free)} free in {self.folder} for a {_gb(size)} entry"
        tmp = self.store / f".tmp-{key}"
        try:
            if os.path.islink(tmp):  # a link planted at our temp name: drop the link, never follow it
                tmp.unlink()
            elif tmp.exists():  # left by a writer that died: we hold the key's lock, so nobody uses it
                shutil.rmtree(tmp)
            tmp.mkdir()
            (self.writer or save_component)(module, tmp)
            alignment = catalogue.get_backend(row.spec.backend).saved_alignment
            for path in sorted(tmp.rglob("*.safetensors")) if alignment else ():
                align_byte_tensors(path, alignment)
            files = _describe_files(tmp)
            if not any(name.endswith(".safetensors") for name in files):
                raise BrokenEntry("the writer produced no safetensors file")
            info = plan.model.components[row.name]
            check_entry_config(tmp, info)  # an entry every read would reject is not worth writing
            manifest = {
                "owner": OWNER,
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
            if os.path.lexists(self.store / key):  # a broken entry that could not be renamed away earlier
                self._delete(self.store / key)
            os.rename(tmp, self.store / key)
            _fsync(self.store)
        except (OSError, BrokenEntry, HeaderError) as exc:  # HeaderError: the writer's file, unreadable
            if not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            return _why(exc, self.store) if isinstance(exc, OSError) else str(exc)
        self.evict(keep=key, limit=limit)
        return None

    # -- housekeeping -------------------------------------------------------------------------
    def inventory(self) -> tuple[list[dict], list[str]]:
        """(the cache's entries, least recently used first; what it found and left alone). An entry
        is a folder named by a key whose manifest carries OWNER and that key; everything else in the
        configured folder or the store is someone else's and is only reported."""
        out, skipped = [], []
        if not self.folder.is_dir():
            return out, skipped
        try:
            skipped += [str(p) for p in self.folder.iterdir() if p.name != STORE and not _new_store(p.name)]
            if not os.path.lexists(self.store):
                return out, sorted(skipped)
            self._check_marker()
            children = list(self.store.iterdir())
        except (OSError, Refused):
            return out, sorted(skipped + [str(self.store)])
        for path in children:
            name = path.name
            if name == MARKER_FILE or TRANSIENT.fullmatch(name):
                continue
            if name.endswith(".lock") and KEY.fullmatch(name[: -len(".lock")]) and not path.is_symlink():
                continue
            manifest = _own_manifest(path)
            if manifest is None:
                skipped.append(str(path))
                continue
            used = (path / ENTRY_FILE).stat().st_mtime
            size = manifest.get("bytes") if isinstance(manifest.get("bytes"), int) else _du(path)
            out.append(
                {
                    "key": name,
                    "path": str(path),
                    "bytes": size,
                    "last_used": used,
                    "created": manifest.get("created"),
                    "source": manifest.get("source") if isinstance(manifest.get("source"), dict) else {},
                    "plan": manifest.get("plan") if isinstance(manifest.get("plan"), dict) else {},
                    "valid": True,
                }
            )
        return sorted(out, key=lambda e: e["last_used"]), sorted(skipped)

    def entries(self) -> list[dict]:
        """Every entry the cache wrote, least recently used first: key, bytes, last used, source and plan."""
        return self.inventory()[0]

    def skipped(self) -> list[str]:
        """What the cache found beside its entries and will never touch."""
        return self.inventory()[1]

    def evict(self, *, keep: str | None = None, limit: int | None = None) -> list[str]:
        """Delete the cache's least-recently-used entries until they are within its limit (the
        size of anything else in the folder is not the cache's business)."""
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
        """Delete every entry (or those not used for `older_than_days`); entries being written, and
        whatever the cache did not write, are left (see `skipped`)."""
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        self._sweep()
        return [
            e for e in self.entries() if (cutoff is None or e["last_used"] < cutoff) and self._delete_if_free(e["key"])
        ]

    def _delete_if_free(self, key: str) -> bool:
        try:
            with self._locked(key, wait=0.0):
                if _own_manifest(self.store / key) is None:
                    return False  # replaced by something else since it was listed
                self._delete(self.store / key)
                (self.store / f"{key}.lock").unlink(missing_ok=True)  # safe: _locked re-checks the inode
            return True
        except (OSError, TimeoutError, Refused):
            return False  # in use by a load right now

    def _sweep(self) -> None:
        """Remove what dead processes left in the store: trash, and temp folders whose key nobody holds."""
        try:
            if not self.store.is_dir() or self.store.is_symlink():
                return
            self._check_marker()
            children = list(self.store.iterdir())
        except (OSError, Refused):
            return
        for path in children:
            if not TRANSIENT.fullmatch(path.name) or path.is_symlink():
                continue
            if path.name.startswith(".trash-"):
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                with self._locked(path.name[len(".tmp-") :], wait=0.0):
                    shutil.rmtree(path, ignore_errors=True)
            except (OSError, TimeoutError, Refused):
                pass

    def _delete(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, trash)
        except OSError:
            return
        if not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)  # the link itself, never what it points at

    @contextmanager
    def _locked(self, key: str, wait: float | None = None):
        """An exclusive flock on <key>.lock; raises OSError (folder not writable, or the lock is a
        link: never followed), Refused (not the cache's folder) or TimeoutError.
        The lock file may be unlinked by whoever holds it (eviction): a lock taken on a file that
        is no longer at that path is dropped and taken again on the new one."""
        self._open_store()
        path = self.store / f"{key}.lock"
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        while True:
            fd = _open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another load has held the cache entry {key} for too long") from None
                time.sleep(0.1)
                continue
            try:
                same = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock


def align_byte_tensors(path: Path, alignment: int) -> None:
    """Rewrite a safetensors file, where needed, so that its 1-byte tensors (quanto's int8/float8
    data) start at a multiple of `alignment` bytes in the file: a mapped file's pages are aligned, so
    they are then aligned in memory too, and a read maps them instead of copying them (quanto's CPU
    kernel crashes on misaligned int8 data). Only the header grows: padded with spaces, in steps of
    8 bytes, as safetensors pads it; the step that aligns the most of those bytes is taken."""
    spans, _ = read_spans(path)
    byte_spans = [s for s in spans if DTYPE_BYTES.get(s.info.dtype) == 1 and s.end > s.start]
    aligned = {
        pad: sum(s.end - s.start for s in byte_spans if (s.start + pad) % alignment == 0)
        for pad in range(0, alignment, 8)
    }
    pad = max(aligned, key=lambda p: (aligned[p], -p))
    if pad == 0:
        return
    new = path.with_name(path.name + ".aligned")
    with open_regular(path) as src, open(new, "wb") as out:
        (n,) = struct.unpack("<Q", src.read(8))
        out.write(struct.pack("<Q", n + pad) + src.read(n) + b" " * pad)
        shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    os.replace(new, path)


def _legacy(name: str) -> bool:
    """A name the first layout (entries straight in the configured folder) used."""
    return bool(KEY.fullmatch(name) or KEY.fullmatch(name.removesuffix(".lock")) or TRANSIENT.fullmatch(name))


def _new_store(name: str) -> bool:
    """A store another load is making right now (renamed to STORE in a moment)."""
    return re.fullmatch(re.escape(NEW_STORE) + r"[0-9]+-[0-9]+", name) is not None


def _open_lock(path: Path) -> int:
    """Open (or create) a lock file without following a link at its name, and only a regular file
    (a FIFO or device planted there is refused, never waited on)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path.name} is not a regular file")
    return fd


def _own_manifest(path: Path) -> dict | None:
    """The manifest of an entry the cache wrote (a real folder named by a key, whose manifest
    carries OWNER and that key), else None."""
    if not KEY.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
        return None
    try:
        manifest = read_json(path / ENTRY_FILE, limit=MAX_SMALL_FILE)
    except FileProblem:
        return None
    if not isinstance(manifest, dict) or manifest.get("owner") != OWNER or manifest.get("key") != path.name:
        return None
    return manifest


def check_entry(path: Path, key: str) -> dict:
    """The entry's manifest, after checking the entry is whole: raises BrokenEntry if not."""
    if path.is_symlink() or not path.is_dir():
        raise BrokenEntry("not a folder")
    try:
        manifest = read_json(path / ENTRY_FILE, limit=MAX_SMALL_FILE)
    except FileProblem as exc:
        raise BrokenEntry(f"{ENTRY_FILE} unreadable: {exc}") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("owner") != OWNER
        or manifest.get("format") != FORMAT
        or manifest.get("key") != key
    ):
        raise BrokenEntry(f"{ENTRY_FILE} is not an entry for {key}")
    files = manifest.get("files")
    if (
        not isinstance(files, dict)
        or not all(isinstance(m, dict) for m in files.values())
        or not any(name.endswith(".safetensors") for name in files)
    ):
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
        elif _small_sha(p) != meta.get("sha256"):  # config.json & co: same size is not same content
            raise BrokenEntry(f"{name} changed since it was written")
    unlisted = {rel for rel in present if rel != ENTRY_FILE} - set(files)
    if unlisted:
        raise BrokenEntry(f"{min(unlisted)} was not written with the entry")
    return manifest


def check_entry_config(path: Path, source) -> None:
    """The entry's config.json gets the bounds a model folder's does (meta_build.check_config: field
    types, layer counts) and must describe its source component (`source`, a ComponentInfo): every
    field the class declares has the source's value; only the quantization_config is new."""
    try:
        config = read_json(path / "config.json")
    except FileProblem as exc:
        raise BrokenEntry(str(exc)) from None
    if not isinstance(config, dict):
        raise BrokenEntry("config.json is not an object")
    defaults = config_defaults(source.model_class(), source.library)
    try:
        check_config(config, defaults, "the entry's config.json")
    except BuildRefused as exc:
        raise BrokenEntry(str(exc)) from None
    theirs, ours = _effective_config(source, source.config_dict), _effective_config(source, config)
    for name in sorted(set(theirs) | set(ours)):
        mine, source_value = ours.get(name), theirs.get(name)
        if name.startswith("_") or name in REWRITTEN_FIELDS or "dtype" in name or isinstance(mine, bool):
            # What a save writes anew: the load dtype (a bf16 source loaded in fp16 says float16), and
            # switches the model sets on its own config (T5EncoderModel: use_cache, is_encoder_decoder).
            continue
        if mine != source_value:
            raise BrokenEntry(f'config.json: "{name}" is {mine!r:.60}, its source has {source_value!r:.60}')


def _effective_config(source, config: dict) -> dict:
    """The configuration the class really builds from `config` (defaults and derived fields filled
    in, as its save writes them), to compare an entry's with its source's field by field."""
    cls = source.model_class()
    try:
        if source.library == "diffusers":
            return dict(cls.extract_init_dict(dict(config))[0])
        return cls.config_class.from_dict(dict(config)).to_dict()
    except Exception as exc:  # noqa: BLE001 (a config the library rejects is a broken entry, not a failed load)
        raise BrokenEntry(f"config.json cannot be read as a {cls.__name__} config ({cause_text(exc)})") from None


def _describe_files(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            meta = {"size": p.stat().st_size}
            if p.suffix == ".safetensors":
                meta["header_sha256"] = _header_sha(p)
            else:
                meta["sha256"] = _small_sha(p)
            out[p.relative_to(folder).as_posix()] = meta
    return out


def _small_sha(path: Path) -> str:
    try:
        return hashlib.sha256(read_bytes(path, MAX_SMALL_FILE)).hexdigest()
    except FileProblem as exc:
        raise BrokenEntry(str(exc)) from None


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


def _why(exc: OSError, folder: Path) -> str:
    if exc.errno == errno.ELOOP:
        return f"a link sits where the cache keeps a lock in {folder}; the disk cache never follows links"
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return f"the disk holding {folder} is full"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"the cache folder {folder} is not writable ({os.strerror(exc.errno)})"
    return f"cannot write to the cache folder {folder} ({exc.strerror or exc})"
