"""A meta build skips torch.nn.init in its own thread only (resolver/files/meta_build.skipping_init):
the same model, faster, while a load in another thread still initialises its layers."""

from __future__ import annotations

import threading

import torch

from pipequant.resolver.files.meta_build import build_on_meta, skipping_init


def test_init_is_skipped_only_inside_the_context_and_only_in_its_thread():
    plain = torch.zeros(64)
    with skipping_init():
        skipped = torch.zeros(64)
        torch.nn.init.normal_(skipped)
        elsewhere = {}

        def other_thread():
            t = torch.zeros(64)
            torch.nn.init.normal_(t)
            elsewhere["changed"] = bool(t.abs().sum() > 0)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    torch.nn.init.normal_(plain)
    assert torch.equal(skipped, torch.zeros(64))
    assert elsewhere["changed"] and plain.abs().sum() > 0
    layer = torch.nn.Linear(8, 8, bias=False)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.kaiming_uniform_(layer.weight, a=5**0.5)  # the wrapper passes arguments through
    assert layer.weight.abs().sum() > 0


def test_the_skip_survives_a_library_that_puts_back_the_initialisers_it_saved():
    import torch.nn.init as init

    with skipping_init():
        pass
    saved = {name: getattr(init, name).__wrapped__ for name in ("normal_", "uniform_")}
    for name, original in saved.items():  # what transformers' init guards do on exit
        setattr(init, name, original)
    with skipping_init():
        t = torch.zeros(8)
        init.normal_(t)
        init.uniform_(t)
    assert torch.equal(t, torch.zeros(8))


def test_a_meta_build_gives_the_same_model_as_one_that_initialises():
    from transformers import T5Config, T5EncoderModel

    config = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2, "vocab_size": 100}
    built = build_on_meta(T5EncoderModel, "transformers", config, "test")
    with torch.device("meta"):
        reference = T5EncoderModel(T5Config.from_dict(config))
    shapes = {n: (t.shape, t.dtype) for n, t in reference.state_dict().items()}
    assert {n: (t.shape, t.dtype) for n, t in built.state_dict().items()} == shapes
    assert all(t.device.type == "meta" for t in built.state_dict().values())


def test_a_structural_copy_takes_a_quantizers_rewrites_and_leaves_the_original_alone():
    from pipequant.resolver.files.meta_build import structural_copy

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    model[1].weight = model[0].weight  # tied
    twin = structural_copy(model, own_tensors=True)
    assert twin[1].weight is twin[0].weight and twin[0].weight is not model[0].weight
    twin[0] = torch.nn.Identity()  # a quantizer replacing a layer
    twin[1].weight.data = torch.empty(4, 4, device="meta")  # or packing a weight in place
    twin[1].quantized = True
    assert isinstance(model[0], torch.nn.Linear) and model[0].weight.shape == (8, 8)
    assert not hasattr(model[1], "quantized") and model[1].weight.shape == (8, 8)
