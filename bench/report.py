"""The results as markdown (ratios first) and the scaling plot."""

from __future__ import annotations

import json
from pathlib import Path

from .config import PLANS
from .suite import TARGETS

MB = 1024**2


def _mb(n) -> str:
    return "-" if n is None else f"{n / MB:.1f}"


def _x(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ok(v) -> str:
    return "-" if v is None else ("yes" if v else "**no**")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _label(key: str) -> str:
    return PLANS[key].label if key in PLANS else key


def machine_line(meta: dict) -> str:
    m = meta["machine"]
    v = m["versions"]
    gpu = f"GPU: {meta.get('gpu')}" if meta.get("gpu") else "no GPU"
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {gpu}; Python {m['python']}, torch {v['torch']}, "
        f"diffusers {v['diffusers']}, transformers {v['transformers']}, bitsandbytes {v['bitsandbytes']}, "
        f"torchao {v['torchao']}, optimum-quanto {v['optimum.quanto']}"
    )


def summary(results: dict) -> list[list]:
    """One line per target: the worst measured value and whether every row meets it."""
    rows = []
    if results.get("overhead"):
        q = [r for r in results["overhead"] if r["plan"] != "bf16"]
        worst = max(q, key=lambda r: r["ratio_cpu"])
        worst_wall = max(q, key=lambda r: r["ratio"])
        rows.append(
            [
                "1 load overhead: Load node ÷ plain diffusers (quantized plans), CPU time",
                f"≤ {TARGETS['overhead']}",
                f"{worst['ratio_cpu']:.3f} ({worst['size']} {worst['label']})",
                _ok(all(r["met"] for r in q)),
            ]
        )
        rows.append(
            [
                "1 same, wall time (noisy on a shared machine)",
                f"≤ {TARGETS['overhead']}",
                f"{worst_wall['ratio']:.3f} ({worst_wall['size']} {worst_wall['label']}, "
                f"{worst_wall['delta_ms']:+.0f} ms)",
                _ok(all(r["met_wall"] for r in q)),
            ]
        )
    if results.get("memory"):
        comps = [c for c in results["memory"]["components"] if c["quantized"]]
        if comps:
            worst = max(comps, key=lambda c: c["ratio"])
            rows.append(
                [
                    "2 resident ÷ theoretical floor (quantized components)",
                    f"≤ {TARGETS['memory']}",
                    f"{worst['ratio']:.3f} ({worst['size']} {_label(worst['plan'])} {worst['component']})",
                    _ok(all(c["met"] for c in comps)),
                ]
            )
        peaks = [p for p in results["memory"]["peaks"] if p["plan"] != "bf16"]
        if peaks:
            worst = max(peaks, key=lambda p: p["peak_over_resident"] or 0)
            rows.append(
                [
                    "2 peak RSS during load ÷ resident (quantized plans)",
                    "report",
                    f"{worst['peak_over_resident']:.2f} ({worst['size']} {_label(worst['plan'])}; "
                    f"peak in {worst['peak_phase']})",
                    "-",
                ]
            )
    if results.get("reuse"):
        worst = max(results["reuse"], key=lambda r: r["ratio"] - r["target"])
        rows.append(
            [
                "3 reload with one text encoder switched ÷ full reload",
                "≤ its byte share + 0.1",
                f"{worst['ratio']:.3f} vs target {worst['target']:.3f} ({worst['size']} {_label(worst['plan'])})",
                _ok(all(r["met"] for r in results["reuse"])),
            ]
        )
    if results.get("prequant"):
        worst = max(results["prequant"], key=lambda r: r["ratio"])
        rows.append(
            [
                "4 pre-quantized load ÷ quantize-on-load",
                "report (< 1 expected)",
                f"{worst['ratio']:.3f} ({worst['size']} {worst['label']})",
                "-",
            ]
        )
    if results.get("scaling") and results["scaling"]["growth"]:
        worst = max(results["scaling"]["growth"], key=lambda g: g["time_exponent"])
        rows.append(
            [
                "5 load-time growth exponent (time ∝ params^k)",
                f"k ≤ {TARGETS['scaling_exponent']} (linear)",
                f"{worst['time_exponent']:.2f} ({_label(worst['plan'])} {worst['from']}→{worst['to']})",
                _ok(all(g["met"] for g in results["scaling"]["growth"])),
            ]
        )
    if results.get("validate"):
        worst = max(results["validate"], key=lambda r: r["validate_cold_ms"] + r["estimate_cold_ms"])
        rows.append(
            [
                "6 validate + estimate, largest pipeline, cold",
                f"≪ {TARGETS['validate_ms']:.0f} ms, no weight read",
                f"{worst['validate_cold_ms'] + worst['estimate_cold_ms']:.1f} ms; read "
                f"{worst['bytes_read_cold'] / 1024:.0f} KB of {worst['weight_bytes_on_disk'] / MB:.0f} MB weights",
                _ok(all(r["met"] for r in results["validate"])),
            ]
        )
    if results.get("sample"):
        s = results["sample"]
        rows.append(["GPU: bnb nf4 step speed ÷ bf16", "report", f"{s['speed_nf4_vs_bf16']:.2f}", "-"])
    return rows


