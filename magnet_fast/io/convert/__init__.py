"""Conversion of audiocraft MAGNeT exports to magnet_fast's folder format (see docs/DESIGN.md, Conversion).

``lm``: the LM checkpoint (``state_dict.bin``) -> config.json + model.safetensors, and the public ``convert``;
``codec``: the EnCodec (``compression_state_dict.bin``) -> a transformers EncodecModel folder;
``xpcfg``: read access to audiocraft's YAML ``xp.cfg``.
Nothing here is needed at run time.
"""
from magnet_fast.io.convert.lm import convert

__all__ = ["convert"]
