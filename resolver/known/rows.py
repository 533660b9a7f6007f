"""How a library quantizes a few rows of a weight, for a load that quantizes as the weights
stream in (keep/stream.py): the library's own call on the rows (`RowQuantizer`), or, where a
library's arithmetic is a handful of tensor operations, those operations written into the whole
weight's tensors, checked against the library's own result first (`WrittenRows`)."""

from __future__ import annotations


class RowQuantizer:
    """A library's own quantization applied to some rows of a weight (Backend.row_quantizer).
    keep/stream.py opens a `sample` up with `parts` (every part has a row per weight row, or the
    rows are not taken), has each few rows' parts written into the whole weight's
    (`quantize_into`), and asks `assemble` for the whole weight's result and `put` to place it."""

    def takes(self, module, name: str) -> bool:
        """Whether `module`'s weight `name` (its full name in the model; one the library's quantizer
        would quantize) is quantized by rows."""
        raise NotImplementedError

    def quantize(self, module, rows):
        """The library's quantized tensor for `rows` (a slice of the weight, in the load dtype),
        as it would quantize `module`'s weight if it held only these rows."""
        raise NotImplementedError

    def parts(self, quantized) -> dict:
        """The tensors inside a result of `quantize`, by name."""
        names, _ = quantized.__tensor_flatten__()
        return {n: getattr(quantized, n) for n in names}

    def sample(self, module, weight):
        """A result of `quantize` for two of `weight`'s rows: what the whole weight's result is made
        of (its parts' dtypes and trailing shapes, its attributes). Default: the first two."""
        return self.quantize(module, weight[:2])

    def quantize_into(self, module, rows, out: dict) -> None:
        """`parts(quantize(module, rows))` written into `out` (the whole weight's parts, cut to these
        rows). Default: exactly that."""
        for name, part in self.parts(self.quantize(module, rows)).items():
            out[name].copy_(part)

    def assemble(self, sample, inner: dict, shape):
        """The whole weight's result: `inner` has `sample`'s parts at full size."""
        raise NotImplementedError

    def put(self, model, name: str, quantized) -> None:
        """Place it as the library's `create_quantized_param` leaves the model."""
        raise NotImplementedError


class WrittenRows(RowQuantizer):
    """A RowQuantizer whose parts are written by `writer`'s function (the library's arithmetic
    written out: no per-call wrapping, no temporaries, nothing to copy) once that function has given
    the library's own result for a sample of two rows, bit for bit. A sample is made once per
    `sample_key` (the library's result for some rows depends on nothing else); where the function
    does not give the sample, or there is none, the library quantizes each part itself."""

    def __init__(self):
        self.samples: dict = {}  # sample_key -> (the library's result for two rows, the checked writer or None)
        self.scratch: dict = {}  # the writer's reusable memory, by name

    def sample_key(self, module, rows) -> tuple:
        """What the library's result for rows depends on besides their values. Default: their
        length and dtype."""
        return (rows.shape[1], rows.dtype)

    def writer(self, module, sample):
        """A function (rows, out, scratch) writing the parts of the library's result for rows of
        `module`'s weight into `out`, for weights whose sample is `sample`; None where there is
        none."""
        raise NotImplementedError

    def sample(self, module, weight):
        key = self.sample_key(module, weight)
        if key not in self.samples:
            sample = self.quantize(module, weight[:2])
            self.samples[key] = (sample, self._checked(module, sample, weight[:2]))
        return self.samples[key][0]

    def quantize_into(self, module, rows, out: dict) -> None:
        _, write = self.samples.get(self.sample_key(module, rows), (None, None))
        if write is None:
            return super().quantize_into(module, rows, out)
        write(rows, out, self.scratch)

    def _checked(self, module, sample, rows):
        """`writer(module, sample)` where it gives `sample`'s parts for `rows` exactly, else None."""
        import torch

        write = self.writer(module, sample)
        if write is None:
            return None
        parts = self.parts(sample)
        mine = {n: torch.empty_like(t) for n, t in parts.items()}
        try:
            write(rows, mine, {})
        except (RuntimeError, TypeError, ValueError, KeyError):
            return None
        return write if all(torch.equal(mine[n], t) for n, t in parts.items()) else None


def owner_of(model, name: str):
    """(the module holding tensor `name` of `model`, the tensor's attribute name)."""
    path, _, attribute = name.rpartition(".")
    return model.get_submodule(path), attribute


def scratch_tensor(scratch: dict, name: str, shape, dtype):
    """Reusable memory of this shape: the block held under `name`, or a larger one in its place."""
    import math

    import torch

    size, held = math.prod(shape), scratch.get(name)
    if held is None or held.numel() < size or held.dtype != dtype:
        scratch[name] = None  # the smaller one goes before the larger one is made
        held = scratch[name] = torch.empty(size, dtype=dtype)
    return held[:size].view(shape)
