"""Cold start of `python -m pipequant validate`, beside importing the libraries it no longer needs.

Each run is a fresh interpreter. A: validate the bundled FLUX example (torchao int8 on the
transformer, CPU) against a pipeline, reading headers and configs only. B: `import torch,
diffusers, transformers`, which validate used to pay before anything else (about 10 s of its
11 s). Runs alternate A B A B so a drift of the machine's speed hits both; the ratio is taken
pair by pair. Pipelines: the tiny FLUX the demo builds, and the hollow full-size FLUX.1-dev
(real configs, sparse 33 GB of safetensors where only headers can be read).

    python -m bench.validate_cold [--root DIR] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .pipelines import default_root
from .report import provenance, write_results

RESULTS = Path(__file__).resolve().parent / "results"
SETS = (
    "PipeQuantLoadPipeline.device=cpu",
    "PipeQuantBackend.backend=torchao",
    "PipeQuantBackend.quant_type=int8_weight_only",
    "PipeQuantBackend.options={}",
)
IMPORTS = "import torch, diffusers, transformers"
HEAVY = ("torch", "diffusers", "transformers", "torchao")
# `python -m pipequant ARGS`, then a last line saying which heavy libraries it imported.
PROBE = (
    "import sys, runpy; sys.argv = ['pipequant', *sys.argv[1:]]; code = 0\n"
    "try:\n    runpy.run_module('pipequant', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
    f"print('IMPORTED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    "sys.exit(code)"
)


def validate_command(models: Path, name: str) -> list[str]:
    """Validate the bundled example against pipeline `name` under `models`, through PROBE."""
    from pipequant.runner.cli import DEMO_WORKFLOW

    return [
        sys.executable,
        "-c",
        PROBE,
        "validate",
        str(DEMO_WORKFLOW),
        "--models",
        str(models),
        "--set",
        f"PipeQuantLoadPipeline.model={name}",
        *(x for s in SETS for x in ("--set", s)),
    ]


def imported_by(stdout: str) -> list[str]:
    """The heavy libraries PROBE's process imported, from its last line."""
    return json.loads(stdout.rsplit("IMPORTED", 1)[1].strip().replace("'", '"'))


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIPEQUANT_HF_CACHE": "off"})
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed:\n{done.stdout}{done.stderr}")
    return took, done.stdout


def measure(models: Path, name: str, runs: int, warm_up: bool = True) -> dict:
    validate = validate_command(models, name)
    imports = [sys.executable, "-c", IMPORTS]
    if warm_up:  # page cache, .pyc files
        _timed(validate), _timed(imports)
    a, b, imported = [], [], set()
    for _ in range(runs):
        took, out = _timed(validate)
        a.append(took)
        imported.update(imported_by(out))
        b.append(_timed(imports)[0])
    return {
        "pipeline": name,
        "runs": runs,
        "validate_s": statistics.median(a),
        "imports_s": statistics.median(b),
        "ratio": statistics.median(x / y for x, y in zip(a, b)),
        "imported": sorted(imported),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.validate_cold", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="where the pipelines are built once (default: validate_cold/ in the benches' folder, "
        "$PIPEQUANT_BENCH_DIR or ~/.cache/pipequant-bench)",
    )
    p.add_argument("--runs", type=int, default=5, help="pairs of runs per pipeline (default 5)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    provenance()  # the commit and tree as the bench starts: what the results come from
    root = args.root or default_root() / "validate_cold"
    from pipequant.testing import ensure_pipeline
    from pipequant.testing.hollow import build_flux_dev

    tiny = ensure_pipeline("flux", root / "tiny")
    hollow = root / "hollow" / "FLUX.1-dev"
    if not (hollow / "model_index.json").exists():
        build_flux_dev(hollow)
    rows = [measure(tiny.parent, tiny.name, args.runs), measure(hollow.parent, hollow.name, args.runs)]
    lines = [
        "# Cold start of `python -m pipequant validate`",
        "",
        f"Fresh interpreters, alternating validate and `{IMPORTS}`, {args.runs} pairs per pipeline; "
        "the ratio is the median of the pairs' ratios.",
        "",
        "| pipeline | validate, median s | import torch+diffusers+transformers, median s | ratio (pairwise median) "
        "| heavy libraries validate imported |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['pipeline']} | {r['validate_s']:.2f} | {r['imports_s']:.2f} | {r['ratio']:.3f} | "
        f"{', '.join(r['imported']) or 'none'} |"
        for r in rows
    ]
    write_results(args.out, "validate_cold", rows, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
