"""The disk cache skips a plan where a cached copy was measured not to pay (measurements.json,
"disk_cache": a cold load that reads the copy above 0.3x the cold first load), on the device class
the plan quantizes on and for components at least as large as the one measured, and the report
says why. Elsewhere it caches as before."""

from __future__ import annotations

import pytest
import torch

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep import disk_cache
from pipequant.resolver.keep.disk_cache import DiskCache
from pipequant.resolver.keep.load import load
from pipequant.resolver.known import measured

SPEC = BackendSpec.make("torchao", "int8_weight_only", components=["transformer"])


@pytest.fixture
def figure(monkeypatch):
    """Sets the measured disk-cache row for torchao int8 weight-only: (ratio, generation, bytes)."""

    def put(ratio: float, generation: str = "cpu", min_bytes: int = 1):
        data = dict(measured.data())
        data["disk_cache"] = [
            {
                "backend": "torchao",
                "quant_type": "int8_weight_only",
                "generation": generation,
                "second_over_first": ratio,
                "min_checkpoint_bytes": min_bytes,
                "source": "a test's figure",
            }
        ]
        monkeypatch.setattr(measured, "data", lambda: data)

    return put


def _load(tiny_flux, tmp_path):
    with torch.inference_mode():
        result = load(tiny_flux, SPEC, device="cpu", cache=None, disk_cache=DiskCache(tmp_path / "cache"))
    return {r["component"]: r for r in result.rows}["transformer"], result


def _entries(tmp_path) -> list:
    store = tmp_path / "cache" / disk_cache.STORE
    return [p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")] if store.is_dir() else []


def test_a_plan_measured_not_to_pay_gets_no_entry_and_the_report_says_why(tiny_flux, tmp_path, figure, monkeypatch):
    monkeypatch.delenv(disk_cache.ENV_EVERY_PLAN, raising=False)
    figure(0.47)
    row, result = _load(tiny_flux, tmp_path)
    assert row["disk_cache"] == "not cached" and _entries(tmp_path) == []
    note = next(n for n in result.notes if "transformer not cached" in n)
    assert "0.47x" in note and "a test's figure" in note and disk_cache.ENV_EVERY_PLAN in note
    again, _ = _load(tiny_flux, tmp_path)
    assert again["disk_cache"] == "not cached" and again["action"] == "quantize"


def test_the_override_caches_it_anyway(tiny_flux, tmp_path, figure, monkeypatch):
    figure(0.47)
    monkeypatch.setenv(disk_cache.ENV_EVERY_PLAN, "1")
    first, _ = _load(tiny_flux, tmp_path)
    second, _ = _load(tiny_flux, tmp_path)
    assert (first["disk_cache"], second["disk_cache"]) == ("written", "read") and len(_entries(tmp_path)) == 1


@pytest.mark.parametrize(
    "ratio, generation, min_bytes",
    [
        (0.2, "cpu", 1),  # measured to pay
        (0.47, "hopper", 1),  # measured on a GPU: says nothing of a load quantized on the CPU
        (0.47, "cpu", 10**12),  # measured on components far larger than this one
    ],
    ids=["pays", "other-device-class", "smaller-than-measured"],
)
def test_elsewhere_the_cache_writes_and_reads_as_before(
    tiny_flux, tmp_path, figure, monkeypatch, ratio, generation, min_bytes
):
    monkeypatch.delenv(disk_cache.ENV_EVERY_PLAN, raising=False)
    figure(ratio, generation, min_bytes)
    first, _ = _load(tiny_flux, tmp_path)
    second, _ = _load(tiny_flux, tmp_path)
    assert (first["disk_cache"], second["disk_cache"]) == ("written", "read")


def test_each_committed_figure_names_the_bench_that_measured_it():
    rows = measured.data().get("disk_cache", [])
    assert rows, "no disk-cache figures: the rule has nothing to decide on"
    for row in rows:
        figure = measured.disk_cache_figure(row["backend"], row["quant_type"], row["generation"])
        assert figure["second_over_first"] == row["second_over_first"] > 0 and figure["min_checkpoint_bytes"] > 0
        assert "python -m bench.disk_cache" in figure["source"]
