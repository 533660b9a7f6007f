"""Build a component's model on the meta device from its config, within bounds.

The estimate needs every Linear's shape, which only an instance knows. A config is a stranger's
file: `num_layers = 10**9` would build for hours, a field of the wrong type fails deep inside the
library. So the config is checked before building (field types against the class's defaults,
layer counts against a sane maximum), and the build itself is bounded: hooks count every
parameter and module as it is registered and stop the build past a size or time limit.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections import OrderedDict
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

    isolate_empty_init()
    check_config(config, config_defaults(cls, library), where)
    with bounded(where), torch.device("meta"), skipping_init(), paused_gc():
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


# -- empty-weight contexts that stay in their own thread --------------------------------------------
# accelerate's `init_empty_weights` (diffusers' from_pretrained, the bnb/quanto quantizers' layer
# replacement) and peft's copy of it (LoRA injection) put every new parameter on the meta device by
# replacing `nn.Module.register_parameter` for the whole process. The editor's live checks replace
# layers on meta models in worker threads while the prompt thread loads and applies LoRAs: the
# load's or the LoRA's new parameters landed on meta ("Cannot copy out of meta tensor"), and two
# overlapping contexts restored each other's patch, leaving every later load on meta ("Unsupported
# device type 'meta'") until restart. Installed once, the contexts below do the same per thread.
_EMPTY_INIT = threading.local()
_INSTALL_LOCK = threading.Lock()
_installed = False


def _empty_init_device():
    stack = getattr(_EMPTY_INIT, "devices", None)
    return stack[-1] if stack else None


def _thread_local_init_on_device(skip_flag_owner=None):
    import torch

    @contextmanager
    def init_on_device(device, include_buffers=None):
        if skip_flag_owner is not None and getattr(skip_flag_owner[0], "_skip", False) is True:
            yield  # peft's skip_init_on_device
            return
        if include_buffers is None:
            from accelerate.utils import parse_flag_from_env

            include_buffers = parse_flag_from_env("ACCELERATE_INIT_INCLUDE_BUFFERS", False)
        if include_buffers:  # torch's device context is already per thread
            with torch.device(device):
                yield
            return
        stack = _EMPTY_INIT.__dict__.setdefault("devices", [])
        stack.append(torch.device(device))
        try:
            yield
        finally:
            stack.pop()

    return init_on_device


def isolate_empty_init() -> bool:
    """Make accelerate's and peft's empty-weight contexts act on their own thread only (idempotent,
    cheap after the first call). False if another library's patch is active right now (retried on
    the next call)."""
    global _installed
    if _installed:
        return True
    with _INSTALL_LOCK:
        if _installed:
            return True
        import torch.nn as nn

        pristine = nn.Module.register_parameter
        if getattr(pristine, "__qualname__", "") != "Module.register_parameter":
            return False

        def register_parameter(module, name, param):
            pristine(module, name, param)
            device = _empty_init_device()
            if device is not None and param is not None:  # accelerate's register_empty_parameter
                param_cls = type(module._parameters[name])
                kwargs = module._parameters[name].__dict__
                kwargs["requires_grad"] = param.requires_grad
                hf_initialized = kwargs.pop("_is_hf_initialized", None)
                module._parameters[name] = param_cls(module._parameters[name].to(device), **kwargs)
                if hf_initialized is not None:
                    module._parameters[name]._is_hf_initialized = hf_initialized

        register_parameter.__qualname__ = "Module.register_parameter"  # what the check above looks for
        register_parameter.pipequant_thread_local = True
        try:
            import accelerate.big_modeling as big_modeling
        except ImportError:
            big_modeling = None
        try:
            import peft.utils.integrations as peft_integrations
        except ImportError:
            peft_integrations = None
        nn.Module.register_parameter = register_parameter
        if big_modeling is not None:
            replacement = _thread_local_init_on_device()
            big_modeling.init_on_device = replacement  # what init_empty_weights looks up
            import accelerate

            accelerate.init_on_device = replacement  # and callers of accelerate.init_on_device
        if peft_integrations is not None:
            owner: list = []
            replacement = _thread_local_init_on_device(owner)
            owner.append(replacement)  # peft's skip flag is set on the function it looks up
            peft_integrations._init_on_device = replacement
        _installed = True
        return True


# -- no weight initialisation while building on meta ---------------------------------------------------
# A meta tensor holds no values, yet every `torch.nn.init` call on it still dispatches: 60 % of the 12B
# FLUX transformer's 0.1 s meta build. Wrapped on first use, each public init function hands its
# tensor back untouched while `skipping_init` is active in the calling thread; everywhere else (every
# real load, other threads) it runs as it always does.
_SKIP_INIT = threading.local()


def _install_init_skip() -> None:
    """Wrap each public initialiser not wrapped yet: checked on every use, since a library that
    swaps `torch.nn.init`'s functions for its own and puts back what it saved at import
    (transformers' weight-init guards) drops the wrappers."""
    import torch.nn.init as init

    def skippable(function):
        def wrapper(tensor, *args, **kwargs):
            if getattr(_SKIP_INIT, "depth", 0):
                return tensor
            return function(tensor, *args, **kwargs)

        wrapper.__name__ = wrapper.__qualname__ = function.__name__
        wrapper.__doc__ = function.__doc__
        wrapper.__wrapped__ = function
        wrapper.pipequant_skippable = True
        return wrapper

    with _INSTALL_LOCK:
        for name in dir(init):
            function = getattr(init, name)
            if name.endswith("_") and not name.startswith("_") and callable(function):
                if not getattr(function, "pipequant_skippable", False):
                    setattr(init, name, skippable(function))


@contextmanager
def skipping_init():
    """`torch.nn.init`'s in-place initialisers do nothing in this thread inside the context (for
    models built on the meta device, whose tensors hold no values)."""
    _install_init_skip()
    _SKIP_INIT.depth = getattr(_SKIP_INIT, "depth", 0) + 1
    try:
        yield
    finally:
        _SKIP_INIT.depth -= 1


# -- no garbage collection while a model is built or rewritten -------------------------------------------
# A meta build or a quantizer's layer replacement allocates tens of thousands of small objects, and
# each few hundred start a collection that walks every object the process holds, the cached meta
# models included: 40 % of a new model's plan in a warm process (0.8 of 2.0 s for SD3.5 Large).
# Nothing built there is cyclic garbage worth collecting early; the next collection after it finds it.
_GC_LOCK = threading.Lock()
_gc = {"pauses": 0, "was_on": False}


@contextmanager
def paused_gc():
    """Python's cyclic garbage collector paused for the duration (process-wide; nested and
    concurrent uses counted, and it is left off where it was off before the first)."""
    import gc

    with _GC_LOCK:
        if _gc["pauses"] == 0:
            _gc["was_on"] = gc.isenabled()
            gc.disable()
        _gc["pauses"] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc["pauses"] -= 1
            if _gc["pauses"] == 0 and _gc["was_on"]:
                gc.enable()


# -- copies of a module tree --------------------------------------------------------------------------
def structural_copy(module, own_tensors: bool = False, leave_out: dict | None = None, _memo: dict | None = None):
    """A copy of a module tree: every module a shallow copy with fresh containers (children,
    parameters, buffers, hooks), so a layer, parameter or hook replaced in one never reaches the other
    (1.3 ms for a 200M FLUX transformer; a deepcopy sharing the tensors took 15 ms). The tensors are
    shared; with `own_tensors` each parameter and buffer is a new tensor object over the same data
    (ties kept), so a quantizer that sets `.data` on a meta weight changes only its own copy.
    `leave_out` maps id(a module) to names of its children the copy goes without."""
    memo = {} if _memo is None else _memo
    state = {}
    for key, value in vars(module).items():
        if key == "_modules":
            dropped = leave_out.get(id(module), ()) if leave_out else ()
            state[key] = {
                name: structural_copy(child, own_tensors, leave_out, memo) if child is not None else None
                for name, child in value.items()
                if name not in dropped
            }
        elif own_tensors and key in ("_parameters", "_buffers"):
            state[key] = {name: _own(t, memo) for name, t in value.items()}
        elif type(value) in _CONTAINERS:  # parameters, buffers, hooks, non-persistent names
            state[key] = value.copy()
        elif isinstance(value, (dict, set, list)):  # a subclass: .copy() could change its type
            state[key] = copy.copy(value)
        else:
            state[key] = value
    twin = type(module).__new__(type(module))  # as copy.copy makes it, without its generic path
    object.__setattr__(twin, "__dict__", state)
    return twin


_CONTAINERS = (dict, set, list, OrderedDict)


def _own(tensor, memo: dict):
    import torch

    if tensor is None:
        return None
    if id(tensor) not in memo:
        if isinstance(tensor, torch.nn.Parameter):
            fresh = torch.nn.Parameter(tensor.data, requires_grad=tensor.requires_grad)
            fresh.__dict__.update(tensor.__dict__)
        else:
            fresh = tensor.data
        memo[id(tensor)] = fresh
    return memo[id(tensor)]
