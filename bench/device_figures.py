"""The GPU figures the measurements file lacks, in one call on a lent GPU machine (issue 25, item 6).

    python -m bench.device_figures --out DIR [--seconds 500] [--stages cache,compile,peak]
    python -m bench.device_figures --write DIR/device_figures.json    # then, here: rows into the data file

Stages, in this order, each bench run in its own processes and given what is left of `--seconds`
(at most `--peak-seconds` for the peak, `--run-seconds` for each other run; a run that runs out of
time is stopped, and the summary says so and writes no row from it):
  peak     bench.peak_predicted: FLUX.1-dev-shaped 12 B (its own configs, random weights) at
           1024x1024: the auto planner's predicted peak against the peak measured while sampling.
  cache    bench.disk_cache on the device, 2B FLUX-shaped pipeline, one plan per run: a cold load
           reading the disk cache's copy ÷ the cold first load that quantized it.
  compile  bench.step_speed, 2B at 4096 image tokens (FLUX at 1024x1024), one plan per run:
           regional compile's step speed ÷ eager, or the failure.
Writes DIR/device_figures.{json,md} (every stage's results whole, and the rows `--write` puts in
resolver/data/measurements.json: `disk_cache` and `compile` rows for the GPU's generation, and
`peak_check` rows) and DIR/device_figures.log. `--write` never replaces a figure another source
measured; it replaces its own earlier rows.
On the GPU machine: bench/device_run.sh (the wheels it needs, the commit, the command).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import config
from .pipelines import folder_name
from .report import provenance, write_results
from .suite import REPO

STAGES = ("peak", "cache", "compile")  # in order of what nothing else measures
CACHE_PLANS = "nf4,int8wo,quanto8_tr,sdnq8_tr"
# bf16 and bnb nf4 under regional compile were measured on an H100 (the data file's "h100" rows)
COMPILE_PLANS = "torchao int8 wo,quanto int8,sdnq int8"
PEAK_PLANS = "quality:0,balanced:16"
RESULTS = {"cache": "results.json", "compile": "step_speed.json", "peak": "peak_predicted.json"}


def _commands(args, scratch: Path) -> list[tuple[str, str, list[str], Path]]:
    """(stage, label, argv, its result folder) for every bench the stages run, in order."""
    root = str(scratch / "models")
    run = []
    if "peak" in args.stages:
        out = scratch / "peak"
        run.append(
            (
                "peak",
                "predicted peak",
                ["bench.peak_predicted", "--model", args.model, "--device", args.device, "--side", str(args.side)]
                + ["--plans", args.peak_plans, "--root", root, "--out", str(out)],
                out,
            )
        )
    if "cache" in args.stages:  # one plan per process: a stage cut short keeps the plans it finished
        drop = ["--drop-caches"] if args.device.startswith("cuda") else []  # a lent machine, not a shared one
        for i, plan in enumerate(p.strip() for p in args.cache_plans.split(",") if p.strip()):
            out = scratch / f"cache-{i}"
            run.append(
                (
                    "cache",
                    plan,
                    ["bench.disk_cache", "--device", args.device, "--sizes", args.size, "--rounds", str(args.rounds)]
                    + ["--plans", plan, "--root", root, "--out", str(out), *drop],
                    out,
                )
            )
    if "compile" in args.stages:
        for i, plan in enumerate(p.strip() for p in args.compile_plans.split(",") if p.strip()):
            out = scratch / f"compile-{i}"
            run.append(
                (
                    "compile",
                    plan,
                    ["bench.step_speed", "--device", args.device, "--size", args.size, "--plans", plan]
                    + ["--modes", "eager,regional", "--image-tokens", str(args.image_tokens)]
                    + ["--rounds", str(args.rounds + 1), "--steps", "3", "--root", root, "--out", str(out)],
                    out,
                )
            )
    return run


def measure(args, scratch: Path, log) -> dict:
    deadline = time.monotonic() + args.seconds
    done = []
    for stage, label, argv, out in _commands(args, scratch):
        left = deadline - time.monotonic()
        entry = {"stage": stage, "label": label, "command": shlex.join(["python", "-m", *argv])}
        if left < 10:
            entry["skipped"] = "no time left"
            done.append(entry)
            log(f"{stage} {label}: skipped, no time left")
            continue
        found = out / RESULTS[stage]
        found.unlink(missing_ok=True)  # an earlier call's file is not this run's result
        t0 = time.monotonic()
        returncode, stderr = _run(argv, min(left, args.peak_seconds if stage == "peak" else args.run_seconds))
        if returncode is None:
            entry["timed_out_after_s"] = round(time.monotonic() - t0)
            log(f"{stage} {label}: stopped after {entry['timed_out_after_s']} s\n{_tail(stderr)}")
        else:
            entry["seconds"] = round(time.monotonic() - t0, 1)
            if returncode != 0 or not found.is_file():
                entry["error"] = _tail(stderr)
                log(f"{stage} {label}: failed ({returncode})\n{entry['error']}")
            else:
                entry["result"] = json.loads(found.read_text())
                log(f"{stage} {label}: {entry['seconds']} s")
        done.append(entry)
        if stage == "cache":  # its entries are measured; the disk is needed for the 12 B pipeline's 34 GB
            shutil.rmtree(scratch / "models" / "disk-cache-bench", ignore_errors=True)
    return {"runs": done}


def _run(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run one bench; stop it and every process it started (its children hold the GPU) at `timeout`.
    The return code (None: stopped) and its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        return None, stderr


def _tail(text, n: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def generation(device: str) -> tuple[str, str]:
    """The device's generation as the data file names it, and its name (a child process: the
    driver itself never starts CUDA, so it holds no GPU memory while its benches measure)."""
    if not device.startswith("cuda"):
        return "cpu", "cpu"
    probe = "import torch, json; print(json.dumps([torch.cuda.get_device_capability(), torch.cuda.get_device_name()]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"--device {device}: torch here has no usable GPU:\n{_tail(proc.stderr, 1000)}")
    capability, name = json.loads(proc.stdout)
    from pipequant.resolver.known import measured

    return measured.generation(capability), name


def _backend_of(spec) -> tuple[str | None, str]:
    """The backend and quant type a bench plan puts on its transformer (or on everything)."""
    if spec is None:
        return None, "bfloat16"
    if spec.get("kind") == "granular":
        spec = spec["components"].get("transformer") or next(iter(spec["components"].values()))
    return spec["backend"], spec["quant_type"]


def rows_from(results: dict, gen: str, source: str, scratch: Path, size: str) -> dict[str, list[dict]]:
    """The data file's rows from what the stages measured (none from a stage that did not finish)."""
    from .step_speed import NAMED_PLANS

    rows: dict[str, list[dict]] = {"disk_cache": [], "compile": [], "peak_check": []}
    for run in results["runs"]:
        res = run.get("result")
        if res is None:
            continue  # stopped, failed or skipped: nothing measured to write
        if run["stage"] == "cache":
            transformer = scratch / "models" / folder_name(size) / "transformer"
            smallest = sum(p.stat().st_size for p in transformer.glob("*.safetensors"))
            for r in res["summary"]:
                backend, quant_type = _backend_of(config.PLANS[r["plan"]].spec)
                rows["disk_cache"].append(
                    {
                        "backend": backend,
                        "quant_type": quant_type,
                        "generation": gen,
                        "second_over_first": r["second_over_first"],
                        "min_checkpoint_bytes": smallest,
                        "source": source,
                    }
                )
        elif run["stage"] == "compile":
            regional = next((r for r in res["rows"] if r["mode"] == "regional"), None)
            if regional is None:
                continue
            plan = NAMED_PLANS[run["label"]]
            backend, quant_type = plan if plan else (None, "bfloat16")
            failed = next((n for n in regional.get("notes", []) if "failed at run time" in n), None)
            row = {"backend": backend, "quant_type": quant_type, "generation": gen}
            if failed:
                row["fails"] = failed
            else:
                row["factor"] = regional["compile_vs_eager"]["median"]
            rows["compile"].append({**row, "source": source})
        elif run["stage"] == "peak":
            for r in (r for r in res["rows"] if "error" not in r):
                rows["peak_check"].append(
                    {
                        "model": Path(res["folder"]).name,
                        "generation": gen,
                        "side": res["side"],
                        "goal": r["goal"],
                        "budget_gb": r["budget_gb"],
                        "spec": r["spec"],
                        "offload": r["offload"],
                        "predicted_peak_bytes": r["predicted_peak_bytes"],
                        "measured_peak_bytes": r["measured_sample_peak_bytes"],
                        "measured_over_predicted": r["peak_measured_over_predicted"],
                        "predicted_resident_bytes": r["predicted_resident_bytes"],
                        "measured_resident_bytes": r["measured_resident_bytes"],
                        "source": source,
                    }
                )
    return rows


