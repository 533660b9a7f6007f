"""One measurement per fresh process: `python -m bench.worker --job '<json>'` prints one JSON line.

`python -m bench.worker --serve` is the same worker as a fork server: it imports torch,
diffusers, transformers, the quantization backends and PipeQuant once, then reads one JSON job
per line on stdin and runs each in a freshly forked child (nothing loaded, no cache warm, only
the imports shared), printing one JSON result line per job. Forking saves the ~7 s of imports
per run on a 2-core machine; both PipeQuant and plain diffusers runs get the same prelude, as
they would inside ComfyUI, where everything is imported at startup.

Job kinds: load, reuse, save, validate, sample (see the `job_*` functions).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

RESULT_PREFIX = "@@bench-result "
_STATE = {"bnb_cpu_patch": False}
_PATCHES = ExitStack()


# -- prelude ----------------------------------------------------------------------------------
def prelude(mode: str = "auto") -> dict:
    """Import everything both load paths use, so no run pays for an import the other does not.

    `mode` is the bnb CPU patch: "auto" (only without a GPU), "on" or "off"."""
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import torch

    raw = os.environ.get("PIPEQUANT_BENCH_THREADS", "").strip()
    try:
        threads = int(raw or 0)
    except ValueError:
        raise SystemExit(f"PIPEQUANT_BENCH_THREADS={raw[:40]!r} is not a whole number (threads; 0 = torch's default)")
    if threads > 0:
        torch.set_num_threads(threads)
    import diffusers
    import diffusers.quantizers.auto  # noqa: F401
    import transformers
    import transformers.quantizers.auto  # noqa: F401
    from diffusers import (  # noqa: F401
        AutoencoderKL,
        DiffusionPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
        PipelineQuantizationConfig,
    )
    from transformers import CLIPTextModel, T5EncoderModel  # noqa: F401

    # sdnq too: its import runs a torch.compile self-test (about 2 s of CPU, once per process), a
    # start-up cost like the other backends' imports, not a cost of any one load.
    for module in ("bitsandbytes", "torchao.quantization", "optimum.quanto", "gguf", "sdnq"):
        try:
            __import__(module)
        except ImportError:
            pass
    # The nodes (the Load node, for the node path) are imported here, as ComfyUI imports them at startup.
    from pipequant.nodes import NODE_CLASS_MAPPINGS

    assert "PipeQuantLoadPipeline" in NODE_CLASS_MAPPINGS
    import pipequant.resolver.decide  # noqa: F401
    import pipequant.resolver.keep  # noqa: F401

    # Progress bars and warnings off for both paths (PipeQuant turns the bars off itself).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    from pipequant.testing import bnb_cpu

    if not _STATE["bnb_cpu_patch"] and (mode == "on" or (mode == "auto" and bnb_cpu.needed())):
        _PATCHES.enter_context(bnb_cpu.bnb_on_cpu())  # for the worker's lifetime
        _STATE["bnb_cpu_patch"] = True
    return {
        "import_seconds": round(time.perf_counter() - t0, 3),
        "bnb_cpu_patch": _STATE["bnb_cpu_patch"],
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# -- helpers ----------------------------------------------------------------------------------
def _spec(data):
    from pipequant.resolver.links import spec_from_dict

    return spec_from_dict(data) if data else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _load(root, name: str, spec, dtype: str, device: str, meter=None):
    """What the Load node runs (decide.prepare: find by name, validate + plan; then load); with a
    `meter`, a phase mark when planning ends and after each component. Costs microseconds."""
    from pipequant.resolver.decide import prepare
    from pipequant.resolver.keep import load_plan

    plan = prepare(name, spec, roots=[Path(root)], dtype=dtype, device=device).plan_or_raise()
    if meter is None:
        return load_plan(plan)
    meter.mark("validate+plan")
    return load_plan(plan, progress=lambda i, n, component: meter.mark(f"component#{i}"))


def _node_load(root, name: str, spec, dtype: str, device: str, disk_cache: str | None, meter=None):
    """What a user runs: the Load node's `load` (prepare, the estimate it frees memory with, the
    disk cache as configured, the load, the report), inside inference mode as ComfyUI runs nodes.
    `disk_cache`: a folder (the node's default is on), or None for off."""
    import torch

    from pipequant.nodes import NODE_CLASS_MAPPINGS

    os.environ["PIPEQUANT_MODELS"] = str(root)
    os.environ["PIPEQUANT_DISK_CACHE"] = disk_cache or "off"
    with torch.inference_mode():
        result, _ = NODE_CLASS_MAPPINGS["PipeQuantLoadPipeline"]().load(
            name, dtype, device, "none", spec, disk_cache=disk_cache is not None
        )
    if meter is not None:
        meter.mark("node load")
    return result


def _module_components(pipeline) -> dict:
    import torch

    return {n: c for n, c in pipeline.components.items() if isinstance(c, torch.nn.Module)}


def _component_stats(pipeline, detail: bool, load_dtype: str) -> dict:
    from pipequant.resolver.keep import param_count, tensor_bytes

    from .measure import component_floor

    out = {}
    for name, module in _module_components(pipeline).items():
        row = {"bytes": tensor_bytes(module), "params": param_count(module)}
        if detail:
            row.update(component_floor(module, load_dtype))
        out[name] = row
    return out


# -- jobs -------------------------------------------------------------------------------------
def job_load(job: dict) -> dict:
    """Load one pipeline once, timed: through the Load node (mode pipequant) or plain diffusers."""
    import torch

    from .config import plain_quantization_config
    from .measure import PhaseMeter, cpu_seconds

    root, name, device, dtype = job["root"], job["name"], job.get("device", "cpu"), job.get("dtype", "bfloat16")
    detail = bool(job.get("detail"))
    # The on-disk cache of quantized components only where a benchmark asks for it (bench.disk_cache):
    # every other load must quantize, or the comparisons with plain diffusers would be unfair.
    os.environ["PIPEQUANT_DISK_CACHE"] = job.get("disk_cache") or "off"
    # bench.disk_cache measures every plan, those the cache was measured not to pay for too
    os.environ["PIPEQUANT_DISK_CACHE_EVERY_PLAN"] = "1" if job.get("every_plan") else ""
    if job.get("empty_disk_cache") and job.get("disk_cache"):  # a first load: nothing cached yet (untimed)
        import shutil

        shutil.rmtree(job["disk_cache"], ignore_errors=True)
    gc.collect()
    spec = _spec(job.get("spec"))
    meter = PhaseMeter(cuda=device.startswith("cuda"), sample=detail)
    names = None
    write_after = None
    if job["mode"] in ("pipequant", "node"):
        c0, t0 = cpu_seconds(), time.perf_counter()
        if job["mode"] == "node":
            result = _node_load(root, name, spec, dtype, device, job.get("disk_cache"), meter)
        else:
            result = _load(root, name, spec, dtype, device, meter)
        _sync(device)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        if job["mode"] == "node":  # the disk-cache entries the node writes after handing the pipeline back
            from pipequant.resolver.keep import wait_for_writes

            w0 = time.perf_counter()
            wait_for_writes()
            write_after = round(time.perf_counter() - w0, 4)
        pipeline = result.pipeline
        names = [r.name for r in result.plan.modules()] if job["mode"] == "pipequant" else None
        report_rows = {r["component"]: r for r in result.rows if r["action"] != "not a model"}
    elif job["mode"] == "plain":
        from diffusers import DiffusionPipeline

        plan_key = job.get("plain_plan", job.get("plan"))
        c0, t0 = cpu_seconds(), time.perf_counter()
        pqc = plain_quantization_config(plan_key, dtype) if plan_key else None
        kwargs = {"quantization_config": pqc} if pqc is not None else {}
        pipeline = DiffusionPipeline.from_pretrained(str(Path(root) / name), dtype=getattr(torch, dtype), **kwargs)
        if device != "cpu":
            pipeline.to(device)
        _sync(device)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        report_rows = {}
    else:
        raise ValueError(f"unknown mode {job['mode']!r}")
    meter.mark("assemble+report" if names else "load")
    mem = meter.stop()
    phases = meter.phases
    if names:  # name the component phases: progress n = the n-th module of the plan
        for p in phases:
            if p["phase"].startswith("component#"):
                p["phase"] = names[int(p["phase"].split("#")[1]) - 1]
    comps = _component_stats(pipeline, detail, dtype)
    if detail:  # what the RSS left after the load is made of
        from .measure import mapped_rss, proc_status, trim_heap

        mem["safetensors_mapped_after"] = mapped_rss()
        trim_heap()
        status = proc_status()
        mem["rss_after_trim"] = status["VmRSS"] - mem["baseline_rss"]
        mem["anon_after_trim"] = status["RssAnon"] - mem["baseline_anon"]
    for cname, row in report_rows.items():
        if cname in comps:
            comps[cname]["report_bytes"] = row["bytes"]
            comps[cname]["report_load_seconds"] = row["load_seconds"]
            comps[cname]["quantized_layers"] = row["quantized_layers"]
            comps[cname]["disk_cache"] = row.get("disk_cache")
            comps[cname]["disk_cache_reason"] = row.get("disk_cache_reason")
    total = sum(c["bytes"] for c in comps.values())
    out = {
        "wall": round(wall, 4),
        "cpu": round(cpu, 4),
        "memory": mem,
        "phases": phases,
        "components": comps,
        "total_bytes": total,
        "write_after_load_s": write_after,
    }
    if device.startswith("cuda"):
        out["cuda_final"] = torch.cuda.memory_allocated()
    return out


def job_reuse(job: dict) -> dict:
    """Benchmark 3 in one process: plan A loaded (cache warm); then, interleaved, plan B (one
    text encoder switched) reusing A's cached components vs plan B with an empty cache."""
    from pipequant.resolver.keep import COMPONENT_CACHE

    root, name, device, dtype = job["root"], job["name"], job.get("device", "cpu"), job.get("dtype", "bfloat16")
    spec_a, spec_b = _spec(job["spec_a"]), _spec(job["spec_b"])

    def load(spec):
        gc.collect()
        t0 = time.perf_counter()
        result = _load(root, name, spec, dtype, device)
        _sync(device)
        dt = time.perf_counter() - t0
        rows = {r["component"]: r for r in result.rows if r["action"] != "not a model"}
        return dt, rows

    COMPONENT_CACHE.clear()
    first_a, _ = load(spec_a)
    entries = [(k, COMPONENT_CACHE.get(k)) for k in COMPONENT_CACHE.keys()]  # noqa: SIM118 (a method, not a dict)

    def restore_a():
        COMPONENT_CACHE.clear()
        for key, entry in entries:
            COMPONENT_CACHE.put(key, entry.module, entry.nbytes, entry.report)

    restore_a()
    load(spec_b)  # warm-up: the switched component's backend runs once before timing
    reuse, full, switched, rows_b = [], [], [], None
    for rep in range(int(job.get("reps", 5))):
        for kind in ("reuse", "full") if rep % 2 == 0 else ("full", "reuse"):
            if kind == "reuse":
                restore_a()
                dt, rows = load(spec_b)
                reuse.append(dt)
                reused = sorted(n for n, r in rows.items() if r["reused"])
                switched.append(sum(r["load_seconds"] for r in rows.values() if not r["reused"]))
            else:
                COMPONENT_CACHE.clear()
                dt, rows = load(spec_b)
                full.append(dt)
                rows_b = rows
    COMPONENT_CACHE.clear()
    comp = job["component"]
    total = sum(r["bytes"] for r in rows_b.values())
    return {
        "reuse": reuse,
        "full": full,
        "switched_load": switched,
        "first_a": round(first_a, 4),
        "reused_components": reused,
        "component": comp,
        "component_bytes": rows_b[comp]["bytes"],
        "total_bytes": total,
        "share": round(rows_b[comp]["bytes"] / total, 4) if total else None,
    }


def job_save(job: dict) -> dict:
    """Load a plan as the Load node does and write it as the Save Quantized Pipeline node does.
    Kept between runs: skipped when the copy's marker matches its source and plan."""
    import shutil

    from pipequant.resolver.keep import save

    from .pipelines import SAVED_MARKER, marker_matches, source_recipe

    root, name, dtype = Path(job["root"]), job["name"], job.get("dtype", "bfloat16")
    dest = root / job["dest"]
    recipe = {"source": source_recipe(root / name), "spec": job["spec"], "dtype": dtype}
    if marker_matches(dest, recipe):
        return {"save_seconds": None, "kept": True}
    shutil.rmtree(dest, ignore_errors=True)
    result = _load(root, name, _spec(job["spec"]), dtype, job.get("device", "cpu"))
    t0 = time.perf_counter()
    save(result, job["dest"], root)
    seconds = time.perf_counter() - t0
    (dest / SAVED_MARKER).write_text(json.dumps(recipe, sort_keys=True) + "\n")
    return {"save_seconds": round(seconds, 3), "kept": False}


def job_validate(job: dict) -> dict:
    """Benchmark 6: `plan_load` (inspect + validate + plan, what the Load node runs before any
    weight) and `estimate`, cold (first call in this fresh process) then warm; proves no weight
    is read: safetensors/torch loaders are made to raise, and opened files and read bytes are counted."""
    import safetensors
    import safetensors.torch
    import torch

    from pipequant.resolver.keep import plan_load

    from .measure import io_read_bytes

    try:
        from pipequant.resolver.decide import estimate
    except ImportError:  # not in every checkout
        estimate = None

    folder, device = Path(job["root"]) / job["name"], job.get("device", "cpu")
    spec = _spec(job.get("spec"))
    opened: list[str] = []

    def audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)

    def forbidden(*args, **kwargs):
        raise RuntimeError("validation read weights")

    safetensors.safe_open = safetensors.torch.safe_open = forbidden
    safetensors.torch.load_file = safetensors.torch.load = torch.load = forbidden

    def once():
        t0 = time.perf_counter()
        plan = plan_load(folder, spec, dtype=job.get("dtype", "bfloat16"), device=device)
        t1 = time.perf_counter()
        est = estimate(plan) if estimate is not None else None
        return t1 - t0, time.perf_counter() - t1, est

    read0 = io_read_bytes()
    v_cold, e_cold, est = once()
    read1 = io_read_bytes()
    opened_cold = list(opened)
    warm_v, warm_e = [], []
    for _ in range(int(job.get("reps", 20))):
        v, e, _ = once()
        warm_v.append(v)
        warm_e.append(e)
    weights = [p for p in opened_cold if p.endswith(".safetensors")]
    weight_bytes = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    return {
        "validate_cold": round(v_cold, 5),
        "estimate_cold": round(e_cold, 5),
        "validate_warm": round(statistics.median(warm_v), 5),
        "estimate_warm": round(statistics.median(warm_e), 5),
        "bytes_read_cold": (read1 - read0) if read0 is not None else None,
        "weight_files_opened": len(set(weights)),
        "weight_bytes_on_disk": weight_bytes,
        "estimate_total": est["total"] if est else None,
    }


