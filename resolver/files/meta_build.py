"""Build a component's model on the meta device from its config, within bounds.

The estimate needs every Linear's shape, which only an instance knows. A config is a stranger's
file: `num_layers = 10**9` would build for hours, a field of the wrong type fails deep inside the
library. So the config is checked before building (field types against the class's defaults,
layer counts against a sane maximum), and the build itself is bounded: hooks count every
parameter and module as it is registered and stop the build past a size or time limit.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager

from ..known.class_facts import config_defaults

MAX_PARAMS = 200_000_000_000  # 10x the largest diffusion component today (FLUX.1 12B, T5-XXL 4.8B)
MAX_MODULES = 50_000  # FLUX.1-dev has ~1 500, T5-XXL ~700
MAX_SECONDS = 20.0  # the 12B FLUX transformer builds in about 1 s
MAX_COUNT = 10_000  # a layer, block or head count above this is not a model
COUNT_FIELD = re.compile(r".*(layers?|blocks|depth|heads?)|layers_per_block")


class BuildRefused(ValueError):
    """The config cannot be built within bounds; `code` and the message say which field or limit."""

    def __init__(self, code: str, message: str, suggestion: str = "re-download the pipeline or fix its config.json"):
        self.code, self.suggestion = code, suggestion
        super().__init__(message)


def _wrong_type(value, default) -> str | None:
    """The JSON type `value` should have, when it plainly has another (None: fine)."""
    if value is None or default is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return None if isinstance(value, bool) or value in (0, 1) else "true or false"
    if isinstance(default, (int, float)):
        # Some count fields take one value per block (a list) as well.
        return None if number or isinstance(value, list) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, (str, list)) else "text"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, list) or number or isinstance(value, str) else "a list"
    return None


def check_config(config: dict, defaults: dict, where: str) -> None:
    """Field types (against the class's defaults, class_facts.config_defaults) and counts, before
    anything is built; raises BuildRefused naming the field."""
    for key, value in config.items():
        if key.startswith("_") or not isinstance(key, str):
            continue
        expected = _wrong_type(value, defaults.get(key))
        if expected is not None:
            raise BuildRefused(
                "config_field_type",
                f'{where}: "{key}" is {value!r:.60}, but it must be {expected} (default {defaults[key]!r:.40})',
                f'set "{key}" to {expected}, or re-download the pipeline',
            )
        counts = value if isinstance(value, list) else [value]
        if COUNT_FIELD.fullmatch(key) and any(
            isinstance(v, int) and not isinstance(v, bool) and v > MAX_COUNT for v in counts
        ):
            raise BuildRefused(
                "model_too_large",
                f'{where}: "{key}" is {value!r:.60}; no real model has more than {MAX_COUNT:,}',
                "this config does not describe a real model: re-download the pipeline",
            )


@contextmanager
def bounded(where: str, max_params: int | None = None, max_modules: int | None = None, seconds: float | None = None):
    """Stop a model build in this thread once it registers more than `max_params` parameters or
    `max_modules` modules, or runs longer than `seconds` (defaults: the module's limits, read at
    call time). Other threads' builds are not counted."""
    import torch.nn.modules.module as module_mod

    max_params = MAX_PARAMS if max_params is None else max_params
    max_modules = MAX_MODULES if max_modules is None else max_modules
    seconds = MAX_SECONDS if seconds is None else seconds
    me = threading.get_ident()
    deadline = time.monotonic() + seconds
    counts = {"params": 0, "modules": 0}

    def check():
        if time.monotonic() > deadline:
            raise BuildRefused(
                "model_build_timeout",
                f"{where}: building the model from its config took longer than {seconds:.0f} s",
                "the config describes a model far larger than any real one",
            )

    def on_param(module, name, param):
        if threading.get_ident() == me and param is not None:
            counts["params"] += param.numel()
            if counts["params"] > max_params:
                raise BuildRefused(
                    "model_too_large",
                    f"{where}: the config describes more than {max_params:,} parameters",
                    "this config does not describe a real model: re-download the pipeline",
                )
            check()

    def on_module(module, name, submodule):
        if threading.get_ident() == me:
            counts["modules"] += 1
            if counts["modules"] > max_modules:
                raise BuildRefused(
                    "model_too_large",
                    f"{where}: the config describes more than {max_modules:,} layers",
                    "this config does not describe a real model: re-download the pipeline",
                )
            check()

    handles = [
        module_mod.register_module_parameter_registration_hook(on_param),
        module_mod.register_module_module_registration_hook(on_module),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def build_on_meta(cls, library: str, config: dict, where: str):
    """An instance of `cls` on the meta device (no memory for weights), from a checked config."""
    import torch

    check_config(config, config_defaults(cls, library), where)
    with bounded(where), torch.device("meta"):
        try:
            if library == "diffusers":
                return cls.from_config(config)
            return cls(cls.config_class.from_dict(dict(config)))
        except BuildRefused:
            raise
        except Exception as exc:  # the library's own complaint about the config, in one line
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise BuildRefused(
                "config_invalid", f"{where}: the model cannot be built from it ({type(exc).__name__}: {message})"
            ) from None
