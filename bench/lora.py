"""LoRA on quantized transformers: apply time, extra memory, strength change vs re-apply, per backend.

`python -m bench.lora --size 20m` loads the synthetic FLUX pipeline once per plan (transformer
quantized, the rest bf16) and, in interleaved rounds, measures: applying a rank-`r` peft LoRA on
every attention projection (through the resolver: checked, then loaded), the bytes it adds
(counted from the new LoRA parameters) against the transformer's own bytes, a strength change
(`set_adapters` via `activate`) and a re-apply (unload + load again). Writes
bench/results/lora.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from . import config
from .pipelines import default_root, ensure
from .report import provenance, write_results
from .suite import machine

PLANS = {
    "bf16": None,
    "bnb nf4": ("bitsandbytes_4bit", "nf4"),
    "bnb int8": ("bitsandbytes_8bit", "int8"),
    "torchao int8 wo": ("torchao", "int8_weight_only"),
    "torchao float8 wo": ("torchao", "float8_weight_only"),
}


def _lora_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for n, p in module.named_parameters() if "lora_" in n)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(folder: Path, rounds: int, rank: int, plans=tuple(PLANS)) -> dict:
    import torch

    from pipequant.resolver import BackendSpec
    from pipequant.resolver.keep import load
    from pipequant.resolver.run import lora
    from pipequant.testing import bnb_cpu, write_peft_lora

    lora_dir = Path(tempfile.mkdtemp(prefix="pq-bench-lora-"))
    write_peft_lora(folder, lora_dir / "bench.safetensors", rank=rank, scale=0.05)
    spec = lora.make_spec("bench.safetensors", [lora_dir])
    half = dataclasses.replace(spec, strength=0.5)
    results = {}
    with bnb_cpu.bnb_on_cpu() if bnb_cpu.needed() else contextlib.nullcontext(), torch.inference_mode():
        loaded = {}
        for name in plans:
            plan = BackendSpec.make(*PLANS[name], components=["transformer"]) if PLANS[name] else None
            loaded[name] = load(folder, plan, device="cpu", cache=None)
            row = next(r for r in loaded[name].rows if r["component"] == "transformer")
            results[name] = {"transformer_bytes": row["bytes"], "apply": [], "strength": [], "reapply": []}
        for r in range(rounds):
            order = list(plans[r % len(plans) :]) + list(plans[: r % len(plans)])
            for name in order:
                result, out = loaded[name], results[name]
                lora.strip_adapters(result.pipeline)
                out["apply"].append(_timed(lambda: lora.load_adapter(result, spec)))
                out["lora_bytes"] = _lora_bytes(result.pipeline.transformer)
                lora.activate(result.with_lora(spec))
                out["strength"].append(_timed(lambda: lora.activate(result.with_lora(half))))
                out["reapply"].append(
                    _timed(lambda: (lora.strip_adapters(result.pipeline), lora.activate(result.with_lora(half))))
                )
    rows = []
    for name, out in results.items():
        apply, strength, reapply = (statistics.median(out[k]) for k in ("apply", "strength", "reapply"))
        rows.append(
            {
                "plan": name,
                "apply_s": round(apply, 4),
                "lora_bytes": out["lora_bytes"],
                "transformer_bytes": out["transformer_bytes"],
                "extra_ratio": round(out["lora_bytes"] / out["transformer_bytes"], 4),
                "strength_change_s": round(strength, 5),
                "reapply_s": round(reapply, 4),
                "strength_vs_reapply": round(strength / reapply, 4),
                "runs": len(out["apply"]),
            }
        )
    return {"machine": machine(), "folder": str(folder), "rank": rank, "rounds": rounds, "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [
        "# LoRA on a quantized transformer (CPU)",
        "",
        f"Pipeline `{Path(result['folder']).name}`, peft LoRA rank {result['rank']} on every attention "
        f"projection of the transformer, {result['rounds']} interleaved rounds, median.",
        "",
        "| plan | apply s | LoRA bytes ÷ transformer bytes | strength change s | re-apply s | change ÷ re-apply |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['plan']} | {r['apply_s']} | {r['extra_ratio']} ({r['lora_bytes']:,} / {r['transformer_bytes']:,}) "
        f"| {r['strength_change_s']} | {r['reapply_s']} | {r['strength_vs_reapply']} |"
        for r in result["rows"]
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lora", description=__doc__)
    p.add_argument("--size", default="20m", choices=config.ALL_SIZES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    provenance()  # the commit and tree as the bench starts: what the results come from
    result = measure(ensure(args.size, args.root or default_root()), args.rounds, args.rank)
    write_results(args.out, "lora", result, to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
