"""Keep the benchmarks working: every benchmark once, at the smallest size, one repetition.

Runs the real suite (fork-server worker, fresh process per load) on the tiny FLUX pipeline and
checks that the markdown, JSON and PNG come out with the expected columns and sane values. It
measures nothing worth reading; `python -m bench` does (bench/README.md).
"""

from __future__ import annotations

import json
import math
import os

import pytest

from bench import config
from bench.suite import BENCHMARKS, run_suite, write


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-root")
    out = tmp_path_factory.mktemp("bench-out")
    res = run_suite(
        sizes=["tiny"],
        reps=1,
        device="cpu",
        only=BENCHMARKS,
        root=root,
        quiet=True,
        log_file=out / "worker.log",
        validate_reps=2,
    )
    return res, write(res, out, plot=True), out


def test_no_run_failed(results):
    res, _, out = results
    assert res["errors"] == [], (res["errors"], (out / "worker.log").read_text()[-3000:])


def test_overhead_rows(results):
    rows = results[0]["overhead"]
    assert [r["plan"] for r in rows] == list(config.OVERHEAD_PLANS)
    for r in rows:
        assert {"ratio", "ratio_cpu", "pipequant_s", "diffusers_s", "delta_ms", "met", "n"} <= set(r)
        assert _finite_positive(r["ratio"]) and _finite_positive(r["ratio_cpu"]) and r["n"] == 1


def test_memory_floor_and_peaks(results):
    mem = results[0]["memory"]
    quantized = [c for c in mem["components"] if c["quantized"]]
    assert {c["plan"] for c in quantized} == {"nf4", "int8wo", "quanto8"}
    for c in mem["components"]:
        assert _finite_positive(c["ratio"]) and _finite_positive(c["floor"])
        # PipeQuant adds nothing to what plain diffusers holds, and no backend is below its floor.
        assert c["vs_diffusers"] == pytest.approx(1.0, abs=0.01)
        assert c["ratio"] >= 0.99
    for p in mem["peaks"]:
        assert _finite_positive(p["peak_over_resident"]) and p["peak_phase"]
    phases = {p["phase"] for p in mem["phases"]}
    assert {"validate+plan", "transformer", "text_encoder_2", "assemble+report"} <= phases


def test_reuse_reuses_all_but_the_switched_component(results):
    rows = results[0]["reuse"]
    assert len(rows) == len(config.REUSE_SWITCH)
    for r in rows:
        assert _finite_positive(r["ratio"]) and 0 < r["share"] < 1
        assert config.REUSE_COMPONENT not in r["reused"] and "transformer" in r["reused"]


def test_prequant_rows(results):
    rows = results[0]["prequant"]
    assert [r["plan"] for r in rows] == list(config.PREQUANT_PLANS)
    for r in rows:
        assert _finite_positive(r["ratio"]) and r["resident_ratio"] == pytest.approx(1.0, abs=0.05)


def test_scaling_and_validate(results):
    res = results[0]
    assert {p["plan"] for p in res["scaling"]["points"]} == set(config.OVERHEAD_PLANS)
    for r in res["validate"]:
        assert r["weight_files_opened"] >= 1  # headers are opened ...
        assert r["bytes_read_cold"] < r["weight_bytes_on_disk"]  # ... but weights are not read
        assert _finite_positive(r["validate_cold_ms"]) and r["validate_warm_ms"] < 100


def test_written_files(results):
    _, written, out = results
    names = {p.name for p in written}
    assert {"results.md", "results.json"} <= names
    md = (out / "results.md").read_text()
    for heading in (
        "## Targets",
        "## 1. Load overhead",
        "## 2. Memory",
        "## 3. Component reuse",
        "## 4. Pre-quantized reload",
        "## 5. Scaling",
        "## 6. Validation",
    ):
        assert heading in md
    assert "| size | plan | ratio (CPU time) | ratio (wall) |" in md
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["sizes"] == ["tiny"] and data["meta"]["machine"]["cores"] >= 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert "scaling.png" in names and (out / "scaling.png").stat().st_size > 1000


