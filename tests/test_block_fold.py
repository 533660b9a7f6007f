"""The planner asks a quantizer about one block of each run of alike blocks (decide/footprint.py):
its answer, spread back over the run, is the whole model's answer for every backend and quant type,
on the full-size FLUX.1-dev and SDXL and on every family with its block counts raised to six; where
a rule singles out a block (a config naming it, a quantizer treating the last one apart) the whole
model is asked instead."""

from __future__ import annotations

import gc
import re

import pytest
import torch
from helpers import shape_facts

from pipequant.resolver.decide import footprint
from pipequant.resolver.decide.footprint import answer_from_fold, fold_runs, names_blocks
from pipequant.resolver.files import shape_seed, shape_store
from pipequant.resolver.files.inspect_model import inspect_model
from pipequant.resolver.files.meta_build import build_on_meta, paused_gc
from pipequant.resolver.known import catalogue
from pipequant.testing.families import FAMILIES, ensure_family

BLOCK_COUNT = re.compile(r"num_(\w+_)?(layers|blocks)")  # block counts, not widths or heads


@pytest.fixture
def no_stored_facts(monkeypatch):
    with shape_facts(monkeypatch, "off", seed="off"):
        yield


def _configs(library: str):
    """(backend, quant type, a fresh config) for every installed backend and quant type of `library`:
    fresh, since a quantizer adds its own skip entries to the config it is handed."""
    for name in catalogue.backend_names():
        backend = catalogue.get_backend(name)
        if library not in backend.libraries or backend.needs_file or not backend.installed():
            continue
        for quant in backend.quant_types:
            options = {o.name: o.default for o in backend.options}
            try:
                backend.build_config(library, quant.name, torch.bfloat16, options)
            except Exception:  # a quant type this library's config class does not take
                continue
            yield (
                backend,
                quant.name,
                lambda b=backend, q=quant.name: b.build_config(library, q, torch.bfloat16, options),
            )


def _linear_names(model) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _assert_folded_answers_match(whole, library: str, where: str) -> int:
    """Every backend's folded answer equals its whole-model answer; returns how many were compared."""
    folded = fold_runs(whole)
    candidates = _linear_names(whole)
    compared = 0
    for backend, quant, config in _configs(library):
        try:
            expected = footprint._ask(backend, whole, library, config(), set(candidates))
        except Exception:  # the library refuses this model (e.g. a shape its kernel cannot take)
            continue
        made, asked_whole = config(), []

        def ask(model, names, backend=backend, made=made, asked_whole=asked_whole):
            asked_whole.append(model is whole)
            return footprint._ask(backend, model, library, made, names)

        got = answer_from_fold(folded, whole, made, candidates, ask)
        assert got == expected, f"{where} {backend.name} {quant}: {sorted(got ^ expected)[:4]}"
        assert asked_whole == [False], f"{where} {backend.name} {quant}: the whole model was asked"
        compared += 1
    return compared


@pytest.mark.parametrize("name", [n for n in FAMILIES if not FAMILIES[n].missing()])
def test_every_family_with_six_blocks_gets_the_whole_models_answer(name, families_root):
    model = inspect_model(ensure_family(name, families_root))
    folded_any = False
    for component, info in model.components.items():
        cls = info.model_class()
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue
        config = {
            k: 6 if BLOCK_COUNT.fullmatch(k) and type(v) is int and 1 <= v < 6 else v
            for k, v in info.config_dict.items()
        }
        if isinstance(config.get("layer_types"), list) and type(config.get("num_hidden_layers")) is int:
            config["layer_types"] = config["layer_types"][:1] * config["num_hidden_layers"]
        whole = build_on_meta(cls, info.library, config, component)
        folded_any |= bool(fold_runs(whole).stand_ins)
        assert _assert_folded_answers_match(whole, info.library, f"{name}/{component}") > 0
    assert folded_any, f"{name}: no component had a run of blocks to fold"


@pytest.mark.parametrize("kind", ["flux_dev", "sdxl"])
def test_full_size_plans_fold_and_get_the_whole_models_answer(kind, request, no_stored_facts):
    """Through the planner's own entry (footprint.quantized_weights), SDNQ's rule for FLUX's first
    single block included."""
    model = inspect_model(request.getfixturevalue(kind))
    for component, info in model.components.items():
        cls = info.model_class()
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue
        whole = footprint._shared_model(footprint._Shape(info))
        candidates = _linear_names(whole)
        for backend, quant, config in _configs(info.library):
            try:
                expected = footprint._ask(backend, whole, info.library, config(), set(candidates))
            except Exception:
                continue
            got = footprint.quantized_weights(info, backend.name, quant, ())
            assert got == expected, f"{component} {backend.name} {quant}: {sorted(got ^ expected)[:4]}"
    if kind == "flux_dev":
        folded = footprint._folded_model(footprint._Shape(model.components["transformer"]))
        name = "single_transformer_blocks.{}.attn.to_q.weight".format
        assert [folded.name_for(name(i)) for i in (0, 1, 2, 30, 37)] == [name(0), name(1), name(1), name(1), name(37)]


# -- the rules a fold must not hide ---------------------------------------------------------------------
class Block(torch.nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.inner = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(5))
        self.out = torch.nn.Linear(width, width)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([*(Block() for _ in range(6)), Block(16), *(Block() for _ in range(5))])
        self.head = torch.nn.Linear(8, 8)


class Config:
    def __init__(self, skip=()):
        self.modules_to_not_convert = list(skip)


