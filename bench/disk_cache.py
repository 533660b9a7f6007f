"""Disk cache benchmark: a cold load that reads the cache ÷ the cold first load that wrote it.

    python -m bench.disk_cache [--sizes 200m] [--plans nf4,int8wo,quanto8_tr] [--rounds 2]

Per round and plan, interleaved, each a fresh process forked from the bench worker (imports
shared, nothing loaded), each through the Load node, each cold:
  off     the load as it is without the cache (quantize on load)
  first   the first load with the cache on: quantizes and writes the entry (cache emptied before)
  second  the next load: reads the entry
("off" runs before "first" in even rounds and after "second" in odd rounds, so drift cancels.)
"Cold" means the pipeline's and the cache's files are evicted from the page cache before every
load: with /proc/sys/vm/drop_caches where it is writable (--drop-caches; it drops every user's
page cache, so it is not the default on a shared machine), else posix_fadvise(DONTNEED) on each
file, checked with fincore where it exists. Writes bench/results/disk_cache/results.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from .config import PLANS
from .pipelines import ensure, folder_name
from .report import provenance, write_results
from .suite import Worker, default_threads, fmt_spread, isolation_for, machine, spread

DEFAULT_PLANS = ("nf4", "int8wo", "quanto8_tr")
OUT = Path(__file__).resolve().parent / "results" / "disk_cache"
TARGET = 0.3  # a cold second load at most 0.3x the first: below that the cache pays for its disk space


def _files(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.rglob("*") if p.is_file()]


def evict(folders: list[Path], drop_caches: bool) -> dict:
    """Make the next read of these folders come from the disk; returns what it did and how
    many of their bytes were still resident after (fincore), where that can be measured."""
    files = _files(*folders)
    how = "fadvise"
    if drop_caches:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            how = "drop_caches"
        except OSError:
            pass
    if how == "fadvise":
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return {"how": how, "resident_bytes": _resident(files)}


def _resident(files: list[Path]) -> int | None:
    if not files or shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    return sum(int(x) for x in out.stdout.split())


def run(sizes, plans, rounds: int, root: Path, drop_caches: bool, log, device: str = "cpu") -> dict:
    raw = []
    cache_root = root / "disk-cache-bench"
    root.mkdir(parents=True, exist_ok=True)
    with Worker(isolation_for(device), log=root / "disk-cache-bench.log", threads=default_threads(device)) as worker:
        for size in sizes:
            pipeline = ensure(size, root)
            for rnd in range(rounds):
                for key in plans:
                    folder = cache_root / f"{size}-{key}"
                    shutil.rmtree(folder, ignore_errors=True)
                    # "off" before "first" in even rounds, after "second" in odd ones: on a machine
                    # whose speed drifts, a fixed order would bias first ÷ off (the first load came
                    # always after the load without the cache, 1.11-1.16 on a slowing machine).
                    order = ("off", "first", "second") if rnd % 2 == 0 else ("first", "second", "off")
                    for kind in order:
                        cold = evict([pipeline, folder], drop_caches)
                        job = {
                            "kind": "load",
                            "mode": "node",  # the Load node: it hands the disk cache to the load
                            "root": str(root),
                            "name": folder_name(size),
                            "spec": PLANS[key].spec,
                            "size": size,
                            "plan": key,
                            "device": device,
                            "disk_cache": str(folder) if kind != "off" else None,
                            "every_plan": True,  # also a plan measured not to pay: this measures it again
                        }
                        out = worker.run(job)
                        if not out.get("ok"):
                            raise RuntimeError(f"{size} {key} {kind}: {out.get('error')}\n{out.get('traceback', '')}")
                        status = {n: c.get("disk_cache") for n, c in out["components"].items()}
                        entry_bytes = sum(p.stat().st_size for p in _files(folder))
                        if kind != "off" and (entry_bytes == 0 or "written" not in status.values() and kind == "first"):
                            # A bench that measures nothing must not write a table that looks like a result.
                            raise RuntimeError(
                                f"{size} {key} {kind}: the disk cache holds {entry_bytes} bytes after the load "
                                f"(components: {status}); nothing was cached, so there is nothing to measure"
                            )
                        if kind == "second" and "read" not in status.values():
                            raise RuntimeError(f"{size} {key} second load did not read the cache: {status}")
                        raw.append(
                            {
                                "size": size,
                                "plan": key,
                                "round": rnd,
                                "kind": kind,
                                "wall": out["wall"],
                                "cpu": out["cpu"],
                                "cold": cold,
                                "disk_cache": status,
                                "entry_bytes": entry_bytes,
                                "write_after_load_s": out.get("write_after_load_s"),
                                # each component's own load time (the report's), to split the cached
                                # components from those that load from their own files both times
                                "component_seconds": {
                                    n: c.get("report_load_seconds") for n, c in out["components"].items()
                                },
                            }
                        )
                        log(
                            f"{size} {key:<10} round {rnd} {kind:<6} {out['wall']:7.2f} s  "
                            f"(evicted by {cold['how']}, resident after: {cold['resident_bytes']})  {status}"
                        )
    return {
        "machine": machine(),
        "device": device,
        "rounds": rounds,
        "runs": raw,
        "summary": summarize(raw, sizes, plans),
    }


def summarize(raw, sizes, plans) -> list[dict]:
    rows = []
    for size in sizes:
        for key in plans:
            runs = [r for r in raw if r["size"] == size and r["plan"] == key]
            wall = {k: [r["wall"] for r in runs if r["kind"] == k] for k in ("off", "first", "second")}
            per_round = [s / f for s, f in zip(wall["second"], wall["first"])]
            cpu = {k: [r["cpu"] for r in runs if r["kind"] == k] for k in ("first", "second")}
            cached = {n for r in runs if r["kind"] == "second" for n, st in r["disk_cache"].items() if st == "read"}
            own = {
                k: [sum(r["component_seconds"].get(n) or 0.0 for n in cached) for r in runs if r["kind"] == k]
                for k in ("first", "second")
            }
            rows.append(
                {
                    "size": size,
                    "plan": key,
                    "label": PLANS[key].label,
                    "off_s": statistics.median(wall["off"]),
                    "first_s": statistics.median(wall["first"]),
                    "second_s": statistics.median(wall["second"]),
                    "second_over_first": round(statistics.median(per_round), 3),
                    "second_over_first_rounds": [round(x, 3) for x in per_round],
                    "second_over_first_spread": spread(per_round),
                    "first_over_off_spread": spread([f / o for f, o in zip(wall["first"], wall["off"])]),
                    "pays": statistics.median(per_round) <= TARGET,
                    "second_over_off": round(
                        statistics.median([s / o for s, o in zip(wall["second"], wall["off"])]), 3
                    ),
                    "first_over_off": round(statistics.median([f / o for f, o in zip(wall["first"], wall["off"])]), 3),
                    "entry_bytes": max(r["entry_bytes"] for r in runs),
                    "cpu_second_over_first_spread": spread([s / f for s, f in zip(cpu["second"], cpu["first"])]),
                    "cached_components": sorted(cached),
                    "cached_second_over_first_spread": spread(
                        [s / f for s, f in zip(own["second"], own["first"]) if f > 0]
                    ),
                    "cached_first_s": statistics.median(own["first"]),
                    "cached_second_s": statistics.median(own["second"]),
                }
            )
    return rows


def write(results: dict, out_dir: Path) -> Path:
    m = results["machine"]
    how = results["runs"][0]["cold"]["how"] if results["runs"] else "-"
    intro = (
        f"`python -m bench.disk_cache`, {results['rounds']} interleaved rounds (medians; off before first in "
        f"even rounds, after second in odd ones), fresh process per load, 1 torch thread on CPU, page cache evicted "
        f"before every load ({how}). Machine: {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores, GPU: {m.get('gpu') or 'none'}; loads on `{results.get('device', 'cpu')}`."
    )
    header = (
        "| size | plan | off (quantize on load) s | first (quantize; entry written after) s | second (read) s | "
        "**second ÷ first** median (min–max) | second ÷ off | first ÷ off median (min–max) | entry | "
        f"pays (≤ {TARGET}) | CPU time: second ÷ first | cached components alone: first → second s, "
        "second ÷ first |"
    )
    lines = [
        "# Disk cache: cold second load ÷ cold first load (the Load node)",
        "",
        intro,
        "",
        header,
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["summary"]:
        lines.append(
            f"| {r['size']} | {r['label']} | {r['off_s']:.2f} | {r['first_s']:.2f} | {r['second_s']:.2f} | "
            f"**{fmt_spread(r['second_over_first_spread'])}** | "
            f"{r['second_over_off']:.3f} | {fmt_spread(r['first_over_off_spread'])} | "
            f"{r['entry_bytes'] / 1e6:.1f} MB | {'yes' if r['pays'] else '**no**'} | "
            f"{fmt_spread(r['cpu_second_over_first_spread'])} | "
            f"{', '.join(r['cached_components'])}: {r['cached_first_s']:.2f} → {r['cached_second_s']:.2f}, "
            f"{fmt_spread(r['cached_second_over_first_spread'])} |"
        )
    lines += [
        "",
        "The cached components alone: each one's own load time in the Memory Report (quantize in the first "
        "load, read in the second). A plan that caches the transformer only still loads its text encoders and "
        "VAE from their unquantized files in both loads, which bounds its whole-load ratio.",
    ]
    return write_results(out_dir, "results", results, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.disk_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200m", help="comma-separated: tiny, 20m, 200m, 2b")
    parser.add_argument("--plans", default=",".join(DEFAULT_PLANS), help=f"comma-separated keys of {list(PLANS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("PIPEQUANT_BENCH_DIR", "/tmp/pqbench")))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--device", default="cpu", help="where the Load node loads: cpu or cuda")
    parser.add_argument(
        "--drop-caches", action="store_true", help="drop the whole page cache (root; shared machines: no)"
    )
    args = parser.parse_args(argv)
    provenance()  # the commit and tree as the bench starts: what the results come from
    t0 = time.time()
    results = run(
        args.sizes.split(","),
        args.plans.split(","),
        args.rounds,
        args.root,
        args.drop_caches,
        lambda msg: print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True),
        args.device,
    )
    print(write(results, args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
