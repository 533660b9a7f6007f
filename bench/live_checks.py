"""The editor's live checks hammered beside loads, LoRA applies and saves, in threads (issue 22, item 4).

In ComfyUI the routes (validate, estimate, plan, components, backends) run in worker threads while
the prompt thread loads pipelines, applies LoRAs and saves. The meta-device builds of the routes and
the loads' own meta contexts must not touch each other's modules or global state: after a long
session, no parameter may land on the meta device and every load must still work.

`python -m bench.live_checks --seconds 300` runs it for five minutes on the tiny FLUX pipeline and
prints what ran and every fault; tests/test_live_checks.py runs the same for a few seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE = dict(prompt="a cat", steps=1, width=32, height=32, max_sequence_length=32, seed=1)


@dataclass
class Tally:
    counts: dict = field(default_factory=dict)
    faults: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fault(self, what: str, exc: BaseException) -> None:
        with self.lock:
            self.faults.append(f"{what}: {type(exc).__name__}: {str(exc)[:300]}\n{traceback.format_exc()[-1500:]}")


def global_state() -> dict:
    """What the libraries patch process-wide while building on the meta device."""
    import torch

    return {
        "register_parameter": torch.nn.Module.register_parameter,
        "register_buffer": torch.nn.Module.register_buffer,
        "init": {name: getattr(torch.nn.init, name) for name in ("kaiming_uniform_", "normal_", "uniform_", "zeros_")},
        "default_dtype": torch.get_default_dtype(),
        "tensor_device": torch.empty(1).device.type,
        "linear_device": torch.nn.Linear(2, 2).weight.device.type,
    }


def _route_worker(name: str, stop: threading.Event, tally: Tally, model: str) -> None:
    # what the HTTP handlers run in worker threads
    from pipequant.nodes import routes as _routes
    from pipequant.resolver.problems import ValidationError

    rng = random.Random(hash(name))
    spec = {
        "kind": "global",
        "node": "1",
        "backend": "torchao",
        "quant_type": "int8_weight_only",
        "components": "",
        "options": "{}",
        "gguf_file": "none",
    }
    calls = [
        ("validate", lambda: _routes.check({"model": model, "spec": spec})),
        (
            "estimate",
            lambda: _routes.estimate({"model": model, "spec": spec, "save": [{"node": 9, "folder_name": "x"}]}),
        ),
        ("estimate_plain", lambda: _routes.estimate({"model": model, "spec": None})),
        ("plan", lambda: _routes.auto_plan({"model": model, "budget_gb": 1, "allow_offload": False})),
        ("components", lambda: _routes.components(model)),
        ("backends", _routes.editor_catalogue),
    ]
    while not stop.is_set():
        what, call = rng.choice(calls)
        try:
            call()
            tally.ok("route " + what)
        except (ValidationError, _routes.BadRequest):
            tally.ok("route " + what + " (refused)")
        except Exception as exc:  # noqa: BLE001 - every other exception is a fault
            tally.fault("route " + what, exc)


def _prompt_worker(stop: threading.Event, tally: Tally, pipeline_dir: Path, loras: list[Path], out: Path) -> None:
    """What the prompt thread does: loads (fresh and cached, plain and quantized), LoRA applies,
    sampling, saves."""
    import torch

    from pipequant.resolver.keep import ComponentCache, load, save
    from pipequant.resolver.links import BackendSpec
    from pipequant.resolver.run import generate, lora

    cache = ComponentCache(budget_bytes=1 << 40)
    plans = [None, BackendSpec.make("torchao", "int8_weight_only", components=["transformer"])]
    i = 0
    while not stop.is_set():
        i += 1
        step = "load"
        try:
            with torch.inference_mode():
                result = load(pipeline_dir, plans[i % 2], dtype="float32", device="cpu", cache=cache if i % 3 else None)
                tally.ok("load")
                step = "lora"
                spec = lora.make_spec(loras[i % len(loras)].name, [loras[0].parent], 0.8)
                lora.load_adapter(result, spec)
                result = result.with_lora(spec)
                lora.activate(result)
                tally.ok("lora")
                step = "sample"
                image = generate(result.pipeline, **SAMPLE)
                if not torch.isfinite(image).all():
                    raise RuntimeError("the image holds NaN")
                tally.ok("sample")
                if i % 4 == 0:
                    step = "save"
                    folder = save(_plain(result), f"s{i}", out)
                    shutil.rmtree(folder)
                    tally.ok("save")
        except Exception as exc:  # noqa: BLE001
            tally.fault("prompt " + step, exc)
            cache.clear()


def _plain(result):
    import dataclasses

    return dataclasses.replace(result, loras=())


def stress(seconds: float, pipeline_dir: Path, work: Path, route_threads: int = 3) -> Tally:
    """Run the routes in `route_threads` threads beside one prompt thread for `seconds`; then check
    that no global state was left patched and that a fresh load still runs."""
    from pipequant.testing import write_peft_lora

    models = Path(pipeline_dir).parent
    os.environ["PIPEQUANT_MODELS"] = str(models)
    loras = [write_peft_lora(pipeline_dir, work / "loras" / f"l{i}.safetensors", seed=i) for i in range(3)]
    saves = work / "saves"
    saves.mkdir(parents=True, exist_ok=True)
    from pipequant.resolver.files import isolate_empty_init

    isolate_empty_init()  # what the first load or live check does
    before = global_state()
    tally, stop = Tally(), threading.Event()
    threads = [
        threading.Thread(target=_route_worker, args=(f"r{i}", stop, tally, Path(pipeline_dir).name), daemon=True)
        for i in range(route_threads)
    ]
    threads.append(threading.Thread(target=_prompt_worker, args=(stop, tally, pipeline_dir, loras, saves), daemon=True))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(120)
        if t.is_alive():
            tally.fault("join", RuntimeError(f"{t.name} did not stop within 120 s"))
    after = global_state()
    for key, value in before.items():
        if after[key] != value:
            tally.fault("global state", RuntimeError(f"{key} changed: {value!r} -> {after[key]!r}"))
    try:
        import torch

        from pipequant.resolver.keep import load
        from pipequant.resolver.run import generate

        with torch.inference_mode():
            result = load(pipeline_dir, None, dtype="float32", device="cpu", cache=None)
            generate(result.pipeline, **SAMPLE)
        on_meta = [n for n, p in result.pipeline.transformer.named_parameters() if p.device.type == "meta"]
        if on_meta:
            raise RuntimeError(f"{len(on_meta)} parameters on the meta device, first {on_meta[0]}")
        tally.ok("final load")
    except Exception as exc:  # noqa: BLE001
        tally.fault("final load", exc)
    return tally


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=3, help="route threads beside the prompt thread")
    args = parser.parse_args(argv)
    from pipequant.testing import ensure_pipeline

    with tempfile.TemporaryDirectory(prefix="pq-live-") as tmp:
        work = Path(tmp)
        pipeline_dir = ensure_pipeline("flux", work / "models")
        tally = stress(args.seconds, pipeline_dir, work, args.threads)
    for what, n in sorted(tally.counts.items()):
        print(f"{n:6d}  {what}")
    for fault in tally.faults[:20]:
        print("FAULT", fault)
    print(f"{len(tally.faults)} faults in {args.seconds:g} s")
    return 1 if tally.faults else 0


if __name__ == "__main__":
    raise SystemExit(main())
