"""ComfyUI's model management sees PipeQuant's components, and can take their memory back.

ComfyUI keeps what it has loaded in `comfy.model_management.current_loaded_models` (a list of
`LoadedModel`, each wrapping a ModelPatcher). It frees memory through that list: `free_memory()`
when a core node needs room on a device, `unload_all_models()` for the "Unload models" / "Free
model and node cache" buttons (`POST /free`). PipeQuant registers one entry per loaded component,
wrapping a small stand-in for a ModelPatcher. When ComfyUI unloads one, the component leaves the
pack's cache and every pipeline using it is emptied (its output is no longer pinned by
ComfyUI's node cache); the Load node's IS_CHANGED then makes the next run load again.
`unload_all_models` is wrapped as well, so that components on a device ComfyUI does not manage
(e.g. CPU ones on a GPU machine) are released too.
"""

from __future__ import annotations

import functools
import logging
import weakref

from ..resolver.keep import COMPONENT_CACHE, main_device, tensor_bytes, trim_heap
from ..resolver.keep import free_memory as release_freed_memory

log = logging.getLogger("pipequant")

UNLOADED_BY_COMFYUI = "ComfyUI unloaded it to free memory"
_HANDLES: dict[int, ComponentHandle] = {}  # id(module) -> handle; strong refs, pruned when modules die
_collect_pending = False  # a component was released inside ComfyUI's free_memory loop


class ComponentHandle:
    """The parts of a ModelPatcher that ComfyUI's LoadedModel and free_memory() call."""

    parent = None

    def __init__(self, module, name: str, device, nbytes: int):
        import torch

        self._module = weakref.ref(module)
        self.name = name
        self.load_device = torch.device(device)
        self.offload_device = torch.device("cpu")
        self.size = nbytes

    @property
    def model(self):  # ComfyUI logs `loaded.model.model.__class__.__name__`
        return self._module()

    def model_size(self) -> int:
        return self.size if self._module() is not None else 0

    def loaded_size(self) -> int:
        """Bytes on the load device now (0 for an offloaded component between runs)."""
        module = self._module()
        if module is None:
            return 0
        return self.size if main_device(module).split(":")[0] == self.load_device.type else 0

    def current_loaded_device(self):
        return self.load_device if self.loaded_size() else self.offload_device

    def model_dtype(self):
        module = self._module()
        return next(module.parameters()).dtype if module is not None else None

    def is_clone(self, other) -> bool:
        return other is self

    def model_patches_models(self) -> list:
        return []

    def model_patches_to(self, device) -> None:
        pass

    def lowvram_patch_counter(self) -> int:
        return 0

    def partially_load(self, device, extra_memory, force_patch_weights=False) -> int:
        return 0

    def partially_unload(self, device, memory_to_free) -> int:
        return 0  # a quantized component cannot be half moved: unload releases it whole

    # Asked by newer cores (Dynamic VRAM, pinned host memory; ComfyUI ≈ 0.15+), in free_memory's loop.
    def is_dynamic(self) -> bool:
        return False  # not paged in on demand by ComfyUI's allocator: resident where the plan put it

    def model_mmap_residency(self, free: bool = False) -> tuple[int, int]:
        return 0, 0  # no weights in ComfyUI's memory-mapped files

    def pinned_memory_size(self) -> int:
        return 0

    def partially_unload_ram(self, ram_to_unload) -> int:
        return 0  # no pinned host copy to give back; detach() releases the component itself

    def detach(self, unpatch_all: bool = True) -> None:
        global _collect_pending
        module = self._module()
        if module is not None:
            # No garbage collection here: ComfyUI is iterating current_loaded_models (the
            # free_memory wrapper collects once the loop is done).
            COMPONENT_CACHE.release(module, UNLOADED_BY_COMFYUI, collect=False)
            _collect_pending = True
            log.info("PipeQuant: released %s (%.1f MB) for ComfyUI", self.name, self.size / 1024**2)


def _loaded_model_class(model_management):
    class PipeQuantLoadedModel(model_management.LoadedModel):
        def model_unload(self, memory_to_free=None, unpatch_weights=True):
            handle = self.model
            if handle is not None:
                handle.detach(unpatch_weights)
            if self.model_finalizer is not None:
                self.model_finalizer.detach()
                self.model_finalizer = None
            self.real_model = None
            return True

    return PipeQuantLoadedModel


