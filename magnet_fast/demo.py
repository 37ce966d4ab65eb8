"""The bundled demo model: untrained random weights (its audio is noise), a few MB, shipped as package data.

It lets the whole pipeline (T5 -> MAGNeT decoding -> EnCodec -> WAV) run offline right after
``pip install``; ``magnet-fast generate`` uses it when no ``--model`` is given. The files live in
``magnet_fast/demo/magnet-tiny-demo/`` (config.json, model.safetensors, t5/, codec/), listed as package data
in pyproject.toml so wheels carry them; ``weights/make_default.py`` in the repository rebuilds them.
"""
from __future__ import annotations

from pathlib import Path

DEMO_NAME = "magnet-tiny-demo"

# Installs unpack packages onto the file system (wheels are never imported zipped), so the folder sits beside
# this module wherever the package is installed: site-packages, an editable checkout, or a source tree.
DEMO_MODEL: Path = Path(__file__).resolve().parent / "demo" / DEMO_NAME
# The MusicGen demo beside it (same tiny geometry; its codec is the MAGNeT demo's codec/ folder): the CLI's
# --hybrid / --rescore and MusicGen runs work offline on it (``weights/make_default.py --musicgen``).
MUSICGEN_DEMO_NAME = "musicgen-tiny-demo"
MUSICGEN_DEMO_MODEL: Path = DEMO_MODEL.parent / MUSICGEN_DEMO_NAME

__all__ = ["DEMO_MODEL", "DEMO_NAME", "MUSICGEN_DEMO_MODEL", "MUSICGEN_DEMO_NAME"]