def _key(section: str, row: dict) -> tuple:
    if section == "peak_check":
        return row["model"], row["generation"], row["side"], row["goal"], row["budget_gb"]
    return row["backend"], row["quant_type"], row["generation"]


def write_rows(figures: dict, data_file: Path) -> list[str]:
    """Put a device_figures.json's rows in the data file; what was kept instead, as lines."""
    from .quant_profile import _dump

    data = json.loads(data_file.read_text(encoding="utf-8"))
    source, kept = figures["source"], []
    for section, new in figures["rows"].items():
        mine = {_key(section, r) for r in new}
        old = [r for r in data.get(section, []) if not (r["source"] == source and _key(section, r) in mine)]
        others = {_key(section, r): r["source"] for r in old}
        for r in new:
            if _key(section, r) in others:
                kept.append(f"{section} {_key(section, r)}: kept the figure of {others[_key(section, r)]}")
        data[section] = old + [r for r in new if _key(section, r) not in others]
    data["sources"][source] = figures["source_text"]
    data_file.write_text(_dump(data), encoding="utf-8")
    return kept


def _outcome(run: dict) -> str:
    if "result" in run:
        return f"{run['seconds']} s"
    if "timed_out_after_s" in run:
        return f"stopped after {run['timed_out_after_s']} s"
    return run.get("skipped") or "failed: " + run.get("error", "")[-200:].replace("|", "/").replace("\n", " ")


