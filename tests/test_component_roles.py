"""Every slot of every pipeline in the class facts takes what diffusers' loader takes for it.

Generated from the facts, no hand list: for each pipeline the facts know, the slots agree with the
types diffusers itself reads (`_get_signature_types`, string annotations resolved), the declared
class fills its own slot (an Auto class: what it loads), and a class of another role is refused
with a message that names the declared class.
"""

from __future__ import annotations

import inspect
import json

import pytest

from pipequant.resolver.files.inspect_model import _check_entry, _fits
from pipequant.resolver.known import class_facts
from pipequant.resolver.problems import ValidationError

TABLE = json.loads(class_facts.FACTS_FILE.read_text())
PIPELINES = sorted(TABLE["pipelines"])
OTHER_ROLE = {"model": "scheduler", "scheduler": "tokenizer", "tokenizer": "model", "processor": "scheduler"}
OTHER_ROLE["guider"] = "model"


def _example_of(role: str) -> str:
    """A class of `role` the facts know (a stand-in for whatever fills a slot of that role)."""
    preferred = {
        "tokenizer": "transformers.T5TokenizerFast",
        "processor": "transformers.CLIPImageProcessor",
        "scheduler": "diffusers.DDIMScheduler",
        "model": "diffusers.AutoencoderKL",
        "guider": "diffusers.ClassifierFreeGuidance",
    }[role]
    assert TABLE["classes"][preferred]["role"] == role
    return preferred


def _typed_slots(pipeline: str):
    for name, slots in TABLE["pipelines"][pipeline].items():
        loadable = [(q, r) for q, r in slots if q.split(".")[0] in class_facts.LIBRARIES]
        if loadable:
            yield name, slots, loadable


def test_the_facts_cover_the_slots_real_pipelines_declare():
    slots = {q for p in PIPELINES for _, s in TABLE["pipelines"][p].items() for q, _ in s}
    assert {"transformers.AutoTokenizer", "transformers.AutoProcessor"} <= slots
    roles = {r for p in PIPELINES for _, s in TABLE["pipelines"][p].items() for _, r in s}
    assert {"model", "scheduler", "tokenizer", "processor", "guider"} <= roles
    # HunyuanImage's annotations are strings (`from __future__ import annotations`): resolved.
    hunyuan = TABLE["pipelines"]["HunyuanImagePipeline"]
    assert hunyuan["transformer"] == [["diffusers.HunyuanImageTransformer2DModel", "model"]]
    assert hunyuan["guider"][0][1] == "guider"


def test_every_declared_class_fills_its_own_slot_and_another_role_is_refused():
    checked, wrong = 0, []
    for pipeline in PIPELINES:
        declared = TABLE["pipelines"][pipeline]
        for name, slots, loadable in _typed_slots(pipeline):
            for qualified, role in loadable:
                roles = class_facts.slot_roles(qualified, role) or ((role,) if role else ())
                if not roles:
                    continue  # a safety checker diffusers cannot import here
                fillers = [qualified] if qualified in TABLE["classes"] and role == "model" else []
                fillers += [_example_of(r) for r in roles if r != "model"]
                for filler in fillers:
                    checked += 1
                    if not _fits(TABLE["classes"][filler], slots):
                        wrong.append((pipeline, name, filler, "refused"))
                if any(q == class_facts.ANY_CLASS for q, _ in slots):
                    continue
                other = _example_of(OTHER_ROLE[roles[0]])
                if other in fillers or _fits(TABLE["classes"][other], slots):
                    continue  # e.g. a slot typed with two roles
                library, cls = other.split(".", 1)
                with pytest.raises(ValidationError) as err:
                    _check_entry(pipeline, declared, name, library, cls)
                want = qualified.split(".", 1)[1]
                if want not in str(err.value):
                    wrong.append((pipeline, name, other, f"message does not name {want}: {err.value}"))
    assert not wrong, wrong[:20]
    assert checked > 1000


def test_the_slots_are_the_types_diffusers_reads():
    """What `DiffusionPipeline.from_pretrained` checks a loaded component against, for every pipeline."""
    import diffusers

    wrong = []
    for pipeline in PIPELINES:
        cls = getattr(diffusers, pipeline)
        expected = cls._get_signature_types()
        for name, slots in TABLE["pipelines"][pipeline].items():
            types = [t for t in expected.get(name, ()) if t is not inspect.Signature.empty and t is not type(None)]
            if not slots:
                if types and all(isinstance(t, type) for t in types):
                    wrong.append((pipeline, name, "untyped in the facts", types))
                continue
            theirs = {class_facts.qualified(t) for t in types if isinstance(t, type) and not _is_enum(t)}
            ours = {q for q, _ in slots if q != class_facts.ANY_SCHEDULER}
            if theirs - ours:
                wrong.append((pipeline, name, sorted(ours), sorted(theirs)))
    assert not wrong, wrong[:20]


def _is_enum(t) -> bool:
    import enum

    return issubclass(t, enum.Enum)


@pytest.mark.parametrize(
    "pipeline,slot,library,cls",
    [
        ("WanPipeline", "tokenizer", "transformers", "T5TokenizerFast"),
        ("ZImagePipeline", "tokenizer", "transformers", "Qwen2Tokenizer"),
        ("CogView4Pipeline", "tokenizer", "transformers", "PreTrainedTokenizerFast"),
        ("HunyuanImagePipeline", "guider", "diffusers", "AdaptiveProjectedMixGuidance"),
    ],
)
def test_what_the_hub_ships_is_accepted(pipeline, slot, library, cls):
    """The entries of the real model_index.json files that were refused before."""
    info = _check_entry(pipeline, TABLE["pipelines"][pipeline], slot, library, cls)
    assert info["role"] in ("tokenizer", "guider")


def test_a_refused_string_annotated_slot_names_its_class():
    with pytest.raises(ValidationError, match="declares HunyuanImageTransformer2DModel"):
        _check_entry(
            "HunyuanImagePipeline",
            TABLE["pipelines"]["HunyuanImagePipeline"],
            "transformer",
            "diffusers",
            "UNet2DModel",
        )
