"""A quantizer asked about one block of each run of identical blocks, not every block.

What a quantizer converts is asked of a meta-device copy of the component (footprint.py). Its cost
grows with the module count: SD3.5 Large's 38 joint blocks, T5-XXL's 24 layers and CLIP-G's 32 are
each the same block many times, and the quantizers' layer replacement and our copies walked every
one of them (2 s of CPU for a new model in a warm process, issue 25). Here each run of at least
MIN_RUN consecutive children of a numbered container (ModuleList, Sequential) that are alike (the
same classes and the same parameter and buffer shapes and dtypes, all the way down) keeps its first,
second and last block; every block between the second and the last answers as the second does.

Rules that name a block by its number are what could tell those blocks apart. The first block is
kept for the rules libraries ship (SDNQ keeps "single_transformer_blocks.0.norm.linear" of FLUX
unquantized, and a first block's layer in five other families); a quantizer that treats the last block
its own way is caught by comparing it with the second (`second_and_last_agree`: else the whole model
is asked); any string in the quantization config that names a block by its number (a skip list
entry "transformer_blocks.7", a pattern with \\d) sends the question to the whole model
(`names_blocks`). tests/test_block_fold.py checks the folded answer against the whole model's for
every backend and quant type on the shipped architectures and on models of the other families.
"""

from __future__ import annotations

import re

MIN_RUN = 4  # a run of three keeps all three: nothing to fold
# a dotted name with a number for a part ("blocks.7", "layers.0.mlp"; not "0.2.8"), or a regex digit
_BLOCK_NUMBER = re.compile(r"[A-Za-z_]\w*\.\d+(\.|$)|\\d")


class Folded:
    """A structural copy of a model with the middle blocks of each run removed, and the way back
    from a name in the whole model to the name that answers for it."""

    def __init__(self, model, stand_ins: dict[str, dict[str, str]], runs: list[tuple[str, str, str]]):
        self.model = model
        self.stand_ins = stand_ins  # container path -> {dropped child key: kept key answering for it}
        self.runs = runs  # (container path, second key, last key) of every folded run
        self._names: dict[str, str] = {}  # name_for's answers: each quant type asks the same names

    def name_for(self, name: str) -> str:
        """The name in the folded model that answers for `name` of the whole model."""
        found = self._names.get(name)
        if found is None:
            parts = name.split(".")
            for i in range(len(parts)):
                keys = self.stand_ins.get(".".join(parts[:i]))
                if keys is not None and parts[i] in keys:
                    parts[i] = keys[parts[i]]
            found = self._names[name] = ".".join(parts)
        return found

    def second_and_last_agree(self, names: set[str], answer: set[str]) -> bool:
        """Whether each run's second and last block got the same answer for every name in them."""
        for path, second, last in self.runs:
            head, tail = _child(path, second), _child(path, last)
            seconds = {n[len(head) :] for n in names if n.startswith(head)}
            lasts = {n[len(tail) :] for n in names if n.startswith(tail)}
            if seconds != lasts:
                return False
            if any((head + rest in answer) != (tail + rest in answer) for rest in seconds):
                return False
        return True


def _child(path: str, key: str) -> str:
    """The prefix of names inside child `key` of the container at `path` ("" for the model)."""
    return f"{path}.{key}." if path else f"{key}."


def answered(folded: Folded, whole, config, candidates: list[str], ask) -> frozenset[str]:
    """Which of `candidates` (names in the whole model) the quantizer quantizes: `ask(model, names)`
    of the folded model, or of the `whole` model where the config names blocks by number or the
    folded answer shows the last block of a run treated apart from the second."""
    if not names_blocks(config):
        asked = {folded.name_for(n) for n in candidates}
        answer = ask(folded.model, asked)
        if folded.second_and_last_agree(asked, answer):
            return frozenset(n for n in candidates if folded.name_for(n) in answer)
    return frozenset(ask(whole, set(candidates)))


def names_blocks(config) -> bool:
    """Whether any string in the quantization config (its skip lists, patterns) names a block by
    its number, so that blocks of one run may be answered differently."""
    values = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    return any(_BLOCK_NUMBER.search(text) for text in _strings(values))


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _strings(v)


def fold(model) -> Folded:
    """A structural copy of `model` (files/meta_build.structural_copy: fresh containers, shared
    tensors) with each run of alike blocks cut to its first, second and last."""
    from ..files.meta_build import structural_copy

    signatures: dict[int, tuple] = {}
    stand_ins: dict[str, dict[str, str]] = {}
    leave_out: dict[int, set[str]] = {}
    runs: list[tuple[str, str, str]] = []
    for path, module in model.named_modules():
        children = module._modules
        if len(children) < MIN_RUN or not all(k.isdigit() for k in children):
            continue
        keys = list(children)
        start = 0
        while start < len(keys):
            end = start + 1
            first = _signature(children[keys[start]], signatures)
            while end < len(keys) and _signature(children[keys[end]], signatures) == first:
                end += 1
            if end - start >= MIN_RUN:
                for key in keys[start + 2 : end - 1]:
                    stand_ins.setdefault(path, {})[key] = keys[start + 1]
                    leave_out.setdefault(id(module), set()).add(key)
                runs.append((path, keys[start + 1], keys[end - 1]))
            start = end
    return Folded(structural_copy(model, leave_out=leave_out), stand_ins, runs)


def _signature(module, memo: dict[int, tuple]) -> tuple | None:
    """What a quantizer could tell one block from another by, other than its place: the classes of
    it and every submodule, every parameter's and buffer's shape, dtype and gradient flag."""
    if module is None:
        return None
    found = memo.get(id(module))
    if found is None:
        found = (
            type(module),
            tuple(_tensor(k, p) for k, p in module._parameters.items()),
            tuple(_tensor(k, b) for k, b in module._buffers.items()),
            tuple(sorted(getattr(module, "_non_persistent_buffers_set", ()))),
            tuple((k, _signature(c, memo)) for k, c in module._modules.items()),
        )
        memo[id(module)] = found
    return found


def _tensor(key: str, tensor) -> tuple:
    if tensor is None:
        return (key, None)
    return (key, tuple(tensor.shape), tensor.dtype, tensor.requires_grad, type(tensor))
