"""torch.compile for the denoiser: regional (its repeated blocks), full (the whole model) or none.

`compile_component` only wraps: torch.compile traces on the first call, which the sampler makes
inside the pack's inference-mode guard (`load.diffusers_context`), so every compiled graph is made
and reused under the same grad mode. Regional uses the model's own `compile_repeated_blocks` where
its class declares `_repeated_blocks`, else compiles each repeated block. Shapes start static; a
changed size (a new resolution) recompiles once with dynamic shapes (torch's automatic dynamic),
then no more. Layers a backend cannot compile (the quant type's `compile_eager_layers`) run eager
inside the compiled blocks. A compile failure at run time turns the whole component back to eager,
with a warning in the report: never a failed workflow.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from .blocks import raised_by_check, repeated_blocks

_STATE = "_pipequant_compile"
log = logging.getLogger("pipequant")


@dataclass
class CompileState:
    """What was compiled in one component; kept on the module, so a cached module carries it."""

    component: str
    mode: str
    modules: list = field(default_factory=list, repr=False)  # the modules whose calls are compiled
    notes: list[str] = field(default_factory=list)
    failed: str | None = None  # the error that turned it back to eager

    def fall_back(self, exc: BaseException) -> None:
        for module in self.modules:
            module._compiled_call_impl = None
        cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # dynamo wraps the real error
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        self.failed = f"{type(cause).__name__}: {first}"
        note = f"compile ({self.mode}) of {self.component} failed at run time, running eager: {self.failed}"
        self.notes.append(note)
        log.warning("PipeQuant: %s", note)


def compile_state(module) -> CompileState | None:
    return module.__dict__.get(_STATE) if module is not None else None


def compile_component(
    module, name: str, mode: str, quant_type=None, *, backend="inductor", options: dict | None = None
) -> CompileState | None:
    """Wrap `module` for compile (`mode` regional or full); `quant_type` is its catalogue QuantType
    (None when unquantized). Idempotent: a module compiled before keeps its state and graphs."""
    if mode == "none":
        return None
    previous = compile_state(module)
    if previous is not None:
        return previous
    state = CompileState(name, mode)
    kwargs = {"backend": backend, **({"options": options} if options else {})}
    _keep_layers_eager(module, quant_type, state)
    if mode == "full":
        module.compile(**kwargs)
        state.modules = [module]
    elif getattr(module, "_repeated_blocks", None):
        module.compile_repeated_blocks(**kwargs)
        state.modules = [m for m in module.modules() if m._compiled_call_impl is not None]
    else:
        state.modules = repeated_blocks(module)
        for block in state.modules:
            block.compile(**kwargs)
        state.notes.append(
            f"{name} ({type(module).__name__}) declares no repeated blocks: compiled its "
            f"{len(state.modules)} ModuleList entries one by one"
        )
    if not state.modules:
        state.notes.append(f"{name}: nothing to compile regionally (no repeated blocks); left eager")
    for m in state.modules:
        _guard(m, state)
    module.__dict__[_STATE] = state
    return state


def _keep_layers_eager(module, quant_type, state: CompileState) -> None:
    patterns = [re.compile(p) for p in (quant_type.compile_eager_layers if quant_type is not None else ())]
    if not patterns:
        return
    import torch

    kept = []
    for qualified, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(p.search(qualified) for p in patterns):
            layer.forward = torch.compiler.disable(layer.forward)  # a graph break: this layer runs eager
            kept.append(qualified)
    if kept:
        state.notes.append(
            f"{len(kept)} layers of {state.component} left eager under compile "
            f"({quant_type.name}: {quant_type.compile_eager_reason})"
        )


def _guard(module, state: CompileState) -> None:
    """Route the module's compiled call through a fallback to its eager call."""
    compiled = module._compiled_call_impl

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            if raised_by_check(exc):
                raise  # an interrupt, not a compile failure
            state.fall_back(exc)
            return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = call