def to_markdown(figures: dict) -> str:
    lines = [
        "# GPU figures for the measurements file",
        "",
        f"Device `{figures['device_name']}` (generation {figures['generation']}); source `{figures['source']}`.",
        "",
        "| stage | bench | outcome |",
        "|---|---|---|",
    ]
    for run in figures["results"]["runs"]:
        lines.append(f"| {run['stage']} | {run['label']} | {_outcome(run)} |")
    for section, rows in figures["rows"].items():
        lines += ["", f"`{section}` rows:", ""]
        lines += [f"- `{json.dumps(r)}`" for r in rows] or ["- none"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.device_figures", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "device")
    p.add_argument("--write", type=Path, default=None, help="a device_figures.json: put its rows in the data file")
    p.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)  # the data file (tests: a copy)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--seconds", type=float, default=540, help="for all stages together")
    p.add_argument("--run-seconds", type=float, default=240, help="for one cache or compile run at most")
    p.add_argument("--peak-seconds", type=float, default=360, help="for the peak stage (its 34 GB build too)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="2b", help="the cache and compile stages' pipeline")
    p.add_argument("--model", default="full", help="the peak stage's pipeline: full (12 B) or a bench size")
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--image-tokens", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache-plans", default=CACHE_PLANS)
    p.add_argument("--compile-plans", default=COMPILE_PLANS)
    p.add_argument("--peak-plans", default=PEAK_PLANS)
    p.add_argument("--scratch", type=Path, default=Path(os.environ.get("PIPEQUANT_BENCH_DIR", "/tmp/pqdevice")))
    args = p.parse_args(argv)
    if args.write:
        from pipequant.resolver.known import measured

        for line in write_rows(json.loads(args.write.read_text()), args.data or measured.DATA_FILE):
            print(line)
        return 0
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    made = provenance()
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = args.out / "device_figures.log"

    def log(msg: str) -> None:
        with open(log_file, "a") as f:
            f.write(msg + "\n")
        print(msg, flush=True)

    gen, name = generation(args.device)
    results = measure(args, args.scratch, log)
    source = f"device-{gen}"
    figures = {
        "generation": gen,
        "device_name": name,
        "source": source,
        "source_text": (
            f"bench/results/device/device_figures.json: {made['command']} at commit "
            f"{(made.get('commit') or 'unknown')[:12]} on {name}"
        ),
        "rows": rows_from(results, gen, source, args.scratch, args.size),
        "results": results,
    }
    print(write_results(args.out, "device_figures", figures, to_markdown(figures)).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
