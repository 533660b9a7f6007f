"""Count the bytes a model really holds.

`get_memory_footprint()` reports bf16 size for torchao and quanto (their weights are tensor
subclasses) and misses bnb's quant state: count the storage behind every tensor instead.
"""

from __future__ import annotations


def inner_tensors(t):
    """The plain tensors that hold a (possibly subclassed / quantized) tensor's data."""
    import torch

    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from inner_tensors(getattr(t, name))
        return
    yield t
    # bnb keeps its scales beside the weight: Params4bit.quant_state, Int8Params.SCB.
    state = getattr(t, "quant_state", None)
    if state is not None:
        yield from _quant_state_tensors(state)
    scb = getattr(t, "SCB", None)
    if isinstance(scb, torch.Tensor):
        yield scb


def _quant_state_tensors(state):
    import torch

    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            yield value
        elif hasattr(value, "absmax"):  # nested (double-quant) state
            yield from _quant_state_tensors(value)


def tensor_bytes(module) -> int:
    """Bytes of every distinct storage behind the module's parameters and buffers."""
    seen, total = set(), 0
    tensors = [p for _, p in module.named_parameters(remove_duplicate=False)] + [
        b for _, b in module.named_buffers(remove_duplicate=False)
    ]
    for t in tensors:
        for inner in inner_tensors(t):
            if inner.device.type == "meta":
                continue
            key = (inner.untyped_storage().data_ptr(), inner.device.type, inner.device.index)
            if key in seen:
                continue
            seen.add(key)
            total += inner.untyped_storage().nbytes()
    return total


def _logical_numel(p) -> int:
    """Weights a parameter stands for: bnb keeps the shape in its quant state, a GGUF parameter
    holds packed bytes (uint8) and knows its unpacked `quant_shape`."""
    import torch

    state = getattr(p, "quant_state", None)
    if state is not None and hasattr(state, "shape"):
        return state.shape.numel()
    quant_shape = getattr(p, "quant_shape", None)
    if quant_shape is not None and p.dtype == torch.uint8:
        return torch.Size(quant_shape).numel()
    return p.numel()


def param_count(module) -> int:
    """Logical parameter count (quantized weights count as their original shape)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += _logical_numel(p)
    return total


def main_device(module) -> str:
    """Where the module's data lives (a quantized wrapper may report "meta"; its storage does not)."""
    for p in module.parameters():
        for inner in inner_tensors(p):
            return str(inner.device)
    return "cpu"
