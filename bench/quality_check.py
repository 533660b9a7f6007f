"""Plan Quality Check: measured errors per backend, and what a check costs against one Sampler run.

`python -m bench.quality_check` (CPU, the tiny FLUX pipeline by default; `--size 20m` for a bigger
one, `--device cuda` on a GPU). Part 1 runs the check (components and images) for each plan on every
denoiser and text encoder: relative error per component, PSNR and SSIM. Part 2 times a check of
one plan (components / images / both, each loading the reference and the plan afresh) against one
Sampler run of the loaded plan (same prompt, steps and size) and against a Load + Sampler run.
`--write` records part 1's errors in resolver/data/measurements.json (`component_error`), with
their source. Writes bench/results/quality_check.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

from . import config
from .pipelines import default_root, ensure
from .report import write_results
from .suite import machine

PLANS = {
    "torchao int8_weight_only": ("torchao", "int8_weight_only"),
    "torchao int8_dynamic": ("torchao", "int8_dynamic"),
    "torchao float8_weight_only": ("torchao", "float8_weight_only"),
    "quanto int8": ("quanto", "int8"),
    "quanto float8": ("quanto", "float8"),
    "quanto int4": ("quanto", "int4"),
    "quanto int2": ("quanto", "int2"),
    "sdnq int8": ("sdnq", "int8"),
    "sdnq int4": ("sdnq", "int4"),
    "bitsandbytes_8bit int8": ("bitsandbytes_8bit", "int8"),
    "bitsandbytes_4bit nf4": ("bitsandbytes_4bit", "nf4"),
}
COST_PLAN = "torchao int8_weight_only"
PROMPT = "a photo of a cat"
SOURCE_KEY = "cpu-quality-tiny"


def _available(backend: str) -> bool:
    from pipequant.resolver.known import catalogue

    return catalogue.get_backend(backend).installed()


def _spec(name: str):
    from pipequant.resolver.links import BackendSpec

    return BackendSpec.make(*PLANS[name])


def errors(folder: Path, device: str, steps: int, side: int, plans=tuple(PLANS)) -> list[dict]:
    from pipequant.resolver.measure import check_quality

    rows = []
    for name in plans:
        if not _available(PLANS[name][0]):
            rows.append({"plan": name, "skipped": "backend not installed"})
            continue
        try:
            report = check_quality(
                folder.name,
                _spec(name),
                roots=[folder.parent],
                device=device,
                prompt=PROMPT,
                steps=steps,
                width=side,
                height=side,
                max_sequence_length=32,
                measures="both",
                cache_folder=None,
                component_cache=None,
            )
        except Exception as exc:  # noqa: BLE001 - one plan failing is a result, not the end of the bench
            rows.append({"plan": name, "skipped": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        rows.append(
            {
                "plan": name,
                "backend": PLANS[name][0],
                "quant_type": PLANS[name][1],
                "components": {n: c["relative_error"] for n, c in report.components.items()},
                "worst_layer": {n: (c["worst_layers"][:1] or [None])[0] for n, c in report.components.items()},
                "psnr": report.images["psnr"],
                "ssim": report.images["ssim"],
                "lpips": report.images["lpips"],
            }
        )
    return rows


def cost(folder: Path, device: str, steps: int, side: int, rounds: int) -> dict:
    import torch

    from pipequant.resolver.keep import load
    from pipequant.resolver.measure import check_quality
    from pipequant.resolver.run import generate

    sample = dict(prompt=PROMPT, steps=steps, width=side, height=side, seed=0, max_sequence_length=32)
    times: dict[str, list[float]] = {"sampler": [], "load+sampler": [], "components": [], "images": [], "both": []}
    with torch.inference_mode():
        for _ in range(rounds):
            start = time.perf_counter()
            result = load(folder, _spec(COST_PLAN), device=device, cache=None)
            loaded = time.perf_counter()
            generate(result.pipeline, **sample)
            end = time.perf_counter()
            times["sampler"].append(end - loaded)
            times["load+sampler"].append(end - start)
            result = None
            for measure in ("components", "images", "both"):
                start = time.perf_counter()
                check_quality(
                    folder.name,
                    _spec(COST_PLAN),
                    roots=[folder.parent],
                    device=device,
                    measures=measure,
                    cache_folder=None,
                    component_cache=None,
                    **sample,
                )
                times[measure].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "plan": COST_PLAN,
        "seconds": median,
        "vs_sampler": {k: round(v / median["sampler"], 2) for k, v in median.items()},
        "vs_load_and_sampler": {k: round(v / median["load+sampler"], 2) for k, v in median.items()},
        "rounds": rounds,
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# Plan Quality Check on a FLUX-shaped pipeline (random weights)",
        "",
        f"Device `{result['device']}`, pipeline `{Path(result['folder']).name}`, {result['steps']} steps at "
        f'{result["side"]}x{result["side"]}, prompt "{PROMPT}", seed 0, reference bfloat16.',
        "",
        "## Relative error per component, and the images",
        "",
        "| plan | transformer | text_encoder (CLIP) | text_encoder_2 (T5) | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["errors"]:
        if "skipped" in r:
            lines.append(f"| {r['plan']} | skipped: {r['skipped'][:80].replace('|', '/')} | | | | |")
            continue
        c = r["components"]
        cells = [f"{c[n]:.4f}" if n in c else "-" for n in ("transformer", "text_encoder", "text_encoder_2")]
        lines.append(f"| {r['plan']} | {' | '.join(cells)} | {r['psnr']:.2f} | {r['ssim']:.4f} |")
    cst = result.get("cost")
    if cst:
        lines += [
            "",
            f"## Cost of a check ({cst['plan']}; median of {cst['rounds']})",
            "",
            "| run | seconds | ÷ one Sampler run | ÷ Load + Sampler |",
            "|---|---|---|---|",
        ]
        for k, v in cst["seconds"].items():
            lines.append(f"| {k} | {v:.2f} | {cst['vs_sampler'][k]} | {cst['vs_load_and_sampler'][k]} |")
    return "\n".join(lines) + "\n"


def write_measurements(result: dict) -> None:
    """Replace the `component_error` rows of this source in resolver/data/measurements.json."""
    from pipequant.resolver.known import DATA_FILE

    from .quant_profile import _dump

    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    data["sources"][SOURCE_KEY] = (
        f"bench/quality_check.py: Plan Quality Check, pipequant.testing tiny FLUX (random weights), "
        f'{result["device"]}, bfloat16 reference, one denoising step / one text-encoder pass on "{PROMPT}", '
        f"seed 0, {result['side']}x{result['side']}; {result['versions']}"
        + ("; bitsandbytes on CPU through the tests' patch (testing/bnb_cpu.py)" if result["bnb_cpu_patch"] else "")
    )
    rows = [r for r in data.get("component_error", []) if r.get("source") != SOURCE_KEY]
    for r in result["errors"]:
        for component, value in r.get("components", {}).items():
            rows.append(
                {
                    "model": "tiny-flux",
                    "pipeline_class": "FluxPipeline",
                    "component": component,
                    "backend": r["backend"],
                    "quant_type": r["quant_type"],
                    "options": {},
                    "relative_error": round(value, 5),
                    "source": SOURCE_KEY,
                }
            )
    data["component_error"] = rows
    DATA_FILE.write_text(_dump(data), encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality_check", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=config.ALL_SIZES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--side", type=int, default=64, help="image width and height in pixels")
    p.add_argument("--rounds", type=int, default=3, help="repetitions of the cost measurement")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--write", action="store_true", help="record the errors in resolver/data/measurements.json")
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")  # sdnq compiles on first use by default: minutes on CPU
    folder = ensure(args.size, args.root or default_root())
    from pipequant.testing import bnb_cpu

    patched = args.device == "cpu" and bnb_cpu.needed()
    with bnb_cpu.bnb_on_cpu() if patched else contextlib.nullcontext():
        rows = errors(folder, args.device, args.steps, args.side)
    from pipequant.resolver.decide import library_versions

    result = {
        "machine": machine(),
        "device": args.device,
        "folder": str(folder),
        "steps": args.steps,
        "side": args.side,
        "bnb_cpu_patch": patched,
        "versions": ", ".join(library_versions(None).values()),
        "errors": rows,
        "cost": None if args.skip_cost else cost(folder, args.device, args.steps, args.side, args.rounds),
    }
    write_results(args.out, "quality_check", result, to_markdown(result))
    if args.write:
        write_measurements(result)
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
