"""What a LoRA file's tensors must be before any of them touches a module.

peft and diffusers check little: an integer or NaN tensor loads and turns every image black, a
`lora_A` wider than its layer makes diffusers' FLUX loader widen the shared base layer in place,
a missing `lora_B` or a rank mismatch fails half-way through the injection. So the file is read
once (per file identity) and checked here, tensor by tensor, then layer by layer against the
modules it targets; each problem names the file, the tensor and what is valid.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..problems import Problem, ValidationError

# Where a converted key names its layer and which part of the pair it is.
DOWN = (".lora_A.weight", ".lora.down.weight")
UP = (".lora_B.weight", ".lora.up.weight")
UP_BIAS = (".lora_B.bias", ".lora.up.bias")
MAGNITUDE = (".lora_magnitude_vector",)
ALPHA = (".alpha",)
_KINDS = (("down", DOWN), ("up", UP), ("up_bias", UP_BIAS), ("magnitude", MAGNITUDE), ("alpha", ALPHA))
_SUMMARIES: OrderedDict = OrderedDict()  # (pipeline class, path, file key) -> {layer: LayerShapes}
_MAX_SUMMARIES = 64
_lock = threading.Lock()


@dataclass(frozen=True)
class LayerShapes:
    """One layer's adapter as the file holds it: enough to check it against the module."""

    key: str  # the lora_A (down) key, for messages
    down: tuple[int, ...]
    up: tuple[int, ...]
    extra: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (kind, shape) of bias / magnitude


def refuse(code: str, lora_name: str, message: str, suggestion: str) -> ValidationError:
    return ValidationError([Problem(code, "lora_name", f'"{lora_name}": {message}', suggestion)])


def _split(key: str) -> tuple[str, str] | None:
    for kind, suffixes in _KINDS:
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[: -len(suffix)], kind
    return None


def check_tensors(lora_name: str, tensors: dict) -> None:
    """Every tensor of the file (before diffusers converts it): floating point, not empty, finite;
    an alpha is one number."""
    import torch

    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise refuse("lora_malformed", lora_name, f'"{key}" is not a tensor', "re-save the LoRA with safetensors")
        if not value.is_floating_point():
            raise refuse(
                "lora_dtype_invalid",
                lora_name,
                f'tensor "{key}" is {str(value.dtype).replace("torch.", "")}; LoRA weights are floating point',
                "re-save the LoRA in float16, bfloat16 or float32",
            )
        if value.numel() == 0:
            raise refuse(
                "lora_malformed",
                lora_name,
                f'tensor "{key}" is empty (shape {tuple(value.shape)})',
                "re-download or re-train the LoRA: its rank must be at least 1",
            )
        if key.endswith(ALPHA) and value.numel() != 1:
            raise refuse(
                "lora_malformed",
                lora_name,
                f'"{key}" holds {value.numel()} numbers; an alpha is one number',
                "re-save the LoRA with one alpha per layer",
            )
        if not bool(torch.isfinite(value.float()).all()):
            raise refuse(
                "lora_nonfinite",
                lora_name,
                f'tensor "{key}" holds NaN or infinite values: it would turn every image black',
                "re-download the LoRA, or re-train it (the training diverged)",
            )
    check_pairs(lora_name, tensors)


# The halves of a layer as files name them (peft/diffusers, kohya, old diffusers), before conversion.
RAW_PAIRS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)


def check_pairs(lora_name: str, keys) -> None:
    """Every down tensor has its up tensor and back, in the file's own names (a converter would
    otherwise fail with a bare KeyError)."""
    keys = set(keys)
    for down, up in RAW_PAIRS:
        for key in sorted(keys):
            for have, want in ((down, up), (up, down)):
                if key.endswith(have) and key[: -len(have)] + want not in keys:
                    raise refuse(
                        "lora_pair_missing",
                        lora_name,
                        f'"{key}" has no "{key[: -len(have)] + want}"',
                        "re-download the LoRA: every layer needs both its down (lora_A) and up (lora_B) tensors",
                    )


