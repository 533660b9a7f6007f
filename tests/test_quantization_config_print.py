"""`pipe.quantization_config` prints what each component got, as diffusers' own pipelines do (issue 22, item 16)."""

from __future__ import annotations

import torch

from pipequant.resolver import BackendSpec
from pipequant.resolver.keep.load import load


def test_the_pipelines_quantization_config_prints_each_components_config(tiny_flux):
    spec = BackendSpec.make("torchao", "int8_weight_only", components=["transformer", "text_encoder_2"])
    with torch.inference_mode():
        result = load(tiny_flux, spec, device="cpu", cache=None)
    config = result.pipeline.quantization_config
    text = str(config)
    assert text.startswith("text_encoder_2 ")  # diffusers sorts by component name
    for name in ("text_encoder_2", "transformer"):
        component_config = getattr(result.pipeline, name).pipequant_quantization_config
        assert f"{name} {component_config}" in text
    assert text.count("TorchAoConfig") == 2 or text.count('"quant_method": "torchao"') == 2, text
    assert set(config.config_mapping) == {"text_encoder_2", "transformer"}
