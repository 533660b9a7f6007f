"""`python -m bench [--sizes 20m,200m] [--reps 5] [--only overhead,memory,...] [--device cpu|cuda]`"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config
from .pipelines import default_root
from .report import provenance
from .suite import BENCHMARKS, run_suite, write

RESULTS = Path(__file__).resolve().parent / "results"


def _list(text: str, allowed) -> list[str]:
    items = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="PipeQuant benchmarks (see bench/README.md).")
    p.add_argument(
        "--sizes",
        type=lambda s: _list(s, config.ALL_SIZES),
        default=list(config.DEFAULT_SIZES),
        help="transformer sizes: tiny, 20m, 200m, 2b (default 20m,200m; 2b needs ~10 GB RAM and time)",
    )
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per measurement (default 5)")
    p.add_argument(
        "--only",
        type=lambda s: _list(s, BENCHMARKS),
        default=list(BENCHMARKS),
        help="subset of: " + ", ".join(BENCHMARKS),
    )
    p.add_argument("--device", default="cpu", help="cpu (default, the reproducible baseline) or cuda")
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"where the synthetic pipelines are built and kept (default $PIPEQUANT_BENCH_DIR or {default_root()})",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument(
        "--isolation",
        choices=("fork", "spawn"),
        default="fork",
        help="fresh process per run: forked from a pre-imported server (default) or a new interpreter",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per run (default: 1 on CPU for stable timings, torch's default on CUDA; 0 = torch's default)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    provenance()  # the commit and tree as the bench starts: what the results come from
    if args.reps < 1:
        p.error("--reps must be at least 1")
    out = args.out
    log = out / "worker.log"
    out.mkdir(parents=True, exist_ok=True)
    results = run_suite(
        args.sizes, args.reps, args.device, args.only, args.root, args.isolation, log, args.quiet, threads=args.threads
    )
    for path in write(results, out, plot=not args.no_plot):
        print(path)
    if results["errors"]:
        print(json.dumps(results["errors"][:3], indent=1), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
