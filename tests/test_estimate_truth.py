"""Every component's estimate against the bytes a real CPU load holds: the same architecture at
full width with no layer and with one, extrapolated per layer to the full depth (a full-size load
does not fit this machine; the layer-free base keeps the suite cheap). T5-XXL and CLIP-L, fp16 and bf16, every backend that loads them on
CPU. The FLUX transformer (about 1 GB per extra block) is measured by `python -m bench.estimate_truth`."""

from __future__ import annotations

import pytest

from pipequant.resolver.decide.estimate import component_estimate
from pipequant.resolver.decide.plan import KEEP, QUANTIZE
from pipequant.resolver.files.inspect_model import inspect_model
from pipequant.resolver.known import catalogue
from pipequant.testing import hollow
from pipequant.testing.real_bytes import cached_models, extrapolate, load_bytes

SPECS = [
    (None, None, {}),
    ("bitsandbytes_4bit", "nf4", {}),
    ("bitsandbytes_4bit", "nf4", {"double_quant": True}),
    ("bitsandbytes_8bit", "int8", {}),
    ("torchao", "int8_weight_only", {}),
    ("quanto", "int8", {}),
]
ARCHS = {
    "text_encoder_2": ("T5EncoderModel", hollow.T5_XXL, {"num_layers": 24}),
    "text_encoder": ("CLIPTextModel", hollow.CLIP_L, {"num_hidden_layers": 12}),
}


@pytest.fixture(scope="module")
def few_layers(tmp_path_factory):
    root = tmp_path_factory.mktemp("few-layers")
    return {
        name: cached_models(root, "transformers", cls, cfg, layers, base=0)
        for name, (cls, cfg, layers) in ARCHS.items()
    }


@pytest.mark.parametrize("component", list(ARCHS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "backend,quant_type,options", SPECS, ids=[f"{b or 'none'}-{q or ''}{'-dq' if o else ''}" for b, q, o in SPECS]
)
def test_estimate_matches_a_real_load_extrapolated(
    flux_dev, few_layers, component, dtype, backend, quant_type, options
):
    cls, _, layers = ARCHS[component]
    folders = few_layers[component]
    be = catalogue.get_backend(backend) if backend else None
    sizes = {
        kind: load_bytes(folder, "transformers", cls, dtype, be, quant_type, options)
        for kind, folder in folders.items()
    }
    real = extrapolate(sizes, layers, base=0)
    info = inspect_model(flux_dev).components[component]
    est = component_estimate(info, QUANTIZE if backend else KEEP, dtype, dtype, backend, quant_type, options)
    assert est["bytes_after"] == pytest.approx(real, rel=0.02), (est["bytes_after"], real)
