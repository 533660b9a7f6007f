"""Start a real ComfyUI server with this pack loaded, for integration (and browser) tests.

Plain module, importable from the tests (``from comfy_server import comfy_server, ComfyServer``).
The server comes from ``$COMFYUI_DIR`` and runs with ``$COMFYUI_PYTHON``, else
``$COMFYUI_DIR/venv/bin/python``, else this interpreter. Everything it writes stays in a temp
folder::

    <root>/extra_model_paths.yaml     custom_nodes / diffusers / diffusion_models, is_default: true
    <root>/custom_nodes/PipeQuant ->  the pack (a symlink to this repository)
    <root>/models/diffusers/          tiny pipelines, under the names the example workflows use
    <root>/models/diffusion_models/   the GGUF file the GGUF example names
    <root>/models/loras/              the LoRA the LoRA template names (its image goes to base/input)
    <root>/base/                      --base-directory: ComfyUI's own models, user, input, temp
    <root>/output/                    --output-directory
    <root>/server.log                 stdout + stderr of the server

``--base-directory`` keeps the checkout's own model folders, user settings and outputs out of the
run; the YAML's ``is_default: true`` puts our folders first, so the Save node writes into the temp
models root, not into the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

PACK_DIR = Path(__file__).resolve().parent.parent
PACK_NAME = "PipeQuant"  # the custom_nodes entry name: ComfyUI's module name, /extensions/<name>/, templates
READY_TIMEOUT = 120.0

# Tiny pipelines under the names the example workflows use.
PIPELINES = {"FLUX.1-dev": "flux", "stable-diffusion-3.5-medium": "sd3"}
FAMILIES = {
    "Wan2.1-T2V-1.3B-Diffusers": "Wan 2.1",
    "stable-diffusion-xl-base-1.0": "SDXL",
}  # pipequant.testing.families
GGUF_FILES = {"flux1-dev-Q8_0.gguf": ("FLUX.1-dev", "transformer", "Q8_0")}


# -- where ComfyUI is ----------------------------------------------------------------------------
def comfyui_dir() -> Path | None:
    value = os.environ.get("COMFYUI_DIR", "").strip()
    return Path(value).expanduser().resolve() if value else None


def comfyui_python(root: Path) -> Path:
    explicit = os.environ.get("COMFYUI_PYTHON", "").strip()
    if explicit:
        return Path(explicit)
    venv = root / "venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def skip_reason() -> str | None:
    """Why a real ComfyUI cannot be started here, or None."""
    root = comfyui_dir()
    if root is None:
        return "COMFYUI_DIR is not set (point it at a ComfyUI checkout to run the integration tests)"
    if not (root / "main.py").is_file():
        return f"COMFYUI_DIR={root} has no main.py"
    python = comfyui_python(root)
    if not python.exists():
        return f"ComfyUI's python {python} does not exist (set COMFYUI_PYTHON)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the models the example workflows name -------------------------------------------------------
def build_models(models_root: Path, diffusion_models: Path) -> dict[str, Path]:
    """Tiny pipelines into ``models_root/<name>`` and GGUF files into ``diffusion_models``."""
    from pipequant import testing as tiny

    models_root.mkdir(parents=True, exist_ok=True)
    diffusion_models.mkdir(parents=True, exist_ok=True)
    build = models_root.parent / ".tiny-build"
    built: dict[str, Path] = {}
    from pipequant.testing.families import ensure_family

    for name, kind in {**PIPELINES, **FAMILIES}.items():
        target = models_root / name
        if not (target / "model_index.json").is_file():
            source = ensure_family(kind, build) if name in FAMILIES else tiny.ensure_pipeline(kind, build)
            shutil.copytree(source, target)
        built[name] = target
    for filename, (pipeline, component, qtype) in GGUF_FILES.items():
        target = diffusion_models / filename
        if not target.is_file():
            tiny.write_gguf(built[pipeline], component, target, qtype)
        built[filename] = target
    shutil.rmtree(build, ignore_errors=True)
    return built


# -- the server --------------------------------------------------------------------------------
class ServerError(AssertionError):
    pass


@dataclass
class ComfyServer:
    """A running ComfyUI. `get`/`post` return (status, parsed JSON or bytes)."""

    root: Path
    base_url: str
    process: subprocess.Popen
    log_path: Path
    models_root: Path  # the diffusers folder (first in folder_paths)
    diffusion_models: Path  # GGUF files
    output_dir: Path
    custom_nodes: Path
    pack_name: str = PACK_NAME
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    # -- plain HTTP ------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"} if data else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def get(self, path: str, timeout: float = 30.0):
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body, timeout: float = 30.0):
        return self.request("POST", path, body, timeout=timeout)

    # -- prompts ---------------------------------------------------------------------------------
    def queue(self, prompt: dict, workflow: dict | None = None):
        """POST /prompt as the editor does; returns (status, body)."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        return self.post("/prompt", body)

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """The /history entry of `prompt_id` once it finished (successfully or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            status, body = self.get(f"/history/{prompt_id}")
            if status == 200 and isinstance(body, dict) and prompt_id in body:
                entry = body[prompt_id]
                if entry.get("status", {}).get("completed") is not None or entry.get("status", {}).get("status_str"):
                    return entry
            time.sleep(0.2)
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout:.0f} s\n{self.log_tail()}")

    def run(self, prompt: dict, workflow: dict | None = None, timeout: float = 120.0) -> dict:
        """Queue (expecting 200) and wait; returns the /history entry."""
        status, body = self.queue(prompt, workflow)
        if status != 200:
            raise ServerError(f"POST /prompt answered {status}: {json.dumps(body, indent=1)[:4000]}")
        return self.wait(body["prompt_id"], timeout)

    # -- health and logs ---------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ServerError(f"ComfyUI exited with {self.process.returncode}\n{self.log_tail()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(self.log().splitlines()[-lines:])


def write_extra_paths(path: Path, entries: dict[str, Path]) -> Path:
    lines = ["pipequant_test:", "    is_default: true"]
    lines += [f"    {key}: {value}" for key, value in entries.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def start_comfyui(
    root: Path,
    *,
    pack_dir: Path = PACK_DIR,
    with_models: bool = True,
    extra_args: tuple[str, ...] = (),
    ready_timeout: float = READY_TIMEOUT,
) -> Iterator[ComfyServer]:
    """Start ComfyUI with the pack in a fresh `root`; stop it (the whole process group) on exit."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    comfy = comfyui_dir()
    root = Path(root)
    custom_nodes = root / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_NAME
    if not link.exists():
        link.symlink_to(Path(pack_dir).resolve(), target_is_directory=True)
    models_root = root / "models" / "diffusers"
    diffusion_models = root / "models" / "diffusion_models"
    models_root.mkdir(parents=True, exist_ok=True)
    diffusion_models.mkdir(parents=True, exist_ok=True)
    loras = root / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    output_dir, base = root / "output", root / "base"
    for folder in (output_dir, base / "custom_nodes", base / "models", base / "input", base / "user", base / "temp"):
        folder.mkdir(parents=True, exist_ok=True)  # main.py lists base/custom_nodes before anything else
    if with_models:
        built = build_models(models_root, diffusion_models)
        from pipequant.testing import write_example_files

        write_example_files(built["FLUX.1-dev"], loras, base / "input")  # what the LoRA template names
    yaml_path = write_extra_paths(
        root / "extra_model_paths.yaml",
        {"custom_nodes": custom_nodes, "diffusers": models_root, "diffusion_models": diffusion_models, "loras": loras},
    )

    port = free_port()
    cmd = [
        str(comfyui_python(comfy)),
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--extra-model-paths-config",
        str(yaml_path),
        "--base-directory",
        str(base),
        "--output-directory",
        str(output_dir),
        "--database-url",
        "sqlite:///:memory:",
        "--disable-auto-launch",
        *extra_args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEQUANT_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", DO_NOT_TRACK="1")
    log_path = root / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            cmd,
            cwd=comfy,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ComfyServer(
        root=root,
        base_url=f"http://127.0.0.1:{port}",
        process=process,
        log_path=log_path,
        models_root=models_root,
        diffusion_models=diffusion_models,
        output_dir=output_dir,
        custom_nodes=custom_nodes,
    )
    try:
        _wait_ready(server, ready_timeout)
        yield server
    finally:
        stop(process)


def _wait_ready(server: ComfyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            status, body = server.get("/object_info", timeout=10)
            if status == 200 and isinstance(body, dict):
                return
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError):
            pass
        time.sleep(0.5)
    raise ServerError(f"ComfyUI was not ready after {timeout:.0f} s\n{server.log_tail()}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (it was started in a new session), then SIGKILL."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- pytest ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def comfy_server(request, tmp_path_factory) -> Iterator[ComfyServer]:
    """One real ComfyUI for the session (skipped without COMFYUI_DIR). Prints the server log at
    the end when a test that used it failed."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    users = {item.nodeid for item in request.session.items if "comfy_server" in getattr(item, "fixturenames", ())}
    watch = _FailureWatch(users)
    request.config.pluginmanager.register(watch)
    try:
        with start_comfyui(tmp_path_factory.mktemp("comfyui")) as server:
            yield server
    finally:
        request.config.pluginmanager.unregister(watch)
    if watch.failed:
        _print_uncaptured(
            request,
            f"\n===== ComfyUI server log ({server.log_path}), for {len(watch.failed)} failed "
            f"test(s): {', '.join(watch.failed)} =====\n{server.log()}",
        )


class _FailureWatch:
    """A pytest plugin for the fixture's lifetime: which of the server's tests failed."""

    def __init__(self, nodeids: set[str]):
        self.nodeids, self.failed = nodeids, []

    def pytest_runtest_logreport(self, report):
        if report.failed and report.nodeid in self.nodeids and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)


def _print_uncaptured(request, text: str) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    context = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with context:
        sys.stderr.write(text + "\n")


# -- reading what the server wrote ---------------------------------------------------------------
def video_size(path: Path) -> list[int]:
    """[frames, width, height] of a saved video, read with ComfyUI's own PyAV (in its python)."""
    code = (
        "import av, json, sys\n"
        "with av.open(sys.argv[1]) as f:\n"
        "    s = f.streams.video[0]\n"
        "    print(json.dumps([sum(1 for _ in f.decode(s)), s.width, s.height]))"
    )
    run = subprocess.run(
        [str(comfyui_python(comfyui_dir())), "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)