def test_step_speed_compares_every_plan_with_bf16(tmp_path):
    """In-process: the bench's bnb-on-CPU patch is undone when it returns, so later tests still
    see diffusers refuse bnb on CPU."""
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    from bench.step_speed import PLANS, measure, to_markdown
    from pipequant.testing import ensure_pipeline
    from pipequant.testing.bnb_cpu import needed

    original = BnB4BitDiffusersQuantizer.__dict__["validate_environment"]
    folder = ensure_pipeline("flux", tmp_path)
    result = measure(folder, "cpu", steps=1, rounds=1, image_tokens=16)
    assert result["bnb_cpu_patch"] is needed()
    assert BnB4BitDiffusersQuantizer.__dict__["validate_environment"] is original
    assert [r["plan"] for r in result["rows"]] == list(PLANS)
    assert all(_finite_positive(r["seconds_per_step"]) and _finite_positive(r["vs_bf16"]) for r in result["rows"])
    assert next(r for r in result["rows"] if r["plan"] == "bf16")["vs_bf16"] == 1.0
    assert "| bnb nf4 |" in to_markdown(result)


def test_quality_check_bench_measures_errors_and_the_cost_of_a_check(tmp_path):
    from bench.quality_check import cost, errors, to_markdown
    from pipequant.testing import ensure_pipeline

    folder = ensure_pipeline("flux", tmp_path)
    rows = errors(folder, "cpu", steps=1, side=32, plans=("torchao int8_weight_only",))
    assert rows[0]["components"]["transformer"] > 0 and rows[0]["psnr"] > 0
    spent = cost(folder, "cpu", steps=1, side=32, rounds=1)
    assert spent["vs_sampler"]["sampler"] == 1.0 and all(_finite_positive(v) for v in spent["seconds"].values())
    md = to_markdown({"device": "cpu", "folder": str(folder), "steps": 1, "side": 32, "errors": rows, "cost": spent})
    assert "| torchao int8_weight_only |" in md and "÷ one Sampler run" in md


def test_overhead_times_the_node_path_beside_the_resolver(results):
    """The Load node as a user runs it (estimate, disk cache on and empty) is timed next to the
    resolver path, and its disk cache really writes an entry for each quantized component."""
    for r in results[0]["overhead"]:
        for key in ("node_paired", "node_paired_cpu", "resolver_paired"):
            spread = r[key]
            assert spread["n"] == 1 and 0 < spread["min"] <= spread["median"] <= spread["max"]
        (statuses,) = r["node_disk_cache"]
        if r["plan"] != "bf16":
            assert "written" in statuses.values(), statuses
    md = (results[2] / "results.md").read_text()
    assert "node ÷ diffusers (wall)" in md


def test_result_files_say_what_wrote_them(results, tmp_path):
    """Every result file carries the command, the commit, the machine and the library versions."""
    from bench.report import write_results

    data = json.loads((results[2] / "results.json").read_text())
    written = write_results(tmp_path, "probe", [{"x": 1}], "# Probe\n\n| a |\n")
    for prov in (data["provenance"], json.loads((tmp_path / "probe.json").read_text())["provenance"]):
        assert prov["command"] and prov["commit"] and len(prov["commit"]) == 40
        assert prov["machine"]["cores"] >= 1 and prov["machine"]["versions"]["torch"]
    lines = written.read_text().splitlines()
    assert lines[0] == "# Probe" and lines[2].startswith("Written ") and "at commit" in lines[2]
    assert "Written " in (results[2] / "results.md").read_text()


def test_disk_cache_bench_caches_something(tmp_path):
    """The disk-cache bench through the Load node at the tiny size: the first load writes a real
    entry (bytes > 0), the second reads it; a bench that cached nothing raises instead of writing."""
    from bench import disk_cache

    res = disk_cache.run(["tiny"], ["int8wo"], 1, tmp_path / "root", False, lambda msg: None)
    (row,) = res["summary"]
    assert row["entry_bytes"] > 0
    kinds = {r["kind"]: r for r in res["runs"]}
    assert "written" in kinds["first"]["disk_cache"].values() and "read" in kinds["second"]["disk_cache"].values()
    assert row["second_over_first_spread"]["n"] == 1
    assert row["cached_components"] == ["text_encoder", "text_encoder_2", "transformer"]
    assert row["cached_first_s"] > 0 and row["cached_second_s"] > 0  # the cached components' own times
    assert row["cpu_second_over_first_spread"]["n"] == 1
    md = disk_cache.write(res, tmp_path / "out").read_text()
    assert "second ÷ first" in md and " 0.0 MB" not in md


