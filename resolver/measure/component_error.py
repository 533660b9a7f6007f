"""Measured error of one component: the reference (load dtype) and the quantized module run on the
same inputs, captured from a reference run of the user's own prompt.

`capture_first_calls` records each component's first forward call (one denoising step, one
text-encoder pass); `measure` runs the quantized module on it and compares the outputs, with a hook
on each of its Linear layers that compares that layer with the reference layer on the layer's own
input (the worst layers). Only one call's inputs are kept, never every layer's activations.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

WORST_LAYERS = 3  # layers listed per component


@dataclass
class Call:
    """One forward call: inputs (cloned) and the reference output."""

    args: tuple
    kwargs: dict
    output: object


@dataclass
class ComponentError:
    relative_error: float  # ||quantized - reference|| / ||reference|| over every float output tensor
    worst_layers: list[dict] = field(default_factory=list)  # [{"layer", "relative_error"}], worst first


def _map_tensors(value, fn):
    import torch

    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return type(value)({k: _map_tensors(v, fn) for k, v in value.items()}) if type(value) is dict else value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _clone(value):
    return _map_tensors(value, lambda t: t.detach().clone())


def float_tensors(value) -> list:
    """Every floating tensor of a module output (tuples, dicts and diffusers/transformers outputs)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if hasattr(value, "to_tuple"):  # ModelOutput: its fields that are set, in order
        value = value.to_tuple()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in float_tensors(v)]
    return []


def _output(value):
    """A ModelOutput as a plain tuple (so that a clone keeps every field)."""
    return value.to_tuple() if hasattr(value, "to_tuple") else value


@contextmanager
def capture_first_calls(modules: dict):
    """Yields a dict that fills with `name -> Call` for each module's first forward call."""
    calls: dict[str, Call] = {}
    handles = []

    def hooks(name):
        def pre(module, args, kwargs):
            if name not in calls and name + ":in" not in pending:
                pending[name + ":in"] = (_clone(args), _clone(kwargs))

        def post(module, args, kwargs, output):
            if name not in calls and name + ":in" in pending:
                a, k = pending.pop(name + ":in")
                calls[name] = Call(a, k, _clone(_output(output)))

        return pre, post

    pending: dict[str, tuple] = {}
    try:
        for name, module in modules.items():
            pre, post = hooks(name)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
        yield calls
    finally:
        for h in handles:
            h.remove()


def relative_error(reference, output) -> float:
    """sqrt(sum ||out - ref||^2 / sum ||ref||^2) over the float tensors of two outputs, in float32."""
    refs, outs = float_tensors(reference), float_tensors(output)
    if len(refs) != len(outs) or not refs:
        raise ValueError(f"outputs differ in shape: {len(refs)} reference tensors, {len(outs)} measured")
    num = den = 0.0
    for r, o in zip(refs, outs):
        r32 = r.detach().float()
        d = o.detach().to(r32.device).float() - r32
        num += float((d * d).sum())
        den += float((r32 * r32).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def _linears(module) -> dict:
    import torch

    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def measure(quantized, call: Call, reference=None) -> ComponentError:
    """Run `quantized` on the captured call; with `reference` (the reference module), also each
    Linear layer against the reference layer of the same name, on the quantized run's input to it."""
    import torch
    import torch.nn.functional as F

    ref_layers = _linears(reference) if reference is not None else {}
    layer_errors: dict[str, list[float]] = {}
    handles = []

    def layer_hook(name, ref):
        def hook(module, args, output):
            if not args or not isinstance(output, torch.Tensor):
                return
            x = args[0]
            weight = ref.weight.detach().to(x.device)  # one layer at a time (offloaded references too)
            bias = ref.bias.detach().to(x.device) if ref.bias is not None else None
            expected = F.linear(x.to(weight.dtype), weight, bias).float()
            diff = float(((output.float() - expected) ** 2).sum())
            norm = float((expected**2).sum())
            layer_errors.setdefault(name, [0.0, 0.0])
            layer_errors[name][0] += diff
            layer_errors[name][1] += norm

        return hook

    try:
        for name, module in quantized.named_modules():
            ref = ref_layers.get(name)
            if ref is not None and name:
                handles.append(module.register_forward_hook(layer_hook(name, ref)))
        output = quantized(*call.args, **call.kwargs)
    finally:
        for h in handles:
            h.remove()
    layers = [{"layer": n, "relative_error": math.sqrt(d / s) if s > 0 else 0.0} for n, (d, s) in layer_errors.items()]
    layers.sort(key=lambda row: -row["relative_error"])
    return ComponentError(relative_error(call.output, _output(output)), layers[:WORST_LAYERS])
