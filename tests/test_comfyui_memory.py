"""ComfyUI's own memory controls govern the pack's memory (real ComfyUI, CPU).

- `POST /free` ("Unload models" / "Free model and node cache") empties the component cache: the
  next run loads every component again, and the server's RSS falls.
- A node that needs room calls ComfyUI's `free_memory()` (as the core upscaler does): ComfyUI
  evicts our components, and the next run of our workflow reloads them.

The same server reads a fake Hugging Face cache (HF_HUB_CACHE): a snapshot is listed by its repo
name and loads; one whose file links out of its repo's blobs/ is neither listed nor loaded.

The server gets one extra custom node, `PQTestNeedsMemory`: it asks ComfyUI's real
`free_memory()` for more than is free, the way a core node that needs room does (on a CPU
server with RAM to spare no core node would ever need to).
Skipped without COMFYUI_DIR.
"""

from __future__ import annotations

import shutil
import time

import psutil
import pytest
from comfy_server import skip_reason, start_comfyui
from hub_cache_fake import add_snapshot

pytestmark = pytest.mark.comfyui

HUB_REPO, HUB_BAD_REPO = "black-forest-labs/FLUX.1-dev", "someone/linked-out"
MODEL = "flux-20m"  # a 20.6 M-parameter transformer: ~80 MB in float32, enough to see RSS move
PRESSURE_NODE = '''
import comfy.model_management as mm


class PQTestNeedsMemory:
    """Stands in for a core node that needs more memory than is free."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image):
        device = mm.get_torch_device()
        mm.free_memory(mm.get_free_memory(device) + 64 * 1024**3, device)
        return (image,)


NODE_CLASS_MAPPINGS = {"PQTestNeedsMemory": PQTestNeedsMemory}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from pipequant import testing as tiny

    root = tmp_path_factory.mktemp("comfyui-memory")
    (root / "custom_nodes" / "pq_test_pressure").mkdir(parents=True)
    (root / "custom_nodes" / "pq_test_pressure" / "__init__.py").write_text(PRESSURE_NODE)
    models = root / "models" / "diffusers"
    built = tiny.ensure_pipeline("flux", root / "build", size="20m")
    models.mkdir(parents=True)
    shutil.copytree(built, models / MODEL)
    small = tiny.ensure_pipeline("flux", root / "build")
    add_snapshot(root / "hub", HUB_REPO, small)
    bad = add_snapshot(root / "hub", HUB_BAD_REPO, small)
    vae = bad / "vae" / "diffusion_pytorch_model.safetensors"
    outside = root / "outside.safetensors"
    shutil.copyfile(vae, outside)
    vae.unlink()
    vae.symlink_to(outside)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(root / "hub"))
        with start_comfyui(root, with_models=False) as srv:
            yield srv


def our_prompt(seed: int = 1, allow_pickle: bool = False) -> dict:
    """Load + report + sample. Toggling allow_pickle (no pickle files here) re-runs the Load node
    with the same plan, so its components come from the cache when they are still there."""
    return {
        "1": {
            "class_type": "PipeQuantLoadPipeline",
            "inputs": {
                "model": MODEL,
                "dtype": "float32",
                "device": "cpu",
                "offload": "none",
                "allow_pickle": allow_pickle,
            },
        },
        "2": {"class_type": "PipeQuantMemoryReport", "inputs": {"pipeline": ["1", 0]}},
        "3": {
            "class_type": "PipeQuantSampler",
            "inputs": {
                "pipeline": ["1", 0],
                "prompt": "a cat",
                "negative_prompt": "",
                "steps": 1,
                "guidance_scale": 3.5,
                "width": 32,
                "height": 32,
                "seed": seed,
                "batch_size": 1,
                "max_sequence_length": 32,
            },
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def core_prompt() -> dict:
    """Core nodes only, plus the stand-in that needs memory."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PQTestNeedsMemory", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def run_ok(server, prompt) -> dict:
    entry = server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{server.log_tail()}"
    return entry


def reused(entry: dict) -> dict[str, bool]:
    """component -> reused from the cache, from the memory report's text."""
    text = entry["outputs"]["2"]["text"][0]
    out = {}
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        line = next(line for line in text.splitlines() if line.split() and line.split()[0] == name)
        out[name] = "(cached)" in line
    return out


def rss(server) -> int:
    process = psutil.Process(server.process.pid)
    return process.memory_info().rss


def settled_rss(server, below: int | None = None, timeout: float = 20.0) -> int:
    """RSS after ComfyUI's worker had time to collect (it runs gc at most every 10 s)."""
    deadline = time.monotonic() + timeout
    value = rss(server)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        value = rss(server)
        if below is not None and value < below:
            break
    return value


def test_free_empties_the_cache_and_rss_falls(server):
    run_ok(server, our_prompt())
    warm = run_ok(server, our_prompt(seed=2, allow_pickle=True))  # same plan: all from the cache
    assert all(reused(warm).values()), warm["outputs"]["2"]["text"][0]
    loaded_rss = settled_rss(server)

    status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    after = settled_rss(server, below=loaded_rss - 60 * 1024**2)
    assert f"PipeQuant: released {MODEL}/transformer" in server.log(), server.log_tail()
    # The transformer alone is 82 MB in float32; at least 60 MB of it must have gone back.
    assert loaded_rss - after > 60 * 1024**2, (loaded_rss, after)

    again = run_ok(server, our_prompt(seed=3, allow_pickle=False))
    assert not any(reused(again).values()), again["outputs"]["2"]["text"][0]


def test_unload_models_alone_releases_the_cached_pipeline(server):
    """Without free_memory, ComfyUI keeps its node outputs (our Load node's pipeline among them):
    the pipeline is emptied all the same, and the next run reloads instead of failing."""
    run_ok(server, our_prompt(seed=4))
    status, _ = server.post("/free", {"unload_models": True})
    assert status == 200
    time.sleep(1.5)  # the worker reads the flag when idle
    again = run_ok(server, our_prompt(seed=4))  # same inputs: ComfyUI re-runs Load only because it was released
    assert not any(reused(again).values()), again["outputs"]["2"]["text"][0]


def test_a_core_node_needing_memory_gets_ours_and_the_next_run_reloads(server):
    run_ok(server, our_prompt(seed=5))
    loaded_rss = settled_rss(server)
    released_before = server.log().count(f"PipeQuant: released {MODEL}/transformer")
    run_ok(server, core_prompt())
    assert server.log().count(f"PipeQuant: released {MODEL}/transformer") == released_before + 1, server.log_tail()
    after = settled_rss(server, below=loaded_rss - 60 * 1024**2)
    assert loaded_rss - after > 60 * 1024**2, (loaded_rss, after)
    again = run_ok(server, our_prompt(seed=5))  # same inputs: re-run because ComfyUI evicted it
    assert not any(reused(again).values()), again["outputs"]["2"]["text"][0]
    # ...and without pressure in between, the cache serves the next load again.
    warm = run_ok(server, our_prompt(seed=5, allow_pickle=True))
    assert all(reused(warm).values()), warm["outputs"]["2"]["text"][0]


def test_the_editor_setting_turns_the_hub_cache_off_and_on(server):
    """Settings dialog → PipeQuant → "Read pipelines from the Hugging Face cache": the editor saves
    it through ComfyUI's own /settings route (what web/js/settings.js registers); the model list follows."""

    def listed():
        status, info = server.get("/object_info/PipeQuantLoadPipeline")
        assert status == 200
        return info["PipeQuantLoadPipeline"]["input"]["required"]["model"][0]

    assert HUB_REPO in listed()
    try:
        assert server.post("/settings/PipeQuant.HubCache", False)[0] == 200
        assert HUB_REPO not in listed() and MODEL in listed()
        prompt = our_prompt(seed=9)
        prompt["1"]["inputs"]["model"] = HUB_REPO
        status, body = server.queue(prompt)
        assert status == 400 and "1" in body["node_errors"], body  # not a model root any more
    finally:
        assert server.post("/settings/PipeQuant.HubCache", True)[0] == 200
    assert HUB_REPO in listed()


def test_hub_cache_snapshot_is_listed_by_repo_name_and_loads(server):
    status, info = server.get("/object_info/PipeQuantLoadPipeline")
    assert status == 200
    models = info["PipeQuantLoadPipeline"]["input"]["required"]["model"][0]
    assert HUB_REPO in models and MODEL in models
    assert HUB_BAD_REPO not in models  # its VAE links out of the repo's blobs/
    prompt = our_prompt(seed=7)
    prompt["1"]["inputs"].update(model=HUB_REPO, dtype="bfloat16")
    entry = run_ok(server, prompt)
    assert "transformer" in entry["outputs"]["2"]["text"][0] and entry["outputs"]["4"]["images"]

    prompt["1"]["inputs"]["model"] = HUB_BAD_REPO
    status, body = server.queue(prompt)
    assert status == 400 and "1" in body["node_errors"], body