def markdown(results: dict, png_name: str | None = None) -> str:
    meta = results["meta"]
    out = [
        "# PipeQuant benchmark results",
        "",
        f"Machine: {machine_line(meta)}.",
        "",
        f"Run: {meta['started']}, {meta['duration_seconds']:.0f} s; sizes {', '.join(meta['sizes'])} "
        f"(transformer parameters); median of {meta['reps']} interleaved runs, each load in a fresh process "
        f"(`{meta['isolation']}` isolation); device `{meta['device']}`, {meta.get('torch_threads')} torch thread(s); "
        f"load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average_at_end'] or [])}.",
        "",
    ]
    if meta.get("bnb_cpu_patch"):
        out += [
            "bnb nf4 on CPU: diffusers' bitsandbytes quantizers are patched to run without a GPU "
            "(`testing/bnb_cpu.py`, the tests' patch), in both the PipeQuant and the plain-diffusers runs.",
            "",
        ]
    out += ["## Targets", ""]
    out += _table(["measure", "target", "worst measured", "met"], summary(results))

    if results.get("overhead"):
        out += [
            "## 1. Load overhead",
            "",
            "Load Quantized Pipeline node (validate + plan + load + report) ÷ "
            "`DiffusionPipeline.from_pretrained(..., quantization_config=<equivalent PipelineQuantizationConfig>)` "
            "(global for bnb, granular per library for torchao and quanto).",
            "",
        ]
        out += [
            "Judged on process CPU time (1 torch thread: CPU time is the load's own work, and what wall time "
            "is on an idle machine); wall time beside it. Validate+plan is PipeQuant's own step before the first "
            "weight; assemble+report covers building the pipeline object, tokenizers, scheduler and the report. "
            "Min CPU ratio: fastest run ÷ fastest run (noise only ever adds time).",
            "",
        ]
        out += _table(
            [
                "size",
                "plan",
                "ratio (CPU time)",
                "ratio (wall)",
                "min CPU ratio",
                "PipeQuant s",
                "diffusers s",
                "Δ wall ms",
                "validate+plan ms",
                "assemble+report ms",
                "met (CPU / wall)",
            ],
            [
                [
                    r["size"],
                    r["label"],
                    _x(r["ratio_cpu"], 3),
                    _x(r["ratio"], 3),
                    _x(r.get("ratio_cpu_min"), 3),
                    _x(r["pipequant_s"], 3),
                    _x(r["diffusers_s"], 3),
                    f"{r['delta_ms']:+.0f}",
                    _x(r.get("validate_plan_ms"), 1),
                    _x(r.get("assemble_report_ms"), 1),
                    f"{_ok(r['met'])} / {_ok(r.get('met_wall'))}" if r["plan"] != "bf16" else "(info)",
                ]
                for r in results["overhead"]
            ],
        )
        if any(r.get("node_paired") for r in results["overhead"]):
            from .suite import fmt_spread, median

            out += [
                "### The Load node as a user runs it, beside the resolver",
                "",
                "node = `PipeQuantLoadPipeline.load` with its defaults: the estimate it frees memory with, the disk "
                "cache on and empty (a first load: the entries are written after the pipeline is handed back; "
                "'write after' is that background write, not part of the load). resolver = `prepare` + `load_plan` "
                "without the disk cache. Each ÷ the plain diffusers load of the same repetition: median (min–max) "
                "of the pairs.",
                "",
            ]
            out += _table(
                [
                    "size",
                    "plan",
                    "**node ÷ diffusers (wall)**",
                    "node ÷ diffusers (CPU)",
                    "resolver ÷ diffusers (wall)",
                    "resolver ÷ diffusers (CPU)",
                    "write after s (median)",
                    "disk cache",
                ],
                [
                    [
                        r["size"],
                        r["label"],
                        fmt_spread(r.get("node_paired")),
                        fmt_spread(r.get("node_paired_cpu")),
                        fmt_spread(r.get("resolver_paired")),
                        fmt_spread(r.get("resolver_paired_cpu")),
                        _x(median(r.get("node_write_after_s") or []), 2),
                        ", ".join(f"{c}: {s}" for c, s in (r.get("node_disk_cache") or [{}])[0].items()) or "-",
                    ]
                    for r in results["overhead"]
                ],
            )
    mem = results.get("memory")
    if mem:
        out += [
            "## 2. Memory against the theoretical floor",
            "",
            "floor = quantized Linear weights × bits / 8 + their scales (nf4: one fp32 absmax per 64 weights; "
            "int8: one load-dtype scale per output row) + every other tensor at the load dtype. "
            "Resident bytes count every storage behind the component's tensors (quant state included).",
            "",
        ]
        out += _table(
            [
                "size",
                "plan",
                "component",
                "resident ÷ floor",
                "PipeQuant ÷ diffusers",
                "resident MB",
                "floor MB",
                "excess: metadata / wider dtype / other KB",
                "met",
            ],
            [
                [
                    c["size"],
                    _label(c["plan"]),
                    c["component"],
                    _x(c["ratio"], 3),
                    _x(c["vs_diffusers"], 3),
                    _mb(c["bytes"]),
                    _mb(c["floor"]),
                    " / ".join(
                        f"{c['excess'][k] / 1024:.0f}" for k in ("quant_metadata", "wider_than_load_dtype", "other")
                    ),
                    _ok(c["met"]) if c["quantized"] else "(unquantized)",
                ]
                for c in mem["components"]
            ],
        )
        cuda = any("cuda_peak" in p for p in mem["peaks"])
        head = [
            "size",
            "plan",
            "peak RSS ÷ resident",
            "diffusers: same",
            "peak anon ÷ resident",
            "peak RSS MB",
            "resident MB",
            "peak phase",
            "peak anon / file MB",
            "RSS after / after trim MB",
            "safetensors mapped after MB (PipeQuant / diffusers)",
        ]
        if cuda:
            head += ["CUDA peak ÷ final", "diffusers: same"]
        rows = []
        for p in mem["peaks"]:
            row = [
                p["size"],
                _label(p["plan"]),
                _x(p["peak_over_resident"]),
                _x(p["diffusers_peak_over_resident"]),
                _x(p.get("peak_anon_over_resident")),
                _mb(p["peak_rss"]),
                _mb(p["resident_bytes"]),
                p["peak_phase"],
                f"{_mb(p['peak_anon'])} / {_mb(p['peak_file'])}",
                f"{_mb(p['rss_after'])} / {_mb(p['rss_after_trim'])}",
                f"{_mb(p['safetensors_mapped_after'])} / {_mb(p.get('diffusers_safetensors_mapped_after'))}",
            ]
            if cuda:
                row += [_x(p.get("cuda_peak_over_final")), _x(p.get("diffusers_cuda_peak_over_final"))]
            rows.append(row)
        out += [
            "### Peak memory during load",
            "",
            "Peak RSS above the post-import baseline (kernel high-water mark, reset per phase); anon = memory the "
            "process allocated, file = mapped file pages (safetensors shards, shared-library code).",
            "",
        ]
        out += _table(head, rows)
        largest = mem["phases"][-1]["size"] if mem["phases"] else None
        rows = [
            [
                _label(p["plan"]),
                p["phase"],
                _x(p["seconds"], 3),
                _mb(p["peak_rss"]),
                _mb(p.get("peak_anon")),
                _mb(p.get("peak_file")),
                _mb(p["rss_after"]),
                _mb(p.get("component_bytes")),
            ]
            + ([_mb(p.get("cuda_peak"))] if cuda else [])
            for p in mem["phases"]
            if p["size"] == largest
        ]
        out += [f"### Where the peak comes from ({largest}, PipeQuant load, per phase)", ""]
        out += _table(
            [
                "plan",
                "phase",
                "s",
                "peak RSS MB",
                "peak anon MB",
                "peak file MB",
                "RSS after MB",
                "component resident MB",
            ]
            + (["CUDA peak MB"] if cuda else []),
            rows,
        )
    if results.get("reuse"):
        out += [
            "## 3. Component reuse",
            "",
            "Plan A = the backend on every quantized component (loaded once, cache warm); plan B = A with "
            "`text_encoder_2` switched to another backend. Reload of B reusing the cache ÷ full reload of B "
            "(empty cache), in one process, interleaved.",
            "",
        ]
        out += [
            '"switched load s" is the reloaded component\'s own load; the rest of a reuse reload ("fixed s") is '
            "validate + plan, loading tokenizers and scheduler, assembling the pipeline and the report.",
            "",
        ]
        out += _table(
            [
                "size",
                "plan A",
                "text_encoder_2 switched to",
                "ratio",
                "target (share + 0.1)",
                "reuse s",
                "full s",
                "switched load s",
                "fixed s",
                "byte share",
                "met",
            ],
            [
                [
                    r["size"],
                    _label(r["plan"]),
                    _label(r["switch_to"]),
                    _x(r["ratio"], 3),
                    _x(r["target"], 3),
                    _x(r["reuse_s"], 3),
                    _x(r["full_s"], 3),
                    _x(r.get("switched_load_s"), 3),
                    _x(r.get("fixed_s"), 3),
                    _x(r["share"], 4),
                    _ok(r["met"]),
                ]
                for r in results["reuse"]
            ],
        )
    if results.get("prequant"):
        out += [
            "## 4. Pre-quantized reload",
            "",
            "Load of a pipeline written by Save Quantized Pipeline ÷ quantize-on-load of the same plan (both "
            "through the Load node, fresh processes). torchao int4 is not savable; quanto only for diffusers "
            "models, so its plan quantizes the transformer only.",
            "",
        ]
        out += _table(
            ["size", "plan", "ratio", "pre-quantized s", "quantize-on-load s", "peak RSS ratio", "resident ratio"],
            [
                [
                    r["size"],
                    r["label"],
                    _x(r["ratio"], 3),
                    _x(r["prequantized_s"], 3),
                    _x(r["quantize_on_load_s"], 3),
                    _x(r["peak_ratio"]),
                    _x(r["resident_ratio"], 3),
                ]
                for r in results["prequant"]
            ],
        )
    sc = results.get("scaling")
    if sc:
        out += ["## 5. Scaling", ""]
        if png_name:
            out += [f"![load time and peak memory against parameters]({png_name})", ""]
        out += _table(
            [
                "plan",
                "size",
                "pipeline params (M)",
                "PipeQuant load s",
                "diffusers load s",
                "s per 100 M params",
                "peak RSS MB",
                "resident MB",
            ],
            [
                [
                    _label(p["plan"]),
                    p["size"],
                    _x(p["params"] / 1e6, 1),
                    _x(p["load_s"], 3),
                    _x(p["diffusers_load_s"], 3),
                    _x(p["s_per_100m_params"], 3),
                    _mb(p["peak_rss"]),
                    _mb(p["resident_bytes"]),
                ]
                for p in sc["points"]
            ],
        )
        if sc["growth"]:
            out += [
                "Growth between sizes: k = log(t2/t1) / log(N2/N1) (1 = linear; below 1, a fixed cost still shows).",
                "",
            ]
            out += _table(
                ["plan", "sizes", "time exponent k", "peak exponent", "marginal s per 100 M params", "met"],
                [
                    [
                        _label(g["plan"]),
                        f"{g['from']} → {g['to']}",
                        _x(g["time_exponent"]),
                        _x(g["peak_exponent"]),
                        _x(g["marginal_s_per_100m"], 3),
                        _ok(g["met"]),
                    ]
                    for g in sc["growth"]
                ],
            )
    if results.get("validate"):
        out += [
            "## 6. Validation and estimate latency",
            "",
            "`plan_load` (inspect model_index.json, configs and safetensors headers + validate + plan: what the "
            "Load node runs before any weight) and `estimate`, on the largest pipeline. Cold = first call in a fresh "
            "process; warm = repeated (inspection is cached per folder and mtimes). Weight loaders are made to "
            "raise during the calls; bytes read = the process's `rchar` during the cold call (headers, configs "
            "and any lazily imported code).",
            "",
        ]
        out += _table(
            [
                "size",
                "plan",
                "validate cold ms",
                "estimate cold ms",
                "validate warm ms",
                "estimate warm ms",
                "KB read (cold)",
                "weights on disk MB",
                "met",
            ],
            [
                [
                    r["size"],
                    r["label"],
                    _x(r["validate_cold_ms"], 1),
                    _x(r["estimate_cold_ms"], 1),
                    _x(r["validate_warm_ms"], 2),
                    _x(r["estimate_warm_ms"], 2),
                    _x((r["bytes_read_cold"] or 0) / 1024, 0),
                    _mb(r["weight_bytes_on_disk"]),
                    _ok(r["met"]),
                ]
                for r in results["validate"]
            ],
        )
    if results.get("sample"):
        s = results["sample"]
        out += [
            "## GPU sampling speed",
            "",
            f"{s['device']}: bf16 {s['bf16_step_s'] * 1000:.1f} ms/step, bnb nf4 {s['nf4_step_s'] * 1000:.1f} ms/step "
            f"(nf4 speed ÷ bf16: {s['speed_nf4_vs_bf16']:.2f}).",
            "",
        ]
    if results.get("errors"):
        out += ["## Failed runs", ""]
        out += [f"- `{e['job']}`: {e['error']}" for e in results["errors"]] + [""]
    return "\n".join(out)