def job_sample(job: dict) -> dict:
    """GPU only: per-step sampling time of a loaded plan (first step is warm-up)."""
    import torch

    from pipequant.resolver.run import generate

    device = job.get("device", "cuda")
    result = _load(job["root"], job["name"], _spec(job.get("spec")), job.get("dtype", "bfloat16"), device)
    stamps = []

    def on_step(step, total):
        _sync(device)
        stamps.append(time.perf_counter())

    steps = int(job.get("steps", 6))
    _sync(device)
    start = time.perf_counter()
    # The synthetic VAE does not downsample: 128x128 pixels = 64x64 packed tokens = 4096 image
    # tokens, the sequence FLUX.1 runs at 1024x1024.
    generate(
        result.pipeline,
        prompt="a photo of a cat",
        steps=steps,
        width=job.get("width", 128),
        height=job.get("height", 128),
        max_sequence_length=64,
        on_step=on_step,
    )
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    return {
        "step_seconds": times,
        "step_median": statistics.median(times[1:] or times),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def job_build(job: dict) -> dict:
    """Build the synthetic pipeline of one size (kept between runs)."""
    from .pipelines import disk_bytes, ensure

    t0 = time.perf_counter()
    folder = ensure(job["size"], Path(job["root"]))
    return {"folder": str(folder), "seconds": round(time.perf_counter() - t0, 2), "disk_bytes": disk_bytes(folder)}


JOBS = {
    "build": job_build,
    "load": job_load,
    "reuse": job_reuse,
    "save": job_save,
    "validate": job_validate,
    "sample": job_sample,
}


def run_job(job: dict) -> dict:
    os.environ["PIPEQUANT_DISK_CACHE"] = "off"  # job_load turns it on where a job names a folder
    try:
        out = JOBS[job["kind"]](job)
        out["ok"] = True
    except Exception as exc:  # reported, not raised: one failed run must not end the suite
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    out["job"] = {k: v for k, v in job.items() if k not in ("spec", "spec_a", "spec_b")}
    out["bnb_cpu_patch"] = _STATE["bnb_cpu_patch"]
    return out


# -- process modes ----------------------------------------------------------------------------
def _child(job: dict, write_fd: int, log_path: str | None) -> None:
    """In a forked child: run the job with stdout/stderr sent to the log, report on the pipe."""
    try:
        fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        out = run_job(job)
        data = json.dumps(out).encode()
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)
    finally:
        os._exit(0)


def serve(log_path: str | None) -> None:
    info = prelude(os.environ.get("PIPEQUANT_BENCH_BNB_CPU", "auto"))
    print(RESULT_PREFIX + json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        job = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(job, write_fd, log_path)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            data = r.read()
        _, status = os.waitpid(pid, 0)
        if data:
            out = json.loads(data)
        else:
            out = {"ok": False, "error": f"worker child died (wait status {status})", "job": job}
        print(RESULT_PREFIX + json.dumps(out), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--job", help="run one job (JSON) in this process and print its result")
    parser.add_argument("--serve", action="store_true", help="fork server: one JSON job per stdin line")
    parser.add_argument("--log", help="where children's stdout/stderr go (default: discarded)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.log)
        return 0
    if not args.job:
        parser.error("give --job JSON or --serve")
    prelude(os.environ.get("PIPEQUANT_BENCH_BNB_CPU", "auto"))
    out = run_job(json.loads(args.job))
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
