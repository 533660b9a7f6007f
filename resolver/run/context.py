"""The runtime context every diffusers call runs in: outside inference mode, without autograd, quiet.

ComfyUI runs nodes under torch.inference_mode(); torchao/quanto tensors break there when moved or
offloaded (measured on an H100: README "Facts"). Loading, LoRA, saving and sampling all enter it.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def diffusers_context():
    """ComfyUI runs nodes under torch.inference_mode(); torchao/quanto tensors break there when
    moved or offloaded (README "Facts"). All diffusers work runs outside it, without autograd."""
    import torch

    from ..files.meta_build import isolate_empty_init

    isolate_empty_init()  # the libraries' empty-weight contexts stay in their own thread
    _quiet_progress_bars()
    with torch.inference_mode(False), torch.no_grad():
        yield


def _quiet_progress_bars() -> None:
    """PipeQuant reports progress per component itself; the libraries' bars are noise in ComfyUI's log."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