def _ask_by(rule):
    """An ask that quantizes the Linear weights `rule(name)` accepts, and records what it was given."""
    seen = []

    def ask(model, names):
        seen.append((model, set(names)))
        present = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert set(names) <= present, "asked about a name the model does not have"
        return {n for n in names if rule(n)}

    return ask, seen


def test_runs_are_cut_to_first_second_and_last_and_names_map_back():
    with torch.device("meta"):
        toy = Toy()
    folded = fold_runs(toy)
    kept = list(folded.model.blocks._modules)
    # 0-5 alike, 6 wider, 7-11 alike: each run of six / five keeps its first, second and last
    assert kept == ["0", "1", "5", "6", "7", "8", "11"]
    assert list(folded.model.blocks[0].inner._modules) == ["0", "1", "4"]  # inner runs fold too
    assert folded.name_for("blocks.3.inner.2.weight") == "blocks.1.inner.1.weight"
    assert folded.name_for("blocks.9.out.weight") == "blocks.8.out.weight"
    assert folded.name_for("blocks.6.inner.3.weight") == "blocks.6.inner.1.weight"
    assert folded.name_for("head.weight") == "head.weight"
    assert len(list(toy.blocks)) == 12  # the model it was folded from is untouched


@pytest.mark.parametrize(
    "rule",
    [
        lambda n: True,
        lambda n: not n.startswith("blocks.0."),  # SDNQ's kind of rule: the first block kept whole
        lambda n: ".inner.0." not in n,
        lambda n: not n.startswith("blocks.6."),  # the block that differs
    ],
)
def test_rules_on_kept_blocks_are_answered_from_the_fold(rule):
    with torch.device("meta"):
        toy = Toy()
    candidates = _linear_names(toy)
    ask, seen = _ask_by(rule)
    got = answer_from_fold(fold_runs(toy), toy, Config(), candidates, ask)
    assert got == {n for n in candidates if rule(n)}
    assert [model is toy for model, _ in seen] == [False]
    assert len(seen[0][1]) < len(candidates) / 2


def test_a_quantizer_that_treats_the_last_block_apart_is_asked_of_the_whole_model():
    with torch.device("meta"):
        toy = Toy()
    candidates = _linear_names(toy)
    ask, seen = _ask_by(lambda n: not n.startswith("blocks.11."))
    got = answer_from_fold(fold_runs(toy), toy, Config(), candidates, ask)
    assert got == {n for n in candidates if not n.startswith("blocks.11.")}
    assert [model is toy for model, _ in seen] == [False, True]


@pytest.mark.parametrize("skip", [["blocks.3"], ["blocks.3.inner.2"], [r"blocks\.\d\.out"]])
def test_a_config_that_names_a_block_by_number_is_asked_of_the_whole_model(skip):
    with torch.device("meta"):
        toy = Toy()
    candidates = _linear_names(toy)
    ask, seen = _ask_by(lambda n: not n.startswith("blocks.3."))
    got = answer_from_fold(fold_runs(toy), toy, Config(skip), candidates, ask)
    assert got == {n for n in candidates if not n.startswith("blocks.3.")}
    assert [model is toy for model, _ in seen] == [True]


def test_a_container_at_two_places_is_answered_as_the_layout_names_it():
    with torch.device("meta"):
        toy = Toy()
        toy.again = toy.blocks  # one ModuleList at two places: the layout names it once, as here
    candidates = _linear_names(toy)
    ask, seen = _ask_by(lambda n: ".out." in n)
    got = answer_from_fold(fold_runs(toy), toy, Config(), candidates, ask)
    assert got == {n for n in candidates if ".out." in n}


def test_a_name_the_fold_cannot_place_is_asked_of_the_whole_model():
    with torch.device("meta"):
        toy = Toy()
    folded = fold_runs(toy)
    folded.stand_ins["blocks"]["3"] = "2"  # a stand-in the folded copy does not hold
    candidates = _linear_names(toy)
    ask, seen = _ask_by(lambda n: True)
    assert answer_from_fold(folded, toy, Config(), candidates, ask) == set(candidates)
    assert [model is toy for model, _ in seen] == [True]


def test_version_strings_and_plain_names_do_not_count_as_block_numbers():
    assert not names_blocks(Config(["proj_out", "norm_out", "0.2.8", "int8_weight_only"]))
    assert names_blocks(Config(["single_transformer_blocks.0.norm.linear.weight"]))


# -- the process-wide helpers the fold runs under -----------------------------------------------------------
def test_paused_gc_restores_what_it_found():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # it was off: left off
    finally:
        gc.enable()


def test_facts_put_in_a_batch_are_written_once_at_its_end(monkeypatch, tmp_path):
    monkeypatch.setenv(shape_store.ENV, str(tmp_path))
    monkeypatch.setenv(shape_seed.ENV, "off")
    writes = []
    real = shape_store._write
    monkeypatch.setattr(shape_store, "_write", lambda *args: (writes.append(args[0]), real(*args)))
    key = ("diffusers", "Toy", (("width", 8),))
    with shape_store.batched():
        with shape_store.batched():
            shape_store.put(key, "a", [1])
            shape_store.put(key, "b", [2])
        assert shape_store.get(key, "a") == [1]  # readable before it is written
        assert writes == [] and not any(tmp_path.glob("*.json"))
    assert len(writes) == 1
    shape_store.put(key, "c", [3])  # outside a batch: at once, beside the others
    assert [shape_store.get(key, f) for f in "abc"] == [[1], [2], [3]]
