"""Saves and names (issue 22, item 5): a save never takes a name any root holds, the Hugging Face
cache included; taking over a stale save lock removes only that save's own partial folder (`flux`
is not `flux-nf4`); the runner's SaveImage never overwrites an image (it numbers by scanning, and
the prefix is matched literally, glob characters and all)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache_fake import add_snapshot

from pipequant.nodes.save import PipeQuantSavePipeline
from pipequant.resolver.files.hub_cache import ENV_VAR, HubCacheRoot
from pipequant.resolver.keep.load import load
from pipequant.resolver.keep.save import folder_problems, save
from pipequant.runner.builtin import SaveImage


@pytest.fixture
def hub(tmp_path, tiny_flux) -> Path:
    """A hub cache holding an org-less repo `tiny-hub` (as `gpt2` is) and `someone/flux`."""
    cache = tmp_path / "hub"
    add_snapshot(cache, "tiny-hub", tiny_flux)
    add_snapshot(cache, "someone/flux", tiny_flux)
    return cache


def test_a_name_in_the_hub_cache_is_refused_by_the_save_node(monkeypatch, hub, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv("PIPEQUANT_MODELS", str(mine))
    monkeypatch.setenv(ENV_VAR, str(hub))
    verdict = PipeQuantSavePipeline.VALIDATE_INPUTS("tiny-hub")
    assert verdict is not True and "tiny-hub" in verdict and "Hugging Face cache" in verdict, verdict
    assert PipeQuantSavePipeline.VALIDATE_INPUTS("tiny-hub-copy") is True


def test_folder_problems_checks_every_root_and_writes_only_to_a_plain_folder(hub, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (problem,) = folder_problems("tiny-hub", [mine, HubCacheRoot(hub)])
    assert problem.code == "folder_exists" and "would hide it" in problem.message
    assert folder_problems("fresh-name", [mine, HubCacheRoot(hub)]) == []
    (problem,) = folder_problems("fresh-name", [HubCacheRoot(hub)])  # the hub cache alone: nowhere to write
    assert problem.code == "no_model_folder"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_taking_over_a_stale_lock_keeps_another_saves_work(tiny_flux, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    lock = root / ".pipequant-lock-flux"
    lock.mkdir()
    (lock / "pid").write_text(str(_dead_pid()))  # a save to "flux" that was killed
    stale = root / ".pipequant-partial-flux-0badc0de"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    others = [root / ".pipequant-partial-flux-nf4-12345678", root / ".pipequant-partial-flux-deadbeef-87654321"]
    for other in others:  # saves to "flux-nf4" and "flux-deadbeef", running now
        other.mkdir()
        (other / "model_index.json").write_text("{}")

    with torch.inference_mode():
        result = load(tiny_flux, None, device="cpu", cache=None)
        dest = save(result, "flux", [root])
    assert dest == root / "flux" and (dest / "model_index.json").is_file()
    assert not stale.exists(), "the killed save's own partial folder is cleaned up"
    for other in others:
        assert (other / "model_index.json").read_text() == "{}", f"{other.name} belongs to another save"
    assert not lock.exists()


def _images(n: int):
    return torch.rand(n, 8, 8, 3)


@pytest.mark.parametrize("prefix", ["ComfyUI", "a[1]", "star*", "q?"])
def test_save_image_never_overwrites(tmp_path, monkeypatch, prefix):
    monkeypatch.setattr(SaveImage, "output_dir", tmp_path / "output")
    out = tmp_path / "output"
    out.mkdir()
    # what was there: a gap in the numbering (an image deleted), and, for a glob character in the
    # prefix, files a glob would match instead of these
    kept = {
        out / f"{prefix}_00001_.png": b"first",
        out / f"{prefix}_00003_.png": b"third",
        out / "a1_00007_.png": b"not this prefix",
        out / "starX_00009_.png": b"not this prefix",
        out / "starXY_00002_.png": b"not this prefix",
    }
    for path, data in kept.items():
        path.write_bytes(data)
    written = [Path(p) for p in SaveImage().save_images(_images(2), prefix)["ui"]["images"]]
    assert [p.name for p in written] == [f"{prefix}_00004_.png", f"{prefix}_00005_.png"]
    for path, data in kept.items():
        assert path.read_bytes() == data, f"{path.name} was overwritten"
    again = [Path(p).name for p in SaveImage().save_images(_images(1), prefix)["ui"]["images"]]
    assert again == [f"{prefix}_00006_.png"]


def test_save_image_never_writes_through_a_planted_link(tmp_path, monkeypatch):
    monkeypatch.setattr(SaveImage, "output_dir", tmp_path / "output")
    out = tmp_path / "output"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    os.symlink(target, out / "ComfyUI_00002_.png")  # one file: counting would pick number 2, the link
    (written,) = SaveImage().save_images(_images(1), "ComfyUI")["ui"]["images"]
    assert Path(written).name == "ComfyUI_00003_.png"
    assert target.read_text() == "precious"
