"""The few ComfyUI services the nodes use, imported guarded so the nodes also run without ComfyUI
(the headless runner, the tests). Outside ComfyUI, model folders come from PIPEQUANT_MODELS /
PIPEQUANT_GGUF and interrupts from `request_interrupt()`."""

from __future__ import annotations

import threading
from pathlib import Path

from ..resolver.files import GGUF_ENV, MODELS_ENV, env_roots, hub_cache
from ..resolver.keep import disk_cache
from ..resolver.run import ENV_VAR as LORAS_ENV
from ..resolver.safe_files import FileProblem, read_json_object
from . import comfy_memory

try:
    import folder_paths  # type: ignore
except ImportError:
    folder_paths = None
try:
    import comfy.model_management as model_management  # type: ignore
    import comfy.utils as comfy_utils  # type: ignore
except ImportError:
    model_management = comfy_utils = None

comfy_memory.install(model_management)  # "Unload models" / POST /free empties our cache too

# Where GGUF files of diffusers models live (text encoders are not: the gguf backend takes none).
GGUF_FOLDERS = ("diffusion_models", "unet")
HUB_CACHE_SETTING = "PipeQuant.HubCache"  # the id web/js/settings.js registers
SETTINGS_FILE = "comfy.settings.json"  # where ComfyUI keeps a user's settings
CACHE_FOLDER = "pipequant_cache"  # ComfyUI model folder of the disk cache (extra_model_paths.yaml can move it)
_interrupt = threading.Event()


def _register_cache_folder() -> None:
    """models/pipequant_cache, unless extra_model_paths.yaml already named one. Its own folder
    kind, so no model list (diffusers, checkpoints, ...) ever shows a cache entry."""
    if folder_paths is not None and CACHE_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[CACHE_FOLDER] = ([str(Path(folder_paths.models_dir) / CACHE_FOLDER)], set())


_register_cache_folder()


class Interrupted(Exception):
    """Raised between sampling steps when the user interrupts (outside ComfyUI)."""


def _comfy_paths(kind: str) -> list[Path]:
    if folder_paths is None:
        return []
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    except KeyError:
        return []


def folder_roots() -> list[Path]:
    """The ordinary diffusers model folders (saves go to the first)."""
    return _comfy_paths("diffusers") + env_roots(MODELS_ENV)


def hub_cache_setting() -> bool:
    """The editor's setting "Read pipelines from the Hugging Face cache" (web/js/settings.js), as
    ComfyUI stores it: in the default user's comfy.settings.json. On unless turned off there."""
    user_directory = getattr(folder_paths, "get_user_directory", None)
    if user_directory is None:  # not inside ComfyUI
        return True
    try:
        settings = read_json_object(Path(user_directory()) / "default" / SETTINGS_FILE)
    except FileProblem:  # no settings saved yet
        return True
    return settings.get(HUB_CACHE_SETTING) is not False


def model_roots() -> list:
    """Where pipelines are found: the model folders, then the Hugging Face cache (read-only)
    unless the editor's setting or PIPEQUANT_HF_CACHE=off turns it off."""
    return folder_roots() + (hub_cache.default_root() if hub_cache_setting() else [])


def gguf_roots() -> list[Path]:
    roots: list[Path] = []
    for kind in GGUF_FOLDERS:
        roots += [p for p in _comfy_paths(kind) if p not in roots]
    return roots + env_roots(GGUF_ENV) + folder_roots()


def lora_roots() -> list[Path]:
    """ComfyUI's `loras` folders (extra model paths included), then PIPEQUANT_LORAS."""
    return _comfy_paths("loras") + env_roots(LORAS_ENV)


def disk_cache_folder() -> Path | None:
    """Where quantized components are cached: PIPEQUANT_DISK_CACHE ("off" = nowhere), else
    ComfyUI's pipequant_cache folder, else the user's cache folder (the headless runner)."""
    comfy_folders = _comfy_paths(CACHE_FOLDER)
    return disk_cache.configured_folder(comfy_folders[0] if comfy_folders else None)


def free_comfy_models(device: str, needed_bytes: float = 1e30) -> None:
    """Make room for a load of `needed_bytes` on `device`: ComfyUI's own models go first."""
    comfy_memory.make_room(model_management, device, needed_bytes)


def track_loaded(result) -> None:
    """Show the loaded components to ComfyUI's model management (so it can unload them)."""
    comfy_memory.track(model_management, result)


def default_device() -> str:
    if model_management is not None:
        return str(model_management.get_torch_device())
    return "auto"


def device_for(device: str) -> str:
    """A node's `device` input as the resolver takes it: "auto" is ComfyUI's own device."""
    return default_device() if device == "auto" else device


def request_interrupt() -> None:
    _interrupt.set()


def check_interrupt() -> None:
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()
    if _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("interrupted by the user")


class Progress:
    """ComfyUI's progress bar when there is one; a no-op otherwise."""

    def __init__(self, total: int):
        self._bar = comfy_utils.ProgressBar(total) if comfy_utils is not None else None

    def update(self, value: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update_absolute(value, total)


def progress_text(text: str) -> None:
    """Text under the running node in the editor (ComfyUI's progress text), and a log line."""
    import logging

    logging.getLogger("pipequant").info(text)
    try:
        from comfy_execution.utils import get_executing_context  # type: ignore
        from server import PromptServer  # type: ignore
    except ImportError:
        return
    context = get_executing_context()
    if context is not None and getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_progress_text(text, context.node_id)