def test_every_committed_result_says_what_wrote_it():
    """Every result file in git under bench/results names the command, commit, machine and library
    versions that wrote it (bench/report.py: provenance): a file without it cannot be regenerated."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "bench/results"], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    missing = []
    for name in listed.stdout.split():
        path = repo / name
        if path.suffix == ".md":
            ok = any(
                line.startswith("Written ") and " by `python -m bench" in line for line in path.read_text().splitlines()
            )
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
            made = (data.get("provenance") if isinstance(data, dict) else None) or {}
            ok = bool(made.get("command") and made.get("commit") and made.get("machine", {}).get("versions"))
        elif path.suffix == ".png":
            from PIL import Image

            ok = Image.open(path).text.get("Description", "").startswith("Written ")
        else:
            ok = False
        if not ok:
            missing.append(name)
    assert not missing, f"result files without provenance (regenerate them with their command): {missing}"


def test_lora_bench_measures_an_adapter(tiny_flux):
    """The LoRA bench at the tiny size: the adapter is applied, adds bytes, and a strength change is timed."""
    from bench import lora as lora_bench

    res = lora_bench.measure(tiny_flux, rounds=1, rank=4, plans=("bf16", "torchao int8 wo"))
    assert [r["plan"] for r in res["rows"]] == ["bf16", "torchao int8 wo"]
    for row in res["rows"]:
        assert row["lora_bytes"] > 0 and row["apply_s"] > 0 and row["strength_change_s"] > 0, row
    assert "| torchao int8 wo |" in lora_bench.to_markdown(res)


def test_validate_cold_bench_times_validate_without_the_heavy_imports(tiny_flux):
    """The cold-validate bench at the tiny size: both timings measured, and validate imported none of
    torch, diffusers, transformers."""
    from bench import validate_cold

    row = validate_cold.measure(tiny_flux.parent, tiny_flux.name, runs=1, warm_up=False)
    assert row["validate_s"] > 0 and row["imports_s"] > 0 and row["ratio"] > 0
    assert row["imported"] == []


def test_peak_load_bench_measures_a_peak_both_ways(tmp_path):
    """The peak-at-load bench at the tiny size, one round: both paths load in fresh processes, each
    measures a peak and resident bytes, and the streamed path really streamed the transformer (a bench
    that compared diffusers' loader with itself would measure nothing)."""
    from bench import peak_load

    res = peak_load.run("tiny", ["int8wo"], 1, tmp_path / "root", log=lambda msg: None)
    (row,) = res["summary"]
    assert row["streamed"]["transformer"] is True and row["streamed"]["text_encoder_2"] is True
    assert row["streamed_by_default"]["transformer"] is True  # torchao: by rows, the default
    assert {r["path"] for r in res["runs"]} == {"default", "stream", "library"}
    for r in res["runs"]:
        assert r["peak_bytes"] > 0 and r["resident_bytes"] > 0 and r["load_cpu_s"] > 0
        assert r["minor_faults"] > 0 and r["load_user_s"] + r["load_sys_s"] > 0
    md = peak_load.to_markdown(res)
    assert "peak ÷ resident, default" in md and "n=1" in md and "minor faults k, default" in md


def test_plan_cold_bench_times_a_real_plan_in_a_fresh_process(flux_dev, tmp_path):
    """The cold-plan bench's child really plans (a failed plan raises) and its CPU time is counted."""
    from bench.plan_cold import cold_cli

    figures = cold_cli(os.environ.get("PYTHONPATH", ""), flux_dev.parent)
    assert _finite_positive(figures["cpu_s"]) and _finite_positive(figures["wall_s"])