def plot_scaling(results: dict, path: Path) -> bool:
    """Load time and peak RSS against parameter count, one line per plan (log-log). False
    without matplotlib (`pip install matplotlib`, the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = results["scaling"]["points"]
    if not points:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in dict.fromkeys(p["plan"] for p in points):
        pts = sorted((p for p in points if p["plan"] == key), key=lambda p: p["params"])
        xs = [p["params"] / 1e6 for p in pts]
        ax1.plot(xs, [p["load_s"] for p in pts], "o-", label=_label(key))
        ax2.plot(xs, [p["peak_rss"] / MB for p in pts], "o-", label=_label(key))
    if len({p["params"] for p in points}) > 1:
        lo, hi = min(p["params"] for p in points) / 1e6, max(p["params"] for p in points) / 1e6
        for ax in (ax1, ax2):
            ref = [ax.get_ylim()[1] * 0.5]
            ax.plot([lo, hi], [ref[0] * lo / hi, ref[0]], "k:", label="linear (slope 1)")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax, title, unit in ((ax1, "load time (PipeQuant)", "seconds"), (ax2, "peak RSS above baseline", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("pipeline parameters (M)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    meta = results["meta"]
    fig.suptitle(
        f"PipeQuant load scaling — {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"device {meta['device']} (bf16 maps the weights: they are read on first use)",
        fontsize=9,
    )
    fig.tight_layout()
    # The PNG carries its provenance too (a tEXt chunk), like every other result file.
    fig.savefig(path, dpi=110, metadata={"Description": provenance_line(provenance())})
    plt.close(fig)
    return True


_PROVENANCE: dict = {}


def provenance() -> dict:
    """What produced a result file: the command as typed, the commit (and whether the tree had
    uncommitted changes), the machine, the library versions, the load average and the time. Taken
    once per process, at the first call: the benches call it when they start, so a commit made while
    a bench runs is not credited with its results."""
    if not _PROVENANCE:
        _PROVENANCE.update(_provenance_now())
    return {**_PROVENANCE, "written": _now()}


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _provenance_now() -> dict:
    import os
    import shlex
    import subprocess
    import sys

    from .suite import REPO, machine

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    module = sys.modules["__main__"].__spec__.name if getattr(sys.modules["__main__"], "__spec__", None) else None
    command = shlex.join(["python", "-m", module, *sys.argv[1:]] if module else [sys.executable, *sys.argv])
    # Result files are what benches write, not what they run: one bench's fresh results in the tree
    # do not make the next bench's code "uncommitted".
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    return {
        "command": command,
        # a copy of the tree without its .git (a GPU machine's) is told its commit by the caller
        "commit": git("rev-parse", "HEAD") or os.environ.get("PIPEQUANT_BENCH_COMMIT"),
        "uncommitted_changes": bool(status) if status is not None else None,
        "machine": machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "started": _now(),
    }


def provenance_line(p: dict) -> str:
    m, v = p["machine"], p["machine"]["versions"]
    commit = (p["commit"] or "unknown")[:12] + (" + uncommitted changes" if p["uncommitted_changes"] else "")
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    load = ", ".join(f"{x:.1f}" for x in p["load_average"]) if p.get("load_average") else "?"
    return (
        f"Written {p['written']} by `{p['command']}` at commit {commit}; {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gb']} GB RAM; Python {m['python']}, {libs}; load average {load}."
    )


def write_results(out: Path, stem: str, data, markdown: str) -> Path:
    """`out/<stem>.json` (every figure, raw) and `out/<stem>.md` (the table); the .md path. Both
    carry the provenance (command, commit, machine, library versions) of the process writing them."""
    out.mkdir(parents=True, exist_ok=True)
    made = provenance()
    if isinstance(data, dict):
        data = {"provenance": made, **data}
    else:
        data = {"provenance": made, "rows": data}
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(_with_provenance(markdown, made))
    return out / f"{stem}.md"


def _with_provenance(markdown: str, made: dict) -> str:
    """The provenance line right under the title (or first, when there is no title)."""
    lines = markdown.split("\n")
    at = 1 if lines and lines[0].startswith("# ") else 0
    return "\n".join(lines[:at] + ["", provenance_line(made)] + lines[at:])
