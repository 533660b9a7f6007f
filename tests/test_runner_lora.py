"""The LoRA + image-to-image template through `python -m pipequant run`, and the runner's LoadImage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from pipequant.resolver.problems import ValidationError
from pipequant.runner.builtin import LoadImage
from pipequant.runner.cli import EXAMPLES, load_prompt, main
from pipequant.testing import write_example_files

TEMPLATE = "FLUX LoRA image-to-image.json"
COPY = Path(__file__).parent / "workflows" / "flux_lora_img2img.json"  # as released


@pytest.fixture
def folders(tmp_path, tiny_flux, monkeypatch):
    write_example_files(tiny_flux, tmp_path / "loras", tmp_path / "input")
    monkeypatch.setattr(LoadImage, "input_dir", LoadImage.input_dir)  # the CLI sets it: undo afterwards
    monkeypatch.delenv("PIPEQUANT_LORAS", raising=False)
    monkeypatch.delenv("PIPEQUANT_MODELS", raising=False)
    return tmp_path


def test_the_released_copy_reads_as_the_template():
    assert load_prompt(COPY) == load_prompt(EXAMPLES / TEMPLATE)
    prompt = load_prompt(COPY)
    kinds = {n["class_type"]: n["inputs"] for n in prompt.values()}
    assert kinds["PipeQuantSampler"]["denoise"] == 0.6 and isinstance(kinds["PipeQuantSampler"]["image"], list)
    assert kinds["PipeQuantLoRA"] == {
        "lora_name": "example_flux_lora.safetensors",
        "strength": 0.8,
        "strength_text_encoder": 1.0,
        "pipeline": ["2", 0],
    }
    assert kinds["LoadImage"] == {"image": "example.png"}


def test_cli_runs_the_template_with_loras_and_an_input_image(folders, models_root, bnb_cpu, capsys):
    args = [
        "run",
        str(COPY),
        "--models",
        str(models_root),
        "--loras",
        str(folders / "loras"),
        "--input",
        str(folders / "input"),
        "--output",
        str(folders / "out"),
        "--set",
        'PipeQuantLoadPipeline.model="tiny-flux"',
        "--set",
        'PipeQuantLoadPipeline.device="cpu"',
        "--set",
        "PipeQuantSampler.steps=2",
        "--set",
        "PipeQuantSampler.width=32",
        "--set",
        "PipeQuantSampler.height=32",
        "--set",
        "PipeQuantSampler.max_sequence_length=32",
    ]
    assert main(args) == 0
    written = list((folders / "out").glob("pipequant-flux-lora-img2img_*.png"))
    assert len(written) == 1 and Image.open(written[0]).size == (32, 32)
    # A LoRA that is not there: exit 2, the node and input named, nothing loaded.
    (folders / "loras" / "example_flux_lora.safetensors").unlink()
    assert main(["validate", *args[1:]]) == 2
    assert '(Apply LoRA).lora_name: no LoRA "example_flux_lora.safetensors"' in capsys.readouterr().err


def test_load_image_reads_by_name_only(tmp_path, monkeypatch):
    inside, outside = tmp_path / "input", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    Image.new("RGBA", (8, 6), (255, 0, 0, 128)).save(inside / "a.png")
    Image.new("RGB", (8, 6)).save(outside / "b.png")
    os.symlink(outside / "b.png", inside / "link.png")
    monkeypatch.setattr(LoadImage, "input_dir", inside)
    image, mask = LoadImage().load_image("a.png")
    assert image.shape == (1, 6, 8, 3) and abs(float(image[0, 0, 0, 0]) - 1.0) < 1e-6
    assert mask.shape == (1, 6, 8) and abs(float(mask.mean()) - (1 - 128 / 255)) < 1e-3
    assert LoadImage.INPUT_TYPES()["required"]["image"][0] == ["a.png"]
    for name, code in (
        ("../elsewhere/b.png", "image_outside_input"),
        (str(outside / "b.png"), "image_outside_input"),
        ("link.png", "image_outside_input"),
        ("a.txt", "image_outside_input"),
        ("nope.png", "image_not_found"),
    ):
        with pytest.raises(ValidationError) as info:
            LoadImage.resolve(name)
        assert info.value.codes == [code], name
    assert LoadImage.VALIDATE_INPUTS("a.png") is True
    assert "no image" in LoadImage.VALIDATE_INPUTS("nope.png")


def test_template_names_only_known_nodes_and_ui_format():
    data = json.loads((EXAMPLES / TEMPLATE).read_text())
    assert data["version"] == 0.4 and {n["type"] for n in data["nodes"]} >= {"PipeQuantLoRA", "LoadImage"}
