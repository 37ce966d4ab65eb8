"""Banded (restricted-context) attention, |q - k| <= window (see naive.py for the semantics).

``banded_attention`` is the plain-PyTorch reference (the runtime's bitwise CPU path);
``banded_attention_op`` is the ``magnet_fast::banded_attn`` custom op (Triton on CUDA, naive on CPU),
imported lazily so that importing this package does not import Triton.
"""
from magnet_fast.kernels.banded_attn.naive import (
    band_bias,
    banded_attention,
    banded_attention_bwd,
    banded_attention_lse,
)
from magnet_fast.kernels.constants import SUPPORTED_D

HAS_BACKWARD = True        # the op has a registered backward (Triton on CUDA, the reference elsewhere)

__all__ = ["HAS_BACKWARD", "SUPPORTED_D", "band_bias", "banded_attention", "banded_attention_bwd", "banded_attention_lse",
           "banded_attention_op"]


def __getattr__(name):
    if name == "banded_attention_op":
        from magnet_fast.kernels.banded_attn.triton import banded_attention_op
        return banded_attention_op
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