def dynamic_vram_note() -> str | None:
    """What PipeQuant does under ComfyUI's Dynamic VRAM, when this core has it turned on."""
    try:
        from comfy.cli_args import enables_dynamic_vram  # type: ignore  (ComfyUI ≈ 0.15 and later)
    except ImportError:
        return None
    try:
        on = bool(enables_dynamic_vram())
    except Exception:  # a core whose flag reader needs more than the parsed arguments
        return None
    return (
        (
            "PipeQuant: ComfyUI's Dynamic VRAM is on. PipeQuant's components are not paged by it: they stay "
            "where their plan puts them (or move with the Load node's offload) and are released when ComfyUI frees "
            "memory or unloads models"
        )
        if on
        else None
    )


def supported(model_management) -> bool:
    """Whether this ComfyUI has the loaded-model list this integration plugs into."""
    return model_management is not None and all(
        hasattr(model_management, n)
        for n in ("current_loaded_models", "LoadedModel", "free_memory", "unload_all_models")
    )


def track(model_management, result) -> None:
    """Register the loaded pipeline's components with ComfyUI (once per component)."""
    if not supported(model_management):
        return
    prune(model_management)
    import torch

    loaded_cls = _loaded_model_class_cached(model_management)
    device = result.plan.device if result.plan.device != "auto" else "cpu"
    for name, module in result.pipeline.components.items():
        if not isinstance(module, torch.nn.Module) or id(module) in _HANDLES:
            continue
        handle = ComponentHandle(module, f"{result.plan.model.folder.name}/{name}", device, tensor_bytes(module))
        loaded = loaded_cls(handle)
        loaded.real_model = weakref.ref(module)
        loaded.model_finalizer = weakref.finalize(module, _noop)
        _HANDLES[id(module)] = handle
        model_management.current_loaded_models.append(loaded)


def _noop() -> None:
    pass


@functools.cache
def _loaded_model_class_cached(model_management):
    return _loaded_model_class(model_management)


def ours(model_management) -> list:
    """Our entries in ComfyUI's list (to keep them while freeing core models for a load)."""
    return [m for m in model_management.current_loaded_models if isinstance(m.model, ComponentHandle)]


def prune(model_management) -> None:
    """Forget entries whose component is gone (called where ComfyUI is not iterating the list)."""
    for key, handle in list(_HANDLES.items()):
        if handle.model is None:
            del _HANDLES[key]
    models = model_management.current_loaded_models
    models[:] = [m for m in models if not (isinstance(m.model, ComponentHandle) and m.model.model is None)]


def hand_over(model_management, module) -> None:
    """The module now has a ComfyUI ModelPatcher of its own (Pipeline to ComfyUI): drop the pack's
    entry for it, so that ComfyUI's list holds one owner per module. The pack's cache still keeps
    the module; POST /free releases both."""
    if not supported(model_management):
        return
    handle = _HANDLES.pop(id(module), None)
    if handle is None:
        return
    models = model_management.current_loaded_models
    models[:] = [m for m in models if m.model is not handle]


def install(model_management) -> None:
    """Wrap two functions of ComfyUI's, once. free_memory: after ComfyUI unloaded what it chose,
    collect the released components' memory (they hold reference cycles) and give it back to the OS.
    unload_all_models: after ComfyUI's own unload, release every PipeQuant component, whatever its
    device."""
    if not supported(model_management) or getattr(model_management.unload_all_models, "_pipequant", False):
        return
    note = dynamic_vram_note()
    if note:
        log.info(note)
    original_free = model_management.free_memory

    @functools.wraps(original_free)
    def free_memory(*args, **kwargs):
        global _collect_pending
        result = original_free(*args, **kwargs)
        if _collect_pending:
            _collect_pending = False
            prune(model_management)
            release_freed_memory()
        return result

    free_memory._pipequant = True
    model_management.free_memory = free_memory
    original = model_management.unload_all_models

    @functools.wraps(original)
    def unload_all_models(*args, **kwargs):
        result = original(*args, **kwargs)
        freed = COMPONENT_CACHE.release_all(UNLOADED_BY_COMFYUI)
        prune(model_management)
        trim_heap()
        if freed:
            log.info("PipeQuant: component cache emptied (%.1f MB)", freed / 1024**2)
        return result

    unload_all_models._pipequant = True
    unload_all_models._pipequant_original = original
    model_management.unload_all_models = unload_all_models


def make_room(model_management, device: str, needed_bytes: int) -> None:
    """Before a load: let ComfyUI free `needed_bytes` on `device` from its own models. PipeQuant's
    components stay (a pipeline loaded earlier in the same run may still be needed); the cache's
    budget bounds them."""
    if not supported(model_management):
        return
    import torch

    prune(model_management)
    target = torch.device(device) if device.startswith("cuda") else model_management.get_torch_device()
    model_management.free_memory(needed_bytes, target, keep_loaded=ours(model_management))
    model_management.soft_empty_cache()