def layer_shapes(lora_name: str, state: dict) -> dict[str, LayerShapes]:
    """{layer: its shapes} of a converted state dict; refuses missing halves, wrong ranks, shapes
    that are not a LoRA's. Keys that are not LoRA weights are left to the caller (None layer)."""
    parts: dict[str, dict] = {}
    for key, value in state.items():
        found = _split(key)
        if found is None:
            continue
        layer, kind = found
        parts.setdefault(layer, {})[kind] = (key, tuple(value.shape))
    out = {}
    for layer, kinds in parts.items():
        if "down" not in kinds or "up" not in kinds:
            have, missing = ("down", "up") if "down" in kinds else ("up", "down")
            if have not in kinds:  # only an alpha, bias or magnitude: nothing to apply
                key = next(iter(kinds.values()))[0]
                raise refuse(
                    "lora_pair_missing",
                    lora_name,
                    f'"{key}" has no lora_A/lora_B pair for layer "{layer}"',
                    "re-download the LoRA: every layer needs both its lora_A (down) and lora_B (up) tensors",
                )
            raise refuse(
                "lora_pair_missing",
                lora_name,
                f'layer "{layer}" has its {"lora_A (down)" if have == "down" else "lora_B (up)"} tensor '
                f"but no {'lora_B (up)' if missing == 'up' else 'lora_A (down)'} tensor",
                "re-download the LoRA: every layer needs both halves",
            )
        (down_key, down), (_, up) = kinds["down"], kinds["up"]
        if len(down) not in (2, 4) or len(up) != len(down):
            raise refuse(
                "lora_shape_invalid",
                lora_name,
                f'layer "{layer}": lora_A {list(down)} and lora_B {list(up)} are not the shapes of a LoRA '
                "(two matrices, or two convolution kernels)",
                "re-download the LoRA",
            )
        if down[0] != up[1]:
            raise refuse(
                "lora_rank_mismatch",
                lora_name,
                f'layer "{layer}": lora_A has rank {down[0]} but lora_B has rank {up[1]}',
                "re-download the LoRA: both halves of a layer share one rank",
            )
        extra = tuple((k, s) for k, (_, s) in kinds.items() if k in ("up_bias", "magnitude"))
        out[layer] = LayerShapes(down_key, down, up, extra)
    return out


def remember(key: tuple, compute) -> dict[str, LayerShapes]:
    """The file's layer shapes, read once per (pipeline class, path, file identity)."""
    with _lock:
        if key in _SUMMARIES:
            _SUMMARIES.move_to_end(key)
            return _SUMMARIES[key]
    value = compute()
    with _lock:
        _SUMMARIES[key] = value
        while len(_SUMMARIES) > _MAX_SUMMARIES:
            _SUMMARIES.popitem(last=False)
    return value


def _features(module) -> tuple[int | None, int | None]:
    """(in, out) of a Linear or Conv layer, quantized ones included (bnb, torchao, quanto, GGUF)."""
    base = getattr(module, "base_layer", module)  # already wrapped by an earlier adapter
    fan_in = getattr(base, "in_features", None) or getattr(base, "in_channels", None)
    fan_out = getattr(base, "out_features", None) or getattr(base, "out_channels", None)
    if fan_in is None or fan_out is None:
        weight = getattr(base, "weight", None)
        shape = tuple(getattr(weight, "shape", ()))
        if len(shape) >= 2:
            fan_out, fan_in = shape[0], shape[1]
    return fan_in, fan_out


def check_against(lora_name: str, layer: str, shapes: LayerShapes, module) -> None:
    """The layer's adapter fits `module` exactly: peft would otherwise fail half-way, and diffusers'
    FLUX loader would widen the shared base layer to the LoRA's width."""
    fan_in, fan_out = _features(module)
    if fan_in is None or fan_out is None:
        raise refuse(
            "lora_mismatch",
            lora_name,
            f'layer "{layer}" is a {type(getattr(module, "base_layer", module)).__name__}, which takes no LoRA',
            "use a LoRA trained for this model family and size",
        )
    if shapes.down[1] != fan_in or shapes.up[0] != fan_out:
        raise refuse(
            "lora_shape_mismatch",
            lora_name,
            f'layer "{layer}" is {fan_in} -> {fan_out} wide, but the LoRA is {shapes.down[1]} -> {shapes.up[0]} '
            f"(lora_A {list(shapes.down)}, lora_B {list(shapes.up)})",
            "use a LoRA trained for this model and size (a Control LoRA that widens layers is not supported)",
        )
    for kind, shape in shapes.extra:
        if tuple(shape) != (fan_out,):
            what = "lora_B bias" if kind == "up_bias" else "DoRA magnitude vector"
            raise refuse(
                "lora_shape_mismatch",
                lora_name,
                f'layer "{layer}": its {what} has shape {list(shape)}, the layer has {fan_out} outputs',
                "re-download the LoRA",
            )
