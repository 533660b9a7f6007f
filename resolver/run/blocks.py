"""The denoiser's repeated blocks, and the interrupt check that runs before each of them.

ComfyUI's Cancel used to be checked only between denoising steps, so one slow step (a big FLUX
step on CPU takes minutes) could not be stopped. A forward pre-hook on every repeated block calls
the check of the run in progress, so a run stops within one block. The hook is installed once per
module and reads the current check from a thread-local: installing or removing hooks per run would
change what torch.compile guards on and recompile every run. Under compile the hook runs outside
the graph (`torch.compiler.disable`), at the block's boundary.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager

_MARK = "_pipequant_interrupt_hook"
_state = threading.local()


def repeated_blocks(model) -> list:
    """The blocks a model repeats: the classes it declares in `_repeated_blocks` (diffusers'
    regional-compile list), else the entries of every ModuleList of one class (outermost only)."""
    import torch

    declared = tuple(getattr(model, "_repeated_blocks", None) or ())
    if declared:
        return [m for m in model.modules() if type(m).__name__ in declared]
    found, prefixes = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in prefixes):
            continue
        if isinstance(module, torch.nn.ModuleList) and len(module) and len({type(c) for c in module}) == 1:
            found.extend(module)
            prefixes.append(name + ".")
    return found


@contextmanager
def interrupt_check(check: Callable[[], None] | None):
    """While active, every hooked block calls `check()` before it runs; what it raises stops the run."""
    previous = getattr(_state, "check", None)
    _state.check, _state.raised = check, None
    try:
        yield
    finally:
        _state.check = previous


def raised_by_check(exc: BaseException) -> bool:
    """Whether `exc` is the interrupt a block's check raised (not a failure to fall back from)."""
    return exc is getattr(_state, "raised", None)


def _check_before_block(module, args):
    check = getattr(_state, "check", None)
    if check is not None:
        try:
            check()
        except BaseException as exc:
            _state.raised = exc
            raise


_hook = None


def _compiled_safe_hook():
    global _hook
    if _hook is None:
        import torch

        _hook = torch.compiler.disable(_check_before_block)
    return _hook


def install_interrupt_hooks(model) -> int:
    """Hook every repeated block of `model` once; returns how many blocks are hooked."""
    blocks = repeated_blocks(model)
    for block in blocks:
        if not block.__dict__.get(_MARK):
            block.register_forward_pre_hook(_compiled_safe_hook())
            block.__dict__[_MARK] = True
    return len(blocks)
