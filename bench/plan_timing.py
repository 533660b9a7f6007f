"""Planning time, cold and warm, on the hollow FLUX.1-dev, and the bytes it reads.

Each run is a fresh process: "imports" is importing torch, diffusers and transformers; "cold" is
the first inspect + plan after them (meta-device builds, quantizer look-ups); "warm" the next
plans with other budgets and goals (cached layouts). Bytes read are `rchar` from /proc/self/io
(every byte read through a system call, page cache included) around a plan of a second copy of
the model (imports done, nothing cached for it), against the
bytes of the safetensors headers and configs the planner is meant to read. No weight byte may be
read: the hollow files have no data region on disk at all.

    python -m bench.plan_timing [--root DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, diffusers, transformers  # noqa: F401
t1 = time.perf_counter()
from pipequant.resolver.files.inspect_model import inspect_model
from pipequant.resolver.decide.planner import GIB, DeviceProfile, auto_plan

def rchar():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])

gpu = DeviceProfile("bench", 80 * GIB, 80 * GIB, (9, 0))
t2 = time.perf_counter()
plan = auto_plan(inspect_model(sys.argv[1]), gpu, 12 * GIB, "balanced")
t3 = time.perf_counter()
# A second copy of the model: nothing cached for it, every import already done, so the bytes read
# are the planner's own.
r0 = rchar()
t4 = time.perf_counter()
auto_plan(inspect_model(sys.argv[2]), gpu, 12 * GIB, "balanced")
t5 = time.perf_counter()
r1 = rchar()
warm = []
for budget in (8, 16, 24, 32):
    for goal in ("quality", "speed", "smallest"):
        s = time.perf_counter()
        auto_plan(inspect_model(sys.argv[1]), gpu, budget * GIB, goal)
        warm.append(time.perf_counter() - s)
print(json.dumps({"imports_s": t1 - t0, "cold_s": t3 - t2, "cold_new_model_s": t5 - t4, "warm_median_s": sorted(warm)[len(warm) // 2],
                  "warm_max_s": max(warm), "rchar_cold": r1 - r0, "peak_gib": plan.peak.total / GIB}))
"""


def header_bytes(folder: Path) -> int:
    """Bytes of every safetensors header (8-byte length + JSON) and every JSON/text file."""
    total = 0
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix == ".safetensors":
            with open(p, "rb") as f:
                total += 8 + struct.unpack("<Q", f.read(8))[0]
        else:
            total += p.stat().st_size
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plan_timing", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="where the hollow pipeline is built (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    from pipequant.testing import hollow

    with tempfile.TemporaryDirectory() as tmp:
        folder = hollow.ensure_hollow("flux-dev", args.root or tmp)
        allowed = header_bytes(folder)
        runs = []
        for i in range(args.runs):
            copy = Path(tmp) / f"copy-{i}"
            subprocess.run(["cp", "-r", "--sparse=always", str(folder), str(copy)], check=True)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(folder), str(copy)],
                capture_output=True,
                check=False,
                text=True,
                timeout=600,
                env=os.environ,
            )
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        apparent = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    for r in runs:
        print(
            f"imports {r['imports_s']:.2f} s | first plan {r['cold_s'] * 1000:.0f} ms | new model "
            f"{r['cold_new_model_s'] * 1000:.0f} ms | warm median "
            f"{r['warm_median_s'] * 1000:.1f} ms, max {r['warm_max_s'] * 1000:.1f} ms | read {r['rchar_cold']:,} B "
            f"for a new model (headers+configs {allowed:,} B; files {apparent / 1e9:.1f} GB on paper)"
        )
    print(json.dumps({"runs": runs, "headers_and_configs_bytes": allowed, "apparent_bytes": apparent}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
