"""Run the benchmarks: jobs go to a worker (fresh process per run), results are aggregated here.

Benchmarks (numbers as in the issue):
1 overhead   Load node ÷ plain `DiffusionPipeline.from_pretrained(quantization_config=...)`
2 memory     resident bytes ÷ theoretical floor, peak RSS (CUDA peak) ÷ resident, where the peak is
3 reuse      reload with one text encoder switched ÷ full reload of the same plan
4 prequant   load of a saved pre-quantized pipeline ÷ quantize-on-load of the same plan
5 scaling    load time and peak memory against parameter count
6 validate   `plan_load` (inspect + validate + plan) and `estimate` latency; no weight read
1, 2, 4 and 5 share one interleaved loop of fresh-process loads.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import config
from .config import PLANS
from .pipelines import default_root, folder_name, saved_name
from .worker import RESULT_PREFIX

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("overhead", "memory", "reuse", "prequant", "scaling", "validate")
TARGETS = {"overhead": 1.05, "memory": 1.10, "reuse_slack": 0.10, "validate_ms": 100.0, "scaling_exponent": 1.10}


# -- the worker process -----------------------------------------------------------------------
class Worker:
    """Runs jobs in fresh processes: forked from a server that imported everything once
    (isolation "fork"), or a new interpreter per job ("spawn", slower: pays the imports)."""

    def __init__(self, isolation: str = "fork", log: Path | None = None, env: dict | None = None, threads: int = 0):
        self.isolation, self.log = isolation, log
        self.env = {**os.environ, **(env or {})}
        if threads > 0:  # before the interpreter starts, so OpenMP reads it
            self.env.update(
                OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PIPEQUANT_BENCH_THREADS=str(threads)
            )
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        self.proc = None
        self.info: dict = {}
        if isolation == "fork":
            cmd = [sys.executable, "-m", "bench.worker", "--serve"] + (["--log", str(log)] if log else [])
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr(),
                text=True,
                cwd=REPO,
                env=self.env,
            )
            self.info = self._read()

    def _stderr(self):
        return open(self.log, "a") if self.log else subprocess.DEVNULL

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        raise RuntimeError(f"the benchmark worker exited (see {self.log or 'its log'})")

    def run(self, job: dict) -> dict:
        if self.proc is not None:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            return self._read()
        out = subprocess.run(
            [sys.executable, "-m", "bench.worker", "--job", json.dumps(job)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env,
            check=False,
        )
        for line in out.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        return {"ok": False, "error": f"worker exited {out.returncode}: {out.stderr[-2000:]}", "job": job}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_child(module: str, job: dict, env: dict, timeout: float) -> dict:
    """`python -m <module> --child <job as JSON>` in a fresh interpreter with `env`: the last JSON
    line it prints. A bench whose figures need a process of their own (a peak, from a clean start)."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(job)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{module} child failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(line)


def default_threads(device: str) -> int:
    """Torch CPU threads for a bench: 1 on CPU (on a shared 2-core machine OpenMP spin-waits made
    loads 3x slower and bimodal), torch's default (0) where a GPU does the work."""
    return 0 if device.startswith("cuda") else 1


def isolation_for(device: str, isolation: str = "fork") -> str:
    """A fork server cannot serve CUDA jobs: its imports (and the GPU's name it reports) start CUDA,
    and a process forked after that cannot use it. On a GPU every job gets a fresh interpreter."""
    return "spawn" if device.startswith("cuda") else isolation


