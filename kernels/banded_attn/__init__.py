"""Banded (restricted-context) attention, |q - k| <= window (see naive.py for the semantics)."""
from magnet_fast.kernels.banded_attn.naive import band_bias, banded_attention

__all__ = ["band_bias", "banded_attention"]
