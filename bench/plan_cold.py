"""The first plan a machine ever makes: `python -m pipequant plan` in a fresh process, empty shape store.

Each run is the CLI a user types, on the hollow FLUX.1-dev (full-size configs, headers only), in a
fresh interpreter with its own empty shape store (PIPEQUANT_SHAPE_CACHE), timed as the child's CPU
(user + system, from the parent's RUSAGE_CHILDREN). Several package checkouts can be compared
(`--variant before=/path/to/an/exported/tree`: the folder holding a `pipequant` package), interleaved
round by round. A second figure, "new model in a warm process", plans the hollow SD3.5 Large in a
process that has just planned FLUX.1-dev (imports done, nothing stored for SD3.5), once per round.

    python -m bench.plan_cold --runs 5 [--variant before=/tmp/before]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import provenance, write_results
from .suite import fmt_spread, spread

WARM_CHILD = r"""
import json, sys, time
from pipequant.runner.cli import main
t = time.process_time()
main(["plan", "hollow-flux-dev", "--models", sys.argv[1], "--budget", "12", "--json"])
first = time.process_time() - t
t = time.process_time()
main(["plan", "hollow-sd35-large", "--models", sys.argv[1], "--budget", "12", "--json"])
print(json.dumps({"first_cpu_s": first, "new_model_cpu_s": time.process_time() - t}))
"""


SEED_OFF = "seed=off:"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _env(variant: str, store: str) -> dict:
    """A variant is "[seed=off:]PYTHONPATH": seed=off plans without the facts shipped with the pack
    (resolver/data/shape_seed.json), as for an architecture the seed does not hold."""
    env = {k: v for k, v in os.environ.items() if k not in ("SDNQ_USE_TORCH_COMPILE", "PIPEQUANT_SHAPE_SEED")}
    seed, pythonpath = ("off", variant[len(SEED_OFF) :]) if variant.startswith(SEED_OFF) else ("on", variant)
    return {**env, "PYTHONPATH": pythonpath, "PIPEQUANT_SHAPE_CACHE": store, "PIPEQUANT_SHAPE_SEED": seed}


def cold_cli(pythonpath: str, models: Path) -> dict:
    with tempfile.TemporaryDirectory() as store:
        cpu0, wall0 = _children_cpu(), time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "pipequant", "plan", "hollow-flux-dev", "--models", str(models), "--budget", "12"],
            capture_output=True,
            text=True,
            env=_env(pythonpath, store),
            timeout=900,
        )
        cpu, wall = _children_cpu() - cpu0, time.perf_counter() - wall0
    if out.returncode not in (0, 2):
        raise RuntimeError(f"plan failed ({out.returncode}): {out.stderr[-2000:]}")
    return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3)}


def warm_new_model(pythonpath: str, models: Path) -> dict:
    with tempfile.TemporaryDirectory() as store:
        out = subprocess.run(
            [sys.executable, "-c", WARM_CHILD, str(models)],
            capture_output=True,
            text=True,
            env=_env(pythonpath, store),
            timeout=900,
        )
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith('{"first_cpu_s"')), None)
    if line is None:
        raise RuntimeError(f"warm plan failed: {out.stderr[-2000:]}")
    return json.loads(line)


def run(variants: dict[str, str], runs: int, models: Path, log=print) -> dict:
    from pipequant.testing import hollow

    for kind in ("flux-dev", "sd35-large"):
        hollow.ensure_hollow(kind, models)
    names = list(variants)
    rows = []
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            figures = cold_cli(variants[name], models)
            warm = warm_new_model(variants[name], models)
            rows.append({"round": r, "variant": name, **figures, "warm_new_model_cpu_s": warm["new_model_cpu_s"]})
            log(
                f"round {r} {name}: cold plan {figures['cpu_s']:.2f} s CPU, new model warm {warm['new_model_cpu_s']:.2f} s"
            )
    summary = {
        name: {
            key: spread([x[field] for x in rows if x["variant"] == name])
            for key, field in (
                ("cold_cpu_s", "cpu_s"),
                ("cold_wall_s", "wall_s"),
                ("warm_new_model_cpu_s", "warm_new_model_cpu_s"),
            )
        }
        for name in names
    }
    return {"variants": variants, "runs": rows, "summary": summary}


def to_markdown(res: dict) -> str:
    lines = [
        "# Cold `pipequant plan` on the hollow FLUX.1-dev",
        "",
        "Each run: `python -m pipequant plan hollow-flux-dev --budget 12` in a fresh process with an empty "
        "shape store; CPU = user + system of the child. Median (min–max, n), interleaved. "
        '"Shipped facts off": PIPEQUANT_SHAPE_SEED=off, what the first plan of an architecture the pack '
        "does not ship facts for costs. "
        '"New model, warm": the hollow SD3.5 Large planned in the process that has just planned FLUX.1-dev.',
        "",
        "| variant | cold CPU s | cold wall s | new model in a warm process, CPU s |",
        "|---|---|---|---|",
    ]
    for name, s in res["summary"].items():
        lines.append(
            f"| {name} | {fmt_spread(s['cold_cpu_s'], 2)} | {fmt_spread(s['cold_wall_s'], 2)} | "
            f"{fmt_spread(s['warm_new_model_cpu_s'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plan_cold", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--models", type=Path, default=None, help="where the hollow pipelines are built")
    p.add_argument("--variant", action="append", default=[], help="NAME=DIR: a folder holding a pipequant package")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "plan_cold")
    args = p.parse_args(argv)
    provenance()
    here = os.environ.get("PYTHONPATH", "")  # "" = the installed package
    variants = {"this commit": here, "this commit, shipped facts off": SEED_OFF + here}
    for item in args.variant:
        name, _, folder = item.partition("=")
        variants[name] = folder
    with tempfile.TemporaryDirectory() as tmp:
        res = run(variants, args.runs, args.models or Path(tmp))
    write_results(args.out, "plan_cold", res, to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
