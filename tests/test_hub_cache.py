"""The Hugging Face hub cache as a read-only model root: snapshots listed by repo name, loaded
through links into the repo's own blobs/, any other link refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hub_cache_fake import add_snapshot

from pipequant.resolver import ComponentCache, ValidationError
from pipequant.resolver.files.hub_cache import ENV_VAR, HubCacheRoot, cache_dir, default_root
from pipequant.resolver.files.roots import list_pipelines, resolve_model
from pipequant.resolver.keep import load

REPO = "black-forest-labs/FLUX.1-dev"


@pytest.fixture
def hub(tmp_path, tiny_flux):
    cache = tmp_path / "hub"
    add_snapshot(cache, REPO, tiny_flux)
    return cache


def test_snapshot_is_listed_by_repo_name_and_loads(hub, tmp_path):
    ordinary = tmp_path / "diffusers"
    ordinary.mkdir()
    roots = [ordinary, HubCacheRoot(hub)]
    assert list_pipelines(roots) == [REPO]
    folder = resolve_model(REPO, roots)
    assert folder.parent.name == "snapshots" and (folder / "transformer").is_dir()
    assert (folder / "model_index.json").is_symlink()  # read through the cache's own links
    with torch.inference_mode():
        result = load(folder, None, device="cpu", cache=ComponentCache())
    assert result.pipeline.transformer is not None
    assert {r["component"] for r in result.rows} >= {"transformer", "vae", "text_encoder", "text_encoder_2"}


def test_a_link_leaving_the_repos_blobs_is_refused(hub, tmp_path):
    snapshot = resolve_model(REPO, [HubCacheRoot(hub)])
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((snapshot / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())
    target = snapshot / "vae" / "diffusion_pytorch_model.safetensors"
    target.unlink()
    target.symlink_to(outside)
    assert list_pipelines([HubCacheRoot(hub)]) == []
    with pytest.raises(ValidationError) as exc:
        resolve_model(REPO, [HubCacheRoot(hub)])
    assert exc.value.codes == ["model_outside_roots"]
    assert "vae/diffusion_pytorch_model.safetensors is a link that leaves the pipeline folder" in str(exc.value)


def test_a_link_into_another_repos_blobs_is_refused(hub, tiny_flux):
    other = add_snapshot(hub, "someone/other", tiny_flux, rev="fedcba")
    snapshot = resolve_model(REPO, [HubCacheRoot(hub)])
    config = snapshot / "transformer" / "config.json"
    stolen = (other / "transformer" / "config.json").resolve()
    config.unlink()
    config.symlink_to(stolen)
    assert list_pipelines([HubCacheRoot(hub)]) == ["someone/other"]
    with pytest.raises(ValidationError, match="transformer/config.json is a link"):
        resolve_model(REPO, [HubCacheRoot(hub)])


def test_a_linked_folder_is_refused(hub, tmp_path, tiny_flux):
    import shutil

    snapshot = resolve_model(REPO, [HubCacheRoot(hub)])
    shutil.rmtree(snapshot / "vae")
    (snapshot / "vae").symlink_to(tiny_flux / "vae", target_is_directory=True)
    with pytest.raises(ValidationError, match="vae is a link"):
        resolve_model(REPO, [HubCacheRoot(hub)])


def test_where_the_cache_is_and_how_to_turn_it_off(monkeypatch, tmp_path):
    for var in (ENV_VAR, "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() is None and default_root() == []  # absent: nothing is added
    default = tmp_path / "home" / ".cache" / "huggingface" / "hub"
    default.mkdir(parents=True)
    assert cache_dir() == default
    (tmp_path / "hf-home" / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert cache_dir() == tmp_path / "hf-home" / "hub"
    (tmp_path / "hub-cache").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert cache_dir() == tmp_path / "hub-cache"
    (tmp_path / "mine").mkdir()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mine"))
    assert default_root() == [HubCacheRoot(tmp_path / "mine")]
    monkeypatch.setenv(ENV_VAR, "off")
    assert cache_dir() is None and default_root() == []


def test_saves_never_go_to_the_hub_cache(monkeypatch, hub, tmp_path):
    from pipequant.nodes import host

    monkeypatch.setenv(ENV_VAR, str(hub))
    monkeypatch.setenv("PIPEQUANT_MODELS", str(tmp_path / "mine"))
    assert host.folder_roots() == [tmp_path / "mine"]
    assert host.model_roots() == [tmp_path / "mine", HubCacheRoot(hub)]
    assert all(not isinstance(r, HubCacheRoot) for r in host.gguf_roots())
    assert os.fspath(host.folder_roots()[0]) != os.fspath(hub)


def test_a_linked_blobs_folder_is_refused(hub, tmp_path):
    """blobs/ itself a link elsewhere would make "inside blobs/" mean anywhere."""
    import shutil

    repo = hub / ("models--" + REPO.replace("/", "--"))
    elsewhere = tmp_path / "elsewhere-blobs"
    shutil.move(str(repo / "blobs"), str(elsewhere))
    (repo / "blobs").symlink_to(elsewhere, target_is_directory=True)
    assert list_pipelines([HubCacheRoot(hub)]) == []
    with pytest.raises(ValidationError, match="is a link that leaves the pipeline folder"):
        resolve_model(REPO, [HubCacheRoot(hub)])


def test_the_editor_setting_is_read_from_comfyuis_settings_file(monkeypatch, hub, tmp_path):
    """The Settings dialog's switch (web/js/settings.js) as ComfyUI saves it: user/default/host.settings.json."""
    import json
    import types

    from pipequant.nodes import host

    web = (Path(__file__).resolve().parent.parent / "web" / "js" / "settings.js").read_text()
    assert f'"{host.HUB_CACHE_SETTING}"' in web  # the editor registers the id the server reads
    user = tmp_path / "user"
    monkeypatch.setattr(
        host,
        "folder_paths",
        types.SimpleNamespace(get_user_directory=lambda: str(user), get_folder_paths=lambda kind: []),
    )
    monkeypatch.setenv(ENV_VAR, str(hub))
    assert host.hub_cache_setting() and host.model_roots() == [HubCacheRoot(hub)]  # no settings saved yet
    settings = user / "default" / host.SETTINGS_FILE
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.Locale": "en", host.HUB_CACHE_SETTING: False}))
    assert not host.hub_cache_setting() and host.model_roots() == []
    settings.write_text(json.dumps({host.HUB_CACHE_SETTING: True}))
    assert host.model_roots() == [HubCacheRoot(hub)]
    settings.write_text("{not json")  # a broken file: the default (on), never an error in the node list
    assert host.hub_cache_setting()
    monkeypatch.setenv(ENV_VAR, "off")  # the server's switch wins over the editor's
    settings.write_text(json.dumps({host.HUB_CACHE_SETTING: True}))
    assert host.model_roots() == []
