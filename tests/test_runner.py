"""The headless runner: every example workflow, in UI and API format, on the tiny pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipequant.runner.cli import EXAMPLES, apply_overrides, load_prompt, main
from pipequant.runner.execute import ALL_NODES, execute
from pipequant.runner.workflow import read_workflow, to_api

WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
# Copies of every released example, under the name it was released with (the templates were
# renamed for their titles in the template browser; their contents did not change). They must keep
# loading and running: users' saved workflows look like them.
RELEASED = sorted((Path(__file__).parent / "workflows").glob("*.json"))


def _headless(path: Path) -> bool:
    """Whether every node of the workflow runs in the headless runner. Templates that hand the
    pipeline to ComfyUI's core nodes (KSampler, VAEDecode, ...) run in a real ComfyUI instead:
    tests/test_comfyui_integration.py runs every template there."""
    from pipequant.runner.workflow import UI_ONLY_NODES

    types = {n["type"] for n in json.loads(path.read_text())["nodes"]} - set(UI_ONLY_NODES)
    return types <= set(ALL_NODES)


HEADLESS = [p for p in RELEASED if _headless(p)]
SMALL = [
    ("PipeQuantSampler", "steps", 2),
    ("PipeQuantSampler", "width", 32),
    ("PipeQuantSampler", "height", 32),
    ("PipeQuantSampler", "max_sequence_length", 32),
    ("PipeQuantLoadPipeline", "device", "cpu"),
    ("PipeQuantSampler", "num_frames", 5),  # video templates (Wan); image pipelines ignore it
]


@pytest.fixture
def env(monkeypatch, tmp_path, models_root, tiny_flux, tiny_sd3, flux_gguf):
    from pipequant.testing.families import ensure_family

    ensure_family("Wan 2.1", models_root)  # what the Wan template runs on
    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.setenv("PIPEQUANT_GGUF", str(flux_gguf.parent))
    from pipequant.runner.builtin import LoadImage, SaveAnimatedWEBP, SaveImage
    from pipequant.testing import write_example_files

    monkeypatch.setattr(SaveImage, "output_dir", tmp_path / "out")
    monkeypatch.setattr(SaveAnimatedWEBP, "output_dir", tmp_path / "out")
    write_example_files(tiny_flux, tmp_path / "loras", tmp_path / "input")  # what the LoRA template names
    monkeypatch.setenv("PIPEQUANT_LORAS", str(tmp_path / "loras"))
    monkeypatch.setattr(LoadImage, "input_dir", tmp_path / "input")
    return tmp_path


def _point_at_tiny(prompt: dict, path: Path) -> dict:
    name = path.name.lower()
    model = "tiny-sd3" if "sd3" in name else "tiny-wan-2.1" if "wan" in name else "tiny-flux"
    overrides = SMALL + [
        ("PipeQuantLoadPipeline", "model", model),
        ("PipeQuantAutoPlan", "model", model),
        ("PipeQuantAutoPlan", "width", 64),
        ("PipeQuantAutoPlan", "height", 64),
        ("PipeQuantSavePipeline", "folder_name", f"saved-{os.getpid()}-{path.stem}"),
    ]
    if "gguf" in path.name.lower():
        overrides.append(("PipeQuantBackend", "gguf_file", "tiny-flux-transformer-Q8_0.gguf"))
    return apply_overrides(prompt, overrides)


def test_there_are_example_workflows_in_ui_format():
    names = {p.stem for p in WORKFLOWS}
    assert {
        "FLUX NF4 transformer",
        "FLUX per-component mix",
        "SD3.5 torchao int8 (global)",
        "FLUX quantize once and save",
    } <= names
    for path in WORKFLOWS:
        data = json.loads(path.read_text())
        assert data["version"] == 0.4 and data["nodes"] and isinstance(data["links"], list)


def test_every_template_is_a_released_copy():
    copies = {p.read_bytes(): p.name for p in RELEASED}
    missing = [p.name for p in WORKFLOWS if p.read_bytes() not in copies]
    assert not missing, f"add a copy of each released template to tests/workflows/: {missing}"


def test_templates_beyond_the_runner_use_the_comfyui_bridge():
    core = [p.name for p in RELEASED if not _headless(p)]
    assert core, "expected the Pipeline to ComfyUI template(s)"
    for name in core:
        types = {n["type"] for n in json.loads((Path(__file__).parent / "workflows" / name).read_text())["nodes"]}
        assert "PipeQuantToComfy" in types, f"{name} uses nodes the headless runner lacks without the bridge"


@pytest.mark.parametrize("path", HEADLESS, ids=[p.stem for p in HEADLESS])
def test_released_workflow_runs(path, env, bnb_cpu, models_root):
    prompt = _point_at_tiny(load_prompt(path), path)
    ui = execute(prompt)
    images = [Path(i) for out in ui.values() for i in out.get("images", [])]
    texts = [t for out in ui.values() for t in out.get("text", [])]
    if "save" in path.name.lower():
        saved = models_root / f"saved-{os.getpid()}-{path.stem}"
        assert (saved / "model_index.json").is_file()
        assert any(str(saved) in t for t in texts)
    else:
        assert images, "no image written"
        for image in images:
            assert image.exists() and Image.open(image).size == (32, 32)
            if image.suffix == ".webp":  # a video's frames, saved by SaveAnimatedWEBP
                assert Image.open(image).n_frames == 5
    assert any("TOTAL" in t for t in texts), "memory report missing"


def test_ui_and_api_format_give_the_same_prompt(tmp_path):
    path = EXAMPLES / "FLUX per-component mix.json"
    from_ui = to_api(read_workflow(path), ALL_NODES)
    api_file = tmp_path / "api.json"
    api_file.write_text(json.dumps(from_ui))
    assert to_api(read_workflow(api_file), ALL_NODES) == from_ui
    sampler = next(n for n in from_ui.values() if n["class_type"] == "PipeQuantSampler")
    # the seed's "fixed" control value is skipped: batch_size is the value after it
    assert sampler["inputs"]["seed"] == 42 and sampler["inputs"]["batch_size"] == 1
    load = next(n for n in from_ui.values() if n["class_type"] == "PipeQuantLoadPipeline")
    assert load["inputs"]["quantization"][1] == 0 and isinstance(load["inputs"]["quantization"][0], str)


def test_cli_run_validate_and_errors(env, models_root, tmp_path, capsys):
    wf = EXAMPLES / "SD3.5 torchao int8 (global).json"
    common = [
        "--models",
        str(models_root),
        "--output",
        str(tmp_path / "cli-out"),
        "--set",
        "PipeQuantLoadPipeline.model=tiny-sd3",
    ] + [x for k, n, v in SMALL for x in ("--set", f"{k}.{n}={json.dumps(v)}")]
    assert main(["validate", str(wf)] + common) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["run", str(wf)] + common) == 0
    assert list((tmp_path / "cli-out").glob("*.png"))
    # a typo in the model: non-zero exit, message naming the node, the input and a suggestion
    assert (
        main(["validate", str(wf), "--models", str(models_root), "--set", "PipeQuantLoadPipeline.model=tiny-sd4"]) == 2
    )
    err = capsys.readouterr().err
    assert "Load Quantized Pipeline" in err and "model" in err and "tiny-sd3" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["run", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err


def test_a_command_run_in_process_leaves_the_callers_configuration_as_it_was(models_root, tmp_path, monkeypatch):
    """The CLI points the nodes at --models / --output for the command only: a test or benchmark
    calling `main` keeps its own roots afterwards."""
    from pipequant.runner.builtin import SaveImage

    monkeypatch.setenv("PIPEQUANT_MODELS", "/the/callers/models")
    monkeypatch.delenv("PIPEQUANT_LORAS", raising=False)
    before = SaveImage.output_dir
    wf = EXAMPLES / "SD3.5 torchao int8 (global).json"
    args = ["--models", str(models_root), "--loras", str(tmp_path), "--output", str(tmp_path / "o")]
    assert main(["validate", str(wf), *args, "--set", "PipeQuantLoadPipeline.model=tiny-sd4"]) == 2
    assert os.environ["PIPEQUANT_MODELS"] == "/the/callers/models"
    assert "PIPEQUANT_LORAS" not in os.environ
    assert SaveImage.output_dir == before


def test_demo_command_runs_on_a_fresh_cache(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipequant", "demo", "--output", str(tmp_path / "o"), "--cache", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "o").glob("pipequant-demo_*.png"))
    report = (tmp_path / "o" / "pipequant-demo-report.txt").read_text()
    assert "transformer" in report and "TOTAL" in report


def test_no_model_folder_says_how_to_configure_one(monkeypatch, capsys):
    monkeypatch.delenv("PIPEQUANT_MODELS", raising=False)
    assert main(["validate", str(EXAMPLES / "FLUX NF4 transformer.json")]) == 2
    err = capsys.readouterr().err
    assert "Load Quantized Pipeline" in err and "no model folders are configured" in err and "--models DIR" in err