# -- helpers ----------------------------------------------------------------------------------
def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def spread(values) -> dict | None:
    """min / median / max of paired ratios (every pair shown: on a shared machine one noisy pair is
    visible as such instead of moving a mean)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def fmt_spread(s: dict | None, digits: int = 3) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f}, n={s['n']})"


def ratio(a, b):
    return round(a / b, 4) if a is not None and b else None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            total = next((line for line in f if line.startswith("MemTotal")), None)
        mem = round(int(total.split()[1]) / 1024**2, 1) if total else None
    except OSError:
        pass
    versions = {}
    for name in ("torch", "diffusers", "transformers", "bitsandbytes", "torchao", "optimum.quanto"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace(".", "-"))
        except ImportError:  # PackageNotFoundError
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


class Log:
    def __init__(self, quiet: bool = False):
        self.quiet, self.start = quiet, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.0f}s] {msg}", file=sys.stderr, flush=True)


def _check(out: dict, errors: list) -> dict | None:
    if out.get("ok"):
        return out
    errors.append({"job": out.get("job"), "error": out.get("error"), "traceback": out.get("traceback")})
    return None


# -- the suite --------------------------------------------------------------------------------
def run_suite(
    sizes=config.DEFAULT_SIZES,
    reps: int = 5,
    device: str = "cpu",
    only=BENCHMARKS,
    root: Path | None = None,
    isolation: str = "fork",
    log_file: Path | None = None,
    quiet: bool = False,
    validate_reps: int = 20,
    threads: int | None = None,
) -> dict:
    """`threads`: torch CPU threads in the workers; None = `default_threads(device)`, 0 = torch's default."""
    if threads is None:
        threads = default_threads(device)
    isolation = isolation_for(device, isolation)
    root = Path(root or default_root())
    root.mkdir(parents=True, exist_ok=True)
    only = tuple(only)
    log = Log(quiet)
    started = time.time()
    errors: list[dict] = []
    raw = {"loads": [], "reuse": [], "validate": [], "sample": [], "save": []}
    with Worker(isolation, log_file, threads=threads) as worker:
        log(f"worker ready ({isolation}); building pipelines {', '.join(sizes)} in {root}")
        for size in sizes:
            out = _check(worker.run({"kind": "build", "root": str(root), "size": size}), errors)
            if out is None:
                raise RuntimeError(f"could not build the {size} pipeline: {errors[-1]['error']}")
        common = {"root": str(root), "device": device}

        # 4: pre-quantized copies, written once by the Save node and kept (marker-checked).
        if "prequant" in only:
            for size in sizes:
                for key in config.PREQUANT_PLANS:
                    out = worker.run(
                        {
                            "kind": "save",
                            **common,
                            "name": folder_name(size),
                            "spec": PLANS[key].spec,
                            "dest": saved_name(size, key),
                            "size": size,
                            "plan": key,
                        }
                    )
                    if _check(out, errors):
                        raw["save"].append(out)

        # 1, 2, 4, 5: one interleaved loop of fresh-process loads.
        loop = [b for b in ("overhead", "memory", "prequant", "scaling") if b in only]
        if loop:
            for rep in range(reps):
                for size in sizes:
                    for job in _loop_jobs(size, rep, only, common):
                        out = worker.run(job)
                        if _check(out, errors):
                            raw["loads"].append(out)
                log(f"loads: repetition {rep + 1}/{reps} done")

        # 3: component reuse, in one process per (size, plan).
        if "reuse" in only:
            for size in sizes:
                for key, other in config.REUSE_SWITCH.items():
                    out = worker.run(
                        {
                            "kind": "reuse",
                            **common,
                            "name": folder_name(size),
                            "size": size,
                            "plan": key,
                            "switch_to": other,
                            "spec_a": PLANS[key].spec,
                            "spec_b": config.reuse_plan_b(key),
                            "component": config.REUSE_COMPONENT,
                            "reps": reps,
                        }
                    )
                    if _check(out, errors):
                        raw["reuse"].append(out)
                log(f"reuse: {size} done")

        # 6: validation and estimate latency on the largest pipeline, cold in fresh processes.
        if "validate" in only:
            largest = max(sizes, key=lambda s: config.ALL_SIZES.index(s))
            for rep in range(reps):
                for key in config.OVERHEAD_PLANS:
                    out = worker.run(
                        {
                            "kind": "validate",
                            **common,
                            "name": folder_name(largest),
                            "size": largest,
                            "plan": key,
                            "spec": PLANS[key].spec,
                            "reps": validate_reps,
                        }
                    )
                    if _check(out, errors):
                        raw["validate"].append(out)
            log("validate: done")

        # GPU only: sampling speed per step, bnb nf4 against bf16.
        if device.startswith("cuda"):
            largest = max(sizes, key=lambda s: config.ALL_SIZES.index(s))
            for key in ("bf16", "nf4"):
                out = worker.run(
                    {
                        "kind": "sample",
                        **common,
                        "name": folder_name(largest),
                        "size": largest,
                        "plan": key,
                        "spec": PLANS[key].spec,
                        "steps": 6,
                    }
                )
                if _check(out, errors):
                    raw["sample"].append(out)
        info = worker.info
    results = aggregate(raw, sizes, reps, device, only)
    results["meta"] = {
        "machine": machine(),
        "sizes": list(sizes),
        "reps": reps,
        "device": device,
        "isolation": isolation,
        "benchmarks": list(only),
        "bnb_cpu_patch": info.get("bnb_cpu_patch"),
        "worker_import_seconds": info.get("import_seconds"),
        "root": str(root),
        "torch_threads": info.get("torch_threads"),
        "gpu": info.get("gpu"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    results["errors"] = errors
    results["raw"] = raw
    log(f"done in {results['meta']['duration_seconds']:.0f} s, {len(errors)} failed job(s)")
    return results


def _loop_jobs(size: str, rep: int, only, common: dict) -> list[dict]:
    """One repetition at one size: each plan's plain and PipeQuant loads back to back, the order
    flipped every repetition; then the pre-quantized loads beside their quantize-on-load twins."""
    detail = rep == 0
    name = folder_name(size)
    jobs = []
    for key in config.OVERHEAD_PLANS:
        pair = [
            {"kind": "load", **common, "mode": "plain", "name": name, "size": size, "plan": key, "detail": detail},
            {
                "kind": "load",
                **common,
                "mode": "pipequant",
                "name": name,
                "size": size,
                "plan": key,
                "spec": PLANS[key].spec,
                "detail": detail,
            },
        ]
        if "overhead" not in only:
            pair = pair[1:]
        else:  # the node path a user runs: the estimate, the disk cache on (its default), an empty cache
            pair.append(
                {
                    "kind": "load",
                    **common,
                    "mode": "node",
                    "name": name,
                    "size": size,
                    "plan": key,
                    "spec": PLANS[key].spec,
                    "disk_cache": str(Path(common["root"]) / "overhead-disk-cache" / f"{size}-{key}"),
                    "empty_disk_cache": True,
                }
            )
        jobs += pair if rep % 2 == 0 else pair[::-1]
    if "prequant" in only:
        for key in config.PREQUANT_PLANS:
            pair = [
                {
                    "kind": "load",
                    **common,
                    "mode": "pipequant",
                    "name": saved_name(size, key),
                    "size": size,
                    "plan": key,
                    "prequantized": True,
                    "detail": detail,
                }
            ]
            if key not in config.OVERHEAD_PLANS:  # its quantize-on-load twin is not in the loop yet
                pair.append(
                    {
                        "kind": "load",
                        **common,
                        "mode": "pipequant",
                        "name": name,
                        "size": size,
                        "plan": key,
                        "spec": PLANS[key].spec,
                        "detail": detail,
                    }
                )
            jobs += pair if rep % 2 == 0 else pair[::-1]
    return jobs


# -- aggregation ------------------------------------------------------------------------------
def _loads(raw, size, plan, mode, prequantized=False):
    return [
        r
        for r in raw["loads"]
        if r["job"]["size"] == size
        and r["job"]["plan"] == plan
        and r["job"]["mode"] == mode
        and bool(r["job"].get("prequantized")) == prequantized
    ]


def _phase(run, name):
    return next((p["seconds"] for p in run.get("phases", []) if p["phase"] == name), 0.0)


def _transformer_params(raw, size):
    for r in raw["loads"]:
        if r["job"]["size"] == size and "transformer" in r["components"]:
            return r["components"]["transformer"]["params"]
    return None


def _total_params(raw, size):
    for r in raw["loads"]:
        if r["job"]["size"] == size and r["job"]["plan"] == "bf16":
            return sum(c["params"] for c in r["components"].values())
    return None


def aggregate(raw: dict, sizes, reps: int, device: str, only) -> dict:
    res: dict = {}
    cuda = device.startswith("cuda")
    if "overhead" in only:
        rows = []
        for size in sizes:
            for key in config.OVERHEAD_PLANS:
                pq, plain = _loads(raw, size, key, "pipequant"), _loads(raw, size, key, "plain")
                if not pq or not plain:
                    continue
                w_pq, w_plain = median([r["wall"] for r in pq]), median([r["wall"] for r in plain])
                c_pq, c_plain = median([r["cpu"] for r in pq]), median([r["cpu"] for r in plain])
                paired = [a["wall"] / b["wall"] for a, b in zip(pq, plain)]
                node = _loads(raw, size, key, "node")
                rows.append(
                    {
                        "size": size,
                        "plan": key,
                        "label": PLANS[key].label,
                        "ratio": ratio(w_pq, w_plain),
                        "ratio_cpu": ratio(c_pq, c_plain),
                        "ratio_cpu_min": ratio(min(r["cpu"] for r in pq), min(r["cpu"] for r in plain)),
                        "ratio_paired_median": round(median(paired), 4),
                        "pipequant_s": round(w_pq, 4),
                        "diffusers_s": round(w_plain, 4),
                        "delta_ms": round((w_pq - w_plain) * 1000, 1),
                        "n": min(len(pq), len(plain)),
                        "target": TARGETS["overhead"],
                        "met_wall": ratio(w_pq, w_plain) <= TARGETS["overhead"],
                        "met": ratio(c_pq, c_plain) <= TARGETS["overhead"],
                        "validate_plan_ms": round(median([_phase(r, "validate+plan") for r in pq]) * 1000, 1),
                        "assemble_report_ms": round(median([_phase(r, "assemble+report") for r in pq]) * 1000, 1),
                        "pipequant_runs": [r["wall"] for r in pq],
                        "diffusers_runs": [r["wall"] for r in plain],
                        "resolver_paired": spread(paired),
                        "resolver_paired_cpu": spread([a["cpu"] / b["cpu"] for a, b in zip(pq, plain)]),
                        # The Load node as a user runs it (estimate + disk cache on, first load), per pair:
                        "node_paired": spread([a["wall"] / b["wall"] for a, b in zip(node, plain)]),
                        "node_paired_cpu": spread([a["cpu"] / b["cpu"] for a, b in zip(node, plain)]),
                        "node_runs": [r["wall"] for r in node],
                        "node_write_after_s": [r.get("write_after_load_s") for r in node],
                        "node_disk_cache": [
                            {c: v.get("disk_cache") for c, v in r["components"].items() if v.get("disk_cache")}
                            for r in node
                        ],
                    }
                )
        res["overhead"] = rows
    if "memory" in only:
        res["memory"] = _memory(raw, sizes, cuda)
    if "prequant" in only:
        rows = []
        for size in sizes:
            for key in config.PREQUANT_PLANS:
                pre, qol = _loads(raw, size, key, "pipequant", True), _loads(raw, size, key, "pipequant")
                if not pre or not qol:
                    continue
                t_pre, t_qol = median([r["wall"] for r in pre]), median([r["wall"] for r in qol])
                p_pre = median([r["memory"]["peak_rss"] for r in pre])
                p_qol = median([r["memory"]["peak_rss"] for r in qol])
                rows.append(
                    {
                        "size": size,
                        "plan": key,
                        "label": PLANS[key].label,
                        "ratio": ratio(t_pre, t_qol),
                        "prequantized_s": round(t_pre, 4),
                        "quantize_on_load_s": round(t_qol, 4),
                        "peak_ratio": ratio(p_pre, p_qol),
                        "resident_ratio": ratio(
                            median([r["total_bytes"] for r in pre]), median([r["total_bytes"] for r in qol])
                        ),
                        "n": min(len(pre), len(qol)),
                    }
                )
        res["prequant"] = rows
    if "scaling" in only:
        res["scaling"] = _scaling(raw, sizes, cuda)
    if "reuse" in only:
        rows = []
        for r in raw["reuse"]:
            t_reuse, t_full = median(r["reuse"]), median(r["full"])
            target = round(r["share"] + TARGETS["reuse_slack"], 4)
            t_switched = median(r.get("switched_load") or [])
            rows.append(
                {
                    "size": r["job"]["size"],
                    "plan": r["job"]["plan"],
                    "switch_to": r["job"]["switch_to"],
                    "component": r["component"],
                    "ratio": ratio(t_reuse, t_full),
                    "reuse_s": round(t_reuse, 4),
                    "switched_load_s": round(t_switched, 4) if t_switched is not None else None,
                    "fixed_s": round(t_reuse - t_switched, 4) if t_switched is not None else None,
                    "full_s": round(t_full, 4),
                    "share": r["share"],
                    "target": target,
                    "met": ratio(t_reuse, t_full) <= target,
                    "reused": r["reused_components"],
                    "n": len(r["reuse"]),
                }
            )
        res["reuse"] = rows
    if "validate" in only:
        rows = []
        for key in config.OVERHEAD_PLANS:
            runs = [r for r in raw["validate"] if r["job"]["plan"] == key]
            if not runs:
                continue

            def ms(k, runs=runs):
                return round(median([r[k] for r in runs]) * 1000, 2)

            read = median([r["bytes_read_cold"] for r in runs])
            worst = max(ms("validate_cold") + ms("estimate_cold"), ms("validate_warm") + ms("estimate_warm"))
            rows.append(
                {
                    "size": runs[0]["job"]["size"],
                    "plan": key,
                    "label": PLANS[key].label,
                    "validate_cold_ms": ms("validate_cold"),
                    "estimate_cold_ms": ms("estimate_cold"),
                    "validate_warm_ms": ms("validate_warm"),
                    "estimate_warm_ms": ms("estimate_warm"),
                    "bytes_read_cold": read,
                    "weight_bytes_on_disk": runs[0]["weight_bytes_on_disk"],
                    "read_fraction": ratio(read, runs[0]["weight_bytes_on_disk"]),
                    "weight_files_opened": runs[0]["weight_files_opened"],
                    "estimate_total": runs[0]["estimate_total"],
                    "met": worst < TARGETS["validate_ms"],
                    "n": len(runs),
                }
            )
        res["validate"] = rows
    if raw["sample"]:
        by = {r["job"]["plan"]: r for r in raw["sample"]}
        if "bf16" in by and "nf4" in by:
            res["sample"] = {
                "bf16_step_s": by["bf16"]["step_median"],
                "nf4_step_s": by["nf4"]["step_median"],
                "speed_nf4_vs_bf16": ratio(by["bf16"]["step_median"], by["nf4"]["step_median"]),
                "device": by["bf16"]["device"],
            }
    return res


def _memory(raw, sizes, cuda: bool) -> dict:
    components, peaks, phases = [], [], []
    for size in sizes:
        for key in config.OVERHEAD_PLANS:
            pq, plain = _loads(raw, size, key, "pipequant"), _loads(raw, size, key, "plain")
            if not pq:
                continue
            detail = next((r for r in pq if r["job"].get("detail")), pq[0])
            plain_detail = next((r for r in plain if r["job"].get("detail")), plain[0] if plain else None)
            for name, c in detail["components"].items():
                if "floor" not in c:
                    continue
                quantized = c["quantized_params"] > 0
                plain_bytes = plain_detail["components"].get(name, {}).get("bytes") if plain_detail else None
                components.append(
                    {
                        "size": size,
                        "plan": key,
                        "component": name,
                        "quantized": quantized,
                        "ratio": c["ratio"],
                        "bytes": c["bytes"],
                        "floor": c["floor"],
                        "vs_diffusers": ratio(c["bytes"], plain_bytes),
                        "diffusers_bytes": plain_bytes,
                        "report_bytes": c.get("report_bytes"),
                        "schemes": c["schemes"],
                        "excess": c["excess"],
                        "unquantized_linear_params": c["unquantized_linear_params"],
                        "met": (c["ratio"] or 0) <= TARGETS["memory"],
                    }
                )
            resident = median([r["total_bytes"] for r in pq])
            plain_detail_mem = plain_detail["memory"] if plain_detail else {}
            row = {
                "size": size,
                "plan": key,
                "resident_bytes": resident,
                "peak_anon_over_resident": ratio(detail["memory"].get("peak_anon"), resident),
                "diffusers_safetensors_mapped_after": plain_detail_mem.get("safetensors_mapped_after"),
                "diffusers_rss_after_trim": plain_detail_mem.get("rss_after_trim"),
                "peak_rss": median([r["memory"]["peak_rss"] for r in pq]),
                "peak_over_resident": ratio(median([r["memory"]["peak_rss"] for r in pq]), resident),
                "diffusers_peak_over_resident": ratio(
                    median([r["memory"]["peak_rss"] for r in plain]), median([r["total_bytes"] for r in plain])
                )
                if plain
                else None,
                "rss_after": median([r["memory"]["rss_after"] for r in pq]),
                "peak_anon": detail["memory"].get("peak_anon"),
                "peak_file": detail["memory"].get("peak_file"),
                "rss_after_trim": detail["memory"].get("rss_after_trim"),
                "anon_after_trim": detail["memory"].get("anon_after_trim"),
                "safetensors_mapped_after": detail["memory"].get("safetensors_mapped_after"),
            }
            if cuda:
                row["cuda_peak"] = median([r["memory"].get("cuda_peak") for r in pq])
                row["cuda_final"] = median([r.get("cuda_final") for r in pq])
                row["cuda_peak_over_final"] = ratio(row["cuda_peak"], row["cuda_final"])
                if plain:
                    row["diffusers_cuda_peak_over_final"] = ratio(
                        median([r["memory"].get("cuda_peak") for r in plain]),
                        median([r.get("cuda_final") for r in plain]),
                    )
            row["peak_phase"] = _peak_phase(detail["phases"], cuda)
            peaks.append(row)
            for p in detail["phases"]:
                comp = detail["components"].get(p["phase"], {})
                phases.append({"size": size, "plan": key, **p, "component_bytes": comp.get("bytes")})
    return {"components": components, "peaks": peaks, "phases": phases}


def _peak_phase(phases: list[dict], cuda: bool) -> str:
    """The phase whose peak rose most above the memory held when it began (RSS rarely falls back:
    the allocator keeps freed memory, so the last phase's high-water mark is no guide)."""
    key_peak, key_after = ("cuda_peak", "cuda_after") if cuda else ("peak_rss", "rss_after")
    best, rise, before = "-", None, 0
    for p in phases:
        up = (p.get(key_peak) or 0) - before
        if rise is None or up > rise:
            best, rise = p["phase"], up
        before = p.get(key_after) or 0
    return best


def _scaling(raw, sizes, cuda: bool) -> dict:
    rows, fits = [], []
    for key in config.OVERHEAD_PLANS:
        points = []
        for size in sizes:
            pq = _loads(raw, size, key, "pipequant")
            if not pq:
                continue
            plain = _loads(raw, size, key, "plain")
            point = {
                "plan": key,
                "size": size,
                "transformer_params": _transformer_params(raw, size),
                "params": _total_params(raw, size) or _transformer_params(raw, size),
                "load_s": round(median([r["wall"] for r in pq]), 4),
                "diffusers_load_s": round(median([r["wall"] for r in plain]), 4) if plain else None,
                "peak_rss": median([r["memory"]["peak_rss"] for r in pq]),
                "resident_bytes": median([r["total_bytes"] for r in pq]),
            }
            if cuda:
                point["cuda_peak"] = median([r["memory"].get("cuda_peak") for r in pq])
            point["s_per_100m_params"] = round(point["load_s"] / point["params"] * 1e8, 4) if point["params"] else None
            points.append(point)
        rows += points
        for a, b in itertools.pairwise(points):
            n = math.log(b["params"] / a["params"])
            fits.append(
                {
                    "plan": key,
                    "from": a["size"],
                    "to": b["size"],
                    "time_exponent": round(math.log(b["load_s"] / a["load_s"]) / n, 3),
                    "peak_exponent": round(math.log(max(b["peak_rss"], 1) / max(a["peak_rss"], 1)) / n, 3),
                    "marginal_s_per_100m": round((b["load_s"] - a["load_s"]) / (b["params"] - a["params"]) * 1e8, 4),
                    "met": math.log(b["load_s"] / a["load_s"]) / n <= TARGETS["scaling_exponent"],
                }
            )
    return {"points": rows, "growth": fits}


def write(results: dict, out_dir: Path, plot: bool = True) -> list[Path]:
    from .report import _with_provenance, markdown, plot_scaling, provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    md = out_dir / "results.md"
    png = out_dir / "scaling.png"
    made_png = plot and "scaling" in results and plot_scaling(results, png)
    results["provenance"] = provenance()
    md.write_text(_with_provenance(markdown(results, png.name if made_png else None), results["provenance"]))
    written.append(md)
    if made_png:
        written.append(png)
    js = out_dir / "results.json"
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, js)
    written.append(js)
    return written
