"""Peak memory while loading, streamed against the libraries' own loaders, each load in a fresh process.

For each plan and round, two fresh interpreters load the same pipeline through the resolver
(`prepare` + `load_plan`, no caches): one quantizes as the weights stream in (`keep/stream.py`,
PIPEQUANT_STREAM_LOAD=on: for torchao and quanto the default too, their weights quantized by rows),
the other with streaming off, so every component goes through its library's `from_pretrained`. The order flips each round (interleaved pairs).
Each child imports everything and plans first, then takes its RSS as the baseline, resets the
kernel's high-water mark (`/proc/self/clear_refs`) and loads: peak = VmHWM - baseline, divided by
the pipeline's resident bytes (every storage behind its tensors, `keep.memory.tensor_bytes`). The
absolute `ru_maxrss` is kept too. Load time is the child's CPU time (user + system) of the load.

    python -m bench.peak_load --size 200m --rounds 3      # ~3 min on 2 cores
    python -m bench.peak_load --size t5-130m --plans int8wo_t5,quanto8_t5,sdnq8_t5   # the T5 encoder
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import config
from .pipelines import default_root, ensure
from .report import provenance, write_results
from .suite import fmt_spread, run_child, spread


def _t5_only(backend: str, quant_type: str) -> dict:
    return {"kind": "granular", "components": {"text_encoder_2": config._one(backend, quant_type)}}


PLANS = {
    "int8wo": ("torchao int8 weight-only", config.PLANS["int8wo"].spec),
    "quanto8": ("quanto int8", config.PLANS["quanto8"].spec),
    "sdnq8": ("sdnq int8", {**config.PLANS["int8wo"].spec, "backend": "sdnq", "quant_type": "int8"}),
    # the T5 encoder alone (a transformers model), for ENCODER_SIZE, whose weight is in its T5
    "int8wo_t5": ("torchao int8 weight-only, T5 only", _t5_only("torchao", "int8_weight_only")),
    "quanto8_t5": ("quanto int8, T5 only", _t5_only("quanto", "int8")),
    "sdnq8_t5": ("sdnq int8, T5 only", _t5_only("sdnq", "int8")),
}
ENCODER_SIZE = "t5-130m"  # python -m bench.peak_load --size t5-130m --plans int8wo_t5,quanto8_t5,sdnq8_t5
# "default": PIPEQUANT_STREAM_LOAD unset, what a user gets; "stream": on, wherever it can; "library": off.
PATHS = ("default", "stream", "library")
ENV = {"default": None, "stream": "on", "library": "off"}


def child(job: dict) -> dict:
    """One load in this (fresh) process; the figures as a dict."""
    import importlib
    import resource
    import time

    import torch

    from pipequant.resolver.keep import load_plan, plan_load, tensor_bytes
    from pipequant.resolver.links import spec_from_dict

    from .measure import cpu_seconds, proc_status, reset_peak

    torch.set_num_threads(1)
    plan = plan_load(Path(job["folder"]), spec_from_dict(job["spec"]))
    for name in ("torchao", "optimum.quanto", "sdnq"):  # the backends' imports are not the load's
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    base = proc_status()["VmRSS"]
    reset = reset_peak()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    result = load_plan(plan, cache=None)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = proc_status()
    resident = sum(tensor_bytes(m) for m in result.pipeline.components.values() if isinstance(m, torch.nn.Module))
    return {
        "peak_bytes": status["VmHWM"] - base if reset else None,
        "baseline_bytes": base,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "resident_bytes": resident,
        "load_cpu_s": round(cpu, 4),
        "load_wall_s": round(wall, 4),
        # where the CPU time went: system time is mostly page faults (fresh heap pages zeroed)
        "load_user_s": round(usage.ru_utime - usage0.ru_utime, 4),
        "load_sys_s": round(usage.ru_stime - usage0.ru_stime, 4),
        "minor_faults": usage.ru_minflt - usage0.ru_minflt,
        "streamed": {r["component"]: r["streamed"] for r in result.rows if "streamed" in r},
    }


def _run_child(job: dict) -> dict:
    env = {**os.environ, "SDNQ_USE_TORCH_COMPILE": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PIPEQUANT_STREAM_LOAD", None)
    if ENV[job["path"]] is not None:
        env["PIPEQUANT_STREAM_LOAD"] = ENV[job["path"]]
    return run_child("bench.peak_load", job, env, timeout=1800)


def run(size: str, plans: list[str], rounds: int, root: Path, log=print) -> dict:
    folder = ensure(size, root)
    runs = []
    for r in range(rounds):
        for key in plans:
            order = PATHS if r % 2 == 0 else PATHS[::-1]
            for path in order:
                figures = _run_child({"folder": str(folder), "spec": PLANS[key][1], "path": path})
                runs.append({"round": r, "plan": key, "path": path, **figures})
                log(f"round {r} {key} {path}: peak/resident {_ratio(figures):.2f}, cpu {figures['load_cpu_s']:.2f} s")
    summary = []
    for key in plans:
        mine = {p: [x for x in runs if x["plan"] == key and x["path"] == p] for p in PATHS}
        if not all(mine.values()) or any(x["peak_bytes"] is None or x["resident_bytes"] <= 0 for x in runs):
            raise RuntimeError(f"{key}: a load measured nothing (no peak or no resident bytes)")
        summary.append(
            {
                "plan": key,
                "label": PLANS[key][0],
                "resident_mb": round(mine["stream"][0]["resident_bytes"] / 2**20, 1),
                **{f"{p}_peak_over_resident": spread([_ratio(x) for x in mine[p]]) for p in PATHS},
                **{f"{p}_peak_mb": spread([x["peak_bytes"] / 2**20 for x in mine[p]]) for p in PATHS},
                **{f"{p}_cpu_s": spread([x["load_cpu_s"] for x in mine[p]]) for p in PATHS},
                **{f"{p}_user_s": spread([x["load_user_s"] for x in mine[p]]) for p in PATHS},
                **{f"{p}_sys_s": spread([x["load_sys_s"] for x in mine[p]]) for p in PATHS},
                **{f"{p}_minor_faults_k": spread([x["minor_faults"] / 1000 for x in mine[p]]) for p in PATHS},
                **{
                    f"{what}_{p}_over_library": spread(
                        [s[f"load_{what}_s"] / b[f"load_{what}_s"] for s, b in zip(mine[p], mine["library"])]
                    )
                    for p in ("default", "stream")
                    for what in ("cpu", "wall")
                },
                "streamed": mine["stream"][0]["streamed"],
                "streamed_by_default": mine["default"][0]["streamed"],
            }
        )
    return {"size": size, "rounds": rounds, "folder": str(folder), "summary": summary, "runs": runs}


def _ratio(x: dict) -> float:
    return x["peak_bytes"] / x["resident_bytes"]


def to_markdown(res: dict) -> str:
    lines = [
        "# Peak memory while loading: the default, streamed, and the libraries' own loaders",
        "",
        f"Size {res['size']}, {res['rounds']} rounds of interleaved pairs, each load in a fresh process "
        "(CPU, 1 torch thread). Peak = kernel RSS high-water mark during the load above the RSS after "
        "imports and planning; resident = every storage behind the pipeline's tensors. "
        "Figures: median (min–max, n).",
        "",
        "| plan | resident MB | peak ÷ resident, default | peak ÷ resident, streamed | peak ÷ resident, "
        "library's loader | CPU default ÷ library's loader | CPU streamed ÷ library's loader | load CPU s, "
        "default / streamed / library's loader | streamed by default | streamed (on) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["summary"]:
        names = {k: ", ".join(n for n, s in r[k].items() if s) or "-" for k in ("streamed_by_default", "streamed")}
        cpu = " / ".join(fmt_spread(r[f"{p}_cpu_s"], 2) for p in PATHS)
        lines.append(
            f"| {r['label']} | {r['resident_mb']} | **{fmt_spread(r['default_peak_over_resident'], 2)}** | "
            f"{fmt_spread(r['stream_peak_over_resident'], 2)} | {fmt_spread(r['library_peak_over_resident'], 2)} | "
            f"**{fmt_spread(r['cpu_default_over_library'])}** | {fmt_spread(r['cpu_stream_over_library'])} | "
            f"{cpu} | {names['streamed_by_default']} | {names['streamed']} |"
        )
    lines += [
        "",
        "Components not quantized load through their library's `from_pretrained` in both columns. "
        "diffusers models stream through diffusers' per-shard loader, transformers models (T5, CLIP) "
        "through transformers' own loading loop handed lazily read tensors (`keep/stream.py`). "
        "Where a backend's scheme keeps weight rows apart (torchao int8/float8, quanto int8/float8, "
        "SDNQ int8/float8: `Backend.row_quantizer`), a diffusers model's weights are quantized by rows "
        "into tensors a keeper thread allocates, and those models stream by default "
        "(`PIPEQUANT_STREAM_LOAD=auto`); the others stream by default only where their library's peak "
        "would not fit in the RAM available.",
        "",
        "Where the load's CPU time goes (user / system seconds; minor page faults in thousands; "
        "default / streamed / library's loader): system time is mostly page faults, fresh heap pages the "
        "kernel zeroes.",
        "",
        "| plan | user s, default / streamed / library | system s, default / streamed / library | "
        "minor faults k, default / streamed / library |",
        "|---|---|---|---|",
    ]
    for r in res["summary"]:
        lines.append(
            f"| {r['label']} | "
            + " | ".join(
                " / ".join(fmt_spread(r[f"{p}_{what}"], digits) for p in PATHS)
                for what, digits in (("user_s", 2), ("sys_s", 2), ("minor_faults_k", 0))
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peak_load", description=__doc__)
    p.add_argument("--size", default="200m", choices=(*config.ALL_SIZES, ENCODER_SIZE))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--plans",
        default=",".join(k for k in PLANS if not k.endswith("_t5")),
        help="comma-separated: " + ", ".join(PLANS) + " (the _t5 plans for --size " + ENCODER_SIZE + ")",
    )
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "peak_load")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    provenance()  # the commit and tree as the bench starts: what the results come from
    plans = [x.strip() for x in args.plans.split(",") if x.strip()]
    unknown = [x for x in plans if x not in PLANS]
    if unknown:
        p.error("unknown plan: " + ", ".join(unknown))
    res = run(args.size, plans, args.rounds, args.root or default_root())
    write_results(args.out, "peak_load", res, to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
