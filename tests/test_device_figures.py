"""The one-call GPU bench (bench/device_figures.py, issue 25 item 6) at the tiny size: every stage
measures something and turns it into data-file rows; a stage that runs out of time is stopped with
every process it started and writes no row; `--write` never replaces another source's figure."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from bench import device_figures
from bench.pipelines import materialise

TINY = ["--size", "tiny", "--model", "tiny", "--side", "64", "--image-tokens", "16", "--rounds", "1"]


def _figures(out: Path) -> dict:
    return json.loads((out / "device_figures.json").read_text())


def _run(tmp_path: Path, device: str, *extra: str) -> dict:
    out = tmp_path / "out"
    argv = ["--device", device, *TINY, "--scratch", str(tmp_path / "scratch"), "--out", str(out), *extra]
    assert device_figures.main(argv) == 0
    return _figures(out)


@pytest.fixture(scope="module")
def cpu_figures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device-figures")
    plans = ["--cache-plans", "int8wo", "--compile-plans", "bf16", "--peak-plans", "quality:0"]
    return _run(tmp, "cpu", *plans), tmp


def test_every_stage_measures_and_becomes_rows(cpu_figures):
    figures, _ = cpu_figures
    runs = figures["results"]["runs"]
    assert [(r["stage"], r["label"]) for r in runs] == [
        ("peak", "predicted peak"),
        ("cache", "int8wo"),
        ("compile", "bf16"),
    ]
    assert all("result" in r for r in runs), [r.get("error") for r in runs]
    (cache,) = figures["rows"]["disk_cache"]
    assert (cache["backend"], cache["quant_type"], cache["generation"]) == ("torchao", "int8_weight_only", "cpu")
    assert cache["second_over_first"] > 0 and cache["min_checkpoint_bytes"] > 0
    (compiled,) = figures["rows"]["compile"]
    assert compiled["backend"] is None and compiled["quant_type"] == "bfloat16" and compiled["factor"] > 0
    (peak,) = figures["rows"]["peak_check"]
    assert peak["predicted_peak_bytes"] > 0 and peak["measured_peak_bytes"] > 0
    assert peak["measured_resident_bytes"] == pytest.approx(peak["predicted_resident_bytes"], rel=0.05)
    assert all(r["source"] == figures["source"] == "device-cpu" for rows in figures["rows"].values() for r in rows)
    assert figures["provenance"]["machine"]["versions"]["torch"]


def test_write_adds_rows_once_and_keeps_other_sources(cpu_figures, tmp_path):
    from pipequant.resolver.known import measured

    figures, _ = cpu_figures
    data_file = tmp_path / "measurements.json"
    shutil.copy(measured.DATA_FILE, data_file)
    before = json.loads(data_file.read_text())
    for _ in range(2):  # a second write replaces the first one's rows
        written = cpu_figures[1] / "out" / "device_figures.json"
        assert device_figures.main(["--write", str(written), "--data", str(data_file)]) == 0
    after = json.loads(data_file.read_text())
    assert after["sources"]["device-cpu"].startswith("bench/results/device/device_figures.json: ")
    for section, rows in figures["rows"].items():
        for row in rows:
            key = device_figures._key(section, row)
            theirs = [r for r in before.get(section, []) if device_figures._key(section, r) == key]
            mine = [r for r in after[section] if device_figures._key(section, r) == key and r["source"] == "device-cpu"]
            if theirs:  # measured by another source: its figure stays, ours is not added
                assert mine == [] and theirs[0] in after[section]
            else:
                assert mine == [row]
    # the CPU disk-cache figure of torchao int8 is the committed bench's, not this tiny run's
    assert any(r["source"] == "cpu-disk-cache" for r in after["disk_cache"])
    assert len(after["peak_check"]) == len(figures["rows"]["peak_check"])


def test_a_stage_out_of_time_is_stopped_with_its_children(tmp_path):
    figures = _run(tmp_path, "cpu", "--stages", "peak", "--peak-plans", "quality:0", "--peak-seconds", "3")
    (run,) = figures["results"]["runs"]
    assert run["timed_out_after_s"] >= 2 and "result" not in run
    assert figures["rows"]["peak_check"] == []
    scratch = str(tmp_path / "scratch")
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and scratch in (proc / "cmdline").read_bytes().decode(errors="replace"):
                left.append(proc.name)
        except OSError:
            continue
    assert left == [], "a stopped bench left processes running"


def test_materialise_rewrites_weights_from_the_configs(tiny_flux, tmp_path):
    """The 12 B pipeline is FLUX.1-dev's hollow layout made real this way: same tensors, same dtypes,
    random values, loadable by diffusers."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    folder = tmp_path / "copy"
    shutil.copytree(tiny_flux, folder)

    def tensors(name):
        out = {}
        for path in sorted((folder / name).glob("*.safetensors")):
            out.update(load_file(path))
        return out

    names = ("transformer", "text_encoder", "text_encoder_2", "vae")
    before = {n: tensors(n) for n in names}
    materialise(folder, "cpu", seed=123)
    for n in names:
        after = tensors(n)
        assert sorted(after) == sorted(before[n])
        assert all(after[k].dtype == before[n][k].dtype and after[k].shape == before[n][k].shape for k in after)
        assert any(not torch.equal(after[k], before[n][k]) for k in after)
    FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)


@pytest.mark.cuda
def test_every_stage_on_the_gpu(tmp_path):
    plans = ["--cache-plans", "nf4", "--compile-plans", "bnb nf4", "--peak-plans", "quality:0"]
    figures = _run(tmp_path, "cuda", *plans)
    assert all("result" in r for r in figures["results"]["runs"]), figures["results"]
    assert figures["generation"] != "cpu" and all(figures["rows"].values())
    assert os.path.isfile(tmp_path / "out" / "device_figures.md")


def test_peak_bench_keeps_a_failed_plan_as_a_finding_and_fails_when_nothing_was_measured(tmp_path):
    from bench import peak_predicted

    res = peak_predicted.run("tiny", "cpu", 64, 1, [("quality", 0), ("fastest", 0)], tmp_path, log=lambda m: None)
    good, bad = res["rows"]
    assert good["measured_sample_peak_bytes"] > 0 and good["peak_measured_over_predicted"] > 0
    assert bad["goal"] == "fastest" and "goal" in bad["error"]
    assert "failed:" in peak_predicted.to_markdown(res)
    with pytest.raises(RuntimeError, match="no plan was measured"):
        peak_predicted.run("tiny", "cpu", 64, 1, [("fastest", 0)], tmp_path, log=lambda m: None)
