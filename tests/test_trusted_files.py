"""Files and names the defaults read without being asked (issue 22, items 7, 10, 14): the hub
cache's refs/main read like every other file, the estimate route with a Save node beside a hub
cache, and model/file lists that list only what the nodes accept."""

from __future__ import annotations

import os
import threading

import pytest
from hub_cache_fake import add_snapshot

from pipequant.resolver import ValidationError
from pipequant.resolver.files.hub_cache import HubCacheRoot
from pipequant.resolver.files.roots import list_files, list_pipelines, refused_pipelines, resolve_model

REPO = "org/flux"


@pytest.fixture
def hub(tmp_path, tiny_flux):
    cache = tmp_path / "hub"
    add_snapshot(cache, REPO, tiny_flux)
    return cache


def _ref(hub):
    return hub / "models--org--flux" / "refs" / "main"


def _within(seconds, fn, *args):
    """fn(*args) in a daemon thread; fails (instead of hanging the suite) if it blocks."""
    out = {}

    def work():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked for {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _refused_repo(hub, code_word):
    roots = [HubCacheRoot(hub)]
    assert _within(10, list_pipelines, roots) == []
    refused = dict(_within(10, refused_pipelines, roots))
    assert code_word in refused[REPO]
    with pytest.raises(ValidationError) as exc:
        _within(10, resolve_model, REPO, roots)
    assert "refs/main" in str(exc.value)


def test_refs_main_as_a_fifo_does_not_hang_the_model_list(hub):
    _ref(hub).unlink()
    os.mkfifo(_ref(hub))
    _refused_repo(hub, "named pipe")


def test_refs_main_that_is_not_utf8_is_a_problem_not_a_crash(hub):
    _ref(hub).write_bytes(b"\xff\xfe\x80abc")
    _refused_repo(hub, "not UTF-8")


def test_refs_main_linked_out_of_the_cache_is_refused(hub, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("0123456789abcdef")  # even naming the right revision: it was read through a link
    _ref(hub).unlink()
    _ref(hub).symlink_to(outside)
    _refused_repo(hub, "link")


def test_a_huge_refs_main_is_not_read_whole(hub):
    _ref(hub).write_bytes(b"0" * (4 << 20))
    _refused_repo(hub, "larger than")


def test_a_good_refs_main_still_picks_its_revision(hub, tiny_flux):
    add_snapshot(hub, REPO, tiny_flux, rev="newer")
    _ref(hub).write_text("0123456789abcdef\n")
    assert resolve_model(REPO, [HubCacheRoot(hub)]).name == "0123456789abcdef"


# -- item 14: list only what the Load node accepts --------------------------------------------------
def test_a_folder_name_with_a_newline_is_not_listed(tmp_path, tiny_flux):
    import shutil

    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_flux, root / "evil\nname")
    shutil.copytree(tiny_flux, root / "good")
    listed = list_pipelines([root])
    assert listed == ["good"]
    for name in listed:
        resolve_model(name, [root])  # everything listed loads
    assert any("evil" in name for name, _ in refused_pipelines([root]))  # and the left-out one is said


def test_a_file_name_with_a_control_character_is_not_listed(tmp_path):
    (tmp_path / "ok.gguf").write_bytes(b"x")
    (tmp_path / "bad\nname.gguf").write_bytes(b"x")
    (tmp_path / "tab\tname.safetensors").write_bytes(b"x")
    assert list_files([tmp_path], ".gguf") == ["ok.gguf"]
    assert list_files([tmp_path], ".safetensors") == []


# -- item 10: the estimate route with a Save node, beside a hub cache ---------------------------------
def test_estimate_with_a_save_node_answers_when_a_hub_cache_exists(monkeypatch, models_root, tiny_flux, hub):
    from test_routes import _flux_maps, call

    monkeypatch.setenv("PIPEQUANT_MODELS", str(models_root))
    monkeypatch.setenv("PIPEQUANT_HF_CACHE", str(hub))
    body = {
        "model": "tiny-flux",
        "spec": _flux_maps("torchao", "int8_weight_only"),
        "save": [{"node": "9", "folder_name": "flux-saved"}, {"node": "10", "folder_name": "tiny-flux"}],
    }
    status, result = call("POST", "/pipequant/estimate", json=body)
    assert status == 200, result
    assert result["estimate"] is not None
    assert [p["code"] for p in result["problems"] if p["node"] == "10"] == ["folder_exists"]
    assert not [p for p in result["problems"] if p["node"] == "9" and p["severity"] == "error"]


def test_a_hub_cache_setting_that_is_not_a_folder_is_said_once(monkeypatch, tmp_path, caplog):
    import logging

    from pipequant.resolver.files import hub_cache

    monkeypatch.setenv("PIPEQUANT_HF_CACHE", str(tmp_path / "typo"))
    with caplog.at_level(logging.WARNING, logger="pipequant"):
        assert hub_cache.cache_dir() is None
        assert hub_cache.cache_dir() is None
    assert caplog.text.count("PIPEQUANT_HF_CACHE") == 1
