"""The auto planner's predicted peak against the peak measured while sampling, each plan in a fresh process.

For each (goal, budget) the planner plans the pipeline for this machine's device at the image size
(`plan_for`: headers only), then a fresh child loads that plan as the Load node would (its spec,
dtype and offload; no caches) and samples `--steps` steps and the VAE decode at that size. Measured:
on a GPU `torch.cuda.max_memory_allocated` (and the reserved peak, what an out-of-memory error
follows) above what was allocated before the load; on a CPU the kernel's RSS high-water mark above
the RSS after imports and planning. The load's own peak is kept apart from the sampling peak, which
is what the planner predicts (weights on the device + the larger of the denoiser's activations and
the VAE decode).
    python -m bench.peak_predicted --model full --device cuda      # FLUX.1-dev-shaped, 12 B, at 1024x1024
    python -m bench.peak_predicted --model tiny --side 64          # the smoke test's size, on CPU
`--model full` builds FLUX.1-dev's own configs with random weights once (bench/pipelines.py:
ensure_full; 34 GB of disk, seconds of GPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from .pipelines import default_root, ensure, ensure_full
from .report import provenance, write_results
from .suite import run_child

DEFAULT_PLANS = "quality:0,balanced:16"  # goal:budget GiB (0: the planner's default budget for the device)
GIB = 1024**3


def child(job: dict) -> dict:
    """Plan, load and sample once in this fresh process; the figures as a dict."""
    import torch

    from pipequant.resolver.decide import plan_for, prepare
    from pipequant.resolver.keep import load_plan, tensor_bytes
    from pipequant.resolver.run import generate

    from .measure import proc_status, reset_peak

    device, side, folder = job["device"], job["side"], Path(job["folder"])
    cuda = device.startswith("cuda")
    # for this machine's device, as the planner finds it (its GPU, else the CPU and its RAM)
    auto = plan_for(folder, budget_gb=job["budget_gb"], goal=job["goal"], width=side, height=side)
    predicted = auto.to_json()
    plan = prepare(folder, auto.spec, dtype=auto.dtype, device=device, offload=auto.offload).plan_or_raise()

    def allocated() -> int:
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    if cuda:
        base = allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = proc_status()["VmRSS"]
        if not reset_peak():
            raise RuntimeError("this kernel cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    t0 = time.perf_counter()
    result = load_plan(plan, cache=None)
    load_s = time.perf_counter() - t0
    if cuda:
        load_peak = torch.cuda.max_memory_allocated() - base
        on_device = allocated() - base
        torch.cuda.reset_peak_memory_stats()
    else:
        load_peak = proc_status()["VmHWM"] - base
        on_device = None
        reset_peak()
    resident = sum(tensor_bytes(m) for m in result.pipeline.components.values() if isinstance(m, torch.nn.Module))
    t0 = time.perf_counter()
    generate(result.pipeline, prompt="a photo of a fox in the snow", steps=job["steps"], width=side, height=side)
    sample_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        sample_peak = torch.cuda.max_memory_allocated() - base
        reserved_peak = torch.cuda.max_memory_reserved()
    else:
        sample_peak = proc_status()["VmHWM"] - base
        reserved_peak = None
    return {
        "goal": job["goal"],
        "budget_gb": job["budget_gb"],
        "device_name": predicted["device"],
        "spec": predicted["spec"],
        "offload": predicted["offload"],
        "dtype": predicted["dtype"],
        "predicted_peak_bytes": predicted["predicted_peak_bytes"],
        "predicted_resident_bytes": predicted["predicted_resident_bytes"],
        "predicted_working_bytes": predicted["working_bytes"],
        "measured_sample_peak_bytes": sample_peak,
        "measured_reserved_peak_bytes": reserved_peak,
        "measured_load_peak_bytes": load_peak,
        "measured_resident_bytes": resident,
        "measured_on_device_bytes": on_device,
        "load_s": round(load_s, 2),
        "sample_s": round(sample_s, 2),
    }


def parse_plans(text: str) -> list[tuple[str, float]]:
    plans = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        goal, _, budget = item.partition(":")
        plans.append((goal, float(budget or 0)))
    return plans


def run(model: str, device: str, side: int, steps: int, plans, root: Path, timeout: float = 900, log=print) -> dict:
    folder = ensure_full(root, device) if model == "full" else ensure(model, root)
    rows, seen = [], set()
    for goal, budget in plans:
        job = {"folder": str(folder), "device": device, "side": side, "steps": steps, "goal": goal, "budget_gb": budget}
        try:
            figures = run_child("bench.peak_predicted", job, {**os.environ, "PIPEQUANT_DISK_CACHE": "off"}, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one plan's failure is a finding too
            rows.append({"goal": goal, "budget_gb": budget, "error": str(exc)[-3000:]})
            log(f"{goal}:{budget} GiB: failed: {str(exc)[-500:]}")
            continue
        key = json.dumps([figures["spec"], figures["offload"]], sort_keys=True)
        figures["same_plan_as_above"] = key in seen
        seen.add(key)
        if figures["measured_sample_peak_bytes"] <= 0 or figures["measured_resident_bytes"] <= 0:
            raise RuntimeError(f"{goal}:{budget}: measured nothing ({figures})")
        figures["peak_measured_over_predicted"] = round(
            figures["measured_sample_peak_bytes"] / figures["predicted_peak_bytes"], 3
        )
        figures["resident_measured_over_predicted"] = round(
            figures["measured_resident_bytes"] / figures["predicted_resident_bytes"], 3
        )
        rows.append(figures)
        log(
            f"{goal}:{budget} GiB: peak measured {figures['measured_sample_peak_bytes'] / GIB:.2f} GiB, predicted "
            f"{figures['predicted_peak_bytes'] / GIB:.2f} GiB ({figures['peak_measured_over_predicted']})"
        )
    if not any("error" not in r for r in rows):
        raise RuntimeError("no plan was measured: " + "; ".join(r["error"][-300:] for r in rows))
    return {"model": model, "folder": str(folder), "device": device, "side": side, "steps": steps, "rows": rows}


def _gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def to_markdown(res: dict) -> str:
    lines = [
        "# The planner's predicted peak against the measured one",
        "",
        f"Pipeline `{Path(res['folder']).name}` on `{res['device']}`, {res['side']}x{res['side']}, "
        f"{res['steps']} steps and the VAE decode; each plan in a fresh process, no caches. GiB.",
        "",
        "| goal : budget | components | offload | predicted peak | measured peak (sampling) | measured ÷ predicted | "
        "predicted resident | measured resident | reserved peak | load peak | load s | sample s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['goal']} : {r['budget_gb'] or 'default'} | failed: {r['error'][-200:]!r} |" + " |" * 10)
            continue
        parts = r["spec"].get("components", {}) if isinstance(r["spec"], dict) else {}
        chosen = ", ".join(
            f"{n}: {(c or {}).get('backend') or 'bf16'} {(c or {}).get('quant_type') or ''}".strip()
            for n, c in sorted(parts.items())
        )
        lines.append(
            f"| {r['goal']} : {r['budget_gb'] or 'default'} | {chosen or 'none quantized'} | {r['offload']} | "
            f"{_gib(r['predicted_peak_bytes'])} | {_gib(r['measured_sample_peak_bytes'])} | "
            f"**{r['peak_measured_over_predicted']}** | {_gib(r['predicted_resident_bytes'])} | "
            f"{_gib(r['measured_resident_bytes'])} | {_gib(r['measured_reserved_peak_bytes'])} | "
            f"{_gib(r['measured_load_peak_bytes'])} | {r['load_s']} | {r['sample_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peak_predicted", description=__doc__)
    p.add_argument("--model", default="full", help="full (FLUX.1-dev-shaped, 12 B) or a bench size: tiny, 20m, ...")
    p.add_argument("--device", default="cuda")
    p.add_argument("--side", type=int, default=1024, help="image width and height in pixels")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--plans", default=DEFAULT_PLANS, help="comma-separated goal:budget_GiB (0 = default budget)")
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "peak_predicted")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    provenance()
    res = run(args.model, args.device, args.side, args.steps, parse_plans(args.plans), args.root or default_root())
    print(write_results(args.out, "peak_predicted", res, to_markdown(res)).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
