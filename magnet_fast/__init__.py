"""magnet_fast: a fast, faithful inference engine for MAGNeT (and MusicGen on the same transformer)."""
from magnet_fast.config import VERSION, MagnetConfig
from magnet_fast.engines.magnet import MagnetFast
from magnet_fast.engines.musicgen import MusicGenFast
from magnet_fast.errors import (
    BatchSplitWarning,
    CheckpointError,
    ConfigError,
    MagnetFastError,
    NumericsError,
    ParameterError,
    ResourceError,
)
from magnet_fast.io.convert import convert
from magnet_fast.params import SamplingParams, resolve_params

__version__ = VERSION
__all__ = ["MagnetFast", "MusicGenFast", "MagnetConfig", "SamplingParams",
           "resolve_params", "convert", "MagnetFastError",
           "CheckpointError", "ConfigError", "ParameterError", "ResourceError", "NumericsError",
           "BatchSplitWarning", "__version__"]
